//! The generic cell rate algorithm: one timestamp per key (the theoretical arrival time, TAT)
//! is the whole state, so one compare-and-swap on one shared-data value keeps a limit exact
//! across workers.
//!
//! A request is admitted when the TAT is at most `tolerance` ahead of now; admitting moves the
//! TAT one `interval` (period / rate) further. With `tolerance = burst * interval`, an idle key
//! may send `burst + 1` at once, the steady rate is `rate` per period, and no window of one
//! period admits more than `rate + burst`.

use std::time::Duration;

/// Nanoseconds since the Unix epoch (fits `u64` until 2554).
pub type Nanos = u64;

/// One limit's parameters, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one request "costs": period / rate, rounded up.
    interval: Nanos,
    /// How far ahead of now the TAT may be and still admit: burst * interval.
    tolerance: Nanos,
    /// The most requests any window of one period admits (rate + burst), for the headers.
    quota: u64,
    period: Duration,
}

/// What the algorithm decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit {
        /// The TAT to store.
        tat: Nanos,
        /// Requests that would still be admitted right now.
        remaining: u64,
        /// Until the key is idle again (a fresh key's budget).
        reset_after: Nanos,
    },
    Refuse {
        /// Until one request would be admitted.
        retry_after: Nanos,
        reset_after: Nanos,
    },
}

/// How far back the host clock must step before a stored TAT is read as written before the
/// step ([`Gcra::check`]): far more than workers' readings of one clock differ by.
pub const CLOCK_STEP: Nanos = 1_000_000_000;

