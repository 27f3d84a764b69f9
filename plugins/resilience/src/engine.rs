//! `Resilience`: one request's way through the policy, host-free. The adapter reads the
//! headers and host values, the engine decides, and reports what happened as [`Event`]s the
//! adapter logs and counts.
//!
//! Order on the request: client deadline, injected abort, circuit, concurrency slot, router
//! headers, injected delay. Every circuit trial and slot taken is held in [`StreamState`] and
//! given back at stream end, however the stream ends.

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use palisade_kit::header_pairs::Edit;
use palisade_kit::reply::{ErrorReply, CIRCUIT_OPEN};
use palisade_kit::store::SharedStore;

use crate::circuit::{Admission, CircuitBreaker, Outcome, Phase, Transition};
use crate::config::{ConcurrencyScope, Proxy, ResilienceConfig};
use crate::fault::FaultInjection;
use crate::inflight::{Acquired, InflightLimit, Owner, Slot};
use crate::route_policy::{Deadline, RoutePolicy};

const KEY_PREFIX: &str = "palisade/resilience/";

/// Host values, read only when the policy needs them.
pub trait UpstreamNames {
    /// The upstream cluster (Envoy) or service (Kong) the request is routed to.
    fn cluster(&mut self) -> Option<String>;
    /// The route's name.
    fn route(&mut self) -> Option<String>;
}

/// What the engine observed, for the adapter's logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This worker's write changed the circuit's state (so it is reported once).
    Circuit {
        circuit: String,
        transition: Transition,
    },
    CircuitRejected,
    Shed,
    DeadlineExceeded,
    FaultAborted,
    FaultDelayed,
    /// Requests in flight in a scope went up or down by one, to `now`.
    Inflight {
        scope: String,
        delta: i64,
        now: u32,
    },
    /// The shared store failed or stayed contended: the request went on unjudged.
    StoreUnavailable,
}

impl Event {
    /// The circuit's state after a transition.
    pub fn phase(transition: Transition) -> Phase {
        match transition {
            Transition::Opened { .. } => Phase::Open,
            Transition::HalfOpened => Phase::HalfOpen,
            Transition::Closed => Phase::Closed,
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict<'a> {
    /// Apply the edits and let it go on, after the delay if there is one.
    Continue {
        edits: Vec<Edit<'a>>,
        delay: Option<Duration>,
    },
    Reply(ErrorReply),
}

/// What one stream holds until it ends.
#[derive(Debug, Default)]
pub struct StreamState {
    /// The circuit's key, the admission, and when it was granted.
    circuit: Option<(String, Admission, u64)>,
    /// [`Resilience::failure_epochs`] of the request's circuit when it was admitted.
    failure_epoch: u64,
    /// A gRPC request: its outcome may be in `grpc-status` ([`crate::grpc`]).
    grpc: bool,
    /// The timeout sent was lowered to fit the client's deadline: the router's timeout on it
    /// says nothing about the upstream.
    deadline_capped: bool,
    slot: Option<(String, String, Slot)>,
}

impl StreamState {
    /// Whether the request is gRPC and its circuit still waits for the outcome: an HTTP 200
    /// is then judged by its `grpc-status`.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Whether the request is a half-open trial still to be judged.
    pub fn is_trial(&self) -> bool {
        matches!(self.circuit, Some((_, Admission::Trial, _)))
    }

    /// Whether the stream's upstream answer is still to be judged by a circuit.
    pub fn awaits_outcome(&self) -> bool {
        matches!(
            self.circuit,
            Some((
                _,
                Admission::Normal | Admission::Quiet | Admission::Trial,
                _
            ))
        )
    }
}

/// What [`Resilience::counted_status`] may ask about an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFact<'a> {
    /// A response header.
    Header(&'a str),
    /// Envoy's `response.code_details`.
    CodeDetails,
}

pub struct Resilience {
    policy: RoutePolicy,
    proxy: Proxy,
    circuit: Option<CircuitBreaker>,
    circuit_key: Option<String>,
    inflight: Option<InflightLimit>,
    /// This VM, whose slots the shared counts hold.
    owner: Rc<Owner>,
    scope: ConcurrencyScope,
    shed_retry_after_secs: u64,
    faults: Option<FaultInjection>,
    /// Bumped each time this VM sees a failure counted in a closed circuit: an admission that
    /// found one, or a failure it records. A quiet request (admitted with none counted)
    /// whose success arrives after a bump reports it, so the success resets the count as in
    /// Envoy's outlier detection; without it, concurrent requests admitted before the first
    /// failure would let scattered failures add up to an opening. One epoch per bucket of
    /// circuits (by a hash of the key): a failing cluster costs the healthy ones in other
    /// buckets no extra read; a shared bucket only costs a read, never a wrong count.
    failure_epochs: [Cell<u64>; EPOCH_BUCKETS],
}

const EPOCH_BUCKETS: usize = 16;

/// The epoch bucket of a circuit's store key (FNV-1a).
fn epoch_bucket(key: &str) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    usize::try_from(hash % EPOCH_BUCKETS as u64).unwrap_or(0)
}

/// `Retry-After` in whole seconds, never 0 (a client would retry at once).
fn retry_after(wait: Duration) -> String {
    let secs = wait.as_millis().div_ceil(1000).max(1);
    secs.to_string()
}

impl Resilience {
    /// `owner` is this VM: one per VM, shared by every configuration it runs.
    pub fn new(config: &ResilienceConfig, owner: Rc<Owner>) -> Self {
        let cb = &config.circuit_breaker;
        Self {
            policy: RoutePolicy::new(config.proxy, &config.retry, &config.timeouts),
            proxy: config.proxy,
            circuit: cb.enabled.then(|| CircuitBreaker::new(cb)),
            circuit_key: cb.key.clone(),
            inflight: InflightLimit::new(&config.concurrency, &config.retry),
            owner,
            scope: config.concurrency.scope,
            // Rounded up, as every Retry-After here: "1500ms" waits 2 s, not 1.
            shed_retry_after_secs: config
                .concurrency
                .retry_after
                .get()
                .as_millis()
                .div_ceil(1000)
                .max(1)
                .try_into()
                .unwrap_or(u64::MAX),
            faults: FaultInjection::new(&config.fault),
            failure_epochs: Default::default(),
        }
    }

