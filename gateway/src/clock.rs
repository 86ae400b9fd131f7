//! Business days. Day D holds what the gateway received before 24:00 Asia/Shanghai
//! (policy: "Transactions received before 24:00 are cleared that day"), whatever time the
//! device says the transaction happened.

use chrono::{Datelike, TimeZone, Utc};
use chrono_tz::Asia::Shanghai;
use wenxiao_protocol::BusinessDate;

/// The business day of a receipt time (milliseconds since the epoch, UTC). `None` only
/// for times outside chrono's range.
pub fn business_date(received_at_ms: i64) -> Option<BusinessDate> {
    let local = Utc
        .timestamp_millis_opt(received_at_ms)
        .single()?
        .with_timezone(&Shanghai);
    let year = u32::try_from(local.year()).ok()?;
    BusinessDate::from_ymd(year, local.month(), local.day()).ok()
}

/// The first millisecond after business day `date` (its 24:00 in Asia/Shanghai);
/// `i64::MAX` for a date outside chrono's range, which therefore never ends.
pub fn day_end_ms(date: BusinessDate) -> i64 {
    next_day(date).and_then(start_ms).unwrap_or(i64::MAX)
}

/// 00:00 of `date` in Asia/Shanghai.
fn start_ms(date: BusinessDate) -> Option<i64> {
    let d = date.get();
    let naive =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(d / 10_000).ok()?, d / 100 % 100, d % 100)?
            .and_hms_opt(0, 0, 0)?;
    Some(
        Shanghai
            .from_local_datetime(&naive)
            .single()?
            .timestamp_millis(),
    )
}

/// The day after `date`.
pub fn next_day(date: BusinessDate) -> Option<BusinessDate> {
    let d = date.get();
    let next =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(d / 10_000).ok()?, d / 100 % 100, d % 100)?
            .succ_opt()?;
    BusinessDate::from_ymd(u32::try_from(next.year()).ok()?, next.month(), next.day()).ok()
}

/// The day before `date`.
pub fn previous_day(date: BusinessDate) -> Option<BusinessDate> {
    let d = date.get();
    let prev =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(d / 10_000).ok()?, d / 100 % 100, d % 100)?
            .pred_opt()?;
    BusinessDate::from_ymd(u32::try_from(prev.year()).ok()?, prev.month(), prev.day()).ok()
}

/// Milliseconds added to this process's clock: 0 but in the test crate's entry point,
/// which replays a later time (`WENXIAO_TEST_CLOCK_OFFSET_MS`) to clear a day that has
/// not ended in real time.
static OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Shifts this process's clock by `ms` (see [`OFFSET_MS`]).
pub fn set_offset_ms(ms: i64) {
    OFFSET_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now()
        .timestamp_millis()
        .saturating_add(OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// A time as people read it: `yyyy-mm-dd hh:mm:ss` in Asia/Shanghai.
pub fn format_ms(ms: i64) -> String {
    Shanghai.timestamp_millis_opt(ms).single().map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midnight_in_shanghai_starts_the_next_day() {
        // 2026-11-27 00:00:00.000 +08:00 = 2026-11-26T16:00:00Z.
        let midnight = 1_795_708_800_000;
        assert_eq!(business_date(midnight - 1).unwrap().get(), 20261126);
        assert_eq!(business_date(midnight).unwrap().get(), 20261127);
        assert_eq!(day_end_ms(BusinessDate::new(20261126).unwrap()), midnight);
        assert_eq!(
            next_day(BusinessDate::new(20261231).unwrap())
                .unwrap()
                .get(),
            20270101
        );
    }
}
