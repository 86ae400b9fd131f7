//! Samples for the gauges nothing else updates as it goes: the process's own resources
//! (read from `/proc/self`, Linux only) and the store's credit and budget totals.
//!
//! The parsers are pure functions over the text of a `/proc` file, so they are tested
//! with fixed text; [`sample_process`] does the reading and [`record_process`],
//! [`record_credits`] and [`record_budgets`] only set metrics. Whoever calls them (a
//! periodic task) decides how often.

use crate::metrics as m;
use std::time::Duration;

/// Linux's page size on x86-64 and most arm64 kernels, used if `sysconf` fails.
const PAGE_BYTES_DEFAULT: u64 = 4096;
/// Linux's `USER_HZ` (the unit of `/proc/<pid>/stat` times), used if `sysconf` fails.
const CLOCK_TICKS_PER_SECOND_DEFAULT: u64 = 100;

/// One sample of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessSample {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: u64,
    /// User plus system CPU time. Not money: a float is fine.
    pub cpu_seconds: f64,
}

/// The resident set size in bytes from the text of `/proc/self/statm`, whose second field
/// is resident pages.
pub fn parse_statm(text: &str, page_bytes: u64) -> Option<u64> {
    let pages: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_bytes)
}

/// User plus system CPU time in clock ticks from the text of `/proc/self/stat` (fields
/// 14 `utime` and 15 `stime`).
///
/// Field 2, the command name, is in parentheses and may itself hold spaces and
/// parentheses, so the fields are counted from after the *last* `)`: there field 3
/// (`state`) comes first, which puts `utime` at index 11.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<u64> {
    let (_, after_comm) = text.rsplit_once(')')?;
    let mut fields = after_comm.split_ascii_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// The soft limit of "Max open files" from the text of `/proc/self/limits`. `None` if
/// the line is missing or the limit is `unlimited` (which Linux does not allow for open
/// files: it is capped by `fs.nr_open`).
pub fn parse_limits_max_fds(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// CPU time from clock ticks, in integers until the last step (`float_arithmetic` is
/// denied; `Duration` does the conversion).
fn ticks_to_seconds(ticks: u64, ticks_per_second: u64) -> Option<f64> {
    if ticks_per_second == 0 {
        return None;
    }
    let whole = Duration::from_secs(ticks / ticks_per_second);
    let nanos = (ticks % ticks_per_second).saturating_mul(1_000_000_000) / ticks_per_second;
    Some(
        whole
            .checked_add(Duration::from_nanos(nanos))?
            .as_secs_f64(),
    )
}

/// Reads the process's resources from `/proc/self`. `None` where there is no `/proc`
/// (not Linux) or a file did not parse; then nothing is recorded rather than a wrong
/// value.
pub fn sample_process() -> Option<ProcessSample> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rss_bytes = parse_statm(&statm, page_bytes())?;
    let cpu_seconds = ticks_to_seconds(parse_stat_cpu_ticks(&stat)?, clock_ticks_per_second())?;
    let max_fds = parse_limits_max_fds(&limits)?;
    // Listing the directory opens one descriptor of its own, which is in the listing;
    // it is not one of ours to report.
    let listed = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .filter(Result::is_ok)
        .count();
    let open_fds = u64::try_from(listed).ok()?.saturating_sub(1);
    Some(ProcessSample {
        rss_bytes,
        open_fds,
        max_fds,
        cpu_seconds,
    })
}

/// Sets the process gauges and the CPU counter from a sample.
pub fn record_process(s: &ProcessSample) {
    // Export only: the f64s are what the recorder stores, never arithmetic.
    metrics::gauge!(m::PROCESS_RESIDENT_MEMORY_BYTES).set(s.rss_bytes as f64);
    metrics::gauge!(m::PROCESS_OPEN_FDS).set(s.open_fds as f64);
    metrics::gauge!(m::PROCESS_MAX_FDS).set(s.max_fds as f64);
    // `metrics` counters are integers: whole seconds, and `absolute` never moves one
    // back. `try_from_secs_f64` refuses a negative or non-finite value instead of casting.
    if let Ok(cpu) = Duration::try_from_secs_f64(s.cpu_seconds) {
        metrics::counter!(m::PROCESS_CPU_SECONDS_TOTAL).absolute(cpu.as_secs());
    }
}

/// Credits in one state, as the store counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditState {
    /// `released`, `bound`, `in_doubt`, `parked` or `loaded` (the `state` label).
    pub state: &'static str,
    /// Credits in the state.
    pub count: i64,
    /// Their amounts together, in fen.
    pub fen: i64,
}

/// Sets [`m::CREDITS`] and [`m::CREDITS_FEN`] for each state given. Pass every state,
/// zeros included: a state left out keeps its previous value.
pub fn record_credits(states: &[CreditState]) {
    for s in states {
        // Export only: fen become f64 for the gauge, never for arithmetic.
        metrics::gauge!(m::CREDITS, "state" => s.state).set(s.count as f64);
        metrics::gauge!(m::CREDITS_FEN, "state" => s.state).set(s.fen as f64);
    }
}

