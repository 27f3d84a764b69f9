//! The proxy-wasm adapter: glue only.
//!
//! Each worker's root context owns the engine and a bounded [`DeliveryQueue`]; HTTP contexts
//! build their event when the stream ends (`on_log`, which sees the final response, also a
//! local reply an earlier filter sent) and push it into the queue; the root's `on_tick` (and
//! each collector answer) sends due batches with `dispatch_http_call`. No shared queue, no
//! singleton VM: both hosts run this, and Istio can configure it (see docs/audit.md).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use palisade_kit::clock::Clock;
use palisade_kit::header_pairs::{decode_borrowed, ClientHost};
use palisade_kit::host::callout::{self, HttpCallout};
use palisade_kit::host::metrics::{Counter, Gauge, Histogram};
use palisade_kit::host::{self, HostClock, Map};
use palisade_kit::random::Xoshiro256;
use palisade_kit::reply::DENIED_BY;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::{AuditConfig, Sink};
use crate::delivery::{self, Answered, DeliveryQueue, Format, QueuedEvent, Settings};
use crate::engine::{Audit, Facts, Verdict};
use crate::event::Denial;
use crate::flavor::{depth_report, DepthReport, Flavor};
use crate::workers::{Buffered, Workers};

const NAME: &str = "palisade-audit";

struct Metrics {
    emitted: Counter,
    sent: Counter,
    retried: Counter,
    dropped: Counter,
    sampled_out: Counter,
    batch_latency_ms: Histogram,
    queue_depth: Gauge,
}

impl Metrics {
    fn define() -> Self {
        Self {
            emitted: Counter::define("palisade_audit_events_emitted"),
            sent: Counter::define("palisade_audit_events_sent"),
            retried: Counter::define("palisade_audit_events_retried"),
            dropped: Counter::define("palisade_audit_events_dropped"),
            sampled_out: Counter::define("palisade_audit_events_sampled_out"),
            batch_latency_ms: Histogram::define("palisade_audit_batch_latency_ms"),
            queue_depth: Gauge::define("palisade_audit_queue_depth"),
        }
    }
}

struct Collector {
    upstream: String,
    authority: String,
    scheme: &'static str,
    /// The REST proxy's media type; none for a plain collector, which may refuse one it does
    /// not serve (406).
    accept: Option<&'static str>,
    timeout: Duration,
}

/// One worker's engine, buffer and deliveries, shared by its root and HTTP contexts.
struct Worker {
    audit: Audit,
    queue: RefCell<DeliveryQueue>,
    collector: Option<Collector>,
    rng: RefCell<Xoshiro256>,
    metrics: Option<Metrics>,
    /// Call-out token -> batch id.
    calls: RefCell<BTreeMap<u32, u64>>,
    flavor: Cell<Flavor>,
    /// Whether this Kong has `kong.route_name`/`kong.service_name` (3.9+), from `kong.version`
    /// read once. (A route or service without a name misses for its own requests only.)
    kong_names: Cell<Option<bool>>,
    /// The queue depth last added to the cross-worker gauge.
    reported_depth: Cell<u64>,
    /// Failed batches since the last success: only the first is logged.
    failing: Cell<u64>,
}

impl Buffered for Worker {
    fn buffered(&self) -> usize {
        self.queue.borrow().buffered()
    }
}

impl Worker {
    fn count(&self, f: impl FnOnce(&Metrics)) {
        if let Some(metrics) = &self.metrics {
            f(metrics);
        }
    }

    fn report_depth(&self) {
        let depth = self.queue.borrow().buffered() as u64;
        // Nothing while the flavor is unknown (see `depth_report`): a stream teaches it before
        // its event is pushed, so by the time the depth changes it is known.
        let Some(report) = depth_report(self.flavor.get(), self.reported_depth.get(), depth) else {
            return;
        };
        self.reported_depth.set(depth);
        match report {
            DepthReport::Add(delta) => self.count(|m| m.queue_depth.add(delta)),
            DepthReport::Set(depth) => self.count(|m| m.queue_depth.set(depth)),
        }
    }

    fn record(&self, answered: &Answered) {
        self.count(|m| {
            m.sent.add(answered.sent);
            m.retried.add(answered.retried);
            m.dropped.add(answered.dropped);
            m.batch_latency_ms.record(answered.latency_ms);
        });
        match &answered.problem {
            None => {
                let failed = self.failing.replace(0);
                if failed > 0 {
                    log::info!("[{NAME}] collector answering again after {failed} failed batches");
                }
            }
            Some(problem) => {
                if self.failing.get() == 0 {
                    log::warn!(
                        "[{NAME}] batch not delivered: {problem}; {} events to retry, {} dropped (further failures are counted, not logged)",
                        answered.retried,
                        answered.dropped
                    );
                }
                self.failing.set(self.failing.get() + 1);
            }
        }
    }

