//! The proxy-wasm adapter: glue only. The request's headers are read once, the
//! [`Authenticator`] decides, and its edits or refusal are applied here; metrics are counted
//! here too. Nothing of the token or the headers is ever logged.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use palisade_kit::config::{ConfigError, Problems};
use palisade_kit::header_pairs::{decode_borrowed, get, Edit, Fields};
use palisade_kit::host::callout::{self, HttpCallout};
use palisade_kit::host::metrics::Counter;
use palisade_kit::host::store::HostStore;
use palisade_kit::host::{self, Map, Plugin};
use palisade_kit::reply::ErrorReply;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::config::AuthConfig;
use crate::engine::{Answer, Authenticator, PendingIntrospection, Source, StoredKeys, Verdict};
use crate::introspection::{CachedAnswer, Introspected, IntrospectionCache, IntrospectionError};
use crate::rejection::Rejection;
use crate::remote::{RemoteJwks, Trigger};

const NAME: &str = "palisade-auth";

struct AuthPlugin;

/// Counters by source (each provider, then `api_key`, `introspection`, and `none` for a request
/// refused before any credential named one), and by reason for denials; defined once per VM.
struct Metrics {
    allowed: Vec<Counter>,
    anonymous: Counter,
    /// `denied[source][reason]`, reasons in [`Rejection::LABELS`] order.
    denied: Vec<Vec<Counter>>,
    providers: usize,
    /// Per provider with a remote JWKS: `(fetched, fetch_failed)`.
    jwks: Vec<Option<(Counter, Counter)>>,
}

impl Metrics {
    fn define(engine: &Authenticator) -> Self {
        let mut names: Vec<&str> = engine.providers().iter().map(|p| p.name.as_str()).collect();
        let providers = names.len();
        names.extend(["api_key", "introspection", "none"]);
        Self {
            allowed: names
                .iter()
                .map(|p| Counter::define(&format!("palisade_auth.allowed.{p}")))
                .collect(),
            anonymous: Counter::define("palisade_auth.anonymous"),
            denied: names
                .iter()
                .map(|p| {
                    Rejection::LABELS
                        .iter()
                        .map(|reason| {
                            Counter::define(&format!("palisade_auth.denied.{p}.{reason}"))
                        })
                        .collect()
                })
                .collect(),
            providers,
            jwks: engine
                .providers()
                .iter()
                .map(|p| {
                    p.remote().map(|_| {
                        let name = |what: &str| format!("palisade_auth.jwks.{}.{what}", p.name);
                        (
                            Counter::define(&name("fetched")),
                            Counter::define(&name("fetch_failed")),
                        )
                    })
                })
                .collect(),
        }
    }

    fn row(&self, source: Source) -> usize {
        match source {
            Source::Provider(index) => index,
            Source::ApiKey => self.providers,
            Source::Introspection => self.providers + 1,
            Source::None => self.providers + 2,
        }
    }

    fn allowed(&self, source: Source) {
        if let Some(counter) = self.allowed.get(self.row(source)) {
            counter.inc();
        }
    }

    fn denied(&self, source: Source, rejection: &Rejection) {
        let column = Rejection::LABELS
            .iter()
            .position(|label| *label == rejection.label());
        if let Some(counter) = column.and_then(|c| self.denied.get(self.row(source))?.get(c)) {
            counter.inc();
        }
    }
}

struct Worker {
    engine: Authenticator,
    metrics: Option<Metrics>,
    /// Introspection answers, per worker (keyed by the token's SHA-256).
    cache: Option<RefCell<IntrospectionCache>>,
    /// JWKS refreshes the root timer has in flight: call-out token → (provider index, when to
    /// give up on its answer, when it was made; Unix ms). Kong 3.4–3.8 never call back a failed
    /// dispatch: such an entry is dropped at its deadline, or it would hold the provider's
    /// refreshes forever.
    refreshing: RefCell<HashMap<u32, (usize, u64, u64)>>,
    /// Until when (Unix ms) a call-out is taken as failed without being made: set when Kong
    /// 3.8 lets a request go on after its call-out failed, so that until then requests are
    /// refused before the upstream instead of reaching it unauthenticated.
    held_until_ms: RefCell<HashMap<Callee, u64>>,
    /// The one warning for Kong before 3.9 refusing a credential in the query was logged.
    warned_query_kept: Cell<bool>,
}