impl Gcra {
    /// `rate` >= 1 and `period` >= 1 µs * rate (the config checks both).
    pub fn new(rate: u32, period: Duration, burst: u32) -> Self {
        let period_nanos = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        // Rounded up: rounded down, `rate` intervals fall short of the period, and a window of
        // one period could admit one more than `rate + burst` (3 per second: t, t+I, t+2I,
        // t+3I all inside one second). Up, the steady rate errs low, by under 0.1% (the
        // config keeps the interval at 1 µs or more).
        let interval = period_nanos.div_ceil(u64::from(rate.max(1))).max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
            quota: u64::from(rate) + u64::from(burst),
            period,
        }
    }

    /// What one admission moves the TAT by.
    pub fn interval(&self) -> Nanos {
        self.interval
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// The TAT a request at `now` decides on. An admission leaves the TAT at most
    /// `tolerance + interval` past the clock it read. One further ahead by more than
    /// [`CLOCK_STEP`] was written before the host clock stepped back, and would refuse the key
    /// for as long as the step: it is read as a budget just spent (`now + tolerance`), so the
    /// key is limited at once, but for no more than one interval. (Less than that is a worker
    /// that read the clock a little before another wrote: an ordinary limited key, or two
    /// workers racing for a key's last unit would both get it.)
    fn effective_tat(&self, stored: Option<Nanos>, now: Nanos) -> Nanos {
        let Some(stored) = stored else {
            return now;
        };
        let furthest = now.saturating_add(self.horizon());
        if stored > furthest {
            now.saturating_add(self.tolerance)
        } else {
            stored.max(now)
        }
    }

    /// Decides one request at `now` given the stored TAT (`None`: a fresh key).
    pub fn check(&self, stored: Option<Nanos>, now: Nanos) -> Verdict {
        let tat = self.effective_tat(stored, now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Verdict::Refuse {
                retry_after: ahead - self.tolerance,
                reset_after: ahead,
            };
        }
        let tat = tat.saturating_add(self.interval);
        Verdict::Admit {
            tat,
            remaining: (self.tolerance - ahead) / self.interval,
            reset_after: tat - now,
        }
    }

    /// How far past the clock an admission can leave a TAT, give or take workers' readings
    /// of the clock ([`CLOCK_STEP`]): one further ahead was written before the clock stepped
    /// back.
    pub fn horizon(&self) -> Nanos {
        self.tolerance
            .saturating_add(self.interval)
            .saturating_add(CLOCK_STEP)
    }

    /// The TAT of a key whose whole budget is spent at `now`: the furthest ahead of the clock
    /// an admission leaves one (further, past [`Gcra::horizon`], reads as a clock step).
    pub fn spent(&self, now: Nanos) -> Nanos {
        now.saturating_add(self.tolerance)
            .saturating_add(self.interval)
    }

    /// Whether a stored TAT no longer limits anything at `now` (the key is as good as fresh,
    /// so its slot may go to another key): in the past, or past `horizon` ahead (see
    /// [`Gcra::horizon`]), when it limits for one more interval at most.
    pub fn is_idle(stored: Nanos, now: Nanos, horizon: Nanos) -> bool {
        stored <= now || stored > now.saturating_add(horizon)
    }

    /// The remaining budget of a key at `now` without admitting anything.
    pub fn remaining(&self, stored: Option<Nanos>, now: Nanos) -> u64 {
        let tat = self.effective_tat(stored, now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            0
        } else {
            (self.tolerance - ahead) / self.interval + 1
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const SEC: Nanos = 1_000_000_000;
    const T0: Nanos = 1_700_000_000 * SEC;

    /// Feeds requests at `times` through one key; returns the admitted times.
    fn run(gcra: &Gcra, times: &[Nanos]) -> Vec<Nanos> {
        let mut tat = None;
        let mut admitted = Vec::new();
        for &now in times {
            if let Verdict::Admit { tat: next, .. } = gcra.check(tat, now) {
                tat = Some(next);
                admitted.push(now);
            }
        }
        admitted
    }

    #[test]
    fn an_idle_key_takes_burst_plus_one_at_once_then_the_steady_rate() {
        let gcra = Gcra::new(10, Duration::from_secs(1), 4);
        let at_once = run(&gcra, &[T0; 20]);
        assert_eq!(at_once.len(), 5);
        // Then one every 100 ms.
        let mut tat = None;
        for _ in 0..5 {
            let Verdict::Admit { tat: next, .. } = gcra.check(tat, T0) else {
                panic!("burst")
            };
            tat = Some(next);
        }
        assert!(matches!(
            gcra.check(tat, T0 + SEC / 10 - 1),
            Verdict::Refuse { retry_after: 1, .. }
        ));
        assert!(matches!(
            gcra.check(tat, T0 + SEC / 10),
            Verdict::Admit { remaining: 0, .. }
        ));
    }

    #[test]
    fn a_clock_stepped_back_limits_a_key_for_one_interval_not_for_the_step() {
        let gcra = Gcra::new(10, Duration::from_secs(1), 4);
        let mut tat = None;
        for _ in 0..5 {
            let Verdict::Admit { tat: next, .. } = gcra.check(tat, T0) else {
                panic!()
            };
            tat = Some(next);
        }
        // The clock steps back an hour: the next request is admitted (its budget read as
        // just spent), the one after waits one interval (100 ms), not an hour.
        let back = T0 - 3600 * SEC;
        assert_eq!(gcra.remaining(tat, back), 1);
        let Verdict::Admit { tat: next, .. } = gcra.check(tat, back) else {
            panic!()
        };
        assert_eq!(
            gcra.check(Some(next), back),
            Verdict::Refuse {
                retry_after: 100_000_000,
                reset_after: 500_000_000
            }
        );
        // A TAT up to tolerance + interval ahead, and a second more (another worker's later
        // reading of the clock), is an ordinary limited key.
        assert!(matches!(
            gcra.check(Some(T0 + 1_500_000_000), T0),
            Verdict::Refuse {
                retry_after: 1_100_000_000,
                ..
            }
        ));
    }

    #[test]
    fn remaining_counts_down_and_reset_says_when_the_key_is_idle() {
        let gcra = Gcra::new(3, Duration::from_secs(3), 2);
        let mut tat = None;
        let mut seen = Vec::new();
        for _ in 0..3 {
            match gcra.check(tat, T0) {
                Verdict::Admit {
                    tat: next,
                    remaining,
                    reset_after,
                } => {
                    seen.push((remaining, reset_after / SEC));
                    tat = Some(next);
                }
                Verdict::Refuse { .. } => panic!("within the burst"),
            }
        }
        assert_eq!(seen, [(2, 1), (1, 2), (0, 3)]);
        assert_eq!(
            gcra.check(tat, T0),
            Verdict::Refuse {
                retry_after: SEC,
                reset_after: 3 * SEC
            }
        );
        assert_eq!(gcra.remaining(tat, T0), 0);
        assert_eq!(gcra.remaining(tat, T0 + 3 * SEC), 3);
        assert_eq!(gcra.quota(), 5);
    }

    #[test]
    fn an_idle_tat_frees_its_key() {
        assert!(Gcra::is_idle(T0, T0, SEC));
        assert!(!Gcra::is_idle(T0 + 1, T0, SEC));
        assert!(!Gcra::is_idle(T0 + SEC, T0, SEC));
        // Written before the clock stepped back further than any admission reaches.
        assert!(Gcra::is_idle(T0 + SEC + 1, T0, SEC));
    }

    #[test]
    fn rates_that_do_not_divide_the_period_round_towards_admitting_more_often() {
        // 3 per second: an interval of 333_333_333 ns, never zero, never 0 requests.
        let gcra = Gcra::new(3, Duration::from_secs(1), 0);
        let times: Vec<Nanos> = (0..300).map(|i| T0 + i * SEC / 100).collect();
        assert_eq!(run(&gcra, &times).len(), 9);
    }

    #[test]
    fn a_period_the_rate_does_not_divide_never_admits_more_than_the_rate() {
        let gcra = Gcra::new(3, Duration::from_secs(1), 0);
        let short = 1_000_000_000 / 3;
        let times: Vec<Nanos> = (0..4).map(|i| T0 + i * short).collect();
        assert!(
            times[3] - times[0] < 1_000_000_000,
            "all four within one second"
        );
        assert!(run(&gcra, &times).len() <= 3);
        // High rates: at most `rate` per period in the long run.
        let gcra = Gcra::new(999_002, Duration::from_secs(1), 0);
        assert!(1_000_000_000 / gcra.interval() <= 999_002);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever the arrival pattern, no window of one period admits more than
            /// rate + burst, and the long-run count stays within the steady rate plus burst.
            #[test]
            fn never_more_than_rate_plus_burst_in_any_window(
                rate in 1u32..50,
                period_ms in 1_000u64..10_000,
                burst in 0u32..20,
                gaps in proptest::collection::vec(0u64..400, 1..600),
            ) {
                let period = Duration::from_millis(period_ms);
                let gcra = Gcra::new(rate, period, burst);
                let mut now = T0;
                let times: Vec<Nanos> = gaps.iter().map(|gap| { now += gap * 1_000_000; now }).collect();
                let admitted = run(&gcra, &times);
                let window = period_ms * 1_000_000;
                for (i, start) in admitted.iter().enumerate() {
                    let in_window = admitted[i..].iter().take_while(|t| **t < start + window).count();
                    prop_assert!(in_window as u64 <= u64::from(rate) + u64::from(burst),
                        "{in_window} admitted in one window from {start}");
                }
                let span = times.last().unwrap() - times[0];
                let steady = (u128::from(span) * u128::from(rate)).div_ceil(u128::from(window));
                prop_assert!(admitted.len() as u128 <= steady + u128::from(burst) + 1);
            }

            /// Requests spaced at least one interval apart are never refused.
            #[test]
            fn the_steady_rate_is_always_admitted(
                rate in 1u32..100,
                period_ms in 1_000u64..60_000,
                burst in 0u32..5,
                extra in proptest::collection::vec(0u64..1_000_000, 1..200),
            ) {
                let gcra = Gcra::new(rate, Duration::from_millis(period_ms), burst);
                let interval = (period_ms * 1_000_000).div_ceil(u64::from(rate));
                let mut now = T0;
                let times: Vec<Nanos> = extra.iter().map(|e| { now += interval + e; now }).collect();
                prop_assert_eq!(run(&gcra, &times).len(), times.len());
            }
        }
    }
}