    /// Sends what is due. Called from `on_tick` and after each answer, both root context
    /// callbacks where both hosts allow a dispatch.
    fn flush(&self) {
        let Some(collector) = &self.collector else {
            return;
        };
        let now = HostClock.unix_millis();
        let (sends, expired) = {
            let mut rng = self.rng.borrow_mut();
            self.queue.borrow_mut().poll(now, &mut rng)
        };
        for answered in &expired {
            // Kong before 3.9 never calls back a failed dispatch: forget its token.
            self.calls
                .borrow_mut()
                .retain(|_, batch| *batch != answered.batch_id);
            self.record(answered);
        }
        for send in sends {
            let with_accept;
            let plain;
            let headers: &[(&str, &str)] = match collector.accept {
                Some(accept) => {
                    with_accept = [
                        (":scheme", collector.scheme),
                        ("content-type", send.content_type),
                        ("accept", accept),
                    ];
                    &with_accept
                }
                None => {
                    plain = [
                        (":scheme", collector.scheme),
                        ("content-type", send.content_type),
                    ];
                    &plain
                }
            };
            let call = HttpCallout {
                upstream: &collector.upstream,
                method: "POST",
                path: &send.path,
                authority: &collector.authority,
                headers,
                body: Some(&send.body),
                timeout: collector.timeout,
            };
            match callout::dispatch_http(&call) {
                Ok(token) => {
                    self.calls.borrow_mut().insert(token, send.batch_id);
                }
                Err(err) => {
                    let answered = {
                        let mut rng = self.rng.borrow_mut();
                        self.queue
                            .borrow_mut()
                            .on_answer(send.batch_id, None, now, &mut rng)
                    };
                    if self.failing.get() == 0 {
                        log::warn!("[{NAME}] cannot dispatch to the collector: {err}");
                    }
                    if let Some(answered) = answered {
                        self.record(&answered);
                    }
                }
            }
        }
        self.report_depth();
    }

    /// Gives up everything held, batches in flight too (their call-outs are about to be
    /// cancelled), counting it dropped ([`DeliveryQueue::abandon_all`]), with one log line
    /// when anything was held.
    fn abandon_all(&self, why: &str) {
        let abandoned = self.queue.borrow_mut().abandon_all();
        self.calls.borrow_mut().clear();
        self.report_abandoned(why, &abandoned);
    }

    fn report_abandoned(&self, why: &str, abandoned: &delivery::Abandoned) {
        self.count(|m| m.dropped.add(abandoned.dropped));
        self.report_depth();
        if abandoned.dropped > 0 || abandoned.in_flight > 0 {
            log::warn!(
                "[{NAME}] {why}: {} buffered events counted as dropped, {} in flight",
                abandoned.dropped,
                abandoned.in_flight
            );
        }
    }

    fn owns_call(&self, token: u32) -> bool {
        self.calls.borrow().contains_key(&token)
    }

    fn on_answer(&self, token: u32, num_headers: usize, body_size: usize) {
        let Some(batch_id) = self.calls.borrow_mut().remove(&token) else {
            return;
        };
        // Read only as far as error codes need (DeliveryQueue::answer_cap).
        let cap = self.queue.borrow().answer_cap();
        let response = callout::http_call_response(num_headers, body_size, cap);
        let now = HostClock.unix_millis();
        let answered = {
            let mut rng = self.rng.borrow_mut();
            self.queue.borrow_mut().on_answer(
                batch_id,
                response.status.map(|s| (s, response.body.as_slice())),
                now,
                &mut rng,
            )
        };
        if let Some(answered) = answered {
            self.record(&answered);
        }
        self.flush();
    }

    fn enqueue(&self, verdict: Verdict) {
        let event = match verdict {
            Verdict::SampledOut(_) => {
                self.count(|m| m.sampled_out.inc());
                return;
            }
            Verdict::Emit(event) => event,
        };
        self.count(|m| m.emitted.inc());
        let queued = QueuedEvent {
            event_type: event.event_type,
            topic: self.audit.topic(event.event_type).to_owned(),
            key: event
                .subject
                .clone()
                .unwrap_or_else(|| event.event_id.clone()),
            json: event.to_json(),
            enqueued_ms: event.timestamp_ms,
        };
        let kept = self.collector.is_some() && self.queue.borrow_mut().push(queued);
        if !kept {
            self.count(|m| m.dropped.inc());
        }
        self.report_depth();
    }
}

