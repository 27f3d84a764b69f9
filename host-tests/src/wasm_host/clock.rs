//! The virtual clock every VM of a host reads (`proxy_get_current_time_nanoseconds`, WASI
//! `clock_time_get`): it moves only when a test advances it, so runs are reproducible.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where the clock starts: 2023-11-14T22:13:20Z.
pub const START_UNIX_SECS: u64 = 1_700_000_000;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct VirtualClock {
    elapsed: Duration,
}

impl VirtualClock {
    /// Time since the host started.
    pub(crate) fn elapsed(self) -> Duration {
        self.elapsed
    }

    pub(crate) fn set_elapsed(&mut self, elapsed: Duration) {
        self.elapsed = self.elapsed.max(elapsed);
    }

    pub(crate) fn now(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(START_UNIX_SECS) + self.elapsed
    }

    /// Wall-clock nanoseconds since the Unix epoch.
    pub(crate) fn unix_nanos(self) -> u64 {
        let since_epoch = Duration::from_secs(START_UNIX_SECS) + self.elapsed;
        u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Monotonic nanoseconds (since the host started).
    pub(crate) fn monotonic_nanos(self) -> u64 {
        u64::try_from(self.elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}
