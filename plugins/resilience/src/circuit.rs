//! `CircuitBreaker`: one circuit per upstream, its state in the shared store so every worker
//! sees the same circuit, every change a compare-and-swap.
//!
//! Closed → Open after N consecutive failures (or a failure rate over a window); Open →
//! HalfOpen once the open time has passed (checked lazily by the next request); HalfOpen lets a
//! few trial requests through: a success closes, a failure opens again for longer.
//! The worker whose write makes a transition reports it, so it is logged and counted once.

use std::time::Duration;

use palisade_kit::store::{update, SharedStore, Step, UpdateError};

use crate::config::{CircuitBreakerConfig, FailureOn, FailureRateConfig};

/// Writes that lose a race are retried this many times before the request goes on unjudged.
const CAS_ATTEMPTS: u32 = 8;
/// Buckets of the failure-rate window.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl Phase {
    /// The value of the circuit's state gauge.
    pub fn gauge(self) -> u64 {
        match self {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        }
    }
}

/// One circuit as stored (fixed-size little-endian record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitState {
    pub phase: Phase,
    pub consecutive_failures: u32,
    /// Openings since the circuit last closed: each lasts one base ejection longer.
    pub openings: u32,
    pub open_until_ms: u64,
    pub trials_in_flight: u32,
    /// Trials granted before this instant whose stream never reported back (a VM that died)
    /// no longer hold their place.
    pub trial_lease_until_ms: u64,
    /// When `trials_in_flight` last started from zero (half-opening, or the lease running
    /// out): a trial granted before it is not counted, so giving it back frees nothing.
    pub trials_since_ms: u64,
    /// When the current phase began, in two phases:
    /// - Closed (after an opening): a request admitted before it (before the opening, or a
    ///   trial of the period that closed) says nothing about the upstream now.
    /// - HalfOpen: a trial granted since then decides the circuit when it reports, however long
    ///   it took (a lease that ran out freed its place, not its say: an upstream slower than
    ///   the open time must still be able to close the circuit).
    ///
    /// One field for both keeps the record's layout, so VMs of the previous version, which
    /// read it only in Closed, share circuits with this one during a rollout.
    pub phase_since_ms: u64,
    /// The newest bucket's index (`now_ms / bucket_ms`).
    pub window_epoch: u64,
    /// (requests, failures) per bucket, indexed by epoch modulo [`BUCKETS`].
    pub buckets: [(u32, u32); BUCKETS],
}

const ENCODED_LEN: usize = 1 + 4 + 4 + 8 + 4 + 8 + 8 + 8 + 8 + BUCKETS * 8;

impl CircuitState {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.push(match self.phase {
            Phase::Closed => 0,
            Phase::Open => 1,
            Phase::HalfOpen => 2,
        });
        out.extend_from_slice(&self.consecutive_failures.to_le_bytes());
        out.extend_from_slice(&self.openings.to_le_bytes());
        out.extend_from_slice(&self.open_until_ms.to_le_bytes());
        out.extend_from_slice(&self.trials_in_flight.to_le_bytes());
        out.extend_from_slice(&self.trial_lease_until_ms.to_le_bytes());
        out.extend_from_slice(&self.trials_since_ms.to_le_bytes());
        out.extend_from_slice(&self.phase_since_ms.to_le_bytes());
        out.extend_from_slice(&self.window_epoch.to_le_bytes());
        for (requests, failures) in self.buckets {
            out.extend_from_slice(&requests.to_le_bytes());
            out.extend_from_slice(&failures.to_le_bytes());
        }
        out
    }

    /// `None` for bytes this version did not write: the caller starts the circuit afresh.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Reader(bytes);
        let phase = match reader.take::<1>()? {
            [0] => Phase::Closed,
            [1] => Phase::Open,
            [2] => Phase::HalfOpen,
            _ => return None,
        };
        let mut state = CircuitState {
            phase,
            consecutive_failures: reader.u32()?,
            openings: reader.u32()?,
            open_until_ms: reader.u64()?,
            trials_in_flight: reader.u32()?,
            trial_lease_until_ms: reader.u64()?,
            trials_since_ms: reader.u64()?,
            phase_since_ms: reader.u64()?,
            window_epoch: reader.u64()?,
            buckets: [(0, 0); BUCKETS],
        };
        for bucket in &mut state.buckets {
            *bucket = (reader.u32()?, reader.u32()?);
        }
        reader.0.is_empty().then_some(state)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed: report the outcome.
    Normal,
    /// The circuit is closed with no failure counted and no failure rate to count: report a
    /// failure only. A success would leave the stored state as it is, and reporting it costs
    /// a shared-data read (in Envoy ~11,000 instructions, a tenth of the plugin's request).
    /// The caller reports it as [`Admission::Normal`] when it has seen a failure counted
    /// since ([`crate::engine::Resilience`] keeps that per worker), so a success still resets
    /// failures counted while it was in flight.
    Quiet,
    /// A half-open trial: report the outcome, or release it if none comes.
    Trial,
    /// The circuit is open: refuse, with the time until it half-opens.
    Rejected { retry_after: Duration },
    /// The shared store failed or stayed contended: let the request through unjudged (a
    /// breaker that cannot see its state must not take the service down itself).
    Unjudged,
}

/// A change of state that this worker's write made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened {
        consecutive_failures: u32,
        open_for: Duration,
    },
    HalfOpened,
    Closed,
}

/// How a request ended, as the circuit sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// A circuit breaker's compiled policy. Stateless itself: state lives in the store.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    consecutive_failures: u32,
    failure_on: FailureOn,
    failure_rate: Option<FailureRate>,
    base_ejection_ms: u64,
    max_ejection_ms: u64,
    half_open_trials: u32,
}