fn compile(config: AuditConfig) -> Result<Worker, String> {
    let audit = Audit::build(&config).map_err(|e| e.to_string())?;
    let (format, collector) = match &config.sink {
        Some(Sink::KafkaRest(c)) => (
            Format::KafkaRest {
                base_path: c.path.clone(),
            },
            Some(c),
        ),
        Some(Sink::Http(c)) => (
            Format::Ndjson {
                path: c.path.clone(),
            },
            Some(c),
        ),
        None => (Format::Ndjson { path: "/".into() }, None),
    };
    let timeout = collector.map_or(Duration::from_secs(5), |c| c.timeout.get());
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let settings = Settings {
        format,
        max_events: config.batch.max_events as usize,
        max_interval_ms: millis(config.batch.max_interval.get()),
        max_buffered: config.batch.max_buffered_events as usize,
        max_buffered_bytes: usize::try_from(config.batch.max_buffered_bytes).unwrap_or(usize::MAX),
        max_in_flight: config.delivery.max_in_flight as usize,
        max_retries: config.delivery.max_retries,
        backoff_base_ms: millis(config.delivery.backoff_base.get()),
        backoff_max_ms: millis(config.delivery.backoff_max.get()),
        // The host's own timeout answers first; this catches hosts that never call back.
        answer_deadline_ms: millis(timeout).saturating_mul(2),
    };
    Ok(Worker {
        audit,
        queue: RefCell::new(DeliveryQueue::new(settings)),
        collector: collector.map(|c| Collector {
            upstream: c.upstream.clone(),
            authority: c.authority.clone(),
            scheme: c.scheme.as_str(),
            accept: matches!(config.sink, Some(Sink::KafkaRest(_)))
                .then_some(delivery::KAFKA_V2_ACCEPT),
            timeout,
        }),
        rng: RefCell::new(Xoshiro256::from_seed(host::random_seed())),
        metrics: config.metrics.then(Metrics::define),
        calls: RefCell::new(BTreeMap::new()),
        flavor: Cell::new(Flavor::Unknown),
        kong_names: Cell::new(None),
        reported_depth: Cell::new(0),
        failing: Cell::new(0),
    })
}

/// How often the root looks for due batches: often enough that a full batch leaves soon, and
/// never later than the interval.
fn tick_period(config: &AuditConfig) -> Duration {
    config
        .batch
        .max_interval
        .get()
        .min(Duration::from_millis(100))
}

struct AuditRoot {
    /// The current configuration's worker, and those of earlier ones still reachable: they
    /// keep delivering under the configuration they were taken with, then go.
    workers: Workers<Worker>,
    tick: callout::RootTick,
    /// Envoy is tearing this root down (`on_done` said not yet): since when, and when to give
    /// up delivering what is held, counting it dropped.
    draining: Option<(u64, u64)>,
}

/// The longest a root being torn down keeps delivering, whatever its retry settings.
const MAX_DRAIN_MS: u64 = 10 * 60 * 1000;

impl Context for AuditRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(worker) = self.workers.iter().find(|w| w.owns_call(token_id)) {
            worker.on_answer(token_id, num_headers, body_size);
        }
        self.workers.prune();
        self.finish_drain();
    }

    /// The plugin is going away (Envoy: its configuration was replaced or removed; Kong never
    /// calls this). Envoy keeps a root that answers false alive, ticks and call-out answers
    /// included, until it calls `proxy_done`; answering true deletes it at once and cancels its
    /// call-outs. So what is held is delivered first: waiting events go out now, batches in
    /// flight are answered, retries run their course, within [`DeliveryQueue::drain_bound_ms`].
    fn on_done(&mut self) -> bool {
        let now = HostClock.unix_millis();
        let mut bound = 0;
        for worker in self.workers.iter() {
            let mut queue = worker.queue.borrow_mut();
            queue.drain();
            bound = bound.max(queue.drain_bound_ms());
        }
        for worker in self.workers.iter() {
            worker.flush();
        }
        let held: usize = self.workers.iter().map(|w| w.buffered()).sum();
        if held == 0 {
            return true;
        }
        log::info!("[{NAME}] shutting down: delivering {held} buffered events first");
        self.draining = Some((now, now.saturating_add(bound.min(MAX_DRAIN_MS))));
        false
    }
}

