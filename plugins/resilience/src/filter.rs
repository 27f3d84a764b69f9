//! The proxy-wasm adapter: glue only. It reads headers and host values, hands them to the
//! engine, applies the verdict, logs and counts the engine's events, and resumes delayed
//! requests from the root context's timer.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use palisade_kit::clock::Clock;
use palisade_kit::config::ConfigError;
use palisade_kit::header_pairs::{decode_borrowed, get, Fields};
use palisade_kit::host::metrics::{Counter, Gauge};
use palisade_kit::host::{self, callout, HostClock, HostStore, Map, Plugin};
use palisade_kit::random::Xoshiro256;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::circuit::Transition;
use crate::config::{Proxy, ResilienceConfig};
use crate::engine::{AnswerFact, Event, RequestVerdict, Resilience, StreamState, UpstreamNames};
use crate::grpc;
use crate::inflight::Owner;

const NAME: &str = "palisade-resilience";

thread_local! {
    /// This VM in the shared in-flight counts: a random id, and the slots its streams hold.
    /// One per VM, so a reconfigured VM keeps counting (and renewing) its streams' slots.
    static OWNER: Rc<Owner> = Rc::new(Owner::new({
        let seed = host::random_seed();
        let mut rng = Xoshiro256::from_seed(seed);
        rng.next_u64()
    }));
}

struct ResiliencePlugin;

/// This worker's engine and what it keeps between requests.
struct Worker {
    engine: Resilience,
    proxy: Proxy,
    metrics: Option<Metrics>,
    rng: RefCell<Xoshiro256>,
    /// Streams paused by an injected delay: context id → when to resume (Unix ms).
    delayed: RefCell<BTreeMap<u32, u64>>,
    tick: Option<Duration>,
    /// Every this often, the timer renews this VM's slots (none when nothing is counted).
    renew_every: Option<Duration>,
    /// When they were last renewed (Unix ms).
    renewed_at: Cell<u64>,
    store_warned: Cell<bool>,
}

struct Metrics {
    opened: Counter,
    half_opened: Counter,
    closed: Counter,
    rejected: Counter,
    shed: Counter,
    deadline_exceeded: Counter,
    fault_aborted: Counter,
    fault_delayed: Counter,
    store_unavailable: Counter,
    /// Per circuit and per scope, defined on first use, found by the raw name (no name is
    /// built per request).
    circuit_gauges: RefCell<HashMap<String, Gauge>>,
    inflight_gauges: RefCell<HashMap<String, Gauge>>,
    /// The last in-flight gauge used: most filter chains count one scope, and comparing its
    /// name costs less than hashing it twice per request.
    last_inflight: RefCell<Option<(String, Gauge)>>,
}

impl Metrics {
    fn define() -> Self {
        let counter = |name: &str| Counter::define(&format!("palisade_resilience.{name}"));
        Self {
            opened: counter("circuit_opened"),
            half_opened: counter("circuit_half_opened"),
            closed: counter("circuit_closed"),
            rejected: counter("circuit_rejected"),
            shed: counter("shed"),
            deadline_exceeded: counter("deadline_exceeded"),
            fault_aborted: counter("fault_aborted"),
            fault_delayed: counter("fault_delayed"),
            store_unavailable: counter("store_unavailable"),
            circuit_gauges: RefCell::default(),
            inflight_gauges: RefCell::default(),
            last_inflight: RefCell::default(),
        }
    }

    fn inflight_gauge(&self, scope: &str) -> Gauge {
        if let Some((name, gauge)) = &*self.last_inflight.borrow() {
            if name == scope {
                return *gauge;
            }
        }
        let gauge = self.gauge("inflight", scope);
        *self.last_inflight.borrow_mut() = Some((scope.to_owned(), gauge));
        gauge
    }