/// Whom a request's call-out goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Callee {
    Introspection,
    /// A provider's JWKS server.
    Jwks(usize),
}

impl Worker {
    fn held(&self, callee: Callee, now_ms: u64) -> bool {
        self.held_until_ms
            .borrow()
            .get(&callee)
            .is_some_and(|until| now_ms < *until)
    }

    /// Holds `callee`'s call-outs for `timeout` and a second from now.
    fn hold(&self, callee: Callee, timeout: Duration) {
        let Some(now_ms) = now_ms() else {
            return;
        };
        let hold = timeout.saturating_add(Duration::from_secs(1));
        let until = now_ms.saturating_add(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX));
        self.held_until_ms.borrow_mut().insert(callee, until);
    }
}

/// How often the root timer looks at the shared JWKS records (and refreshes those due).
const JWKS_TICK: Duration = Duration::from_secs(1);

fn now_ms_or_zero() -> u64 {
    now_ms().unwrap_or_default()
}

fn dispatch_jwks(remote: &RemoteJwks) -> Result<u32, palisade_kit::host::HostError> {
    let request = remote.request();
    callout::dispatch_http(&HttpCallout {
        upstream: request.upstream,
        method: "GET",
        path: request.path,
        authority: request.authority,
        headers: &request.headers,
        body: None,
        timeout: request.timeout,
    })
}

impl Worker {
    fn remote(&self, provider: usize) -> Option<&RemoteJwks> {
        self.engine.providers().get(provider)?.remote()
    }

    /// Takes the answer to a JWKS call-out made at `called_ms` (its header count and body size;
    /// `None`: the dispatch itself failed): new keys for every worker, or one warning line and
    /// the last good keys kept.
    fn jwks_answer(
        &self,
        provider: usize,
        trigger: Trigger,
        called_ms: u64,
        answer: Option<(usize, usize)>,
    ) {
        let Some(remote) = self.remote(provider) else {
            return;
        };
        let now_ms = now_ms_or_zero();
        let (status, body, size) = match answer {
            Some((num_headers, size)) => {
                let response =
                    callout::http_call_response(num_headers, size, remote.max_response_bytes() + 1);
                (response.status, response.body, size)
            }
            None => (None, Vec::new(), 0),
        };
        let result = remote.fetched_at(&HostStore, called_ms, now_ms, status, &body, size);
        let counters = self
            .metrics
            .as_ref()
            .and_then(|m| m.jwks.get(provider)?.as_ref());
        match result {
            Ok(fetched) => {
                if let Some((ok, _)) = counters {
                    ok.inc();
                }
                if fetched.changed {
                    log::info!(
                        "[{NAME}] JWKS of provider {:?} updated ({trigger}): {} keys, {} skipped",
                        remote.provider(),
                        fetched.keys,
                        fetched.skipped
                    );
                }
            }
            Err(error) => {
                if let Some((_, failed)) = counters {
                    failed.inc();
                }
                let kept = if remote.cached(now_ms).is_some() {
                    "keeping the last good keys"
                } else {
                    "no usable keys"
                };
                log::warn!(
                    "[{NAME}] JWKS fetch for provider {:?} failed ({trigger}): {error}; {kept}",
                    remote.provider()
                );
            }
        }
    }
}

impl Plugin for AuthPlugin {
    const NAME: &'static str = NAME;
    type Config = AuthConfig;
    type Engine = Worker;

    fn compile(config: AuthConfig) -> Result<Worker, ConfigError> {
        let mut problems = Problems::default();
        let mut engine = Authenticator::build(&config, &mut problems);
        problems.into_result()?;
        engine.set_client_host(host::client_host);
        let metrics = config.metrics.then(|| Metrics::define(&engine));
        let cache = engine
            .introspector()
            .map(|introspector| RefCell::new(introspector.new_cache()));
        Ok(Worker {
            engine,
            metrics,
            cache,
            refreshing: RefCell::default(),
            held_until_ms: RefCell::default(),
            warned_query_kept: Cell::new(false),
        })
    }

    fn tick_period(worker: &Worker) -> Option<Duration> {
        worker
            .engine
            .providers()
            .iter()
            .any(|p| p.remote().is_some())
            .then_some(JWKS_TICK)
    }