#[derive(Debug, Clone, Copy)]
struct FailureRate {
    threshold_percent: u64,
    bucket_ms: u64,
    minimum_requests: u64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl CircuitBreaker {
    pub fn new(config: &CircuitBreakerConfig) -> Self {
        Self {
            consecutive_failures: config.consecutive_failures.max(1),
            failure_on: config.failure_on,
            failure_rate: config
                .failure_rate
                .as_ref()
                .map(|rate: &FailureRateConfig| FailureRate {
                    threshold_percent: u64::from(rate.threshold_percent),
                    bucket_ms: (millis(rate.window.get()) / BUCKETS as u64).max(1),
                    minimum_requests: u64::from(rate.minimum_requests),
                }),
            base_ejection_ms: millis(config.base_ejection.get()).max(1),
            max_ejection_ms: millis(config.max_ejection.get()),
            half_open_trials: config.half_open_trials.max(1),
        }
    }

    /// Whether an upstream status is a failure for this circuit. 501 (gRPC `UNIMPLEMENTED`)
    /// is the caller asking for what the upstream never had: counting it would let a client
    /// open the circuit for everyone by calling a missing method.
    pub fn classify(&self, status: u16) -> Outcome {
        let failed = match self.failure_on {
            FailureOn::ServerErrors => (500..=599).contains(&status) && status != 501,
            FailureOn::GatewayErrors => matches!(status, 502..=504),
        };
        if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    /// How long the `openings`-th consecutive opening lasts.
    fn open_time_ms(&self, openings: u32) -> u64 {
        self.base_ejection_ms
            .saturating_mul(u64::from(openings.max(1)))
            .min(self.max_ejection_ms.max(self.base_ejection_ms))
    }

    /// Decides whether a request may go to the upstream, moving an expired opening to
    /// half-open on the way. Returns the transition this call's write made, if any.
    pub fn admit(
        &self,
        store: &impl SharedStore,
        key: &str,
        now_ms: u64,
    ) -> (Admission, Option<Transition>) {
        let result = update(store, key, CAS_ATTEMPTS, |current| {
            let state = current.and_then(CircuitState::decode).unwrap_or_default();
            self.admit_step(state, now_ms)
        });
        result.unwrap_or((Admission::Unjudged, None))
    }

    fn admit_step(
        &self,
        mut state: CircuitState,
        now_ms: u64,
    ) -> Step<(Admission, Option<Transition>)> {
        match state.phase {
            Phase::Closed if state.consecutive_failures == 0 && self.failure_rate.is_none() => {
                Step::Keep((Admission::Quiet, None))
            }
            Phase::Closed => Step::Keep((Admission::Normal, None)),
            // An opening that ends further off than the longest one can last was stamped by a
            // clock that has since stepped back: it has ended.
            Phase::Open
                if now_ms < state.open_until_ms
                    && state.open_until_ms - now_ms <= self.open_time_ms(state.openings) =>
            {
                let retry_after = Duration::from_millis(state.open_until_ms - now_ms);
                Step::Keep((Admission::Rejected { retry_after }, None))
            }
            Phase::Open => {
                state.phase = Phase::HalfOpen;
                state.trials_in_flight = 0;
                state.trials_since_ms = now_ms;
                state.phase_since_ms = now_ms;
                self.grant_trial(&mut state, now_ms);
                Step::Write(
                    state.encode(),
                    (Admission::Trial, Some(Transition::HalfOpened)),
                )
            }
            Phase::HalfOpen => {
                // A lease further off than one open time was granted before the clock stepped
                // back: it has ended too.
                let lease_left = state.trial_lease_until_ms.saturating_sub(now_ms);
                if now_ms >= state.trial_lease_until_ms
                    || lease_left > self.open_time_ms(state.openings)
                {
                    // Every earlier trial had its chance to report: none holds a place now.
                    state.trials_in_flight = 0;
                    state.trials_since_ms = now_ms;
                }
                if state.trials_in_flight >= self.half_open_trials {
                    let wait = state.trial_lease_until_ms.saturating_sub(now_ms).max(1000);
                    let retry_after = Duration::from_millis(wait);
                    return Step::Keep((Admission::Rejected { retry_after }, None));
                }
                self.grant_trial(&mut state, now_ms);
                Step::Write(state.encode(), (Admission::Trial, None))
            }
        }
    }

    fn grant_trial(&self, state: &mut CircuitState, now_ms: u64) {
        state.trials_in_flight = state.trials_in_flight.saturating_add(1);
        // A trial that has not reported within one open time is presumed lost.
        state.trial_lease_until_ms = now_ms.saturating_add(self.open_time_ms(state.openings));
    }

    /// Whether a request so admitted that ended so has anything to [`record`](Self::record).
    pub fn reports(admission: Admission, outcome: Outcome) -> bool {
        match admission {
            Admission::Normal | Admission::Trial => true,
            Admission::Quiet => outcome == Outcome::Failure,
            Admission::Rejected { .. } | Admission::Unjudged => false,
        }
    }

    /// Records how a request admitted at `granted_ms` ended. Returns the transition this
    /// call's write made.
    pub fn record(
        &self,
        store: &impl SharedStore,
        key: &str,
        admission: Admission,
        granted_ms: u64,
        outcome: Outcome,
        now_ms: u64,
    ) -> Result<Option<Transition>, UpdateError> {
        if !Self::reports(admission, outcome) {
            return Ok(None);
        }
        update(store, key, CAS_ATTEMPTS, |current| {
            let state = current.and_then(CircuitState::decode).unwrap_or_default();
            self.record_step(state, admission, granted_ms, outcome, now_ms)
        })
    }

    fn record_step(
        &self,
        mut state: CircuitState,
        admission: Admission,
        granted_ms: u64,
        outcome: Outcome,
        now_ms: u64,
    ) -> Step<Option<Transition>> {
        match (state.phase, admission) {
            // Only a trial of the current half-open period decides it; one of a period before
            // the last opening says nothing about the upstream now. A trial whose lease ran out
            // still does: its place went to another trial, but its answer is news.
            // (A half-opening stamped in the future was stamped before the clock stepped back:
            // every trial then counts.)
            // A record half-opened by the previous version has no stamp (0): its trials'
            // stamp decides, as that version did.
            (Phase::HalfOpen, Admission::Trial)
                if (state.phase_since_ms == 0 && granted_ms >= state.trials_since_ms)
                    || (state.phase_since_ms != 0
                        && (granted_ms >= state.phase_since_ms
                            || state.phase_since_ms > now_ms)) =>
            {
                match outcome {
                    Outcome::Success => {
                        state = CircuitState {
                            phase_since_ms: now_ms,
                            ..CircuitState::default()
                        };
                        Step::Write(state.encode(), Some(Transition::Closed))
                    }
                    Outcome::Failure => {
                        let transition = self.open(&mut state, now_ms);
                        Step::Write(state.encode(), Some(transition))
                    }
                }
            }
            // Admitted before the circuit last closed: requests that hung while it was failing
            // must not reopen it once it has recovered.
            // (A closing stamped in the future was stamped before the clock stepped back: then
            // everything counts, or the breaker would ignore every failure until the clock
            // caught up.)
            (Phase::Closed, _)
                if granted_ms < state.phase_since_ms && state.phase_since_ms <= now_ms =>
            {
                Step::Keep(None)
            }
            (Phase::Closed, _) => {
                let before = state;
                self.count(&mut state, outcome, now_ms);
                if state.consecutive_failures >= self.consecutive_failures
                    || self.rate_exceeded(&state)
                {
                    let transition = self.open(&mut state, now_ms);
                    return Step::Write(state.encode(), Some(transition));
                }
                if state == before {
                    Step::Keep(None)
                } else {
                    Step::Write(state.encode(), None)
                }
            }
            // A request admitted before the circuit opened (or a trial no longer counted)
            // ending late says nothing about the upstream now.
            _ => Step::Keep(None),
        }
    }

    /// Gives back a trial's place when its stream ended with no upstream answer (the client
    /// went away): the next request may try instead. `granted_ms` is when the trial was
    /// admitted: a trial no longer counted (its lease ran out, or an earlier half-open period)
    /// frees nothing, or it would free a place another trial holds.
    pub fn release_trial(
        &self,
        store: &impl SharedStore,
        key: &str,
        granted_ms: u64,
    ) -> Result<(), UpdateError> {
        update(store, key, CAS_ATTEMPTS, |current| {
            match current.and_then(CircuitState::decode) {
                Some(mut state)
                    if state.phase == Phase::HalfOpen
                        && state.trials_in_flight > 0
                        && granted_ms >= state.trials_since_ms =>
                {
                    state.trials_in_flight -= 1;
                    Step::Write(state.encode(), ())
                }
                _ => Step::Keep(()),
            }
        })
    }

    fn open(&self, state: &mut CircuitState, now_ms: u64) -> Transition {
        let consecutive_failures = state.consecutive_failures;
        let openings = state.openings.saturating_add(1);
        let open_for = self.open_time_ms(openings);
        *state = CircuitState {
            phase: Phase::Open,
            openings,
            open_until_ms: now_ms.saturating_add(open_for),
            ..CircuitState::default()
        };
        Transition::Opened {
            consecutive_failures,
            open_for: Duration::from_millis(open_for),
        }
    }

    fn count(&self, state: &mut CircuitState, outcome: Outcome, now_ms: u64) {
        match outcome {
            Outcome::Success => state.consecutive_failures = 0,
            Outcome::Failure => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1)
            }
        }
        let Some(rate) = self.failure_rate else {
            return;
        };
        let epoch = now_ms / rate.bucket_ms;
        if epoch > state.window_epoch {
            // Empty every bucket the window slid past since the last count.
            let passed = (epoch - state.window_epoch).min(BUCKETS as u64);
            for step in 1..=passed {
                if let Some(bucket) = state
                    .buckets
                    .get_mut(bucket_index(state.window_epoch + step))
                {
                    *bucket = (0, 0);
                }
            }
            state.window_epoch = epoch;
        }
        // A count from the past (another worker's clock a little behind) joins the newest.
        if let Some(bucket) = state.buckets.get_mut(bucket_index(state.window_epoch)) {
            bucket.0 = bucket.0.saturating_add(1);
            if outcome == Outcome::Failure {
                bucket.1 = bucket.1.saturating_add(1);
            }
        }
    }