    fn failure_epoch(&self, key: &str) -> &Cell<u64> {
        let bucket = epoch_bucket(key);
        // In range by construction; the first bucket rather than a panic otherwise.
        self.failure_epochs
            .get(bucket)
            .unwrap_or(&self.failure_epochs[0])
    }

    fn bump_failure_epoch(&self, key: &str) {
        let epoch = self.failure_epoch(key);
        epoch.set(epoch.get().wrapping_add(1));
    }

    /// Whether a request needs the cluster's name (reading it is a host call).
    fn needs_names(&self) -> bool {
        self.circuit.is_some() || self.inflight.is_some()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn on_request_headers<'a>(
        &'a self,
        headers: &[(&[u8], &[u8])],
        now_ms: u64,
        store: &impl SharedStore,
        names: &mut impl UpstreamNames,
        roll: impl FnMut() -> u64,
        state: &mut StreamState,
        events: &mut Vec<Event>,
    ) -> RequestVerdict<'a> {
        let deadline = self.policy.deadline(headers, now_ms);
        if deadline == Deadline::Expired {
            events.push(Event::DeadlineExceeded);
            return RequestVerdict::Reply(ErrorReply::new(504, "deadline exceeded"));
        }
        let faults = self
            .faults
            .as_ref()
            .map(|f| f.choose(headers, roll))
            .unwrap_or_default();
        if let Some(status) = faults.abort {
            events.push(Event::FaultAborted);
            return RequestVerdict::Reply(ErrorReply::new(status, "fault injected"));
        }
        let cluster = if self.needs_names() {
            self.circuit_key
                .clone()
                .or_else(|| names.cluster())
                .unwrap_or_else(|| "default".to_owned())
        } else {
            String::new()
        };
        if let Some(circuit) = &self.circuit {
            let key = store_key("cb/", &cluster);
            let (admission, transition) = circuit.admit(store, &key, now_ms);
            if let Some(transition) = transition {
                events.push(Event::Circuit {
                    circuit: cluster.clone(),
                    transition,
                });
            }
            match admission {
                Admission::Rejected { retry_after: wait } => {
                    events.push(Event::CircuitRejected);
                    return RequestVerdict::Reply(
                        ErrorReply::new(503, CIRCUIT_OPEN)
                            .with_header("retry-after", retry_after(wait)),
                    );
                }
                Admission::Unjudged => events.push(Event::StoreUnavailable),
                Admission::Normal => self.bump_failure_epoch(&key),
                Admission::Quiet | Admission::Trial => {}
            }
            state.failure_epoch = self.failure_epoch(&key).get();
            state.circuit = Some((key, admission, now_ms));
            state.grpc = crate::grpc::is_grpc(headers);
        }
        let mut retry_granted = true;
        if let Some(inflight) = &self.inflight {
            let scope = match self.scope {
                ConcurrencyScope::Cluster => cluster,
                ConcurrencyScope::Route => names.route().unwrap_or(cluster),
            };
            let key = store_key("inflight/", &scope);
            match inflight.acquire(store, &key, &self.owner, now_ms) {
                Ok(Acquired::Slot(slot, now)) => {
                    retry_granted = slot.retry_granted;
                    events.push(Event::Inflight {
                        scope: scope.clone(),
                        delta: 1,
                        now,
                    });
                    state.slot = Some((key, scope, slot));
                }
                Ok(Acquired::Shed) => {
                    events.push(Event::Shed);
                    // The trial this request held goes to the next one.
                    self.on_stream_end(store, || now_ms, state, events);
                    return RequestVerdict::Reply(
                        ErrorReply::new(503, "overloaded")
                            .with_header("retry-after", self.shed_retry_after_secs.to_string()),
                    );
                }
                Err(_) => events.push(Event::StoreUnavailable),
            }
        }
        // A half-open trial is one attempt: retries would hit a recovering upstream again.
        let retry_granted = retry_granted && !state.is_trial();
        let (edits, deadline_capped) = self.policy.edits(headers, deadline, retry_granted);
        state.deadline_capped = deadline_capped;
        if faults.delay.is_some() {
            events.push(Event::FaultDelayed);
        }
        RequestVerdict::Continue {
            edits,
            delay: faults.delay,
        }
    }