    /// Takes in other workers' fetches, and refreshes keys that are due (one worker, under
    /// the shared lease). Requests never wait for this.
    fn on_tick(worker: &Worker) {
        let Some(now_ms) = now_ms() else {
            return;
        };
        worker
            .refreshing
            .borrow_mut()
            .retain(|_, (_, deadline, _)| now_ms <= *deadline);
        for (index, provider) in worker.engine.providers().iter().enumerate() {
            let Some(remote) = provider.remote() else {
                continue;
            };
            remote.sync(&HostStore);
            if !remote.due(now_ms)
                || worker
                    .refreshing
                    .borrow()
                    .values()
                    .any(|(p, _, _)| *p == index)
                || !remote.claim(&HostStore, now_ms, Trigger::Interval)
            {
                continue;
            }
            match dispatch_jwks(remote) {
                Ok(token) => {
                    let timeout =
                        u64::try_from(remote.request().timeout.as_millis()).unwrap_or(u64::MAX);
                    let deadline = now_ms.saturating_add(timeout).saturating_add(1000);
                    worker
                        .refreshing
                        .borrow_mut()
                        .insert(token, (index, deadline, now_ms));
                }
                Err(err) => {
                    log::error!("[{NAME}] could not call the JWKS server: {err}");
                    worker.jwks_answer(index, Trigger::Interval, now_ms, None);
                }
            }
        }
    }

    fn on_root_http_call_response(
        worker: &Worker,
        token: u32,
        num_headers: usize,
        body_size: usize,
    ) {
        let provider = worker.refreshing.borrow_mut().remove(&token);
        if let Some((provider, _, called_ms)) = provider {
            worker.jwks_answer(
                provider,
                Trigger::Interval,
                called_ms,
                Some((num_headers, body_size)),
            );
        }
    }

    fn http_context(worker: Rc<Worker>, _context_id: u32) -> Box<dyn HttpContext> {
        Box::new(Stream {
            worker,
            pending: None,
            kong_target: None,
            request_headers: 0,
        })
    }
}

struct Stream {
    worker: Rc<Worker>,
    /// What the paused request waits for.
    pending: Option<Pending>,
    /// Kong: the request target as the client sent it, read once (see [`KongTarget`]).
    kong_target: Option<Rc<KongTarget>>,
    /// The request's header count, for reading its map again after a call-out
    /// (`host::headers_raw_capped`).
    request_headers: usize,
}

enum Pending {
    /// The token being introspected.
    Introspection(PendingIntrospection),
    /// A JWKS fetch for this provider; the request is decided again with its answer.
    Jwks {
        provider: usize,
        trigger: Trigger,
        /// When the call was made (Unix ms).
        called_ms: u64,
        raw: Vec<u8>,
        peer: Option<Vec<u8>>,
    },
}

fn fields(raw: &[u8]) -> Fields<'_> {
    decode_borrowed(raw).unwrap_or_else(|| {
        log::warn!("[{NAME}] the host returned a malformed header map");
        Fields::new()
    })
}

/// A request answered here goes no further, but palisade-audit reads its headers when the
/// stream ends: the identity headers the client sent must be gone by then, as on every path
/// that lets a request on, or the audit trail would name whoever the client claimed to be.
fn strip_before_reply(engine: &Authenticator, headers: &Fields<'_>) {
    let strip = engine.strip_identity(headers);
    if let Err(err) = host::apply_edits(Map::RequestHeaders, headers, &strip) {
        log::warn!("[{NAME}] could not remove the client's identity headers: {err}");
    }
}

/// Kong's `:path` is not the request target. ngx_wasm_module hands over nginx's `r->uri` (the
/// path percent-decoded, slashes merged, dot segments resolved), `?` and the raw query; and
/// Kong proxies its router's path, fixed before any filter ran, with `r->args` appended
/// (kong/runloop/handler.lua). So on Kong the plugin judges `request.path` (nginx's
/// `$request_uri`, the target as sent, as Envoy's `:path` is: judging the decoded path would
/// decode `%252e` twice), and a `:path` edit can only change the query.
struct KongTarget {
    /// The target as the client sent it.
    raw: Vec<u8>,
    /// Kong's `:path`: `r->uri`, then `?` and `r->args` when there are any.
    decoded: Vec<u8>,
}

