//! The proxy-wasm adapter: glue only. Request values are read from the host when the limiter
//! asks for them, the limiter decides against shared data, and its reply or response headers
//! are applied here. A request with global limits is held while the rate-limit service is
//! asked (gRPC or HTTP call-out), then resumed or answered.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use palisade_kit::config::ConfigError;
use palisade_kit::host::callout::{self, HttpCallout};
use palisade_kit::host::metrics::Counter;
use palisade_kit::host::{self, HostStore, Map, Plugin};
use palisade_kit::route_name::RouteName;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::{GlobalService, RateLimitConfig, Transport};
use crate::key::{Descriptor, HashKey, RequestView};
use crate::limiter::{
    CalloutError, Decision, GlobalCheck, RateLimitHeaders, RateLimiter, Tallies, RATE_LIMIT_MAX_LEN,
};
use crate::proto::{HeaderToAdd, RateLimitRequest, RateLimitResponse};

const NAME: &str = "palisade-rate-limit";
const GRPC_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
const GRPC_METHOD: &str = "ShouldRateLimit";
/// Largest answer read from the service (a few statuses are a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;

struct RateLimitPlugin;

/// One limit's counters.
struct LimitMetrics {
    allowed: Counter,
    limited: Counter,
    store_conflicts: Counter,
    store_failures: Counter,
    callout_failures: Counter,
}

/// The limiter, its metrics, and which host property names the route.
struct Worker {
    limiter: RateLimiter,
    metrics: Vec<LimitMetrics>,
    route_name: RouteName,
    global: Option<GlobalService>,
    /// The service is failing: logged once when it starts and once when it recovers.
    failing: Cell<bool>,
    /// When a limit last could not be checked in shared data and it was logged (Unix ns).
    store_warned_at: Cell<Option<u64>>,
    /// Until when (Unix ns) the service is taken as failing without a call: Kong 3.8 lets
    /// a request go on when its call fails, never calling the plugin back, and the SDK keeps
    /// such a call's token for good. So after one, requests get the failure mode at once for
    /// the call's timeout and a second, rather than each leaving a call behind.
    held_until_ns: Cell<u64>,
}

/// 16 bytes of the host's entropy for a new fingerprint key.
fn fresh_hash_key() -> [u8; 16] {
    let seed = host::random_seed();
    let mut key = [0u8; 16];
    for (byte, from) in key.iter_mut().zip(seed.iter()) {
        *byte = *from;
    }
    key
}

impl Plugin for RateLimitPlugin {
    const NAME: &'static str = NAME;
    type Config = RateLimitConfig;
    type Engine = Worker;

