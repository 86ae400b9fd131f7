//! The HDR latency plot the bench writes (SVG): latency against percentile, the percentile
//! axis spread as 1/(1 − p) on a log scale, as HdrHistogram's own plotter draws it, so the
//! tail (99 %, 99.9 %, 99.99 %) gets as much room as the median. One line per series.
//!
//! Written by hand: it is one polyline per series, two axes and their labels, and the
//! percentile axis is the part a general plotting crate would have to be taught anyway.
// Pixel geometry and latencies in ms: no money is near this module.
#![allow(clippy::float_arithmetic)]

use hdrhistogram::Histogram;
use std::fmt::Write as _;

/// Plot area and margins, px.
const WIDTH_PX: f64 = 900.0;
const HEIGHT_PX: f64 = 540.0;
const LEFT_PX: f64 = 80.0;
const RIGHT_PX: f64 = 30.0;
const TOP_PX: f64 = 50.0;
const BOTTOM_PX: f64 = 60.0;
/// Points per halving of the distance to 100 % (HdrHistogram's `ticks_per_half_distance`).
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// The percentile axis ends at 99.9999 % (x = 6), or earlier for fewer samples.
const X_DECADES_MAX: f64 = 6.0;
/// Series colours, in order (then repeated).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// One line: its name and its histogram (µs).
#[derive(Debug)]
pub struct Series<'a> {
    /// The legend's text.
    pub name: String,
    /// The samples, µs.
    pub hist: &'a Histogram<u64>,
}

/// The curve of `h`: (x = log10(1 / (1 − quantile)), latency in ms), in quantile order,
/// the last point (quantile 1) at `x_end`.
fn curve(h: &Histogram<u64>, x_end: f64) -> Vec<(f64, f64)> {
    let mut points = Vec::new();
    for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        let q = v.quantile_iterated_to();
        let x = if q >= 1.0 {
            x_end
        } else {
            (1.0 / (1.0 - q)).log10().min(x_end)
        };
        points.push((x, ms(h.highest_equivalent(v.value_iterated_to()))));
    }
    points
}

#[allow(clippy::cast_precision_loss)] // latencies in µs: far below 2^52
fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

/// A round step for an axis from 0 to `max`, about `ticks` of them.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// The plot of `series` (empty histograms are left out) under `title`, as an SVG document.
pub fn percentile_svg(title: &str, series: &[Series<'_>]) -> String {
    let drawn: Vec<&Series<'_>> = series.iter().filter(|s| !s.hist.is_empty()).collect();
    // The axis reaches 1 − 1/n of the largest series: no percentile beyond what was seen.
    #[allow(clippy::cast_precision_loss)]
    let x_end = drawn
        .iter()
        .map(|s| (s.hist.len().max(10) as f64).log10())
        .fold(1.0, f64::max)
        .min(X_DECADES_MAX);
    let curves: Vec<Vec<(f64, f64)>> = drawn.iter().map(|s| curve(s.hist, x_end)).collect();
    let y_top = curves
        .iter()
        .flatten()
        .map(|(_, y)| *y)
        .fold(0.0, f64::max)
        .max(0.001);
    let y_step = nice_step(y_top, 6.0);
    let y_end = (y_top / y_step).ceil() * y_step;
    let (w, h) = (
        WIDTH_PX - LEFT_PX - RIGHT_PX,
        HEIGHT_PX - TOP_PX - BOTTOM_PX,
    );
    let px = |x: f64| LEFT_PX + x / x_end * w;
    let py = |y: f64| TOP_PX + h - y / y_end * h;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        o,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH_PX / 2.0,
        escape(title)
    );
    // The percentile axis: 0 %, 90 %, 99 %, … up to x_end.
    let mut decade = 0.0;
    while decade <= x_end + 1e-9 {
        let x = px(decade);
        let label = percentile_label(decade);
        let _ = writeln!(
            o,
            r##"<line x1="{x:.1}" y1="{TOP_PX}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP_PX + h,
            TOP_PX + h + 18.0
        );
        decade += 1.0;
    }
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT_PX + w / 2.0,
        HEIGHT_PX - 15.0
    );
    // The latency axis, ms.
    let mut y = 0.0;
    while y <= y_end + y_step / 2.0 {
        let at = py(y);
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT_PX}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT_PX + w,
            LEFT_PX - 8.0,
            at + 4.0,
            trim(y)
        );
        y += y_step;
    }
    let _ = writeln!(
        o,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">ack latency, ms</text>"#,
        TOP_PX + h / 2.0,
        TOP_PX + h / 2.0
    );
    let _ = writeln!(
        o,
        r#"<rect x="{LEFT_PX}" y="{TOP_PX}" width="{w:.1}" height="{h:.1}" fill="none" stroke="black"/>"#
    );
    for (i, (s, points)) in drawn.iter().zip(&curves).enumerate() {
        let colour = COLOURS.get(i % COLOURS.len()).copied().unwrap_or("black");
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline class="series" fill="none" stroke="{colour}" stroke-width="{}" points="{}"/>"#,
            if i == 0 { 2.5 } else { 1.2 },
            path.join(" ")
        );
        #[allow(clippy::cast_precision_loss)]
        let ly = TOP_PX + 18.0 + 18.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} (n = {}, p99 {} ms)</text>"#,
            LEFT_PX + 14.0,
            LEFT_PX + 38.0,
            LEFT_PX + 44.0,
            ly + 4.0,
            escape(&s.name),
            s.hist.len(),
            legend_ms(ms(s.hist.value_at_quantile(0.99)))
        );
    }
    o.push_str("</svg>\n");
    o
}