/// Why Kong cannot forward a request as the rules judged it.
enum KongRefusal {
    /// A credential must leave the query, and this Kong cannot change it.
    QueryKept,
    /// A credential must leave the query, and `r->args` is no longer the query the rules read
    /// (a Lua plugin before the filter chain changed it).
    QueryChanged,
    /// The rules judged a path Kong's router will not forward: a `\` read as `/`, or an escaped
    /// slash decoded (Kong's router normalises neither).
    PathKept,
}

/// The path and the query of a target, split at the first `?` as nginx splits `r->args` off
/// (a `#` before it does not end the target there, unlike `palisade_kit::query::split_target`).
fn split_query(target: &[u8]) -> (&[u8], &[u8]) {
    match target.iter().position(|&b| b == b'?') {
        Some(at) => (
            target.get(..at).unwrap_or_default(),
            target.get(at + 1..).unwrap_or_default(),
        ),
        None => (target, &[]),
    }
}

/// How many escaped slashes (`%2F`, `%5C`, any case) a path holds.
fn escaped_slashes(path: &[u8]) -> usize {
    path.windows(3)
        .filter(|w| match w {
            [b'%', hi, lo] => matches!(
                (hi.to_ascii_uppercase(), lo.to_ascii_uppercase()),
                (b'2', b'F') | (b'5', b'C')
            ),
            _ => false,
        })
        .count()
}

impl KongTarget {
    /// Reads the target on Kong; `None` on Envoy (or when Kong will not say).
    fn read(headers: &Fields<'_>) -> Option<Self> {
        if !host::is_kong() {
            return None;
        }
        let raw = host::property(&["request", "path"]).ok().flatten()?;
        let decoded = get(headers, ":path").unwrap_or_default().to_vec();
        Some(Self { raw, decoded })
    }

    /// `headers` with `:path` read as `target`, the target the client sent.
    fn patch<'a>(target: &'a [u8], headers: &mut Fields<'a>) {
        for (name, value) in headers.iter_mut() {
            if *name == b":path" {
                *value = target;
            }
        }
    }

    /// The edits as Kong can apply them. A `:path` edit's path is never written: Kong's router
    /// forwards its own normalisation of the target, which is the rules' but for a `\` and a
    /// decoded escaped slash (refused). A changed query (a credential taken out) is written as
    /// `r->uri?query`, which Kong 3.9+ take as the new `r->args` (before 3.9 a `:path` with a `?`
    /// traps), and only when `r->args` is still the query the rules read (a Lua plugin may have
    /// changed it); a `?` in `r->uri` (a decoded `%3F`) is written `%3F`, or Kong would split
    /// there.
    fn edits<'e>(&self, edits: &[Edit<'e>]) -> Result<Vec<Edit<'e>>, KongRefusal> {
        let (raw_path, raw_query) = split_query(&self.raw);
        // A fragment is not part of nginx's `r->args` (nor of the rules' query).
        let raw_query = raw_query.split(|&b| b == b'#').next().unwrap_or_default();
        let mut out = Vec::with_capacity(edits.len());
        for edit in edits {
            let Edit::Set(name, value) = edit else {
                out.push(edit.clone());
                continue;
            };
            if name != ":path" {
                out.push(edit.clone());
                continue;
            }
            let (path, query) = split_query(value);
            if path != raw_path
                && (raw_path.contains(&b'\\') || escaped_slashes(path) < escaped_slashes(raw_path))
            {
                return Err(KongRefusal::PathKept);
            }
            if query == raw_query {
                continue;
            }
            // Kong sets the query from a `:path` with a `?` from ngx_wasm_module d6ac8f84 (3.9).
            if !host::kong_version_at_least(3, 9) {
                return Err(KongRefusal::QueryKept);
            }
            let args = host::property(&["request", "query"])
                .ok()
                .flatten()
                .unwrap_or_default();
            if args != raw_query {
                return Err(KongRefusal::QueryChanged);
            }
            let uri = if args.is_empty() {
                Some(self.decoded.as_slice())
            } else {
                self.decoded
                    .strip_suffix(args.as_slice())
                    .and_then(|rest| rest.strip_suffix(b"?"))
            };
            let Some(uri) = uri else {
                return Err(KongRefusal::QueryChanged);
            };
            let mut written = Vec::with_capacity(uri.len() + query.len() + 4);
            for &byte in uri {
                if byte == b'?' {
                    written.extend_from_slice(b"%3F");
                } else {
                    written.push(byte);
                }
            }
            written.push(b'?');
            written.extend_from_slice(query);
            out.push(Edit::Set(name.clone(), Cow::Owned(written)));
        }
        Ok(out)
    }
}