    fn rate_exceeded(&self, state: &CircuitState) -> bool {
        let Some(rate) = self.failure_rate else {
            return false;
        };
        let (requests, failures) = state.buckets.iter().fold((0u64, 0u64), |(r, f), (br, bf)| {
            (r + u64::from(*br), f + u64::from(*bf))
        });
        requests >= rate.minimum_requests && failures * 100 >= rate.threshold_percent * requests
    }
}

fn bucket_index(epoch: u64) -> usize {
    usize::try_from(epoch % BUCKETS as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_kit::config::load;
    use palisade_kit::store::{MemoryStore, Write};

    use crate::config::ResilienceConfig;

    const KEY: &str = "palisade/resilience/cb/orders";

    fn breaker(json: &str) -> CircuitBreaker {
        let config: ResilienceConfig = load(json.as_bytes()).unwrap();
        CircuitBreaker::new(&config.circuit_breaker)
    }

    fn fail(cb: &CircuitBreaker, store: &MemoryStore, now: u64) -> Option<Transition> {
        let (admission, _) = cb.admit(store, KEY, now);
        assert!(
            matches!(admission, Admission::Normal | Admission::Quiet),
            "{admission:?}"
        );
        cb.record(store, KEY, admission, now, Outcome::Failure, now)
            .unwrap()
    }

    #[test]
    fn a_request_admitted_with_nothing_counted_reports_only_a_failure() {
        let cb = breaker("{}");
        let store = crate::test_store::CountingStore::default();
        let (admission, _) = cb.admit(&store, KEY, 0);
        assert_eq!(admission, Admission::Quiet);
        let reads = store.reads.get();
        assert_eq!(
            cb.record(&store, KEY, admission, 1, Outcome::Success, 1),
            Ok(None)
        );
        assert_eq!(store.reads.get(), reads, "its success reads nothing");
        assert_eq!(
            cb.record(&store, KEY, admission, 2, Outcome::Failure, 2),
            Ok(None)
        );
        assert_eq!(state(&store.inner).consecutive_failures, 1);
        // With a failure counted, a request reports its success, which resets the count.
        let (admission, _) = cb.admit(&store, KEY, 3);
        assert_eq!(admission, Admission::Normal);
        assert_eq!(
            cb.record(&store, KEY, admission, 4, Outcome::Success, 4),
            Ok(None)
        );
        assert_eq!(state(&store.inner).consecutive_failures, 0);
        assert_eq!(cb.admit(&store, KEY, 5).0, Admission::Quiet);
        // A failure rate counts every outcome: nothing is quiet.
        let rated = breaker(
            r#"{"circuit_breaker":{"failure_rate":{"threshold_percent":50,"window":"10s","minimum_requests":10}}}"#,
        );
        let store = crate::test_store::CountingStore::default();
        let (admission, _) = rated.admit(&store, KEY, 0);
        assert_eq!(admission, Admission::Normal);
        let reads = store.reads.get();
        assert_eq!(
            rated.record(&store, KEY, admission, 1, Outcome::Success, 1),
            Ok(None)
        );
        assert!(store.reads.get() > reads);
        assert_eq!(
            state(&store.inner).buckets.iter().map(|b| b.0).sum::<u32>(),
            1
        );
    }

    fn state(store: &MemoryStore) -> CircuitState {
        CircuitState::decode(&store.get(KEY).unwrap().unwrap().value).unwrap()
    }

    #[test]
    fn the_record_round_trips_and_refuses_foreign_bytes() {
        let mut state = CircuitState {
            phase: Phase::HalfOpen,
            consecutive_failures: 3,
            openings: 2,
            open_until_ms: 99,
            trials_in_flight: 1,
            trial_lease_until_ms: 7,
            trials_since_ms: 5,
            phase_since_ms: 4,
            window_epoch: 12,
            ..CircuitState::default()
        };
        state.buckets[3] = (10, 4);
        assert_eq!(CircuitState::decode(&state.encode()), Some(state));
        // The layout the previous version wrote and reads: VMs of both share circuits while a
        // new configuration rolls in (a record of another length reads as a fresh circuit).
        assert_eq!(state.encode().len(), 133);
        assert_eq!(CircuitState::decode(b"closed"), None);
        let mut long = state.encode();
        long.push(0);
        assert_eq!(CircuitState::decode(&long), None);
    }

    #[test]
    fn opens_after_exactly_the_configured_consecutive_failures() {
        let cb = breaker("");
        let store = MemoryStore::new();
        for _ in 0..4 {
            assert_eq!(fail(&cb, &store, 1_000), None);
        }
        assert_eq!(
            fail(&cb, &store, 1_000),
            Some(Transition::Opened {
                consecutive_failures: 5,
                open_for: Duration::from_secs(30)
            })
        );
        assert_eq!(
            cb.admit(&store, KEY, 2_000).0,
            Admission::Rejected {
                retry_after: Duration::from_secs(29)
            }
        );
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let cb = breaker("");
        let store = MemoryStore::new();
        for _ in 0..4 {
            fail(&cb, &store, 0);
        }
        let (admission, _) = cb.admit(&store, KEY, 0);
        assert_eq!(
            cb.record(&store, KEY, admission, 0, Outcome::Success, 0),
            Ok(None)
        );
        assert_eq!(state(&store).consecutive_failures, 0);
        for _ in 0..4 {
            assert_eq!(fail(&cb, &store, 0), None);
        }
        assert_eq!(state(&store).phase, Phase::Closed);
    }

    #[test]
    fn a_healthy_closed_circuit_is_never_written() {
        let cb = breaker("");
        let store = MemoryStore::new();
        let (admission, _) = cb.admit(&store, KEY, 0);
        assert_eq!(
            cb.record(&store, KEY, admission, 0, Outcome::Success, 0),
            Ok(None)
        );
        assert!(store.is_empty());
    }

    fn open_circuit(cb: &CircuitBreaker, store: &MemoryStore, now: u64) {
        for _ in 0..5 {
            fail(cb, store, now);
        }
        assert_eq!(state(store).phase, Phase::Open);
    }

    #[test]
    fn half_opens_after_the_open_time_with_limited_trials_then_closes_on_success() {
        let cb = breaker("");
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        assert!(matches!(
            cb.admit(&store, KEY, 29_999).0,
            Admission::Rejected { .. }
        ));
        assert_eq!(
            cb.admit(&store, KEY, 30_000),
            (Admission::Trial, Some(Transition::HalfOpened))
        );
        // One trial at a time by default: the next request waits.
        assert!(matches!(
            cb.admit(&store, KEY, 30_001).0,
            Admission::Rejected { .. }
        ));
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                30_000,
                Outcome::Success,
                30_050
            ),
            Ok(Some(Transition::Closed))
        );
        assert_eq!(
            state(&store),
            CircuitState {
                phase_since_ms: 30_050,
                ..CircuitState::default()
            }
        );
        assert_eq!(cb.admit(&store, KEY, 30_060).0, Admission::Quiet);
    }

    /// Requests that hung while the upstream was failing (a long-query route's hour) end with
    /// a gateway error after the circuit has closed again: they must not reopen it.
    #[test]
    fn requests_admitted_before_the_circuit_closed_do_not_count_after_it() {
        let cb = breaker("");
        let store = MemoryStore::new();
        // Admitted while closed, before the failures that open the circuit.
        let hung: Vec<_> = (0..5).map(|_| cb.admit(&store, KEY, 0).0).collect();
        open_circuit(&cb, &store, 10);
        assert_eq!(cb.admit(&store, KEY, 30_010).0, Admission::Trial);
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                30_010,
                Outcome::Success,
                30_020
            ),
            Ok(Some(Transition::Closed))
        );
        for admission in hung {
            assert_eq!(
                cb.record(&store, KEY, admission, 0, Outcome::Failure, 3_600_000),
                Ok(None)
            );
        }
        assert_eq!(state(&store).phase, Phase::Closed);
        assert_eq!(state(&store).consecutive_failures, 0);
        // Admitted after the close, failures count as ever.
        for _ in 0..5 {
            let (admission, _) = cb.admit(&store, KEY, 3_600_000);
            cb.record(
                &store,
                KEY,
                admission,
                3_600_000,
                Outcome::Failure,
                3_600_001,
            )
            .unwrap();
        }
        assert_eq!(state(&store).phase, Phase::Open);
    }

    #[test]
    fn a_failed_trial_reopens_for_longer_up_to_the_cap() {
        let cb = breaker(r#"{"circuit_breaker":{"base_ejection":"30s","max_ejection":"70s"}}"#);
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        let mut now = 30_000;
        for expected in [60_000, 70_000, 70_000] {
            assert_eq!(cb.admit(&store, KEY, now).0, Admission::Trial);
            assert_eq!(
                cb.record(&store, KEY, Admission::Trial, now, Outcome::Failure, now),
                Ok(Some(Transition::Opened {
                    consecutive_failures: 0,
                    open_for: Duration::from_millis(expected)
                }))
            );
            now += expected;
        }
        assert_eq!(state(&store).openings, 4);
        // Closing forgets the openings: the next opening is a base one again.
        assert_eq!(cb.admit(&store, KEY, now).0, Admission::Trial);
        cb.record(&store, KEY, Admission::Trial, now, Outcome::Success, now)
            .unwrap();
        open_circuit(&cb, &store, now);
        assert_eq!(state(&store).open_until_ms, now + 30_000);
    }

    #[test]
    fn a_trial_abandoned_by_its_client_frees_its_place() {
        let cb = breaker("");
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        assert_eq!(cb.admit(&store, KEY, 30_000).0, Admission::Trial);
        cb.release_trial(&store, KEY, 30_000).unwrap();
        assert_eq!(cb.admit(&store, KEY, 30_001).0, Admission::Trial);
    }

    #[test]
    fn a_trial_from_an_earlier_half_open_period_decides_nothing() {
        let cb = breaker("");
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        // A trial on a slow route outlives its lease; the next one fails and reopens.
        assert_eq!(cb.admit(&store, KEY, 30_000).0, Admission::Trial);
        assert_eq!(cb.admit(&store, KEY, 60_000).0, Admission::Trial);
        assert!(matches!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                60_000,
                Outcome::Failure,
                60_100
            ),
            Ok(Some(Transition::Opened { .. }))
        ));
        // Half-open again; the first trial's success arrives now: it closes nothing.
        let reopened = state(&store).open_until_ms;
        assert_eq!(cb.admit(&store, KEY, reopened).0, Admission::Trial);
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                30_000,
                Outcome::Success,
                reopened + 1
            ),
            Ok(None)
        );
        assert_eq!(state(&store).phase, Phase::HalfOpen);
        // The current trial's does.
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                reopened,
                Outcome::Success,
                reopened + 2
            ),
            Ok(Some(Transition::Closed))
        );
    }

    #[test]
    fn a_healthy_upstream_slower_than_the_open_time_closes_the_circuit() {
        // base_ejection 30 s; the upstream is back but answers in 40 s, past each trial's
        // lease. A request arrives every half second.
        let cb = breaker("");
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        let mut trials: Vec<u64> = Vec::new();
        let mut now = 30_000;
        let closed_at = loop {
            assert!(
                now < 3_600_000,
                "an hour of successful trials, still half-open"
            );
            if let Some(&granted) = trials.iter().find(|&&g| g + 40_000 == now) {
                let recorded = cb.record(
                    &store,
                    KEY,
                    Admission::Trial,
                    granted,
                    Outcome::Success,
                    now,
                );
                if recorded == Ok(Some(Transition::Closed)) {
                    break now;
                }
            }
            match cb.admit(&store, KEY, now).0 {
                Admission::Trial => trials.push(now),
                Admission::Rejected { .. } => {}
                other => panic!("{other:?}"),
            }
            now += 500;
        };
        // The first trial's answer closes it, though a second trial took its place.
        assert_eq!(closed_at, 70_000);
        assert_eq!(trials, [30_000, 60_000]);
        assert_eq!(state(&store).phase, Phase::Closed);
        // A trial of a half-open period before a reopening still says nothing.
        open_circuit(&cb, &store, 80_000);
        assert_eq!(cb.admit(&store, KEY, 140_000).0, Admission::Trial);
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                60_000,
                Outcome::Success,
                140_001
            ),
            Ok(None)
        );
        assert_eq!(state(&store).phase, Phase::HalfOpen);
    }

    #[test]
    fn a_clock_stepped_back_neither_blinds_a_closed_circuit_nor_stretches_an_opening() {
        let cb = breaker("");
        let store = MemoryStore::new();
        // Closed at 4,000 s; then the clock steps back an hour.
        open_circuit(&cb, &store, 3_970_000);
        assert_eq!(cb.admit(&store, KEY, 4_000_000).0, Admission::Trial);
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                4_000_000,
                Outcome::Success,
                4_000_001
            ),
            Ok(Some(Transition::Closed))
        );
        let back = 400_000;
        for i in 0..4 {
            assert_eq!(fail(&cb, &store, back + i), None);
        }
        assert!(matches!(
            fail(&cb, &store, back + 4),
            Some(Transition::Opened {
                consecutive_failures: 5,
                ..
            })
        ));
        // Opened for 30 s at `back + 4`; the clock steps back again, by a day's worth: the
        // opening cannot last more than its 30 s from now.
        assert_eq!(state(&store).open_until_ms, back + 4 + 30_000);
        let earlier = 10;
        assert_eq!(cb.admit(&store, KEY, earlier).0, Admission::Trial);
        // Half-opened at 30 s; the clock steps back to 5 s: a trial granted after the
        // step still decides the circuit.
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        assert_eq!(cb.admit(&store, KEY, 30_000).0, Admission::Trial);
        cb.release_trial(&store, KEY, 30_000).unwrap();
        assert_eq!(cb.admit(&store, KEY, 5_000).0, Admission::Trial);
        // Given back after the step, its place is free again: the step ended the old lease,
        // and the count of places restarted with this trial.
        cb.release_trial(&store, KEY, 5_000).unwrap();
        assert_eq!(cb.admit(&store, KEY, 5_060).0, Admission::Trial);
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                5_060,
                Outcome::Success,
                5_100
            ),
            Ok(Some(Transition::Closed))
        );
        // A trial lost before a step of an hour: its lease ends with the open time, not the
        // step.
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 3_600_000);
        assert_eq!(cb.admit(&store, KEY, 3_630_000).0, Admission::Trial);
        assert_eq!(cb.admit(&store, KEY, 1_000).0, Admission::Trial);
    }

    #[test]
    fn a_half_opening_by_the_previous_version_is_judged_by_its_trials_stamp() {
        // That version never stamps the half-opening (the field reads 0 in HalfOpen).
        let cb = breaker("");
        let store = MemoryStore::new();
        let record = CircuitState {
            phase: Phase::HalfOpen,
            openings: 2,
            trials_in_flight: 1,
            trial_lease_until_ms: 120_000,
            trials_since_ms: 60_000,
            ..CircuitState::default()
        };
        assert_eq!(store.set(KEY, &record.encode(), None), Ok(Write::Stored));
        // A trial of an earlier period says nothing; one of this period decides.
        let report = |granted| {
            cb.record(
                &store,
                KEY,
                Admission::Trial,
                granted,
                Outcome::Success,
                70_000,
            )
        };
        assert_eq!(report(30_000), Ok(None));
        assert_eq!(report(60_000), Ok(Some(Transition::Closed)));
    }

    #[test]
    fn a_trial_no_longer_counted_frees_no_other_trials_place() {
        let cb = breaker("");
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        // A slow trial outlives its lease; the next one takes the place.
        assert_eq!(cb.admit(&store, KEY, 30_000).0, Admission::Trial);
        assert_eq!(cb.admit(&store, KEY, 60_000).0, Admission::Trial);
        // The slow one's client leaves: the place the new trial holds stays held.
        cb.release_trial(&store, KEY, 30_000).unwrap();
        assert!(matches!(
            cb.admit(&store, KEY, 60_001).0,
            Admission::Rejected { .. }
        ));
        cb.release_trial(&store, KEY, 60_000).unwrap();
        assert_eq!(cb.admit(&store, KEY, 60_002).0, Admission::Trial);
    }

    #[test]
    fn a_trial_that_never_reports_stops_holding_its_place_after_one_open_time() {
        let cb = breaker("");
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        assert_eq!(cb.admit(&store, KEY, 30_000).0, Admission::Trial);
        assert!(matches!(
            cb.admit(&store, KEY, 59_999).0,
            Admission::Rejected { .. }
        ));
        assert_eq!(cb.admit(&store, KEY, 60_000).0, Admission::Trial);
    }

    #[test]
    fn late_outcomes_of_requests_admitted_before_opening_are_ignored() {
        let cb = breaker("");
        let store = MemoryStore::new();
        open_circuit(&cb, &store, 0);
        let before = state(&store);
        assert_eq!(
            cb.record(&store, KEY, Admission::Normal, 10, Outcome::Failure, 10),
            Ok(None)
        );
        assert_eq!(
            cb.record(&store, KEY, Admission::Normal, 10, Outcome::Success, 10),
            Ok(None)
        );
        assert_eq!(state(&store), before);
    }

    #[test]
    fn unimplemented_is_never_a_failure() {
        for json in ["", r#"{"circuit_breaker":{"failure_on":"gateway_errors"}}"#] {
            let cb = breaker(json);
            assert_eq!(cb.classify(501), Outcome::Success, "{json}");
            assert_eq!(cb.classify(502), Outcome::Failure, "{json}");
        }
        let all = breaker("");
        assert_eq!(all.classify(500), Outcome::Failure);
        assert_eq!(all.classify(599), Outcome::Failure);
        assert_eq!(
            all.classify(crate::grpc::http_status(b"12")),
            Outcome::Success,
            "gRPC UNIMPLEMENTED"
        );
    }

    #[test]
    fn gateway_errors_mode_ignores_application_500s() {
        let cb = breaker(r#"{"circuit_breaker":{"failure_on":"gateway_errors"}}"#);
        assert_eq!(cb.classify(500), Outcome::Success);
        assert_eq!(cb.classify(503), Outcome::Failure);
        let all = breaker("");
        assert_eq!(all.classify(500), Outcome::Failure);
        assert_eq!(all.classify(404), Outcome::Success);
    }

    #[test]
    fn a_failure_rate_over_the_window_opens_once_enough_requests_were_seen() {
        let cb = breaker(
            r#"{"circuit_breaker":{"consecutive_failures":100,
                "failure_rate":{"threshold_percent":50,"window":"10s","minimum_requests":10}}}"#,
        );
        let store = MemoryStore::new();
        let mut last = None;
        // Alternating: 50% failures, never two in a row.
        for i in 0..10u64 {
            let outcome = if i % 2 == 0 {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            assert_eq!(last, None, "opened early at request {i}");
            last = cb
                .record(&store, KEY, Admission::Normal, i * 100, outcome, i * 100)
                .unwrap();
        }
        assert!(matches!(last, Some(Transition::Opened { .. })));
    }

    #[test]
    fn old_buckets_slide_out_of_the_window() {
        let cb = breaker(
            r#"{"circuit_breaker":{"consecutive_failures":100,
                "failure_rate":{"threshold_percent":50,"window":"10s","minimum_requests":4}}}"#,
        );
        let store = MemoryStore::new();
        for _ in 0..3 {
            cb.record(&store, KEY, Admission::Normal, 0, Outcome::Failure, 0)
                .unwrap();
        }
        // 11 s later the three failures are gone: one more is 1 of 1, under the minimum.
        assert_eq!(
            cb.record(
                &store,
                KEY,
                Admission::Normal,
                11_000,
                Outcome::Failure,
                11_000
            ),
            Ok(None)
        );
        let requests: u32 = state(&store).buckets.iter().map(|b| b.0).sum();
        assert_eq!(requests, 1);
    }

    #[test]
    fn two_workers_share_one_circuit_and_only_one_reports_each_transition() {
        let cb = breaker("");
        let store = MemoryStore::new();
        let workers = [&store, &store];
        let mut opened = 0;
        for i in 0..5 {
            let worker = workers[i % 2];
            if let Some(Transition::Opened { .. }) = cb
                .record(worker, KEY, Admission::Normal, 0, Outcome::Failure, 0)
                .unwrap()
            {
                opened += 1;
            }
        }
        assert_eq!(opened, 1);
        let half_opened: Vec<_> = workers.iter().map(|w| cb.admit(*w, KEY, 30_000)).collect();
        assert_eq!(
            half_opened,
            [
                (Admission::Trial, Some(Transition::HalfOpened)),
                (
                    Admission::Rejected {
                        retry_after: Duration::from_secs(30)
                    },
                    None
                )
            ]
        );
    }
}

