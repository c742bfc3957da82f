//! The wall clock the auditors' tools read: today's date in Vietnam (when a
//! disclosure hold ends) and the report's date. Tests move it forward
//! instead of waiting for a hold to end.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use time::{Date, OffsetDateTime, UtcOffset};

/// Vietnam's time zone (Asia/Ho_Chi_Minh), UTC+7 all year.
pub const VIETNAM: UtcOffset = match UtcOffset::from_hms(7, 0, 0) {
    Ok(offset) => offset,
    Err(_) => UtcOffset::UTC,
};

/// The system clock, moved by an offset that tests set.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_seconds: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::seconds(self.offset_seconds.load(Ordering::Relaxed))
    }

    /// Today's date in Vietnam.
    pub fn today(&self) -> Date {
        self.now().to_offset(VIETNAM).date()
    }

    /// Moves this clock (and every copy of it) forward.
    pub fn advance(&self, by: std::time::Duration) {
        let secs = i64::try_from(by.as_secs()).unwrap_or(i64::MAX);
        self.offset_seconds.fetch_add(secs, Ordering::Relaxed);
    }
}