fn refuse(reply: &ErrorReply, headers: &Fields<'_>) -> Action {
    let request_id = get(headers, "x-request-id").and_then(|id| std::str::from_utf8(id).ok());
    match host::send_error(NAME, reply, request_id) {
        Ok(()) => Action::Pause,
        Err(err) => {
            // Failing closed when the host will not even send the refusal: the request must
            // not reach the upstream unauthenticated, so it stays paused.
            log::error!("[{NAME}] could not send a {} reply: {err}", reply.status);
            Action::Pause
        }
    }
}

/// The verified mTLS peer's URI SAN (the SPIFFE id). `connection.mtls` first: both hosts have
/// it, while Kong has no peer-certificate property (reading one logs `NYI`), so the SAN is only
/// asked for on a mutual-TLS connection, which Kong's Wasm filters never report.
fn peer_principal() -> Option<Vec<u8>> {
    let mtls = host::property(&["connection", "mtls"]).ok().flatten()?;
    if mtls.as_slice() != [1] && mtls.as_slice() != b"true" {
        return None;
    }
    host::property(&["connection", "uri_san_peer_certificate"])
        .ok()
        .flatten()
}

fn now_ms() -> Option<u64> {
    let since = host::now().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_millis()).ok()
}

impl Stream {
    /// Applies a verdict to the paused or running request. `resume`: the request was paused for
    /// a call-out, so continuing means resuming it.
    fn apply(&mut self, verdict: Verdict, headers: &Fields<'_>, resume: bool) -> Action {
        let worker = Rc::clone(&self.worker);
        let metrics = worker.metrics.as_ref();
        let kong_target = self.kong_target.clone();
        let go_on = |edits: &[palisade_kit::header_pairs::Edit<'_>]| {
            let kong_edits;
            let edits = match kong_target.as_ref().map(|target| target.edits(edits)) {
                None => edits,
                Some(Ok(edits)) => {
                    kong_edits = edits;
                    kong_edits.as_slice()
                }
                // The upstream would get the credential, or another path than the rules
                // judged: refuse rather than forward it.
                Some(Err(KongRefusal::QueryKept)) => {
                    if !worker.warned_query_kept.replace(true) {
                        log::warn!("[{NAME}] Kong before 3.9 cannot take a parameter out of the query: requests with their credential in the query are refused with 400 (send it in a header, or forward it: forward_token / api_keys.forward)");
                    }
                    strip_before_reply(&worker.engine, headers);
                    return refuse(
                        &ErrorReply::new(400, "credentials in the query string are not accepted"),
                        headers,
                    );
                }
                // The query changed before this filter (a Lua plugin rewrote `r->args`).
                Some(Err(KongRefusal::QueryChanged)) => {
                    strip_before_reply(&worker.engine, headers);
                    return refuse(
                        &ErrorReply::new(400, "credentials in the query string are not accepted"),
                        headers,
                    );
                }
                Some(Err(KongRefusal::PathKept)) => {
                    strip_before_reply(&worker.engine, headers);
                    return refuse(
                        &ErrorReply::new(400, "path has a backslash or an escaped slash"),
                        headers,
                    );
                }
            };
            // The edits strip the client's identity headers: a request they did not reach must
            // not go upstream, where a spoofed identity would be trusted.
            if let Err(err) = host::apply_edits(Map::RequestHeaders, headers, edits) {
                log::error!("[{NAME}] identity header edits refused by the host, refusing the request: {err}");
                return refuse(&ErrorReply::new(500, "internal error"), headers);
            }
            if resume {
                if let Err(err) = callout::resume_request() {
                    log::warn!("[{NAME}] could not resume the request: {err}");
                }
                Action::Pause
            } else {
                Action::Continue
            }
        };
        match verdict {
            Verdict::Allow(allowed) => {
                if let Some(metrics) = metrics {
                    metrics.allowed(allowed.source);
                }
                go_on(&allowed.edits())
            }
            Verdict::Anonymous(edits) => {
                if let Some(metrics) = metrics {
                    metrics.anonymous.inc();
                }
                go_on(&edits)
            }
            Verdict::Deny { source, rejection } => {
                if let Some(metrics) = metrics {
                    metrics.denied(source, &rejection);
                }
                strip_before_reply(&worker.engine, headers);
                refuse(&rejection.reply(), headers)
            }
            Verdict::Redirect(location) => {
                strip_before_reply(&worker.engine, headers);
                let location = String::from_utf8_lossy(&location);
                if let Err(err) = host::send_reply(307, &[("location", &location)], b"") {
                    log::error!("[{NAME}] could not send a 307 reply: {err}");
                }
                Action::Pause
            }
            Verdict::Introspect(pending) => self.introspect(pending, headers),
        }
    }