    /// Edits to add to a [`RequestVerdict::Continue`]'s when the request's header map may have
    /// been cut short: see [`RoutePolicy::unseen_router_header_removals`].
    pub fn unseen_header_edits(&self) -> impl Iterator<Item = Edit<'static>> + '_ {
        self.policy.unseen_router_header_removals()
    }

    /// The headers [`Self::on_request_headers`] looks up by name (pseudo-headers aside). Kong
    /// hands over the first 100 pairs of a request's map: past them, the adapter asks for
    /// these one by one, so a deadline, a fault header or a gRPC content type is still seen.
    pub fn headers_read_by_name(&self) -> impl Iterator<Item = &str> + '_ {
        let grpc = self.circuit.as_ref().map(|_| "content-type");
        // The pseudo-headers too, for a map left unread (`host::headers_raw_capped`).
        [":method", ":path", ":authority"]
            .into_iter()
            .chain(self.policy.deadline_header())
            .chain(self.faults.as_ref().and_then(|f| f.only_with_header()))
            .chain(grpc)
    }

    /// The status an answer counts as for the circuit, or `None` when it says nothing about
    /// the upstream: Envoy's own overflow 503 (a connection-pool or cluster limit refused the
    /// request before any upstream answered; Envoy does not retry it), or the router's timeout
    /// on a stream whose timeout the client's deadline shortened below
    /// `deadline_counted_from` (else a client could open the circuit with a 1 ms deadline).
    /// Envoy's overflow is told by its response code details (`...{overflow}`), which an
    /// upstream cannot write, not by `x-envoy-overloaded`, which it can. `fact` reads a
    /// response header or the code details; it is called only for a 503 or a 504.
    pub fn counted_status(
        &self,
        status: u16,
        state: &StreamState,
        mut fact: impl FnMut(AnswerFact<'_>) -> Option<Vec<u8>>,
    ) -> Option<u16> {
        let overflow = |details: Option<Vec<u8>>| {
            details.is_some_and(|d| d.windows(8).any(|w| w == b"overflow"))
        };
        match status {
            503 if self.proxy == Proxy::Envoy && overflow(fact(AnswerFact::CodeDetails)) => None,
            504 if state.deadline_capped => None,
            // A gRPC request's router timeout is a trailers-only UNAVAILABLE (Envoy maps its
            // local 504 so), told by the router's message.
            503 if state.deadline_capped
                && state.grpc
                && fact(AnswerFact::Header("grpc-message")).as_deref()
                    == Some(b"upstream request timeout") =>
            {
                None
            }
            _ => Some(status),
        }
    }

    /// The upstream (or the proxy on its behalf: connect failure, reset, timeout) answered.
    /// `now` is read only when the outcome is reported.
    pub fn on_response_headers(
        &self,
        status: Option<u16>,
        now: impl FnOnce() -> u64,
        store: &impl SharedStore,
        state: &mut StreamState,
        events: &mut Vec<Event>,
    ) {
        let (Some(circuit), Some(status)) = (&self.circuit, status) else {
            return;
        };
        let Some((key, admission, granted_ms)) = state.circuit.take() else {
            return;
        };
        let outcome = circuit.classify(status);
        let admission = match admission {
            Admission::Quiet if state.failure_epoch != self.failure_epoch(&key).get() => {
                Admission::Normal
            }
            other => other,
        };
        if outcome == Outcome::Failure {
            self.bump_failure_epoch(&key);
        }
        if !CircuitBreaker::reports(admission, outcome) {
            return;
        }
        match circuit.record(store, &key, admission, granted_ms, outcome, now()) {
            Ok(Some(transition)) => events.push(Event::Circuit {
                circuit: circuit_name(&key).to_owned(),
                transition,
            }),
            Ok(None) => {}
            Err(_) => events.push(Event::StoreUnavailable),
        }
    }

    /// The stream ended (completed, reset, aborted by the client, answered locally): gives
    /// back what it held. Safe to call more than once. `now` is read only to give a slot back.
    pub fn on_stream_end(
        &self,
        store: &impl SharedStore,
        now: impl FnOnce() -> u64,
        state: &mut StreamState,
        events: &mut Vec<Event>,
    ) {
        if let (Some(circuit), Some((key, Admission::Trial, granted_ms))) =
            (&self.circuit, state.circuit.take())
        {
            if circuit.release_trial(store, &key, granted_ms).is_err() {
                events.push(Event::StoreUnavailable);
            }
        }
        if let (Some(inflight), Some((key, scope, slot))) = (&self.inflight, state.slot.take()) {
            match inflight.release(store, &key, &self.owner, slot, now()) {
                Ok(counts) => events.push(Event::Inflight {
                    scope,
                    delta: -1,
                    now: counts.active,
                }),
                Err(_) => events.push(Event::StoreUnavailable),
            }
        }
    }
}

