//! Clocks, deadlines and ages, computed so that no value a caller passes can overflow.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Far enough to be "never" for any deadline, near enough for `Instant` to hold it.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d`, or a century if longer: what `Instant` arithmetic elsewhere (ureq's) can take.
pub(crate) fn bounded(d: Duration) -> Duration {
    d.min(FOREVER)
}

/// The instant `timeout` from now; `Duration::MAX` (or anything past a century) is a
/// century from now, which every wait treats as forever.
pub(crate) fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(FOREVER)).unwrap_or(now)
}

/// Milliseconds since the Unix epoch, by the system clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How long ago `since_ms` (ms since the epoch) was; 0 for a time in the future, and
/// 0 for `since_ms == 0`, which the counters use for "nothing pending".
pub(crate) fn age_ms(since_ms: i64) -> u64 {
    if since_ms == 0 {
        return 0;
    }
    u64::try_from(now_ms().saturating_sub(since_ms)).unwrap_or(0)
}

/// `d` in whole milliseconds, `u64::MAX` for what does not fit.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_do_not_overflow() {
        assert!(deadline(Duration::MAX) > Instant::now() + Duration::from_secs(3600));
        assert!(deadline(Duration::ZERO) <= Instant::now());
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_millis(7)), 7);
        assert!(age_ms(i64::MIN) > 0);
        assert_eq!(age_ms(i64::MAX), 0);
        assert_eq!(age_ms(0), 0);
    }
}