    /// Answers from the cache, or asks the introspection endpoint and pauses the request.
    fn introspect(&mut self, pending: PendingIntrospection, headers: &Fields<'_>) -> Action {
        let worker = Rc::clone(&self.worker);
        let (Some(introspector), Some(now_ms)) = (worker.engine.introspector(), now_ms()) else {
            let verdict = worker
                .engine
                .introspected(pending, Answer::Failed(IntrospectionError::Unreachable));
            return self.apply(verdict, headers, false);
        };
        if let Some(cache) = &worker.cache {
            let mut cache = cache.borrow_mut();
            let cached = cache.get(&pending.key, now_ms).map(|answer| match answer {
                CachedAnswer::Active(info) => worker
                    .engine
                    .introspected(pending.clone(), Answer::Active(info)),
                CachedAnswer::Inactive(inactive) => worker
                    .engine
                    .introspected(pending.clone(), Answer::Inactive(inactive)),
            });
            drop(cache);
            if let Some(verdict) = cached {
                return self.apply(verdict, headers, false);
            }
        }
        if worker.held(Callee::Introspection, now_ms) {
            let verdict = worker
                .engine
                .introspected(pending, Answer::Failed(IntrospectionError::Unreachable));
            return self.apply(verdict, headers, false);
        }
        // Kong 3.8 resumes a request whose call-out fails without calling the plugin back:
        // such a request must at least not carry a client's identity.
        let strip = worker.engine.strip_identity(headers);
        if let Err(err) = host::apply_edits(Map::RequestHeaders, headers, &strip) {
            log::error!(
                "[{NAME}] identity header edits refused by the host, refusing the request: {err}"
            );
            return refuse(&ErrorReply::new(500, "internal error"), headers);
        }
        let request = introspector.request(pending.token());
        let call = HttpCallout {
            upstream: request.upstream,
            method: request.method,
            path: request.path,
            authority: request.authority,
            headers: &request.headers,
            body: Some(&request.body),
            timeout: request.timeout,
        };
        match callout::dispatch_http(&call) {
            Ok(_token) => {
                self.pending = Some(Pending::Introspection(pending));
                Action::Pause
            }
            Err(err) => {
                log::error!("[{NAME}] could not call the introspection endpoint: {err}");
                let verdict = worker
                    .engine
                    .introspected(pending, Answer::Failed(IntrospectionError::Unreachable));
                self.apply(verdict, headers, false)
            }
        }
    }
}