    /// `palisade_resilience.<kind>.<name>`, the name reduced to characters every stats
    /// backend keeps (Istio cluster names hold `|`).
    fn gauge(&self, kind: &str, name: &str) -> Gauge {
        let gauges = match kind {
            "circuit" => &self.circuit_gauges,
            _ => &self.inflight_gauges,
        };
        if let Some(gauge) = gauges.borrow().get(name) {
            return *gauge;
        }
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // Named after an upstream, so of any length: cut where Kong would trap.
        let full = format!("palisade_resilience.{kind}.{clean}");
        let gauge = Gauge::define(&palisade_kit::metric_name::bounded(&full));
        gauges.borrow_mut().insert(name.to_owned(), gauge);
        gauge
    }
}

impl Plugin for ResiliencePlugin {
    const NAME: &'static str = NAME;
    type Config = ResilienceConfig;
    type Engine = Worker;

    fn compile(config: ResilienceConfig) -> Result<Worker, ConfigError> {
        // A delay resumes its request from the root's timer. ngx_wasm_module's
        // proxy_set_effective_context does nothing, so the resume would reach the root context,
        // which has no request: Kong's worker crashes (docs/kong-proxy-wasm.md, fact 18).
        if config.fault.delay.is_some() && host::is_kong() {
            let mut problems = palisade_kit::config::Problems::default();
            problems.field("fault", |p| {
                p.push_at("delay", crate::config::KONG_NO_DELAY);
            });
            problems.into_result()?;
        }
        // Delays resume from the root timer: fine enough to be a twentieth of the delay.
        let delay_tick = config.fault.delay.as_ref().map(|delay| {
            (delay.duration.get() / 20).clamp(Duration::from_millis(10), Duration::from_millis(100))
        });
        let engine = Resilience::new(&config, OWNER.with(Rc::clone));
        let renew_every = engine.renew_period();
        let tick = match (delay_tick, renew_every) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Worker {
            engine,
            proxy: config.proxy,
            metrics: config.metrics.then(Metrics::define),
            rng: RefCell::new(Xoshiro256::from_seed(host::random_seed())),
            delayed: RefCell::default(),
            tick,
            renew_every,
            renewed_at: Cell::new(HostClock.unix_millis()),
            store_warned: Cell::new(false),
        })
    }

    fn http_context(worker: Rc<Worker>, context_id: u32) -> Box<dyn HttpContext> {
        Box::new(Stream {
            worker,
            context_id,
            state: StreamState::default(),
            grpc_in_trailers: false,
        })
    }

    fn tick_period(worker: &Worker) -> Option<Duration> {
        worker.tick
    }

    fn on_tick(worker: &Worker) {
        let now = HostClock.unix_millis();
        if let Some(every) = worker.renew_every {
            let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
            if now >= worker.renewed_at.get().saturating_add(every) {
                worker.renewed_at.set(now);
                let mut events = Vec::new();
                worker.engine.renew(&HostStore, now, &mut events);
                worker.report(&events);
            }
        }
        // Collect first: resuming may run this VM's callbacks for the stream again.
        let due: Vec<u32> = {
            let mut delayed = worker.delayed.borrow_mut();
            let due: Vec<u32> = delayed
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(context, _)| *context)
                .collect();
            for context in &due {
                delayed.remove(context);
            }
            due
        };
        for context in due {
            let resumed =
                callout::set_effective_context(context).and_then(|()| callout::resume_request());
            if let Err(err) = resumed {
                // The client left during the delay: nothing to resume.
                log::debug!("[{NAME}] delayed stream {context} not resumed: {err}");
            }
        }
    }
}

struct Stream {
    worker: Rc<Worker>,
    context_id: u32,
    state: StreamState,
    /// A gRPC answer of HTTP 200 without `grpc-status` in its headers: its outcome comes in
    /// the trailers (Envoy only).
    grpc_in_trailers: bool,
}

/// Upstream names from host properties, read only when the engine asks.
struct HostNames(Proxy);