    fn compile(config: RateLimitConfig) -> Result<Worker, ConfigError> {
        // One secret keys every worker's fingerprints (see `key::HashKey`). A store that
        // cannot give it now leaves this VM with a key of its own (never a known one): its keys
        // then land in other slots than the other workers', and each such key gets one budget
        // per group of workers.
        let hash_key = HashKey::load_or_create(&HostStore, fresh_hash_key).unwrap_or_else(|err| {
            log::warn!("[{NAME}] could not read or store the fingerprint key: {err}");
            HashKey::from_bytes(fresh_hash_key())
        });
        let limiter = RateLimiter::new(&config, hash_key);
        // Slots are created before traffic (see `slots`); a store that refuses now will be
        // asked again per request, where the failure mode applies.
        match limiter.prepare(&HostStore) {
            Ok(created) => log::info!("[{NAME}] {created} shared-data slots created"),
            Err(err) => log::warn!("[{NAME}] could not create shared-data slots: {err}"),
        }
        let metrics = if config.metrics {
            limiter
                .limits()
                .iter()
                .map(|limit| {
                    let name = |what: &str| format!("palisade_rate_limit.{}.{what}", limit.name);
                    LimitMetrics {
                        allowed: Counter::define(&name("allowed")),
                        limited: Counter::define(&name("limited")),
                        store_conflicts: Counter::define(&name("store_conflicts")),
                        store_failures: Counter::define(&name("store_failures")),
                        callout_failures: Counter::define(&name("callout_failures")),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Worker {
            limiter,
            metrics,
            route_name: RouteName::default(),
            global: config.global,
            failing: Cell::new(false),
            store_warned_at: Cell::new(None),
            held_until_ns: Cell::new(0),
        })
    }

    fn http_context(worker: Rc<Worker>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(Stream {
            worker,
            response_headers: None,
            service_response_headers: Vec::new(),
            waiting: None,
        })
    }
}

struct Stream {
    worker: Rc<Worker>,
    /// `RateLimit-Policy` and `RateLimit` for the response of an admitted request.
    response_headers: Option<RateLimitHeaders>,
    /// What the rate-limit service asked to add to the response of the request it admitted.
    service_response_headers: Vec<HeaderToAdd>,
    /// The call-outs this request waits for, and what it is waiting to decide.
    waiting: Option<Waiting>,
}

/// A request held for the rate-limit service.
struct Waiting {
    check: GlobalCheck,
    /// Each call's token (`None`: it could not be sent) and, once it came, its answer: one
    /// call in all, or one per descriptor with `call_per_limit`.
    calls: Vec<(Option<u32>, Option<Answer>)>,
    /// How many calls the check needs: `calls` holds those sent so far.
    needed: usize,
}

type Answer = Result<RateLimitResponse, CalloutError>;

impl Waiting {
    /// Whether `token` is one of this request's calls, still unanswered.
    fn expects(&self, token: u32) -> bool {
        self.calls
            .iter()
            .any(|(t, a)| *t == Some(token) && a.is_none())
    }

    /// With calls sent one at a time: once every call sent so far has its answer, sends the
    /// next, and the ones after it while they cannot be sent.
    fn send_next(&mut self, service: &GlobalService) {
        while self.calls.len() < self.needed && self.calls.iter().all(|(_, a)| a.is_some()) {
            let next = self.calls.len();
            let one = self.check.descriptors.get(next..=next).unwrap_or_default();
            self.calls.push(sent(service, one));
        }
    }

    /// Records `token`'s answer; `false` if it is not one of this request's calls.
    fn record(&mut self, token: u32, answer: Answer) -> bool {
        match self
            .calls
            .iter_mut()
            .find(|(t, a)| *t == Some(token) && a.is_none())
        {
            Some((_, slot)) => {
                *slot = Some(answer);
                true
            }
            None => false,
        }
    }

    /// Every call's answer, in descriptor order, once all have come.
    fn answers(&mut self) -> Option<Vec<Answer>> {
        if self.calls.len() < self.needed || self.calls.iter().any(|(_, a)| a.is_none()) {
            return None;
        }
        Some(
            self.calls
                .drain(..)
                .filter_map(|(_, answer)| answer)
                .collect(),
        )
    }
}

/// Request values straight from the host, each asked only when the limiter needs it.
struct HostRequest<'a> {
    route_name: &'a RouteName,
}

fn property(path: &[&str]) -> Option<Vec<u8>> {
    host::property(path).ok().flatten()
}

impl RequestView for HostRequest<'_> {
    fn header(&mut self, name: &str) -> Option<Vec<u8>> {
        host::header(Map::RequestHeaders, name).ok().flatten()
    }

    fn source_address(&mut self) -> Option<Vec<u8>> {
        property(&["source", "address"])
    }

    fn route_name(&mut self) -> Option<Vec<u8>> {
        self.route_name.read(host::is_kong, property)
    }
}

fn record(worker: &Worker, tallies: &Tallies) {
    if tallies.iter().any(|(_, t)| t.store_failure) {
        warn_store_failure(worker);
    }
    let metrics = &worker.metrics;
    // With metrics off there are none to look up.
    if metrics.is_empty() {
        return;
    }
    for (index, tally) in tallies {
        let Some(m) = metrics.get(*index) else {
            continue;
        };
        if tally.allowed {
            m.allowed.inc();
        }
        if tally.limited {
            m.limited.inc();
        }
        if tally.conflicts > 0 {
            m.store_conflicts.add(u64::from(tally.conflicts));
        }
        if tally.store_failure {
            m.store_failures.inc();
        }
        if tally.callout_failure {
            m.callout_failures.inc();
        }
    }
}

/// Logged because metrics may be off (Kong 3.4-3.7); at most once a minute per VM, since a full
/// slot table fails every request of some keys for as long as it stays full.
#[cold]
fn warn_store_failure(worker: &Worker) {
    const EVERY_NANOS: u64 = 60_000_000_000;
    let now = host::unix_nanos();
    let recent = worker
        .store_warned_at
        .get()
        .is_some_and(|at| now >= at && now - at < EVERY_NANOS);
    if recent {
        return;
    }
    worker.store_warned_at.set(Some(now));
    log::warn!(
        "[{NAME}] a limit could not be checked (its slots are full, or shared data failed): \
         on_store_failure applies; store_failures counts each (logged at most once a minute)"
    );
}

fn set_response_header(name: &str, value: &[u8]) {
    if let Err(err) = host::set_header(Map::ResponseHeaders, name, value) {
        log::warn!("[{NAME}] could not add {name}: {err}");
    }
}

/// Asks the rate-limit service about `descriptors`; the answer comes to this stream's context.
fn dispatch(service: &GlobalService, descriptors: &[Descriptor]) -> Result<u32, String> {
    let request = RateLimitRequest {
        domain: &service.domain,
        descriptors,
        hits_addend: 1,
    };
    let timeout = service.timeout.get();
    let token = match service.transport {
        Transport::Grpc => callout::dispatch_grpc(
            &service.upstream,
            GRPC_SERVICE,
            GRPC_METHOD,
            &[],
            &request.to_protobuf(),
            timeout,
        ),
        Transport::Http => callout::dispatch_http(&HttpCallout {
            upstream: &service.upstream,
            method: "POST",
            path: &service.path,
            authority: &service.authority,
            headers: &[
                (":scheme", service.scheme.as_str()),
                ("content-type", "application/json"),
            ],
            body: Some(&request.to_json()),
            timeout,
        }),
    };
    token.map_err(|err| err.to_string())
}

/// One call for `descriptors`: its token, or the answer it already has when it cannot be sent.
fn sent(service: &GlobalService, descriptors: &[Descriptor]) -> (Option<u32>, Option<Answer>) {
    match dispatch(service, descriptors) {
        Ok(token) => (Some(token), None),
        Err(err) => (None, Some(Err(CalloutError::Dispatch(err)))),
    }
}

impl Stream {
    /// Applies a decision; `resume` when the request is held for a call-out.
    fn apply(&mut self, decision: Decision, resume: bool) -> Action {
        match decision {
            Decision::Allow {
                response_headers,
                service,
            } => {
                self.response_headers = response_headers;
                if let Some(service) = service {
                    for (name, value) in &service.request {
                        if let Err(err) =
                            host::add_header(Map::RequestHeaders, name, value.as_bytes())
                        {
                            log::warn!("[{NAME}] could not add {name} to the request: {err}");
                        }
                    }
                    self.service_response_headers = service.response;
                }
                if resume {
                    if let Err(err) = callout::resume_request() {
                        log::warn!("[{NAME}] could not resume the request: {err}");
                    }
                }
                Action::Continue
            }
            Decision::Deny(reply) => {
                match host::send_error(NAME, &reply, host::request_id().as_deref()) {
                    Ok(()) => Action::Pause,
                    Err(err) => {
                        log::error!("[{NAME}] could not send a {} reply: {err}", reply.status);
                        if resume {
                            let _ = callout::resume_request();
                        }
                        Action::Continue
                    }
                }
            }
            Decision::Ask(check) => self.ask(check),
        }
    }