/// Sets [`m::BUDGET_GRANTED_FEN`] and [`m::BUDGET_LEFT_FEN`] for each budget, given as
/// (`yyyymm` or `programme`, granted fen, cap fen). What is left is the cap minus what was
/// granted, never below 0 (a month may be cut after it granted).
pub fn record_budgets(rows: &[(String, i64, i64)]) {
    for (budget, granted, cap) in rows {
        let left = cap.saturating_sub(*granted).max(0);
        // Export only: fen become f64 for the gauge, never for arithmetic.
        metrics::gauge!(m::BUDGET_GRANTED_FEN, "budget" => budget.clone()).set(*granted as f64);
        metrics::gauge!(m::BUDGET_LEFT_FEN, "budget" => budget.clone()).set(left as f64);
    }
}

/// The page size, from `sysconf(_SC_PAGESIZE)`.
fn page_bytes() -> u64 {
    sysconf_positive(SysconfName::PageSize).unwrap_or(PAGE_BYTES_DEFAULT)
}

/// Clock ticks per second (`USER_HZ`), from `sysconf(_SC_CLK_TCK)`.
fn clock_ticks_per_second() -> u64 {
    sysconf_positive(SysconfName::ClockTicks).unwrap_or(CLOCK_TICKS_PER_SECOND_DEFAULT)
}

/// The two `sysconf` names this module asks for.
#[derive(Debug, Clone, Copy)]
enum SysconfName {
    PageSize,
    ClockTicks,
}

/// `sysconf(name)` if it answered a positive number.
#[cfg(unix)]
#[allow(unsafe_code)] // `unsafe_code` is denied in the workspace; this is the one call.
fn sysconf_positive(name: SysconfName) -> Option<u64> {
    let name = match name {
        SysconfName::PageSize => libc::_SC_PAGESIZE,
        SysconfName::ClockTicks => libc::_SC_CLK_TCK,
    };
    // SAFETY: `sysconf` takes an integer and returns an integer; it reads no memory of
    // ours, has no preconditions, and is thread-safe. An unknown name returns -1, which
    // the conversion below turns into `None`.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|v| *v > 0)
}

/// No `sysconf` here: the Linux defaults are used (and there is no `/proc` to read).
#[cfg(not(unix))]
fn sysconf_positive(_name: SysconfName) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real line from a gateway, with the command name replaced by an awkward one.
    const STAT: &str = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 15234 0 12 0 \
                        731 219 0 0 20 0 9 0 123456 1234567168 5120 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17642 0 0 0 17 1 0 0 0 0 0\n";

    #[test]
    fn statm_second_field_is_resident_pages() {
        let statm = "312466 5120 2048 1233 0 40321 0\n";
        assert_eq!(parse_statm(statm, 4096), Some(5120 * 4096));
        assert_eq!(parse_statm(statm, 16384), Some(5120 * 16384));
    }

    #[test]
    fn statm_rejects_short_or_garbled_text() {
        assert_eq!(parse_statm("", 4096), None);
        assert_eq!(parse_statm("312466\n", 4096), None);
        assert_eq!(parse_statm("312466 lots 2048\n", 4096), None);
        assert_eq!(parse_statm("1 18446744073709551615 0\n", 4096), None);
    }

    #[test]
    fn stat_counts_fields_after_the_last_parenthesis() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some(731 + 219));
        let plain =
            "17 (wenxiao-gateway) R 1 17 17 0 -1 4194304 900 0 0 0 25 5 0 0 20 0 4 0 99 1 2 3\n";
        assert_eq!(parse_stat_cpu_ticks(plain), Some(30));
        // A name with spaces and a ") " that would fool a parser splitting from the front.
        let tricky = "9 (a) b ) c) S 1 9 9 0 -1 0 0 0 0 0 7 8 0 0 20 0 1 0 5 1 2 3\n";
        assert_eq!(parse_stat_cpu_ticks(tricky), Some(15));
    }

    #[test]
    fn stat_rejects_truncated_text() {
        assert_eq!(parse_stat_cpu_ticks(""), None);
        assert_eq!(parse_stat_cpu_ticks("4242 (my (odd) proc) S 1 4242"), None);
        assert_eq!(
            parse_stat_cpu_ticks("4242 my proc S 1 2 3 4 5 6 7 8 9 10 11 12"),
            None
        );
    }

    #[test]
    fn limits_reads_the_soft_open_files_limit() {
        let limits = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             63408                63408                processes 
Max open files            65536                1048576              files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       63408                63408                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
";
        assert_eq!(parse_limits_max_fds(limits), Some(65536));
    }

    #[test]
    fn limits_without_a_number_is_none() {
        assert_eq!(parse_limits_max_fds(""), None);
        assert_eq!(
            parse_limits_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_limits_max_fds("Max processes 63408 63408 processes\n"),
            None
        );
    }

    #[test]
    fn cpu_seconds_from_ticks() {
        assert_eq!(ticks_to_seconds(950, 100), Some(9.5));
        assert_eq!(ticks_to_seconds(0, 100), Some(0.0));
        assert_eq!(ticks_to_seconds(1, 0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_can_be_sampled() {
        let s = sample_process();
        assert!(s.is_some(), "reading /proc/self failed");
        if let Some(s) = s {
            assert!(s.rss_bytes > 0);
            assert!(s.open_fds > 0, "{s:?}");
            assert!(s.max_fds >= s.open_fds);
        }
    }
}
