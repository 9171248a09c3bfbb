//! The KMS's time source. Injectable so tests can cross a 30-day deletion window or a
//! 365-day rotation period without waiting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;

    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system clock, optionally shifted by a fixed offset.
///
/// The offset comes from `KMSFS_CLOCK_OFFSET_SECS` (see [`SystemClock::from_env`]); it exists
/// for end-to-end tests of deletion windows and rotation periods. It grants nothing: whoever
/// can set it for a kmsfs process already holds the passphrase, and so every key.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock {
    offset_ms: i64,
}

impl SystemClock {
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("KMSFS_CLOCK_OFFSET_SECS") {
            Err(_) => Ok(SystemClock::default()),
            Ok(v) => v
                .trim()
                .parse::<i64>()
                .map(|secs| SystemClock { offset_ms: secs.saturating_mul(1000) })
                .map_err(|_| format!("KMSFS_CLOCK_OFFSET_SECS must be a whole number of seconds, not '{v}'")),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let real = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        real.saturating_add(self.offset_ms)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_secs: i64) -> Self {
        ManualClock(AtomicI64::new(start_secs * 1000))
    }

    pub fn advance_days(&self, days: i64) {
        self.0.fetch_add(days * 86_400_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// RFC 3339 (UTC, whole seconds) for unix seconds, as shown in every date field.
pub fn format_date(unix_secs: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(unix_secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// RFC 3339 (UTC, milliseconds) for unix milliseconds, for audit events.
pub fn format_time_ms(unix_ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses a point in time: RFC 3339 (`2026-11-23T10:00:00Z`, or a bare date
/// `2026-11-23`), or a duration relative to `now_secs`, in the past for `ago` (`--since 2h`)
/// and in the future otherwise (`--expires 2h`).
pub fn parse_time(text: &str, now_secs: i64, ago: bool) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(d) = humantime::parse_duration(text) {
        let secs = d.as_secs() as i64;
        return Ok(if ago { now_secs - secs } else { now_secs + secs });
    }
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_string() };
    humantime::parse_rfc3339_weak(&full)
        .map(|t| t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
        .map_err(|_| {
            format!("'{text}' is neither a date (2026-11-23 or 2026-11-23T10:00:00Z) nor a duration (30m, 2h, 7days)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        assert_eq!(c.now_secs(), 1000);
        c.advance_days(1);
        assert_eq!(c.now_secs(), 1000 + 86_400);
    }

    #[test]
    fn parses_dates_and_durations() {
        assert_eq!(parse_time("2h", 10_000, true).unwrap(), 10_000 - 7200);
        assert_eq!(parse_time("2h", 10_000, false).unwrap(), 10_000 + 7200);
        assert_eq!(parse_time("1970-01-02", 0, true).unwrap(), 86_400);
        assert_eq!(parse_time("1970-01-01T00:01:00Z", 0, true).unwrap(), 60);
        assert!(parse_time("yesterday-ish", 0, true).is_err());
        assert_eq!(format_date(86_400), "1970-01-02T00:00:00Z");
    }
}