    fn ask(&mut self, check: GlobalCheck) -> Action {
        let worker = Rc::clone(&self.worker);
        let Some(service) = &worker.global else {
            // The configuration requires `global` for global limits: unreachable.
            return Action::Continue;
        };
        if host::unix_nanos() < worker.held_until_ns.get() {
            let calls = if service.call_per_limit {
                check.descriptors.len()
            } else {
                1
            };
            let answers = (0..calls).map(|_| Err(CalloutError::Held)).collect();
            return self.conclude(&check, answers, false);
        }
        let (calls, needed) = if service.call_per_limit {
            // Kong before 3.7 resumes the request at the first answer whose callback sends no
            // other call (ngx_wasm_module tracks one call per filter until 261bd71e), and 3.7
            // can crash when one of two pending calls fails (ngx_wasm_module #545, fixed by
            // b26106c4 in 3.8): there, the calls go one at a time, each sent from the previous
            // one's answer (`Waiting::send_next` sends the first too).
            let one_at_a_time = check.descriptors.len() > 1
                && host::is_kong()
                && !host::kong_version_at_least(3, 8);
            let calls = if one_at_a_time {
                Vec::new()
            } else {
                check
                    .descriptors
                    .chunks(1)
                    .map(|one| sent(service, one))
                    .collect()
            };
            (calls, check.descriptors.len())
        } else {
            (vec![sent(service, &check.descriptors)], 1)
        };
        let mut waiting = Waiting {
            check,
            calls,
            needed,
        };
        waiting.send_next(service);
        match waiting.answers() {
            // Nothing could be sent: decide now.
            Some(answers) => self.conclude(&waiting.check, answers, false),
            None => {
                self.waiting = Some(waiting);
                Action::Pause
            }
        }
    }