fn property(path: &[&str]) -> Option<String> {
    host::property(path)
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

impl UpstreamNames for HostNames {
    fn cluster(&mut self) -> Option<String> {
        match self.0 {
            Proxy::Envoy => property(&["xds", "cluster_name"]),
            Proxy::Kong => property(&["kong", "service_name"]),
        }
    }

    fn route(&mut self) -> Option<String> {
        match self.0 {
            Proxy::Envoy => property(&["xds", "route_name"]),
            Proxy::Kong => property(&["kong", "route_name"]),
        }
    }
}

fn fields(raw: &[u8]) -> Fields<'_> {
    decode_borrowed(raw).unwrap_or_else(|| {
        log::warn!("[{NAME}] the host returned a malformed header map");
        Fields::new()
    })
}

impl Worker {
    fn report(&self, events: &[Event]) {
        for event in events {
            self.report_one(event);
        }
    }

    fn report_one(&self, event: &Event) {
        let metrics = self.metrics.as_ref();
        let count = |pick: fn(&Metrics) -> Counter| {
            if let Some(m) = metrics {
                pick(m).inc();
            }
        };
        match event {
            Event::Circuit {
                circuit,
                transition,
            } => {
                match transition {
                    Transition::Opened {
                        consecutive_failures,
                        open_for,
                    } => {
                        log::warn!(
                            "[{NAME}] circuit {circuit} opened for {}s ({consecutive_failures} consecutive failures)",
                            open_for.as_secs()
                        );
                        count(|m| m.opened);
                    }
                    Transition::HalfOpened => {
                        log::info!(
                            "[{NAME}] circuit {circuit} half-open: trial requests go through"
                        );
                        count(|m| m.half_opened);
                    }
                    Transition::Closed => {
                        log::info!("[{NAME}] circuit {circuit} closed: the trial succeeded");
                        count(|m| m.closed);
                    }
                }
                if let Some(m) = metrics {
                    m.gauge("circuit", circuit)
                        .set(Event::phase(*transition).gauge());
                }
            }
            Event::CircuitRejected => count(|m| m.rejected),
            Event::Shed => count(|m| m.shed),
            Event::DeadlineExceeded => count(|m| m.deadline_exceeded),
            Event::FaultAborted => count(|m| m.fault_aborted),
            Event::FaultDelayed => count(|m| m.fault_delayed),
            Event::Inflight { scope, now, .. } => {
                if let Some(m) = metrics {
                    // Recorded, never incremented: Kong traps on incrementing a gauge, and a
                    // config meant for Envoy must not kill Kong's VM. The value is the count
                    // this worker's write left; a concurrent change on another worker may
                    // record before it, so the gauge can lag until the next change.
                    m.inflight_gauge(scope).set(u64::from(*now));
                }
            }
            Event::StoreUnavailable => {
                if !self.store_warned.replace(true) {
                    log::warn!(
                        "[{NAME}] shared data unavailable or contended: requests go on unjudged"
                    );
                }
                count(|m| m.store_unavailable);
            }
        }
    }
}

impl Stream {
    /// Reports the upstream's answer to the circuit (a `None` status counts as neither).
    fn judge(&mut self, status: Option<u16>) {
        let mut events = Vec::new();
        let worker = Rc::clone(&self.worker);
        worker.engine.on_response_headers(
            status,
            || HostClock.unix_millis(),
            &HostStore,
            &mut self.state,
            &mut events,
        );
        worker.report(&events);
    }

    /// Judges an answer that may be the proxy's own (its overflow or the router's timeout),
    /// from its response headers.
    fn judge_headers(&mut self, status: Option<u16>) {
        let status = status.and_then(|status| {
            self.worker
                .engine
                .counted_status(status, &self.state, |fact| match fact {
                    AnswerFact::Header(name) => {
                        host::header(Map::ResponseHeaders, name).ok().flatten()
                    }
                    AnswerFact::CodeDetails => {
                        host::property(&["response", "code_details"]).ok().flatten()
                    }
                })
        });
        self.judge(status);
    }