/// The state machine against a model of its promises, over random outcomes, client aborts,
/// lost trials (a VM that died) and clock steps.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod proptests {
    use super::*;
    use palisade_kit::duration::ConfigDuration;
    use palisade_kit::store::MemoryStore;
    use proptest::prelude::*;

    const KEY: &str = "palisade/resilience/cb/orders";

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Admit,
        /// The upstream answered the `n`-th request still open (modulo their number).
        Report(usize, bool),
        /// Its client left: no answer.
        Abandon(usize),
        /// Its VM died: never reported nor released.
        Lose(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            3 => (0u64..20_000).prop_map(Op::Advance),
            1 => (0u64..200_000).prop_map(Op::Advance),
            6 => Just(Op::Admit),
            8 => (any::<usize>(), proptest::bool::weighted(0.6)).prop_map(|(n, f)| Op::Report(n, f)),
            1 => any::<usize>().prop_map(Op::Abandon),
            1 => any::<usize>().prop_map(Op::Lose),
        ];
        proptest::collection::vec(op, 1..300)
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum ModelPhase {
        Closed,
        Open { until: u64 },
        HalfOpen,
    }

    /// What the breaker promises, kept independently of its stored record.
    struct Model {
        n: u32,
        trials: u32,
        base: u64,
        max: u64,
        /// (threshold %, window ms, minimum requests)
        rate: Option<(u64, u64, u64)>,
        phase: ModelPhase,
        openings: u32,
        consecutive: u32,
        /// Outcomes counted in the closed phase since the state last reset: (time, failed).
        outcomes: Vec<(u64, bool)>,
        /// Grant times of the trials holding a place.
        held: Vec<u64>,
        last_grant: u64,
        /// Trials granted before this are no longer counted.
        trials_since: u64,
        half_open_since: u64,
        /// When a trial last closed the circuit.
        closed_since: u64,
    }

    impl Model {
        fn open_time(&self, openings: u32) -> u64 {
            (self.base * u64::from(openings.max(1))).min(self.max)
        }

        fn rate_exceeded(&self, now: u64) -> bool {
            let Some((threshold, window, minimum)) = self.rate else {
                return false;
            };
            let bucket = (window / BUCKETS as u64).max(1);
            let epoch = now / bucket;
            let (requests, failures) = self
                .outcomes
                .iter()
                .filter(|(t, _)| t / bucket + (BUCKETS as u64) > epoch)
                .fold((0u64, 0u64), |(r, f), (_, failed)| {
                    (r + 1, f + u64::from(*failed))
                });
            requests >= minimum && failures * 100 >= threshold * requests
        }

        fn reset(&mut self) {
            self.consecutive = 0;
            self.outcomes.clear();
            self.held.clear();
        }
    }

    fn run(
        n: u32,
        trials: u32,
        base_s: u64,
        max_factor: u64,
        rate: Option<(u8, u64, u32)>,
        ops: Vec<Op>,
    ) -> Result<(), TestCaseError> {
        let config = CircuitBreakerConfig {
            consecutive_failures: n,
            half_open_trials: trials,
            base_ejection: ConfigDuration::from_secs(base_s),
            max_ejection: ConfigDuration::from_secs(base_s * max_factor),
            failure_rate: rate.map(|(threshold, window_s, minimum)| FailureRateConfig {
                threshold_percent: threshold,
                window: ConfigDuration::from_secs(window_s),
                minimum_requests: minimum,
            }),
            ..CircuitBreakerConfig::default()
        };
        let cb = CircuitBreaker::new(&config);
        let store = MemoryStore::new();
        let mut m = Model {
            n,
            trials,
            base: base_s * 1000,
            max: base_s * max_factor * 1000,
            rate: rate.map(|(t, w, min)| (u64::from(t), w * 1000, u64::from(min))),
            phase: ModelPhase::Closed,
            openings: 0,
            consecutive: 0,
            outcomes: Vec::new(),
            held: Vec::new(),
            last_grant: 0,
            trials_since: 0,
            half_open_since: 0,
            closed_since: 0,
        };
        let mut now = 1_000_000u64;
        // Requests admitted and not yet ended: (admission, granted at).
        let mut open: Vec<(Admission, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Advance(ms) => now += ms,
                Op::Admit => {
                    let got = cb.admit(&store, KEY, now);
                    match m.phase {
                        ModelPhase::Closed => {
                            let quiet = m.consecutive == 0 && m.rate.is_none();
                            let expected = if quiet {
                                Admission::Quiet
                            } else {
                                Admission::Normal
                            };
                            prop_assert_eq!(got, (expected, None));
                        }
                        ModelPhase::Open { until } if now < until => {
                            // Open always fast-fails until the open time, saying how long.
                            let retry_after = Duration::from_millis(until - now);
                            prop_assert_eq!(got, (Admission::Rejected { retry_after }, None));
                        }
                        ModelPhase::Open { .. } => {
                            prop_assert_eq!(got, (Admission::Trial, Some(Transition::HalfOpened)));
                            m.phase = ModelPhase::HalfOpen;
                            m.held = vec![now];
                            m.last_grant = now;
                            m.trials_since = now;
                            m.half_open_since = now;
                        }
                        ModelPhase::HalfOpen => {
                            let lease_until = m.last_grant + m.open_time(m.openings);
                            if now >= lease_until {
                                m.held.clear();
                                m.trials_since = now;
                            }
                            if m.held.len() < m.trials as usize {
                                prop_assert_eq!(got, (Admission::Trial, None));
                                m.held.push(now);
                                m.last_grant = now;
                            } else {
                                let wait = lease_until.saturating_sub(now).max(1000);
                                let retry_after = Duration::from_millis(wait);
                                prop_assert_eq!(got, (Admission::Rejected { retry_after }, None));
                            }
                        }
                    }
                    // Half-open never lets more than the configured trials through at once.
                    prop_assert!(m.held.len() <= m.trials as usize);
                    if matches!(
                        got.0,
                        Admission::Normal | Admission::Quiet | Admission::Trial
                    ) {
                        open.push((got.0, now));
                    }
                }
                Op::Report(i, failed) if !open.is_empty() => {
                    let (admission, granted) = open.swap_remove(i % open.len());
                    let outcome = if failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    let got = cb
                        .record(&store, KEY, admission, granted, outcome, now)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    match (m.phase, admission) {
                        // Any trial of this half-open period decides it, its lease run out or
                        // not.
                        (ModelPhase::HalfOpen, Admission::Trial)
                            if granted >= m.half_open_since =>
                        {
                            if failed {
                                m.openings += 1;
                                let open_for = m.open_time(m.openings);
                                prop_assert_eq!(
                                    got,
                                    Some(Transition::Opened {
                                        consecutive_failures: 0,
                                        open_for: Duration::from_millis(open_for),
                                    })
                                );
                                m.phase = ModelPhase::Open {
                                    until: now + open_for,
                                };
                            } else {
                                prop_assert_eq!(got, Some(Transition::Closed));
                                m.phase = ModelPhase::Closed;
                                m.openings = 0;
                                m.closed_since = now;
                            }
                            m.reset();
                        }
                        // Admitted before the circuit last closed: not counted.
                        (ModelPhase::Closed, _) if granted < m.closed_since => {
                            prop_assert_eq!(got, None);
                        }
                        // Admitted with nothing counted: its success reports nothing, even if
                        // failures were counted meanwhile.
                        (ModelPhase::Closed, Admission::Quiet) if !failed => {
                            prop_assert_eq!(got, None);
                        }
                        (ModelPhase::Closed, _) => {
                            m.consecutive = if failed { m.consecutive + 1 } else { 0 };
                            m.outcomes.push((now, failed));
                            // Opens exactly when N failures in a row, or the rate over the
                            // window with its minimum of requests, are reached; never before.
                            if m.consecutive >= m.n || m.rate_exceeded(now) {
                                m.openings += 1;
                                let open_for = m.open_time(m.openings);
                                prop_assert!(open_for <= m.max && open_for >= m.base);
                                prop_assert_eq!(
                                    got,
                                    Some(Transition::Opened {
                                        consecutive_failures: m.consecutive,
                                        open_for: Duration::from_millis(open_for),
                                    })
                                );
                                m.phase = ModelPhase::Open {
                                    until: now + open_for,
                                };
                                m.reset();
                            } else {
                                prop_assert_eq!(got, None);
                            }
                        }
                        // Late outcomes say nothing about the upstream now.
                        _ => prop_assert_eq!(got, None),
                    }
                }
                Op::Abandon(i) if !open.is_empty() => {
                    let (admission, granted) = open.swap_remove(i % open.len());
                    if admission == Admission::Trial {
                        cb.release_trial(&store, KEY, granted)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        if m.phase == ModelPhase::HalfOpen {
                            if let Some(at) = m.held.iter().position(|t| *t == granted) {
                                m.held.swap_remove(at);
                            }
                        }
                    }
                }
                Op::Lose(i) if !open.is_empty() => {
                    open.swap_remove(i % open.len());
                }
                Op::Report(..) | Op::Abandon(_) | Op::Lose(_) => {}
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn consecutive_failures_open_trials_are_bounded_and_open_time_grows_to_its_cap(
            n in 1u32..7,
            trials in 1u32..4,
            base_s in 1u64..40,
            max_factor in 1u64..6,
            ops in ops(),
        ) {
            run(n, trials, base_s, max_factor, None, ops)?;
        }

        #[test]
        fn the_failure_rate_opens_only_past_its_threshold_and_minimum(
            n in 1u32..30,
            trials in 1u32..3,
            base_s in 1u64..20,
            max_factor in 1u64..4,
            threshold in 1u8..=100,
            window_s in 1u64..30,
            minimum in 1u32..15,
            ops in ops(),
        ) {
            run(n, trials, base_s, max_factor, Some((threshold, window_s, minimum)), ops)?;
        }
    }
}