impl Context for Stream {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let pending = match self.pending.take() {
            Some(Pending::Introspection(pending)) => pending,
            Some(Pending::Jwks {
                provider,
                trigger,
                called_ms,
                raw,
                peer,
            }) => {
                self.worker.jwks_answer(
                    provider,
                    trigger,
                    called_ms,
                    Some((num_headers, body_size)),
                );
                self.decide(raw, peer, false, true);
                return;
            }
            None => return,
        };
        let worker = Rc::clone(&self.worker);
        let Some(introspector) = worker.engine.introspector() else {
            return;
        };
        let max = introspector.max_response_bytes();
        let response = callout::http_call_response(num_headers, body_size, max.saturating_add(1));
        let now_ms = now_ms().unwrap_or_default();
        let parsed =
            introspector.parse_response(response.status, &response.body, body_size, now_ms);
        if let Err(error) = &parsed {
            log::warn!("[{NAME}] introspection failed: {error}");
        }
        let verdict = match &parsed {
            Ok(answer) => {
                if let Some(cache) = &worker.cache {
                    cache.borrow_mut().insert(pending.key, answer, now_ms);
                }
                match answer {
                    Introspected::Active(info) => {
                        worker.engine.introspected(pending, Answer::Active(info))
                    }
                    Introspected::Inactive(inactive) => worker
                        .engine
                        .introspected(pending, Answer::Inactive(*inactive)),
                }
            }
            Err(error) => worker.engine.introspected(pending, Answer::Failed(*error)),
        };
        // Readable: a request past Kong's cap was refused at its headers, and nothing adds
        // headers to one paused here.
        let raw = host::headers_raw_capped(Map::RequestHeaders, self.request_headers)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut headers = fields(&raw);
        let kong_raw = self.kong_target.as_ref().map(|target| target.raw.clone());
        if let Some(target) = &kong_raw {
            KongTarget::patch(target, &mut headers);
        }
        self.apply(verdict, &headers, true);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_headers = num_headers;
        let raw = match host::headers_raw_capped(Map::RequestHeaders, num_headers) {
            Ok(Some(raw)) => raw,
            // Kong would write past its buffer (`host::whole_map_readable`).
            Ok(None) => return self.refuse_too_many_headers(&Fields::new()),
            Err(err) => {
                log::error!("[{NAME}] could not read the request headers: {err}");
                return refuse(
                    &ErrorReply::new(503, "request headers unavailable"),
                    &Fields::new(),
                );
            }
        };
        let peer = if self.worker.engine.uses_principals() {
            peer_principal()
        } else {
            None
        };
        self.decide(raw, peer, true, false)
    }

    /// A response to a request still waiting for its call-out: only Kong 3.8 gets here (3.4–3.7
    /// answer 500 themselves), which lets the request go on when the call-out fails, without
    /// calling the plugin back.
    /// It reached the upstream without identity; its response must not reach the client.
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Envoy always answers a call-out; a response reaching a request still paused on one
        // there is Envoy's own local reply (a stream timeout), left as it is.
        if self.pending.is_none() || !host::is_kong() {
            return Action::Continue;
        }
        match self.pending.take() {
            Some(pending) => self.refuse_unanswered(pending),
            None => Action::Continue,
        }
    }
}

impl Stream {
    /// Kong hands over at most 100 header pairs (and cannot hand over a map near that at all,
    /// `host::whole_map_readable`): a client could hide an identity header past them, where
    /// stripping cannot see it. Envoy refuses over 100 headers by default too
    /// (`max_request_headers_count`).
    fn refuse_too_many_headers(&self, headers: &Fields<'_>) -> Action {
        // Unseen copies go too: palisade-audit reads these headers by name past the cap.
        self.worker.engine.for_each_identity_header(|name| {
            // Best effort: the request is refused either way.
            let _ = host::remove_header(Map::RequestHeaders, name);
        });
        refuse(
            &ErrorReply::new(431, "request header fields too large"),
            headers,
        )
    }

    /// The response of a request whose call-out was never answered (see
    /// `on_http_response_headers`): replaced by the refusal the failed call-out gets on Kong
    /// 3.9+ (Kong 3.7 and 3.8 send it from here; before 3.7 they cannot, and pausing makes Kong
    /// answer 500), unless introspection fails open. The callee is then taken as unreachable
    /// for its timeout and a second, so the next requests are refused before the upstream.
    fn refuse_unanswered(&mut self, pending: Pending) -> Action {
        let worker = Rc::clone(&self.worker);
        let (what, verdict) = match pending {
            Pending::Introspection(pending) => {
                if let Some(introspector) = worker.engine.introspector() {
                    worker.hold(Callee::Introspection, introspector.timeout());
                }
                let verdict = worker
                    .engine
                    .introspected(pending, Answer::Failed(IntrospectionError::Unreachable));
                ("introspection", verdict)
            }
            Pending::Jwks { provider, .. } => {
                if let Some(remote) = worker.remote(provider) {
                    worker.hold(Callee::Jwks(provider), remote.request().timeout);
                }
                (
                    "JWKS",
                    Verdict::Deny {
                        source: Source::Provider(provider),
                        rejection: Rejection::KeysUnavailable,
                    },
                )
            }
        };
        let Verdict::Deny { source, rejection } = verdict else {
            // `fail_mode: open`: the request went on anonymous, as that mode lets it.
            return Action::Continue;
        };
        if let Some(metrics) = worker.metrics.as_ref() {
            metrics.denied(source, &rejection);
        }
        let can_reply = host::kong_version_at_least(3, 7);
        log::error!(
            "[{NAME}] the {what} call-out failed and the host sent the request upstream without calling the plugin back (Kong before 3.9): the request went without identity, and its response is replaced by {}",
            if can_reply { "this plugin's refusal" } else { "Kong's 500" }
        );
        if can_reply {
            if let Err(err) = host::send_error_over_response(NAME, &rejection.reply(), None) {
                log::error!("[{NAME}] could not replace the response: {err}");
            }
        }
        Action::Pause
    }

