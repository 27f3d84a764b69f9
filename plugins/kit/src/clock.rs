//! Time for plugin logic. Plugins never read the system clock: the host's clock is the one every
//! worker agrees on, and tests drive a manual one.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock {
    fn now(&self) -> SystemTime;

    /// Milliseconds since the Unix epoch, as audit events and headers carry them.
    fn unix_millis(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when a test says so.
#[derive(Debug)]
pub struct ManualClock(Cell<SystemTime>);

impl ManualClock {
    pub fn at_unix_secs(secs: u64) -> Self {
        Self(Cell::new(UNIX_EPOCH + Duration::from_secs(secs)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.set(self.0.get() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.0.get()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> SystemTime {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::at_unix_secs(1_700_000_000);
        assert_eq!(clock.unix_millis(), 1_700_000_000_000);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.unix_millis(), 1_700_000_001_500);
    }
}