    fn end(&mut self) {
        // A call that ended without its status (reset, or the client left) counts as neither.
        self.grpc_in_trailers = false;
        let worker = Rc::clone(&self.worker);
        worker.delayed.borrow_mut().remove(&self.context_id);
        let mut events = Vec::new();
        worker.engine.on_stream_end(
            &HostStore,
            || HostClock.unix_millis(),
            &mut self.state,
            &mut events,
        );
        worker.report(&events);
    }
}

impl Context for Stream {
    // on_done and on_log both fire once the stream ends, however it ends (Envoy: log then
    // done; Kong: done then log): the first gives everything back, the second finds nothing.
    fn on_done(&mut self) -> bool {
        self.end();
        true
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        let worker = Rc::clone(&self.worker);
        let raw =
            host::headers_raw_capped(Map::RequestHeaders, num_headers).unwrap_or_else(|err| {
                log::warn!("[{NAME}] could not read request headers: {err}");
                Some(Vec::new())
            });
        let unread = raw.is_none();
        let raw = raw.unwrap_or_default();
        let mut headers = fields(&raw);
        let truncated = unread || host::header_map_may_be_truncated(headers.len());
        let unseen = host::unseen_headers(
            Map::RequestHeaders,
            &headers,
            unread,
            worker.engine.headers_read_by_name(),
        );
        headers.extend(host::as_fields(&unseen));
        let now = HostClock.unix_millis();
        let mut events = Vec::new();
        let verdict = worker.engine.on_request_headers(
            &headers,
            now,
            &HostStore,
            &mut HostNames(worker.proxy),
            || worker.rng.borrow_mut().next_u64(),
            &mut self.state,
            &mut events,
        );
        worker.report(&events);
        match verdict {
            RequestVerdict::Continue { mut edits, delay } => {
                if truncated {
                    for edit in worker.engine.unseen_header_edits() {
                        if !edits.contains(&edit) {
                            edits.push(edit);
                        }
                    }
                }
                // One host call per edit: a few replaces (three by default, removals of
                // client router headers are rare) cost less, in the VM and in the host, than
                // re-encoding and replacing the whole map.
                host::warn_if_refused(
                    NAME,
                    host::apply_edits_one_by_one(Map::RequestHeaders, &edits),
                );
                match delay {
                    Some(delay) if worker.tick.is_some() => {
                        let due = now
                            .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                        worker.delayed.borrow_mut().insert(self.context_id, due);
                        Action::Pause
                    }
                    _ => Action::Continue,
                }
            }
            RequestVerdict::Reply(reply) => {
                let request_id =
                    get(&headers, "x-request-id").and_then(|v| std::str::from_utf8(v).ok());
                match host::send_error(NAME, &reply, request_id) {
                    Ok(()) => Action::Pause,
                    Err(err) => {
                        log::error!("[{NAME}] could not send a {} reply: {err}", reply.status);
                        Action::Continue
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.state.awaits_outcome() {
            return Action::Continue;
        }
        let status = host::header(Map::ResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u16>().ok());
        if status == Some(200) && self.state.is_grpc() {
            match host::header(Map::ResponseHeaders, "grpc-status") {
                // Trailers-only: the call failed (or ended) before any message.
                Ok(Some(grpc_status)) => self.judge_headers(Some(grpc::http_status(&grpc_status))),
                // A half-open trial is judged by its answer starting: a stream may outlive the
                // trial's lease. Kong calls no trailer callback: the 200 is all it will see.
                _ if self.state.is_trial() || self.worker.proxy == Proxy::Kong => {
                    self.judge(status)
                }
                _ => self.grpc_in_trailers = true,
            }
            return Action::Continue;
        }
        self.judge_headers(status);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if std::mem::take(&mut self.grpc_in_trailers) {
            let status = match host::header(Map::ResponseTrailers, "grpc-status") {
                Ok(Some(grpc_status)) => grpc::http_status(&grpc_status),
                _ => 200,
            };
            self.judge(Some(status));
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.end();
    }
}

proxy_wasm::main! {{
    host::start::<ResiliencePlugin>();
}}