impl Resilience {
    /// How often the timer must renew this VM's slots (a third of the lease); `None` when
    /// nothing is counted.
    pub fn renew_period(&self) -> Option<Duration> {
        self.inflight
            .as_ref()
            .map(|inflight| Duration::from_millis(inflight.lease_ms() / 3))
    }

    /// Renews the slots this VM's streams hold, so they keep counting (see
    /// [`crate::inflight`]). Reports a failed write as [`Event::StoreUnavailable`].
    pub fn renew(&self, store: &impl SharedStore, now_ms: u64, events: &mut Vec<Event>) {
        if let Some(inflight) = &self.inflight {
            if !self.owner.needs_renewal() {
                return;
            }
            if !inflight.renew(store, &self.owner, now_ms).is_empty() {
                events.push(Event::StoreUnavailable);
            }
        }
    }
}

/// `palisade/resilience/<kind><name>`, built without the formatting machinery (per request).
fn store_key(kind: &str, name: &str) -> String {
    let mut key = String::with_capacity(KEY_PREFIX.len() + kind.len() + name.len());
    key.push_str(KEY_PREFIX);
    key.push_str(kind);
    key.push_str(name);
    key
}

/// `palisade/resilience/cb/orders` -> `orders`.
fn circuit_name(key: &str) -> &str {
    key.strip_prefix(KEY_PREFIX)
        .and_then(|k| k.strip_prefix("cb/"))
        .unwrap_or(key)
}