impl AuditRoot {
    /// While torn down: once nothing is held (or the drain ran out of time, and what is left
    /// is counted dropped), tells Envoy this root is done.
    fn finish_drain(&mut self) {
        let Some((since, until)) = self.draining else {
            return;
        };
        let held = self.workers.iter().any(|w| w.buffered() > 0);
        let now = HostClock.unix_millis();
        // A clock stepped back ends the wait too: `until` would mean nothing.
        if held && (since..until).contains(&now) {
            return;
        }
        // What is still out is cancelled with the root: counted dropped now, or never.
        for worker in self.workers.iter() {
            worker.abandon_all("shutting down");
        }
        self.draining = None;
        if let Err(err) = proxy_wasm::hostcalls::done() {
            log::warn!("[{NAME}] could not finish shutting down: {err:?}");
        }
    }
}

impl RootContext for AuditRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!(
            "[{NAME}] version {} (revision {}) starting",
            palisade_kit::VERSION,
            palisade_kit::GIT_REV
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let loaded = host::plugin_configuration()
            .map_err(|err| err.to_string())
            .and_then(|bytes| {
                palisade_kit::config::load::<AuditConfig>(&bytes).map_err(|err| err.to_string())
            })
            .and_then(|config| {
                let period = tick_period(&config);
                compile(config).map(|worker| (worker, period))
            });
        match loaded {
            Ok((worker, period)) => {
                if worker.collector.is_none() {
                    log::warn!("[{NAME}] no sink configured: events are counted as dropped");
                }
                if let Err(err) = self.tick.set(NAME, period) {
                    log::error!("[{NAME}] configuration rejected: cannot set the tick: {err}");
                    return false;
                }
                // Events buffered under the previous configuration, and those of its streams
                // still in flight, are still delivered by it.
                self.workers.replace(worker);
                log::info!("[{NAME}] configuration accepted");
                true
            }
            Err(reason) => {
                log::error!("[{NAME}] configuration rejected: {reason}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        for worker in self.workers.iter() {
            worker.flush();
        }
        self.workers.prune();
        self.finish_drain();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(match self.workers.current() {
            Some(worker) => Box::new(Stream {
                worker: Rc::clone(worker),
                started_ms: None,
                request_headers: None,
                denial: None,
            }),
            // Audit never fails a request: an unconfigured audit lets traffic through.
            None => Box::new(host::PassThrough),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Headers filters after audit's request-headers callback may add to a request (later filters
/// of a Kong chain; Kong counts the headers again for each filter, so those added before are
/// in the count): the margin audit's whole-map read at the end of the stream keeps.
const HEADERS_ADDED_AFTER: usize = 16;

struct Stream {
    worker: Rc<Worker>,
    started_ms: Option<u64>,
    /// The request's header count when it reached this filter; `None` when its request
    /// headers callback never ran (see `facts_and_event`).
    request_headers: Option<usize>,
    denial: Option<Denial>,
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    host::property(path).ok().flatten()
}

fn text_property(path: &[&str]) -> Option<String> {
    property(path)
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|s| !s.is_empty())
}

/// An integer property: 8 little-endian bytes (Envoy) or decimal text (Kong).
fn int_property(flavor: Flavor, path: &[&str]) -> Option<u64> {
    let bytes = property(path)?;
    decode_int(flavor, &bytes)
}

fn decode_int(flavor: Flavor, bytes: &[u8]) -> Option<u64> {
    match (flavor, <[u8; 8]>::try_from(bytes)) {
        (Flavor::Envoy, Ok(le)) => u64::try_from(i64::from_le_bytes(le)).ok(),
        _ => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
    }
}

impl Stream {
    /// The status: Envoy's and Kong's `response.code`, else the response's `:status` (asked
    /// for only then). The worker's first finished stream also tells which proxy this is: by
    /// its `response.code`, or, when it has none (the client reset before a response), by the
    /// kit's host probe (one host call, once per VM).
    fn status_and_flavor(&self) -> u16 {
        let worker = &self.worker;
        let code = property(&["response", "code"]);
        if worker.flavor.get() == Flavor::Unknown {
            worker
                .flavor
                .set(Flavor::learn(code.as_deref(), host::is_kong));
        }
        code.and_then(|c| decode_int(worker.flavor.get(), &c))
            .and_then(|c| u16::try_from(c).ok())
            .or_else(|| {
                let status = host::header(Map::ResponseHeaders, ":status").ok()??;
                std::str::from_utf8(&status).ok()?.parse().ok()
            })
            .unwrap_or(0)
    }

    fn facts_and_event(&mut self) -> Verdict {
        let worker = Rc::clone(&self.worker);
        let now_ms = HostClock.unix_millis();
        // The request's headers in one read: the event needs most of the ones it carries
        // (method, path, host, identity, user agent, ids, captured headers).
        // The request's count when it reached this filter, plus room for the headers added
        // after that (filters later in a Kong chain): past that, Kong's whole-map read could
        // write beyond its buffer (`host::whole_map_readable`), so the event's headers are
        // asked for by name.
        let raw_request = host::headers_raw_capped(
            Map::RequestHeaders,
            // Not seen (Kong skips it for a request a filter before this one answered): the
            // count is unknown, so the map is not read whole.
            self.request_headers
                .map_or(usize::MAX, |n| n.saturating_add(HEADERS_ADDED_AFTER)),
        )
        .unwrap_or_default();
        let mut request = raw_request
            .as_deref()
            .and_then(decode_borrowed)
            .unwrap_or_default();
        let unseen = host::unseen_headers(
            Map::RequestHeaders,
            &request,
            raw_request.is_none(),
            worker.audit.headers_read_by_name(),
        );
        request.extend(host::as_fields(&unseen));
        let status = self.status_and_flavor();
        let flavor = worker.flavor.get();
        // Kong: the refusing plugin's header, taken in our response phase (Kong runs it for
        // every local reply). Envoy: the refusal's response code details, read below; there
        // the header is only stripped.
        let denial = self.denial.take();
        let measured = self.started_ms.map(|start| now_ms.saturating_sub(start));
        let mut facts = Facts {
            request_headers: &request,
            status,
            latency_ms: measured,
            bytes_in: int_property(flavor, &["request", "total_size"]),
            bytes_out: int_property(flavor, &["response", "total_size"]),
            client_address: text_property(&["source", "address"]),
            upstream_address: text_property(&["upstream", "address"]),
            denial,
            // The flavor shows the host without asking it (Kong's `:authority` is its own).
            client_host: match flavor {
                Flavor::Kong => ClientHost::HostHeader,
                Flavor::Envoy | Flavor::Unknown => ClientHost::Authority,
            },
            ..Facts::default()
        };
        match flavor {
            Flavor::Kong => {
                let names = worker.kong_names.get().unwrap_or_else(|| {
                    let names = property(&["kong", "version"])
                        .is_some_and(|v| palisade_kit::route_name::has_route_name(&v));
                    worker.kong_names.set(Some(names));
                    names
                });
                if names {
                    facts.route = text_property(&["kong", "route_name"]);
                    facts.cluster = text_property(&["kong", "service_name"]);
                }
            }
            _ => {
                // No Palisade plugin sends the header on Envoy (its refusals name themselves in
                // the response code details): one seen here came from the upstream.
                facts.denial = None;
                facts.route = text_property(&["xds", "route_name"]);
                facts.cluster = text_property(&["xds", "cluster_name"]);
                // Why Envoy answered as it did, for the answers that need explaining (an
                // error, or no answer at all): a success says `via_upstream` or
                // `direct_response`, and reading it costs Envoy ~12,000 instructions (a value
                // handed back through the plugin's allocator).
                if status == 0 || status >= 400 {
                    facts.code_details = text_property(&["response", "code_details"]);
                    // A Palisade plugin's refusal: Envoy skips our response phase for a local
                    // reply sent before us, and the details name who refused and why.
                    facts.denial = facts.code_details.as_deref().and_then(Denial::from_details);
                }
                // Envoy's duration (ns) covers requests refused before our request phase.
                if let Some(ns) = int_property(flavor, &["request", "duration"]) {
                    facts.latency_ms = Some(ns / 1_000_000);
                }
            }
        }
        let mut rng = worker.rng.borrow_mut();
        worker.audit.event(&facts, &mut rng, now_ms)
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        self.started_ms = Some(HostClock.unix_millis());
        self.request_headers = Some(num_headers);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The refusing plugin's note is for us, not for the client. On Kong an upstream can
        // send it too: only a Palisade plugin's name and a short reason are kept.
        if let Ok(Some(value)) = host::header(Map::ResponseHeaders, DENIED_BY) {
            self.denial = Denial::from_header(&value);
            if let Err(err) = host::remove_header(Map::ResponseHeaders, DENIED_BY) {
                log::warn!("[{NAME}] could not remove {DENIED_BY}: {err}");
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let verdict = self.facts_and_event();
        self.worker.enqueue(verdict);
    }
}

proxy_wasm::main! {{
    host::init_logging(NAME);
    proxy_wasm::set_root_context(|_| Box::new(AuditRoot {
        workers: Workers::default(),
        tick: callout::RootTick::default(),
        draining: None,
    }));
}}