    fn conclude(&mut self, check: &GlobalCheck, answers: Vec<Answer>, resume: bool) -> Action {
        let worker = Rc::clone(&self.worker);
        match answers.iter().find_map(|answer| answer.as_ref().err()) {
            Some(err) if !worker.failing.replace(true) => {
                log::warn!("[{NAME}] the rate-limit service failed: {err}");
            }
            None if worker.failing.replace(false) => {
                log::info!("[{NAME}] the rate-limit service answers again");
            }
            _ => {}
        }
        let (decision, tallies) = worker.limiter.conclude_calls(check, answers, &HostStore);
        record(&worker, &tallies);
        self.apply(decision, resume)
    }

    fn expects(&self, token: u32) -> bool {
        self.waiting.as_ref().is_some_and(|w| w.expects(token))
    }

    /// Takes `token`'s answer; once every call of the held request has answered, decides it.
    fn answered(&mut self, token: u32, answer: Answer) {
        let Some(waiting) = self.waiting.as_mut() else {
            return;
        };
        if !waiting.record(token, answer) {
            return;
        }
        if let Some(service) = &self.worker.global {
            waiting.send_next(service);
        }
        let Some(answers) = waiting.answers() else {
            return;
        };
        if let Some(waiting) = self.waiting.take() {
            self.conclude(&waiting.check, answers, true);
        }
    }
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if !self.expects(token_id) {
            return;
        }
        let response = callout::http_call_response(num_headers, body_size, MAX_ANSWER);
        // lyft/ratelimit answers 200 for OK and 429 for OVER_LIMIT, both with the JSON body.
        let answer = match response.status {
            Some(200 | 429) => RateLimitResponse::from_json(&response.body)
                .map_err(|err| CalloutError::Decode(err.to_string())),
            Some(status) => Err(CalloutError::HttpStatus(status)),
            None => Err(CalloutError::NoAnswer),
        };
        self.answered(token_id, answer);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        if !self.expects(token_id) {
            return;
        }
        let answer = if status_code != 0 {
            Err(CalloutError::GrpcStatus(status_code))
        } else {
            callout::grpc_call_response(response_size, MAX_ANSWER)
                .map_err(|err| CalloutError::Decode(err.to_string()))
                .and_then(|bytes| {
                    RateLimitResponse::from_protobuf(&bytes)
                        .map_err(|err| CalloutError::Decode(err.to_string()))
                })
        };
        self.answered(token_id, answer);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The decision owns what it carries: the worker is borrowed only to decide.
        let worker = &*self.worker;
        let mut request = HostRequest {
            route_name: &worker.route_name,
        };
        let (decision, tallies) =
            worker
                .limiter
                .decide(&mut request, &HostStore, host::unix_nanos());
        record(worker, &tallies);
        self.apply(decision, false)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // A response while calls are pending: Kong 3.8 lets the request go on after a call
        // failed (fail-open, as documented). Envoy always answers; a response there is its own
        // local reply, and the calls' answers, if they come, find nothing waiting.
        if self.waiting.take().is_some() && host::is_kong() {
            if let Some(service) = &self.worker.global {
                let hold = service.timeout.get().saturating_add(Duration::from_secs(1));
                let hold_ns = u64::try_from(hold.as_nanos()).unwrap_or(u64::MAX);
                self.worker
                    .held_until_ns
                    .set(host::unix_nanos().saturating_add(hold_ns));
                if !self.worker.failing.replace(true) {
                    log::warn!("[{NAME}] the rate-limit service failed: {}; requests get the failure mode without a call for {}ms", CalloutError::NoAnswer, hold_ns / 1_000_000);
                }
            }
        }
        if let Some(headers) = self.response_headers.take() {
            let mut buf = [0; RATE_LIMIT_MAX_LEN];
            let long;
            let rate_limit = match headers.write_rate_limit(&mut buf) {
                Some(value) => value,
                None => {
                    long = headers.rate_limit();
                    long.as_bytes()
                }
            };
            set_response_header(RateLimitHeaders::POLICY, headers.policy.as_bytes());
            set_response_header(RateLimitHeaders::RATE_LIMIT, rate_limit);
        }
        if !self.service_response_headers.is_empty() {
            for (name, value) in std::mem::take(&mut self.service_response_headers) {
                if let Err(err) = host::add_header(Map::ResponseHeaders, &name, value.as_bytes()) {
                    log::warn!("[{NAME}] could not add {name}: {err}");
                }
            }
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    host::start::<RateLimitPlugin>();
}}