/// The edits as owned values, for tests and for a stream that applies them later.
pub fn owned_edits(edits: Vec<Edit<'_>>) -> Vec<Edit<'static>> {
    edits
        .into_iter()
        .map(|edit| match edit {
            Edit::Set(n, v) => Edit::Set(Cow::Owned(n.into_owned()), Cow::Owned(v.into_owned())),
            Edit::Add(n, v) => Edit::Add(Cow::Owned(n.into_owned()), Cow::Owned(v.into_owned())),
            Edit::Remove(n) => Edit::Remove(Cow::Owned(n.into_owned())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit::{CircuitState, Phase};
    use palisade_kit::config::load;
    use palisade_kit::store::{MemoryStore, SharedStore};

    struct Names;

    impl UpstreamNames for Names {
        fn cluster(&mut self) -> Option<String> {
            Some("orders".to_owned())
        }
        fn route(&mut self) -> Option<String> {
            Some("orders-route".to_owned())
        }
    }

    #[test]
    fn keys_live_in_the_palisade_namespace() {
        assert!(KEY_PREFIX.starts_with(palisade_kit::store::NAMESPACE));
        assert_eq!(store_key("cb/", "orders"), "palisade/resilience/cb/orders");
        assert_eq!(circuit_name("palisade/resilience/cb/orders"), "orders");
    }

    fn engine(json: &str) -> Resilience {
        Resilience::new(&load(json.as_bytes()).unwrap(), Rc::new(Owner::new(1)))
    }

    const GET: &[(&[u8], &[u8])] = &[(b":method", b"GET"), (b":path", b"/orders")];

    fn request(
        engine: &Resilience,
        store: &MemoryStore,
        now: u64,
        state: &mut StreamState,
        events: &mut Vec<Event>,
    ) -> RequestVerdict<'static> {
        match engine.on_request_headers(GET, now, store, &mut Names, || 0, state, events) {
            RequestVerdict::Continue { edits, delay } => RequestVerdict::Continue {
                edits: owned_edits(edits),
                delay,
            },
            RequestVerdict::Reply(reply) => RequestVerdict::Reply(reply),
        }
    }

    /// One whole exchange: request, answer `status`, stream end. Returns the verdict.
    fn exchange(
        engine: &Resilience,
        store: &MemoryStore,
        now: u64,
        status: u16,
        events: &mut Vec<Event>,
    ) -> RequestVerdict<'static> {
        let mut state = StreamState::default();
        let verdict = request(engine, store, now, &mut state, events);
        if matches!(verdict, RequestVerdict::Continue { .. }) {
            engine.on_response_headers(Some(status), || now, store, &mut state, events);
        }
        engine.on_stream_end(store, || now, &mut state, events);
        verdict
    }

    #[test]
    fn an_open_circuit_answers_503_with_retry_after_and_the_kit_body() {
        let engine = engine(r#"{"retry":{"budget":null}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        for _ in 0..5 {
            exchange(&engine, &store, 0, 503, &mut events);
        }
        assert_eq!(
            events,
            [Event::Circuit {
                circuit: "orders".into(),
                transition: Transition::Opened {
                    consecutive_failures: 5,
                    open_for: Duration::from_secs(30)
                }
            }]
        );
        let verdict = exchange(&engine, &store, 1_500, 200, &mut events);
        assert_eq!(
            verdict,
            RequestVerdict::Reply(
                ErrorReply::new(503, "upstream circuit open").with_header("retry-after", "29")
            )
        );
    }

    fn circuit_state(store: &MemoryStore) -> CircuitState {
        let entry = store.get("palisade/resilience/cb/orders").unwrap().unwrap();
        CircuitState::decode(&entry.value).unwrap()
    }

    /// Requests admitted together, answered in turn: `statuses[i]` answers the i-th.
    fn concurrent(
        engine: &Resilience,
        store: &MemoryStore,
        statuses: &[u16],
        events: &mut Vec<Event>,
    ) {
        let mut states: Vec<StreamState> =
            statuses.iter().map(|_| StreamState::default()).collect();
        for state in &mut states {
            assert!(matches!(
                request(engine, store, 0, state, events),
                RequestVerdict::Continue { .. }
            ));
        }
        for (state, &status) in states.iter_mut().zip(statuses) {
            engine.on_response_headers(Some(status), || 1, store, state, events);
            engine.on_stream_end(store, || 1, state, events);
        }
    }

    struct Cluster(&'static str);

    impl UpstreamNames for Cluster {
        fn cluster(&mut self) -> Option<String> {
            Some(self.0.to_owned())
        }
        fn route(&mut self) -> Option<String> {
            None
        }
    }

    #[test]
    fn a_failing_cluster_costs_a_healthy_ones_quiet_successes_no_read() {
        let engine = engine(r#"{"retry":{"budget":null}}"#);
        let store = crate::test_store::CountingStore::default();
        let mut events = Vec::new();
        let mut admit = |cluster: &'static str, state: &mut StreamState| {
            engine.on_request_headers(
                GET,
                0,
                &store,
                &mut Cluster(cluster),
                || 0,
                state,
                &mut events,
            );
        };
        let mut healthy = StreamState::default();
        admit("payments", &mut healthy);
        // orders fails, and its next admission finds the failure counted.
        let mut failing = StreamState::default();
        admit("orders", &mut failing);
        let mut next = StreamState::default();
        admit("orders", &mut next);
        let mut events = Vec::new();
        engine.on_response_headers(Some(503), || 1, &store, &mut failing, &mut events);
        // payments' quiet success reads nothing: its circuit saw no failure.
        let before = store.reads.get();
        engine.on_response_headers(Some(200), || 1, &store, &mut healthy, &mut events);
        assert_eq!(store.reads.get(), before);
        // orders' request admitted while a failure was counted reports its success: one read.
        engine.on_response_headers(Some(200), || 1, &store, &mut next, &mut events);
        assert_eq!(store.reads.get(), before + 1);
        assert_ne!(
            epoch_bucket("palisade/resilience/cb/orders"),
            epoch_bucket("palisade/resilience/cb/payments")
        );
    }

    #[test]
    fn scattered_failures_among_concurrent_successes_open_nothing() {
        let engine = engine(r#"{"retry":{"budget":null}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        // Ten requests admitted on a healthy circuit (nothing counted), answered alternately:
        // never two failures in a row, so never an opening.
        concurrent(
            &engine,
            &store,
            &[503, 200, 503, 200, 503, 200, 503, 200, 503, 200],
            &mut events,
        );
        assert_eq!(events, []);
        assert_eq!(circuit_state(&store).consecutive_failures, 0);
        // Five in a row still open it.
        concurrent(
            &engine,
            &store,
            &[503, 503, 503, 503, 503, 200],
            &mut events,
        );
        assert!(matches!(
            events.as_slice(),
            [Event::Circuit {
                transition: Transition::Opened {
                    consecutive_failures: 5,
                    ..
                },
                ..
            }]
        ));
    }

    #[test]
    fn a_failure_another_worker_counted_is_reset_by_a_quiet_success_once_this_one_sees_it() {
        let (a, b) = (
            engine(r#"{"retry":{"budget":null}}"#),
            engine(r#"{"retry":{"budget":null}}"#),
        );
        let store = MemoryStore::new();
        let mut events = Vec::new();
        let mut quiet = StreamState::default();
        request(&a, &store, 0, &mut quiet, &mut events);
        exchange(&b, &store, 0, 503, &mut events);
        assert_eq!(circuit_state(&store).consecutive_failures, 1);
        // Worker a's next admission finds the failure counted...
        let mut normal = StreamState::default();
        request(&a, &store, 1, &mut normal, &mut events);
        // ...so the request it admitted before, quietly, reports its success: the count resets.
        a.on_response_headers(Some(200), || 2, &store, &mut quiet, &mut events);
        assert_eq!(circuit_state(&store).consecutive_failures, 0);
        a.on_response_headers(Some(200), || 2, &store, &mut normal, &mut events);
        assert_eq!(events, []);
    }

    #[test]
    fn the_engine_walks_every_transition_on_the_clock() {
        let engine =
            engine(r#"{"retry":{"budget":null},"circuit_breaker":{"base_ejection":"10s"}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        for _ in 0..5 {
            exchange(&engine, &store, 0, 500, &mut events);
        }
        events.clear();
        // Half-open: a failed trial reopens for two base times.
        exchange(&engine, &store, 10_000, 502, &mut events);
        assert_eq!(
            events,
            [
                Event::Circuit {
                    circuit: "orders".into(),
                    transition: Transition::HalfOpened
                },
                Event::Circuit {
                    circuit: "orders".into(),
                    transition: Transition::Opened {
                        consecutive_failures: 0,
                        open_for: Duration::from_secs(20)
                    }
                }
            ]
        );
        events.clear();
        exchange(&engine, &store, 30_000, 200, &mut events);
        assert_eq!(
            events,
            [
                Event::Circuit {
                    circuit: "orders".into(),
                    transition: Transition::HalfOpened
                },
                Event::Circuit {
                    circuit: "orders".into(),
                    transition: Transition::Closed
                }
            ]
        );
        assert!(matches!(
            exchange(&engine, &store, 30_001, 200, &mut events),
            RequestVerdict::Continue { .. }
        ));
    }

    #[test]
    fn a_client_abort_gives_back_the_slot_and_the_trial() {
        let engine =
            engine(r#"{"concurrency":{"max_requests":1},"circuit_breaker":{"key":"orders"}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        let mut first = StreamState::default();
        assert!(matches!(
            request(&engine, &store, 0, &mut first, &mut events),
            RequestVerdict::Continue { .. }
        ));
        let mut second = StreamState::default();
        assert_eq!(
            request(&engine, &store, 0, &mut second, &mut events),
            RequestVerdict::Reply(
                ErrorReply::new(503, "overloaded").with_header("retry-after", "1")
            )
        );
        // The client of the first goes away before any answer; the end fires twice (on_log and
        // on_done): the slot is given back once.
        engine.on_stream_end(&store, || 0, &mut first, &mut events);
        engine.on_stream_end(&store, || 0, &mut first, &mut events);
        let deltas: i64 = events
            .iter()
            .filter_map(|e| match e {
                Event::Inflight { delta, .. } => Some(*delta),
                _ => None,
            })
            .sum();
        assert_eq!(deltas, 0);
        assert!(matches!(
            exchange(&engine, &store, 0, 200, &mut events),
            RequestVerdict::Continue { .. }
        ));
    }

    #[test]
    fn a_shed_request_gives_back_its_half_open_trial() {
        let engine = engine(
            r#"{"concurrency":{"max_requests":1},"circuit_breaker":{"half_open_trials":2}}"#,
        );
        let store = MemoryStore::new();
        let mut events = Vec::new();
        for _ in 0..5 {
            exchange(&engine, &store, 0, 500, &mut events);
        }
        let mut holder = StreamState::default();
        request(&engine, &store, 30_000, &mut holder, &mut events);
        // The second trial is shed by the limit; its trial place must not stay taken.
        let mut shed = StreamState::default();
        assert!(matches!(
            request(&engine, &store, 30_000, &mut shed, &mut events),
            RequestVerdict::Reply(ErrorReply { status: 503, .. })
        ));
        let key = "palisade/resilience/cb/orders";
        let state =
            crate::circuit::CircuitState::decode(&store.get(key).unwrap().unwrap().value).unwrap();
        assert_eq!(state.trials_in_flight, 1);
    }

    #[test]
    fn a_shed_request_waits_its_retry_after_rounded_up() {
        let engine = engine(r#"{"concurrency":{"max_requests":1,"retry_after":"1500ms"}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        let mut holder = StreamState::default();
        request(&engine, &store, 0, &mut holder, &mut events);
        assert_eq!(
            exchange(&engine, &store, 0, 200, &mut events),
            RequestVerdict::Reply(
                ErrorReply::new(503, "overloaded").with_header("retry-after", "2")
            )
        );
    }

    #[test]
    fn an_expired_deadline_gets_504_and_takes_nothing() {
        let engine = engine(r#"{"timeouts":{"deadline_header":"x-deadline-ms"}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        let mut state = StreamState::default();
        let headers: &[(&[u8], &[u8])] = &[(b":path", b"/"), (b"x-deadline-ms", b"999")];
        let verdict = engine.on_request_headers(
            headers,
            1_000,
            &store,
            &mut Names,
            || 0,
            &mut state,
            &mut events,
        );
        assert_eq!(
            verdict,
            RequestVerdict::Reply(ErrorReply::new(504, "deadline exceeded"))
        );
        assert_eq!(events, [Event::DeadlineExceeded]);
        assert!(store.is_empty());
    }

    #[test]
    fn an_injected_abort_never_counts_against_the_circuit() {
        let engine = engine(r#"{"fault":{"abort":{"status":503,"percent":100}}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        for _ in 0..10 {
            assert_eq!(
                exchange(&engine, &store, 0, 503, &mut events),
                RequestVerdict::Reply(ErrorReply::new(503, "fault injected"))
            );
        }
        assert!(store.is_empty());
    }

    #[test]
    fn a_delayed_request_is_admitted_first() {
        let engine = engine(r#"{"fault":{"delay":{"duration":"2s","percent":100}}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        let mut state = StreamState::default();
        let RequestVerdict::Continue { delay, .. } =
            request(&engine, &store, 0, &mut state, &mut events)
        else {
            panic!()
        };
        assert_eq!(delay, Some(Duration::from_secs(2)));
        assert!(events.contains(&Event::FaultDelayed));
    }

    /// A request carrying the client's deadline, `left` ms after `now`.
    fn with_deadline(
        engine: &Resilience,
        store: &MemoryStore,
        now: u64,
        left: u64,
        state: &mut StreamState,
        events: &mut Vec<Event>,
    ) -> Vec<Edit<'static>> {
        let deadline = (now + left).to_string();
        let headers: &[(&[u8], &[u8])] = &[
            (b":method", b"GET"),
            (b":path", b"/orders"),
            (b"x-deadline-ms", deadline.as_bytes()),
        ];
        match engine.on_request_headers(headers, now, store, &mut Names, || 0, state, events) {
            RequestVerdict::Continue { edits, .. } => owned_edits(edits),
            RequestVerdict::Reply(reply) => panic!("refused: {reply:?}"),
        }
    }

    /// What the adapter does with an answer: its status as counted, then the stream's end.
    fn answer(
        engine: &Resilience,
        store: &MemoryStore,
        now: u64,
        status: u16,
        state: &mut StreamState,
        events: &mut Vec<Event>,
    ) {
        let counted = engine.counted_status(status, state, |_| None);
        engine.on_response_headers(counted, || now, store, state, events);
        engine.on_stream_end(store, || now, state, events);
    }

    #[test]
    fn the_routers_timeout_on_a_deadline_the_client_shortened_never_opens_the_circuit() {
        let engine = engine(r#"{"timeouts":{"deadline_header":"x-deadline-ms"}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        for _ in 0..10 {
            let mut state = StreamState::default();
            let edits = with_deadline(&engine, &store, 0, 1, &mut state, &mut events);
            assert!(edits.contains(&Edit::Set(
                Cow::Borrowed("x-envoy-upstream-rq-timeout-ms"),
                Cow::Borrowed(b"1")
            )));
            answer(&engine, &store, 1, 504, &mut state, &mut events);
        }
        assert_eq!(events, []);
        assert!(store.is_empty(), "nothing counted");
        // A deadline beyond the timeout lowers nothing: its 504 is the upstream's.
        for _ in 0..5 {
            let mut state = StreamState::default();
            with_deadline(&engine, &store, 0, 120_000, &mut state, &mut events);
            answer(&engine, &store, 1, 504, &mut state, &mut events);
        }
        assert!(matches!(
            events.as_slice(),
            [Event::Circuit {
                transition: Transition::Opened { .. },
                ..
            }]
        ));
        events.clear();
        // Half-open: a trial with a 1 ms deadline gives its place back and reopens nothing.
        let mut trial = StreamState::default();
        with_deadline(&engine, &store, 31_000, 1, &mut trial, &mut events);
        assert!(trial.is_trial());
        answer(&engine, &store, 31_001, 504, &mut trial, &mut events);
        assert_eq!(circuit_state(&store).phase, Phase::HalfOpen);
        assert_eq!(circuit_state(&store).trials_in_flight, 0);
        let mut next = StreamState::default();
        with_deadline(&engine, &store, 31_002, 120_000, &mut next, &mut events);
        assert!(next.is_trial(), "the place was given back");
        answer(&engine, &store, 31_003, 200, &mut next, &mut events);
        assert_eq!(circuit_state(&store).phase, Phase::Closed);
    }

    #[test]
    fn a_grpc_router_timeout_on_a_shortened_deadline_counts_as_neither() {
        let engine = engine(r#"{"timeouts":{"deadline_header":"x-deadline-ms"}}"#);
        let store = MemoryStore::new();
        let mut events = Vec::new();
        let deadline = "1".to_owned();
        let headers: &[(&[u8], &[u8])] = &[
            (b":path", b"/orders.Orders/Get"),
            (b"content-type", b"application/grpc"),
            (b"x-deadline-ms", deadline.as_bytes()),
        ];
        let mut state = StreamState::default();
        engine.on_request_headers(
            headers,
            0,
            &store,
            &mut Names,
            || 0,
            &mut state,
            &mut events,
        );
        let message = |fact: AnswerFact<'_>| {
            (fact == AnswerFact::Header("grpc-message"))
                .then(|| b"upstream request timeout".to_vec())
        };
        assert_eq!(engine.counted_status(503, &state, message), None);
        assert_eq!(engine.counted_status(503, &state, |_| None), Some(503));
        // The same answer on a stream whose timeout the deadline did not lower counts.
        let mut plain = StreamState::default();
        request(&engine, &store, 0, &mut plain, &mut events);
        assert_eq!(engine.counted_status(503, &plain, message), Some(503));
        assert_eq!(engine.counted_status(504, &plain, message), Some(504));
    }

    #[test]
    fn envoys_own_overflow_503_counts_as_neither_on_envoy_only() {
        let details = |text: &'static [u8]| {
            move |fact: AnswerFact<'_>| (fact == AnswerFact::CodeDetails).then(|| text.to_vec())
        };
        let overflow = details(b"upstream_reset_before_response_started{overflow}");
        let state = StreamState::default();
        let envoy = engine("{}");
        assert_eq!(envoy.counted_status(503, &state, overflow), None);
        assert_eq!(envoy.counted_status(503, &state, |_| None), Some(503));
        assert_eq!(envoy.counted_status(502, &state, overflow), Some(502));
        // An upstream's 503 is `via_upstream`, whatever headers it sends (`x-envoy-overloaded`
        // included: it cannot keep its circuit closed with it).
        let upstream = |fact: AnswerFact<'_>| match fact {
            AnswerFact::CodeDetails => Some(b"via_upstream".to_vec()),
            AnswerFact::Header(_) => Some(b"true".to_vec()),
        };
        assert_eq!(envoy.counted_status(503, &state, upstream), Some(503));
        // On Kong there are no code details to trust.
        let kong = engine(r#"{"proxy":"kong"}"#);
        assert_eq!(kong.counted_status(503, &state, overflow), Some(503));
    }

    #[test]
    fn a_half_open_trial_goes_out_without_retries() {
        let engine = engine("{}");
        let store = MemoryStore::new();
        let mut events = Vec::new();
        for _ in 0..5 {
            exchange(&engine, &store, 0, 503, &mut events);
        }
        let mut trial = StreamState::default();
        let RequestVerdict::Continue { edits, .. } =
            request(&engine, &store, 30_000, &mut trial, &mut events)
        else {
            panic!("a trial")
        };
        assert!(trial.is_trial());
        assert!(edits.contains(&Edit::Set(
            Cow::Borrowed("x-envoy-max-retries"),
            Cow::Borrowed(b"0")
        )));
        assert!(
            !edits
                .iter()
                .any(|e| matches!(e, Edit::Set(n, _) if n == "x-envoy-retry-on")),
            "{edits:?}"
        );
        // Once closed, requests get their retries again.
        engine.on_response_headers(Some(200), || 30_001, &store, &mut trial, &mut events);
        let RequestVerdict::Continue { edits, .. } = request(
            &engine,
            &store,
            30_002,
            &mut StreamState::default(),
            &mut events,
        ) else {
            panic!()
        };
        assert!(edits.contains(&Edit::Set(
            Cow::Borrowed("x-envoy-max-retries"),
            Cow::Borrowed(b"3")
        )));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after(Duration::from_millis(1)), "1");
        assert_eq!(retry_after(Duration::from_millis(1001)), "2");
        assert_eq!(retry_after(Duration::ZERO), "1");
    }
}