    /// Decides for the request's headers `raw` and applies the verdict. `may_fetch`: a verdict
    /// that needs a provider's remote keys (none usable yet, or an unknown `kid` whose early
    /// refresh is allowed) pauses the request on a JWKS fetch instead, once. `resume`: the
    /// request is paused already.
    fn decide(
        &mut self,
        raw: Vec<u8>,
        peer: Option<Vec<u8>>,
        may_fetch: bool,
        resume: bool,
    ) -> Action {
        let mut headers = fields(&raw);
        if self.kong_target.is_none() {
            self.kong_target = KongTarget::read(&headers).map(Rc::new);
        }
        let kong_raw = self.kong_target.as_ref().map(|target| target.raw.clone());
        if let Some(target) = &kong_raw {
            KongTarget::patch(target, &mut headers);
        }
        if host::header_map_may_be_truncated(headers.len()) {
            return self.refuse_too_many_headers(&headers);
        }
        // A clock the host cannot read would make every token look current: refuse instead.
        let Some(now_ms) = now_ms() else {
            log::error!("[{NAME}] the host clock is unavailable; refusing");
            strip_before_reply(&self.worker.engine, &headers);
            let action = refuse(&ErrorReply::new(503, "clock unavailable"), &headers);
            return action;
        };
        let worker = Rc::clone(&self.worker);
        let keys = StoredKeys {
            store: &HostStore,
            now_ms,
            verified: worker.engine.verified_cache(),
        };
        let verdict = worker
            .engine
            .decide(&headers, peer.as_deref(), now_ms / 1000, &keys);
        let wants_keys = match &verdict {
            Verdict::Deny {
                source: Source::Provider(index),
                rejection: Rejection::UnknownKid,
            } => Some((*index, Trigger::UnknownKid)),
            Verdict::Deny {
                source: Source::Provider(index),
                rejection: Rejection::KeysUnavailable,
            } => Some((*index, Trigger::Cold)),
            _ => None,
        };
        let wants_keys = wants_keys
            .filter(|(provider, _)| may_fetch && !worker.held(Callee::Jwks(*provider), now_ms));
        if let Some((provider, trigger)) = wants_keys {
            if let Some(remote) = worker.remote(provider) {
                // Another worker may hold newer keys already: take them, decide again.
                if remote.sync(&HostStore) {
                    drop(headers);
                    return self.decide(raw, peer, false, resume);
                }
                if remote.claim(&HostStore, now_ms, trigger) {
                    // Kong 3.8 resumes a request whose call-out fails without calling the
                    // plugin back: such a request must at least not carry a client's identity.
                    let strip = worker.engine.strip_identity(&headers);
                    if let Err(err) = host::apply_edits(Map::RequestHeaders, &headers, &strip) {
                        log::error!("[{NAME}] identity header edits refused by the host, refusing the request: {err}");
                        return refuse(&ErrorReply::new(500, "internal error"), &headers);
                    }
                    match dispatch_jwks(remote) {
                        Ok(_token) => {
                            drop(headers);
                            self.pending = Some(Pending::Jwks {
                                provider,
                                trigger,
                                called_ms: now_ms,
                                raw,
                                peer,
                            });
                            return Action::Pause;
                        }
                        Err(err) => {
                            log::error!("[{NAME}] could not call the JWKS server: {err}");
                            worker.jwks_answer(provider, trigger, now_ms, None);
                        }
                    }
                }
            }
        }
        self.apply(verdict, &headers, resume)
    }
}

proxy_wasm::main! {{
    host::start::<AuthPlugin>();
}}
