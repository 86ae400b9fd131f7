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

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
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
    }
}