/// 0 → "0%", 1 → "90%", 2 → "99%", 3 → "99.9%", …
fn percentile_label(decade: f64) -> String {
    // Decades are whole numbers from 0 to X_DECADES_MAX.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = decade.round() as usize;
    match n {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        _ => format!("99.{}%", "9".repeat(n - 2)).replace("99.%", "99%"),
    }
}

/// A latency for the legend: three significant figures at most below 100 ms, whole ms
/// above.
fn legend_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        trim((v * 10.0).round() / 10.0)
    } else {
        trim((v * 100.0).round() / 100.0)
    }
}

/// A tick value without trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter(|l| l.contains(r#"class="series""#))
            .map(|l| {
                let points = l
                    .split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                points
                    .split(' ')
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_curve_rises_to_the_largest_sample_at_the_end_of_the_axis() {
        let mut h = crate::device::latency_histogram();
        // 1 ms for 99 % of 10,000 samples, 49 ms for the rest.
        for i in 0..10_000u64 {
            h.record(if i < 9_900 { 1_000 } else { 49_000 }).unwrap();
        }
        let svg = percentile_svg(
            "t <&>",
            &[Series {
                name: "all".into(),
                hist: &h,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt;"));
        for label in ["0%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(svg.contains(&format!(">{label}<")), "no {label} tick");
        }
        assert!(
            !svg.contains(">99.999%<"),
            "the axis goes past what 10,000 samples show"
        );
        let lines = polylines(&svg);
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        // Left to right, never down (SVG y grows downwards).
        assert!(
            line.windows(2)
                .all(|p| p[1].0 >= p[0].0 && p[1].1 <= p[0].1)
        );
        // Starts at the left edge near 1 ms, ends at the right edge near the top: the y
        // axis ends at 50 ms (its ticks are 10 ms apart).
        let height = HEIGHT_PX - BOTTOM_PX - TOP_PX;
        assert!((line[0].0 - LEFT_PX).abs() < 0.2);
        let (x_last, y_last) = *line.last().unwrap();
        assert!((x_last - (WIDTH_PX - RIGHT_PX)).abs() < 0.2, "{x_last}");
        assert!(y_last - TOP_PX < 0.03 * height, "{y_last}");
        assert!(svg.contains(">50<") && !svg.contains(">60<"));
        // Up to the 99th percentile the line stays at 1 ms (near the bottom).
        let bottom = HEIGHT_PX - BOTTOM_PX;
        let x99 = LEFT_PX + 2.0 / 4.0 * (WIDTH_PX - LEFT_PX - RIGHT_PX);
        assert!(
            line.iter()
                .filter(|(x, _)| *x < x99 - 1.0)
                .all(|(_, y)| bottom - y < 0.03 * height)
        );
    }

    #[test]
    fn empty_series_are_left_out() {
        let h = crate::device::latency_histogram();
        let svg = percentile_svg(
            "none",
            &[Series {
                name: "empty".into(),
                hist: &h,
            }],
        );
        assert!(polylines(&svg).is_empty());
        assert!(svg.contains("</svg>"));
    }

    #[test]
    fn labels_and_steps() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert_eq!(nice_step(47.0, 6.0), 10.0);
        assert_eq!(nice_step(0.9, 6.0), 0.2);
        assert_eq!(trim(2.500), "2.5");
        assert_eq!(legend_ms(2770.943), "2771");
        assert_eq!(legend_ms(27.0943), "27.1");
        assert_eq!(legend_ms(2.70943), "2.71");
    }
}
