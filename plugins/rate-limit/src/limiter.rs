//! The decision for one request: which limits apply (the route overrides, else the top level),
//! each limit's key and slot, the GCRA verdicts, and the writes that make them stick.
//!
//! All limits must pass. Every limit is read first; if any refuses, nothing is written, so a
//! refused request costs no limit any budget. Only then are the admissions written, each with
//! compare-and-swap on the version read: a conflict means another worker moved that key in
//! between, so the key is read and decided again (its budget may now be spent). If that turns
//! into a refusal, the limits already written give their admission back.
//!
//! Global limits are decided by a rate-limit service: once every local limit (and every global
//! limit's local pre-limit) has admitted the request, [`Decision::Ask`] carries the descriptors
//! to send, and [`RateLimiter::conclude`] turns the service's answer (or its absence) into the
//! final decision.
//!
//! This runs on every request, so whatever depends only on the configuration (constant keys'
//! fingerprints, `RateLimit-Policy` values) is computed once in [`RateLimiter::new`], and an
//! admitted request allocates nothing here beyond what the store hands over.

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use palisade_kit::reply::ErrorReply;
use palisade_kit::store::{SharedStore, StoreError, UpdateError, Write};
use smallvec::SmallVec;

use crate::config::{
    ClientIpConfig, FailureMode, GlobalService, KeyPart, Limit, MissingKey, Mode, RateLimitConfig,
    RouteMatch, MAX_NAME_LEN,
};
use crate::gcra::{Gcra, Nanos, Verdict};
use crate::key::{self, Descriptor, HashKey, RequestParts, RequestView};
use crate::proto::{Code, DescriptorStatus, HeaderToAdd, RateLimitResponse, MAX_HEADERS};
use crate::slots::{self, Located, SlotTable};

/// Reads and writes one admission may take before the limiter gives up on a contended key.
pub const ATTEMPTS: u32 = 8;

/// Limits one request is checked against without a heap allocation (more still work).
const INLINE_LIMITS: usize = 4;

/// A limit ready to decide.
#[derive(Debug, Clone)]
pub struct CompiledLimit {
    pub name: String,
    /// The start of its `RateLimit` item, `"<name>";r=`, built once.
    rate_limit_prefix: Rc<str>,
    /// The local limit: the whole limit in local mode, the pre-limit in global mode.
    gcra: Option<Gcra>,
    /// Decided by the rate-limit service.
    pub global: bool,
    key: Vec<KeyPart>,
    /// The key's fingerprint when every part is a constant (one budget for all requests).
    constant_fingerprint: Option<u64>,
    /// Mixed into every fingerprint the slots hold, so one limit's slot never reads as
    /// another's for the same client: from Kong 3.8 a shared-data key is found by its CRC32
    /// alone, and two limits' slot keys may share a value.
    salt: u64,
    when_missing: MissingKey,
    table: SlotTable,
    /// The local limit's `RateLimit-Policy` item, built once.
    policy: String,
}

impl CompiledLimit {
    fn new(limit: &Limit, hash_key: &HashKey) -> Self {
        let (rate, period, burst) = match (&limit.mode, &limit.pre_limit) {
            (Mode::Local, _) => (limit.rate, limit.period.map(|p| p.get()), limit.burst),
            (Mode::Global, Some(pre)) => (Some(pre.rate), Some(pre.period.get()), pre.burst),
            (Mode::Global, None) => (None, None, 0),
        };
        let gcra = match (rate, period) {
            (Some(rate), Some(period)) => Some(Gcra::new(rate, period, burst)),
            _ => None,
        };
        let constant_fingerprint = key::constant_fingerprint(hash_key, &limit.key);
        // Limits of one name in different configurations (Kong's chains share one zone, Envoy's
        // plugins one VM) meet in shared data: each definition gets its own table, so a 1/min
        // limit's state is never read, or reclaimed, by a 100/s one of the same name.
        let scope = definition_scope(hash_key, limit, rate, period, burst);
        let table = SlotTable::new(&format!("{}/{scope:08x}", limit.name), limit.slots)
            .with_horizon(gcra.map_or(Nanos::MAX, |gcra| gcra.horizon()));
        let salt = key::fingerprint(hash_key, limit.name.as_bytes());
        Self {
            policy: gcra.map_or_else(String::new, |gcra| {
                policy(&limit.name, gcra.quota(), Some(gcra.period()))
            }),
            name: limit.name.clone(),
            rate_limit_prefix: Rc::from(format!("\"{}\";r=", limit.name)),
            gcra,
            global: limit.mode == Mode::Global,
            key: limit.key.clone(),
            constant_fingerprint,
            when_missing: limit.when_key_missing,
            table: match constant_fingerprint {
                Some(fingerprint) => table.with_prebuilt_keys(fingerprint ^ salt),
                None => table,
            },
            salt,
        }
    }
}

/// An exact route path against a (normalised) request path: one trailing slash either way is
/// the same resource to most servers (Spring before 6, Express), so `/login/` is `/login`.
fn same_resource(path: &[u8], configured: &[u8]) -> bool {
    let trim = |p: &[u8]| -> usize {
        match p {
            [rest @ .., b'/'] if !rest.is_empty() => rest.len(),
            _ => p.len(),
        }
    };
    path.get(..trim(path)) == configured.get(..trim(configured))
}

/// A keyed hash of what a limit counts and how (the numbers in force, its mode, key and
/// slots), cut to 32 bits: enough to keep two definitions of one name apart.
fn definition_scope(
    hash_key: &HashKey,
    limit: &Limit,
    rate: Option<u32>,
    period: Option<Duration>,
    burst: u32,
) -> u32 {
    let mut hasher = key::KeyHasher::new(hash_key);
    let period = period.map_or(0, |p| u64::try_from(p.as_nanos()).unwrap_or(u64::MAX));
    for number in [
        rate.map_or(0, u64::from),
        period,
        u64::from(burst),
        u64::from(limit.mode == Mode::Global),
        u64::from(limit.slots),
    ] {
        hasher.present(&number.to_le_bytes());
    }
    for part in &limit.key {
        let (tag, value): (u8, &str) = match part {
            KeyPart::Consumer => (0, ""),
            KeyPart::ClientIp => (1, ""),
            KeyPart::Path => (2, ""),
            KeyPart::Method => (3, ""),
            KeyPart::Route => (4, ""),
            KeyPart::Header(name) => (5, name),
            KeyPart::Constant(value) => (6, value),
        };
        hasher.present(&[tag]);
        hasher.present(value.as_bytes());
    }
    hasher.finish() as u32
}

/// One `RateLimit-Policy` item. `w` is whole seconds, rounded up: a client pacing itself by
/// it never sends faster than the limit (a 1500 ms period is `w=2`, not `w=1`); left out when
/// the window is unknown.
fn policy(name: &str, quota: u64, window: Option<Duration>) -> String {
    let mut item = String::with_capacity(name.len() + 32);
    item.push('"');
    item.push_str(name);
    item.push_str("\";q=");
    palisade_kit::decimal::push_u64(&mut item, quota);
    if let Some(window) = window {
        let secs = u64::try_from(window.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
        item.push_str(";w=");
        palisade_kit::decimal::push_u64(&mut item, secs);
    }
    item
}

/// The limits one request is checked against: the top level's, or a route's.
#[derive(Debug, Clone)]
struct LimitSet {
    limits: Vec<usize>,
    /// How many of them have a local limit.
    local: usize,
    /// `RateLimit-Policy` when every local limit applied (no key part missing), built once.
    policy: Rc<str>,
}

impl LimitSet {
    fn new(limits: Vec<usize>, compiled: &[CompiledLimit]) -> Self {
        let local = || {
            limits
                .iter()
                .filter_map(|&i| compiled.get(i))
                .filter(|limit| limit.gcra.is_some())
        };
        Self {
            local: local().count(),
            policy: join_policies(local().map(|limit| limit.policy.as_str())),
            limits,
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    matches: RouteMatch,
    limits: LimitSet,
}

/// What happened to one limit during one request, for its metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub allowed: bool,
    pub limited: bool,
    /// Writes that lost a compare-and-swap and were retried.
    pub conflicts: u32,
    /// The store could not answer (full, host error, endless conflicts).
    pub store_failure: bool,
    /// The rate-limit service could not be asked or gave no usable answer.
    pub callout_failure: bool,
}

/// The `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers) for a
/// response, kept as parts until the response is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// The `RateLimit-Policy` value: every limit that applied.
    pub policy: Rc<str>,
    /// The limit closest to refusing, which `RateLimit` reports: `"<name>";r=`.
    pub prefix: Rc<str>,
    pub remaining: u64,
    /// Until that limit's key is idle again.
    pub reset: Nanos,
}

/// Room for the longest `RateLimit` value: a quoted limit name and two 20-digit numbers.
pub const RATE_LIMIT_MAX_LEN: usize = "\"\";r=;t=".len() + MAX_NAME_LEN + 2 * 20;

impl RateLimitHeaders {
    pub const POLICY: &'static str = "ratelimit-policy";
    pub const RATE_LIMIT: &'static str = "ratelimit";

    /// The `RateLimit` value, `"<name>";r=<remaining>;t=<seconds to reset>`, written at the
    /// end of `buf` (it runs on every admitted response: no allocation, no `format!`). `None`
    /// if it does not fit, which a validated limit name in a [`RATE_LIMIT_MAX_LEN`] buffer
    /// never causes.
    pub fn write_rate_limit<'b>(&self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        // Right to left, so that digits land in place.
        let at = palisade_kit::decimal::write_before(buf, buf.len(), ceil_secs(self.reset))?;
        let at = put_before(buf, at, b";t=")?;
        let at = palisade_kit::decimal::write_before(buf, at, self.remaining)?;
        let at = put_before(buf, at, self.prefix.as_bytes())?;
        buf.get(at..)
    }

    /// The `RateLimit` value as a string, whatever the name's length.
    pub fn rate_limit(&self) -> String {
        let mut buf = vec![0; self.prefix.len() + RATE_LIMIT_MAX_LEN];
        String::from_utf8_lossy(self.write_rate_limit(&mut buf).unwrap_or_default()).into_owned()
    }

    /// Both headers as (name, value).
    pub fn pairs(&self) -> [(String, String); 2] {
        [
            (Self::POLICY.to_owned(), self.policy.to_string()),
            (Self::RATE_LIMIT.to_owned(), self.rate_limit()),
        ]
    }
}

/// Writes `bytes` to end at `end`; returns where they start.
fn put_before(buf: &mut [u8], end: usize, bytes: &[u8]) -> Option<usize> {
    let start = end.checked_sub(bytes.len())?;
    buf.get_mut(start..end)?.copy_from_slice(bytes);
    Some(start)
}

/// The limiter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through; add these headers to its response (`None`: headers are off,
    /// or no local limit applied).
    Allow {
        response_headers: Option<RateLimitHeaders>,
        /// What the rate-limit service asked to add (`None` for a local decision, and when it
        /// asked for nothing; boxed, as most requests carry none).
        service: Option<Box<ServiceHeaders>>,
    },
    /// Answer locally.
    Deny(ErrorReply),
    /// Every local limit admitted the request; ask the rate-limit service, hold the request
    /// until it answers, then [`RateLimiter::conclude`].
    Ask(GlobalCheck),
}

/// The headers a rate-limit service's answer asks for, applied as Envoy's rate-limit filter
/// applies them: `response` to the client's response (the 429 included), `request` to the
/// request it lets through. Envoy appends them; so do we.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHeaders {
    pub response: Vec<HeaderToAdd>,
    pub request: Vec<HeaderToAdd>,
}

/// Headers the service may not add to a request or a response: hop-by-hop and framing
/// fields, which the proxy owns.
const PROXY_OWNED: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// palisade's own headers (palisade-auth's identity headers, the kit's refusal record) are set
/// only by the plugin that owns them, never on a service's word.
const PALISADE_PREFIX: &str = "x-palisade-";

/// Request headers a service may not add either: where the request goes (`host`, and
/// `expect`), the proxy's record of the client (`x-forwarded-*`, which hosts join into one
/// value differently), Envoy's routing controls (`x-envoy-*`, palisade-resilience's retry
/// and timeout policy), and palisade's own.
const REQUEST_OWNED: [&str; 2] = ["host", "expect"];
const REQUEST_OWNED_PREFIXES: [&str; 3] = [PALISADE_PREFIX, "x-forwarded-", "x-envoy-"];

/// A request waiting for the rate-limit service: what to send, and what the local limits
/// decided (for the response headers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalCheck {
    /// The global limits asked, in descriptor order.
    limits: Vec<usize>,
    /// One descriptor per global limit.
    pub descriptors: Vec<Descriptor>,
    /// The local limits that admitted: (limit, remaining, reset).
    local: Vec<(usize, u64, Nanos)>,
    /// The admissions local-mode limits wrote, (limit, slot key, fingerprint): given back if
    /// the service refuses, as a refused request costs no budget. A global limit's pre-limit
    /// keeps what it counted: it sheds a key's calls to the service, refused ones included.
    written: Vec<(usize, String, u64)>,
}

/// The answers to a request asked with one call per global limit (`call_per_limit`), in
/// the order of its descriptors, read as the one answer a call with every descriptor would
/// have given: an `OVER_LIMIT` from any call refuses; otherwise a failed call is the answer
/// (the failure mode applies); otherwise `OK`. Each call's first status (or, as Limitador
/// sends none, its overall code) is its descriptor's status; the calls' headers are merged
/// into one of each name, a refusing call's first.
pub fn merge_answers(
    answers: Vec<Result<RateLimitResponse, CalloutError>>,
) -> Result<RateLimitResponse, CalloutError> {
    let mut merged = RateLimitResponse {
        overall_code: Code::Ok,
        ..RateLimitResponse::default()
    };
    let mut failure = None;
    let mut headers = Vec::new();
    for answer in answers {
        match answer {
            Ok(response) => {
                let over = response.overall_code == Code::OverLimit;
                if over {
                    merged.overall_code = Code::OverLimit;
                }
                let status = response
                    .statuses
                    .first()
                    .copied()
                    .unwrap_or(DescriptorStatus {
                        code: response.overall_code,
                        ..DescriptorStatus::default()
                    });
                merged.statuses.push(status);
                headers.push((over, response.response_headers, response.request_headers));
            }
            Err(err) => {
                merged.statuses.push(DescriptorStatus::default());
                failure.get_or_insert(err);
            }
        }
    }
    // Each call sends its own set of the same headers (Limitador's `X-RateLimit-*`): one of
    // each name, a refusing call's first, as one answer would carry.
    for refusing in [true, false] {
        for (over, response_headers, request_headers) in &mut headers {
            if *over == refusing {
                merge_headers(
                    &mut merged.response_headers,
                    std::mem::take(response_headers),
                );
                merge_headers(&mut merged.request_headers, std::mem::take(request_headers));
            }
        }
    }
    match failure {
        Some(err) if merged.overall_code != Code::OverLimit => Err(err),
        _ => Ok(merged),
    }
}

/// Adds the headers of `more` whose name `into` does not have yet, up to [`MAX_HEADERS`].
fn merge_headers(into: &mut Vec<HeaderToAdd>, more: Vec<HeaderToAdd>) {
    let known = into.len();
    for (name, value) in more {
        if into.len() >= MAX_HEADERS {
            return;
        }
        if !into.iter().take(known).any(|(n, _)| *n == name) {
            into.push((name, value));
        }
    }
}

/// Why the rate-limit service gave no decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalloutError {
    #[error("cannot dispatch: {0}")]
    Dispatch(String),
    #[error("no answer (timeout, reset or refused connection)")]
    NoAnswer,
    #[error("gRPC status {0}")]
    GrpcStatus(u32),
    #[error("HTTP status {0}")]
    HttpStatus(u16),
    #[error("unreadable answer: {0}")]
    Decode(String),
    /// Not asked: a call made shortly before failed without an answer (Kong before 3.9).
    #[error("not asked: a call failed shortly before and Kong did not say (Kong before 3.9)")]
    Held,
}

/// What one request did to each limit: (index into [`RateLimiter::limits`], tally).
pub type Tallies = SmallVec<[(usize, Tally); INLINE_LIMITS]>;

/// Every limit of the configuration, compiled, and the rules choosing them.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    /// The proxy's secret for fingerprints.
    hash_key: HashKey,
    limits: Vec<CompiledLimit>,
    default: LimitSet,
    routes: Vec<Route>,
    client_ip: ClientIpConfig,
    headers: bool,
    on_store_failure: FailureMode,
    failure_mode_deny: bool,
}

/// One applicable limit during phase one.
struct Pending<'s> {
    limit: usize,
    fingerprint: u64,
    slot: Option<slots::Slot<'s>>,
    verdict: Verdict,
}

fn ceil_secs(nanos: Nanos) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

impl RateLimiter {
    /// Compiles `config`; `hash_key` is the proxy's ([`HashKey::load_or_create`]).
    pub fn new(config: &RateLimitConfig, hash_key: HashKey) -> Self {
        let mut limits = Vec::new();
        let mut add = |list: &[Limit]| {
            list.iter()
                .map(|limit| {
                    limits.push(CompiledLimit::new(limit, &hash_key));
                    limits.len() - 1
                })
                .collect::<Vec<_>>()
        };
        let default = add(&config.limits);
        let routes: Vec<(RouteMatch, Vec<usize>)> = config
            .routes
            .iter()
            .map(|route| (route.matches.clone(), add(&route.limits)))
            .collect();
        Self {
            hash_key,
            default: LimitSet::new(default, &limits),
            routes: routes
                .into_iter()
                .map(|(matches, set)| Route {
                    matches,
                    limits: LimitSet::new(set, &limits),
                })
                .collect(),
            limits,
            client_ip: config.client_ip,
            headers: config.rate_limit_headers,
            on_store_failure: config.on_store_failure,
            failure_mode_deny: config
                .global
                .as_ref()
                .is_some_and(|g: &GlobalService| g.failure_mode_deny),
        }
    }

    pub fn limits(&self) -> &[CompiledLimit] {
        &self.limits
    }

    /// Creates every limit's slots (see [`slots`]); run once per configuration.
    pub fn prepare(&self, store: &impl SharedStore) -> Result<u32, StoreError> {
        self.limits.iter().try_fold(
            0,
            |created, limit| Ok(created + limit.table.prepare(store)?),
        )
    }

    fn applicable<'s, V: RequestView>(
        &'s self,
        request: &mut RequestParts<'_, 's, V>,
    ) -> &'s LimitSet {
        for route in &self.routes {
            let m = &route.matches;
            let path_ok = |request: &mut RequestParts<'_, 's, V>| {
                let path = request.path().unwrap_or_default();
                m.path
                    .as_ref()
                    .is_none_or(|p| same_resource(path, p.as_bytes()))
                    && m.path_prefix
                        .as_ref()
                        .is_none_or(|p| path.starts_with(p.as_bytes()))
            };
            let method_ok = |request: &mut RequestParts<'_, 's, V>| {
                m.methods.is_empty() || {
                    // Servers answer HEAD with the GET handler: a GET route's limits hold.
                    let method = request.method().unwrap_or_default();
                    m.methods
                        .iter()
                        .any(|x| x.as_bytes() == method || (method == b"HEAD" && x == "GET"))
                }
            };
            let route_ok = |request: &mut RequestParts<'_, 's, V>| {
                m.route
                    .as_ref()
                    .is_none_or(|r| request.route() == Some(r.as_bytes()))
            };
            if path_ok(request) && method_ok(request) && route_ok(request) {
                return &route.limits;
            }
        }
        &self.default
    }

    /// Decides one request at `now` (nanoseconds since the Unix epoch).
    pub fn decide<V: RequestView>(
        &self,
        view: &mut V,
        store: &impl SharedStore,
        now: Nanos,
    ) -> (Decision, Tallies) {
        let mut request = RequestParts::new(view, self.client_ip);
        let applicable = self.applicable(&mut request);
        let mut tallies = Tallies::new();
        let mut pending: SmallVec<[Pending<'_>; INLINE_LIMITS]> = SmallVec::new();
        // Built only when a global limit applies.
        let mut ask: Option<GlobalCheck> = None;

        // Phase one: read and decide every limit, write nothing.
        for &index in &applicable.limits {
            let Some(limit) = self.limits.get(index) else {
                continue;
            };
            let mut tally = Tally::default();
            let fingerprint = match limit.constant_fingerprint {
                Some(fingerprint) => fingerprint,
                None => match key::fingerprint_of(&self.hash_key, &limit.key, &mut request) {
                    Ok(fingerprint) => fingerprint,
                    Err(missing) => match limit.when_missing {
                        MissingKey::Skip => continue,
                        MissingKey::Shared => missing.0,
                        MissingKey::Deny => {
                            tally.limited = true;
                            tallies.push((index, tally));
                            let reply = ErrorReply::new(429, "rate limit key missing");
                            return (Decision::Deny(reply), tallies);
                        }
                    },
                },
            } ^ limit.salt;
            if limit.global {
                let check = ask.get_or_insert_with(GlobalCheck::default);
                check.limits.push(index);
                check
                    .descriptors
                    .push(key::descriptor(&limit.name, &limit.key, &mut request));
            }
            let Some(gcra) = limit.gcra else {
                tallies.push((index, tally));
                continue;
            };
            match limit.table.locate(store, fingerprint, now) {
                Ok(Located::Slot(slot)) => {
                    let verdict = gcra.check(slot.tat, now);
                    pending.push(Pending {
                        limit: index,
                        fingerprint,
                        slot: Some(slot),
                        verdict,
                    });
                }
                Ok(Located::Full) | Err(_) => {
                    tally.store_failure = true;
                    if self.on_store_failure == FailureMode::Deny {
                        tallies.push((index, tally));
                        return (Decision::Deny(unavailable()), tallies);
                    }
                    // Allowed unchecked: it shows in the headers as untouched budget.
                    pending.push(Pending {
                        limit: index,
                        fingerprint,
                        slot: None,
                        verdict: gcra.check(None, now),
                    });
                }
            }
            tallies.push((index, tally));
        }

        if pending
            .iter()
            .any(|p| matches!(p.verdict, Verdict::Refuse { .. }))
        {
            return (self.refuse(&pending, applicable, &mut tallies), tallies);
        }

        // Phase two: write each admission; on a conflict, read and decide that key again.
        // The slots written so far, to give back if a later limit turns into a refusal.
        let mut written: Vec<(usize, Cow<'_, str>, u64)> = Vec::new();
        for i in 0..pending.len() {
            let Some(p) = pending.get_mut(i) else {
                continue;
            };
            let (Some(limit), Some(slot)) = (self.limits.get(p.limit), p.slot.take()) else {
                continue;
            };
            let mut tally = Tally::default();
            let result = self.commit(
                limit,
                p.fingerprint,
                slot,
                p.verdict,
                store,
                now,
                &mut tally,
            );
            let failed = match result {
                Ok((verdict, key)) => {
                    if matches!(verdict, Verdict::Admit { .. }) {
                        written.push((p.limit, key, p.fingerprint));
                    }
                    p.verdict = verdict;
                    false
                }
                Err(_) => true,
            };
            let index = p.limit;
            if let Some((_, t)) = tallies.iter_mut().find(|(j, _)| *j == index) {
                t.conflicts += tally.conflicts;
                t.store_failure |= failed;
            }
            let refused = pending
                .get(i)
                .is_some_and(|p| matches!(p.verdict, Verdict::Refuse { .. }));
            let denied = failed && self.on_store_failure == FailureMode::Deny;
            if refused || denied {
                // Another worker took the last of this budget between our read and write (or
                // the store failed, and failures deny). The limits already written give their
                // admission back: a refused request costs no budget.
                self.give_back(&written, store, &mut tallies);
                if denied {
                    return (Decision::Deny(unavailable()), tallies);
                }
                return (self.refuse(&pending, applicable, &mut tallies), tallies);
            }
        }

        let Some(mut check) = ask else {
            for (_, tally) in &mut tallies {
                tally.allowed = true;
            }
            let response_headers = self.rate_limit_headers(&pending, applicable);
            return (
                Decision::Allow {
                    response_headers,
                    service: None,
                },
                tallies,
            );
        };
        for (index, tally) in &mut tallies {
            // A global limit is allowed once the service says so.
            tally.allowed = !check.limits.contains(index);
        }
        check.written = written
            .into_iter()
            .filter(|(index, _, _)| !check.limits.contains(index))
            .map(|(index, key, fingerprint)| (index, key.into_owned(), fingerprint))
            .collect();
        check.local = pending
            .iter()
            .filter(|p| !check.limits.contains(&p.limit))
            .map(|p| {
                let (remaining, reset) = remaining_and_reset(p.verdict);
                (p.limit, remaining, reset)
            })
            .collect();
        (Decision::Ask(check), tallies)
    }

    /// The decision for a request held by [`Decision::Ask`], given the service's answer.
    /// Like Envoy's rate-limit filter: only an `OVER_LIMIT` overall code refuses (429); an
    /// error lets the request through, or refuses it with 500 under `failure_mode_deny`. A
    /// refusal gives back what the request's local limits counted.
    pub fn conclude(
        &self,
        check: &GlobalCheck,
        answer: Result<RateLimitResponse, CalloutError>,
        store: &impl SharedStore,
    ) -> (Decision, Tallies) {
        let (decision, mut tallies) = self.conclude_answer(check, answer);
        if matches!(decision, Decision::Deny(_)) && !check.written.is_empty() {
            // Failures to give back are counted against the local limits' tallies.
            let mut local: Tallies = check
                .written
                .iter()
                .map(|(index, _, _)| (*index, Tally::default()))
                .collect();
            self.give_back(&check.written, store, &mut local);
            tallies.extend(local.into_iter().filter(|(_, t)| t.store_failure));
        }
        (decision, tallies)
    }

    /// [`Self::conclude`] for a request asked with one call per global limit
    /// (`call_per_limit`): the calls' answers, in descriptor order, read as one
    /// ([`merge_answers`]), except that only a limit whose own call failed counts a call-out
    /// failure. One answer is simply concluded.
    pub fn conclude_calls(
        &self,
        check: &GlobalCheck,
        mut answers: Vec<Result<RateLimitResponse, CalloutError>>,
        store: &impl SharedStore,
    ) -> (Decision, Tallies) {
        if answers.len() == 1 {
            if let Some(answer) = answers.pop() {
                return self.conclude(check, answer, store);
            }
        }
        let failed: SmallVec<[bool; INLINE_LIMITS]> = answers.iter().map(Result::is_err).collect();
        let (decision, mut tallies) = self.conclude(check, merge_answers(answers), store);
        // The global limits' tallies come first, in descriptor order.
        for ((_, tally), failed) in tallies.iter_mut().zip(failed) {
            tally.callout_failure = failed;
        }
        (decision, tallies)
    }

    fn conclude_answer(
        &self,
        check: &GlobalCheck,
        answer: Result<RateLimitResponse, CalloutError>,
    ) -> (Decision, Tallies) {
        let mut tallies: Tallies = check
            .limits
            .iter()
            .map(|&index| (index, Tally::default()))
            .collect();
        let mut response = match answer {
            Ok(response) => response,
            Err(_) => {
                for (_, tally) in &mut tallies {
                    tally.callout_failure = true;
                    tally.allowed = !self.failure_mode_deny;
                }
                if self.failure_mode_deny {
                    let reply = ErrorReply::new(500, "rate limit service unavailable");
                    return (Decision::Deny(reply), tallies);
                }
                let response_headers = self.header_items(self.local_items(check));
                return (
                    Decision::Allow {
                        response_headers,
                        service: None,
                    },
                    tallies,
                );
            }
        };
        let service = self.service_headers(&mut response);
        // Statuses answer the descriptors in order; one missing counts as the overall code.
        let status_code = |i: usize| {
            response
                .statuses
                .get(i)
                .map_or(response.overall_code, |s| s.code)
        };
        let mut items = self.local_items(check);
        for (i, &index) in check.limits.iter().enumerate() {
            let (Some(status), Some(limit)) = (response.statuses.get(i), self.limits.get(index))
            else {
                continue;
            };
            let Some(current) = status.current_limit else {
                continue;
            };
            // A unit the service left out (or UNKNOWN) gives no window to advertise.
            let window = current.unit.filter(|unit| !unit.is_zero());
            let reset = status
                .duration_until_reset
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            items.push(HeaderItem {
                policy: Cow::Owned(policy(
                    &limit.name,
                    u64::from(current.requests_per_unit),
                    window,
                )),
                prefix: &limit.rate_limit_prefix,
                remaining: if status.code == Code::OverLimit {
                    0
                } else {
                    u64::from(status.limit_remaining)
                },
                reset,
            });
        }
        let over = response.overall_code == Code::OverLimit;
        for (i, (_, tally)) in tallies.iter_mut().enumerate() {
            tally.limited = over && status_code(i) == Code::OverLimit;
            tally.allowed = !over;
        }
        if over && !tallies.iter().any(|(_, t)| t.limited) {
            // OVER_LIMIT without saying which: every global limit counts it.
            for (_, tally) in &mut tallies {
                tally.limited = true;
            }
        }
        if !over {
            let response_headers = self.header_items(items);
            return (
                Decision::Allow {
                    response_headers,
                    service,
                },
                tallies,
            );
        }
        let retry_after = response
            .statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit)
            .filter_map(|s| s.duration_until_reset)
            .max()
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut reply = with_headers(
            ErrorReply::new(429, "rate limit exceeded")
                .with_header("retry-after", ceil_secs(retry_after).max(1).to_string()),
            self.header_items(items),
        );
        // The refusal's own fields stay ours: its JSON body's type, and when to retry.
        if let Some(service) = service {
            reply.headers.extend(
                service
                    .response
                    .into_iter()
                    .filter(|(name, _)| name != "content-type" && name != "retry-after"),
            );
        }
        (Decision::Deny(reply), tallies)
    }

    /// Takes the headers the service asked for out of its answer, less those it may not set:
    /// the proxy's hop-by-hop and framing fields, palisade's own headers, and the two
    /// rate-limit headers this plugin writes itself when they are on.
    fn service_headers(&self, response: &mut RateLimitResponse) -> Option<Box<ServiceHeaders>> {
        let allowed = |(name, _): &HeaderToAdd| {
            !PROXY_OWNED.contains(&name.as_str())
                && !name.starts_with(PALISADE_PREFIX)
                && !(self.headers
                    && (name == RateLimitHeaders::POLICY || name == RateLimitHeaders::RATE_LIMIT))
        };
        let mut response_headers = std::mem::take(&mut response.response_headers);
        response_headers.retain(allowed);
        let mut request_headers = std::mem::take(&mut response.request_headers);
        request_headers.retain(|(name, _)| {
            !PROXY_OWNED.contains(&name.as_str())
                && !REQUEST_OWNED.contains(&name.as_str())
                && !REQUEST_OWNED_PREFIXES.iter().any(|p| name.starts_with(p))
        });
        if response_headers.is_empty() && request_headers.is_empty() {
            return None;
        }
        Some(Box::new(ServiceHeaders {
            response: response_headers,
            request: request_headers,
        }))
    }

    fn local_items<'s>(&'s self, check: &GlobalCheck) -> Vec<HeaderItem<'s>> {
        check
            .local
            .iter()
            .filter_map(|&(index, remaining, reset)| {
                let limit = self.limits.get(index)?;
                Some(HeaderItem {
                    policy: Cow::Borrowed(&limit.policy),
                    prefix: &limit.rate_limit_prefix,
                    remaining,
                    reset,
                })
            })
            .collect()
    }

    /// `RateLimit-Policy` lists every item; `RateLimit` reports the one closest to refusing.
    /// `None` when headers are off or there is no item.
    fn header_items(&self, items: Vec<HeaderItem<'_>>) -> Option<RateLimitHeaders> {
        if !self.headers {
            return None;
        }
        let tightest = items
            .iter()
            .fold(None::<&HeaderItem<'_>>, |best, item| match best {
                Some(b) if b.remaining <= item.remaining => Some(b),
                _ => Some(item),
            })?;
        Some(RateLimitHeaders {
            policy: join_policies(items.iter().map(|i| i.policy.as_ref())),
            prefix: Rc::clone(tightest.prefix),
            remaining: tightest.remaining,
            reset: tightest.reset,
        })
    }

    /// Moves each written limit's stored time back one interval (unless its slot went to
    /// another key meanwhile); a failed give-back counts as a store failure of that limit.
    fn give_back<K: AsRef<str>>(
        &self,
        written: &[(usize, K, u64)],
        store: &impl SharedStore,
        tallies: &mut Tallies,
    ) {
        for (index, key, fingerprint) in written {
            let Some(gcra) = self.limits.get(*index).and_then(|l| l.gcra) else {
                continue;
            };
            let given =
                slots::give_back(store, key.as_ref(), *fingerprint, gcra.interval(), ATTEMPTS);
            if let (Err(_), Some((_, t))) = (given, tallies.iter_mut().find(|(j, _)| j == index)) {
                t.store_failure = true;
            }
        }
    }

    /// Writes one admission; on a lost compare-and-swap, locates and decides again. A new key
    /// placed past other keys' slots is then sealed ([`SlotTable::seal`]), which may move the
    /// admission to a copy another worker placed first and turn it into a refusal: the verdict
    /// and key returned are the ones that stand (for the headers and for a give-back). A seal
    /// that fails leaves the admission written and reports the failure.
    #[allow(clippy::too_many_arguments)]
    fn commit<'s>(
        &self,
        limit: &'s CompiledLimit,
        fingerprint: u64,
        mut slot: slots::Slot<'s>,
        mut verdict: Verdict,
        store: &impl SharedStore,
        now: Nanos,
        tally: &mut Tally,
    ) -> Result<(Verdict, Cow<'s, str>), CommitError> {
        for _ in 0..ATTEMPTS {
            let Verdict::Admit { tat, .. } = verdict else {
                return Ok((verdict, slot.key));
            };
            match store.set(&slot.key, &slots::encode(fingerprint, tat), slot.cas)? {
                // Found, or placed first in its probe sequence: nothing to seal.
                Write::Stored if slot.passed.is_none() => return Ok((verdict, slot.key)),
                Write::Stored => {
                    // Placed past slots other keys held: another worker may be placing the key
                    // in one of them (see `slots`).
                    let Some(gcra) = limit.gcra else {
                        return Ok((verdict, slot.key));
                    };
                    let sealed = limit.table.seal(
                        store,
                        fingerprint,
                        &slot,
                        tat,
                        &gcra,
                        now,
                        ATTEMPTS,
                        &mut tally.conflicts,
                    );
                    return match sealed {
                        Ok(None) => Ok((verdict, slot.key)),
                        Ok(Some(moved)) => Ok((moved.verdict, moved.key)),
                        Err(UpdateError::Store(err)) => Err(CommitError::Store(err)),
                        Err(UpdateError::Contended(_)) => Err(CommitError::Contended),
                    };
                }
                Write::Conflict => {
                    tally.conflicts += 1;
                    match limit.table.locate(store, fingerprint, now)? {
                        Located::Slot(again) => {
                            let Some(gcra) = limit.gcra else {
                                return Ok((verdict, again.key));
                            };
                            verdict = gcra.check(again.tat, now);
                            slot = again;
                        }
                        Located::Full => return Err(CommitError::Full),
                    }
                }
            }
        }
        Err(CommitError::Contended)
    }

    fn refuse(
        &self,
        pending: &[Pending<'_>],
        applicable: &LimitSet,
        tallies: &mut Tallies,
    ) -> Decision {
        let mut retry_after = 0;
        for p in pending {
            if let Verdict::Refuse { retry_after: r, .. } = p.verdict {
                retry_after = retry_after.max(r);
                if let Some((_, tally)) = tallies.iter_mut().find(|(i, _)| *i == p.limit) {
                    tally.limited = true;
                }
            }
        }
        let reply = ErrorReply::new(429, "rate limit exceeded")
            .with_header("retry-after", ceil_secs(retry_after).max(1).to_string());
        Decision::Deny(with_headers(
            reply,
            self.rate_limit_headers(pending, applicable),
        ))
    }

    /// `RateLimit-Policy` lists every limit that applied; `RateLimit` reports the one closest
    /// to refusing. `None` when headers are off or no local limit applied.
    fn rate_limit_headers(
        &self,
        pending: &[Pending<'_>],
        applicable: &LimitSet,
    ) -> Option<RateLimitHeaders> {
        if !self.headers {
            return None;
        }
        let mut tightest: Option<(u64, Nanos, &Rc<str>)> = None;
        for p in pending {
            let Some(limit) = self.limits.get(p.limit) else {
                continue;
            };
            let (remaining, reset) = remaining_and_reset(p.verdict);
            if tightest.is_none_or(|(r, _, _)| remaining < r) {
                tightest = Some((remaining, reset, &limit.rate_limit_prefix));
            }
        }
        let (remaining, reset, prefix) = tightest?;
        // Pending holds the set's local limits in order, minus those whose key was missing:
        // all of them is the set's prebuilt value.
        let policy = if pending.len() == applicable.local {
            Rc::clone(&applicable.policy)
        } else {
            join_policies(
                pending
                    .iter()
                    .filter_map(|p| self.limits.get(p.limit))
                    .map(|limit| limit.policy.as_str()),
            )
        };
        Some(RateLimitHeaders {
            policy,
            prefix: Rc::clone(prefix),
            remaining,
            reset,
        })
    }
}

/// A `RateLimit-Policy` value: the items, comma-separated.
fn join_policies<'a>(items: impl Iterator<Item = &'a str>) -> Rc<str> {
    let mut value = String::new();
    for item in items {
        if !value.is_empty() {
            value.push_str(", ");
        }
        value.push_str(item);
    }
    Rc::from(value)
}

fn with_headers(reply: ErrorReply, headers: Option<RateLimitHeaders>) -> ErrorReply {
    match headers {
        Some(headers) => headers
            .pairs()
            .into_iter()
            .fold(reply, |reply, (name, value)| reply.with_header(name, value)),
        None => reply,
    }
}

/// One limit's contribution to the `RateLimit-Policy` and `RateLimit` headers.
struct HeaderItem<'a> {
    policy: Cow<'a, str>,
    /// The limit's `RateLimit` prefix.
    prefix: &'a Rc<str>,
    remaining: u64,
    reset: Nanos,
}

fn remaining_and_reset(verdict: Verdict) -> (u64, Nanos) {
    match verdict {
        Verdict::Admit {
            remaining,
            reset_after,
            ..
        } => (remaining, reset_after),
        Verdict::Refuse { reset_after, .. } => (0, reset_after),
    }
}

/// Why an admission could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("every slot the key may use is taken")]
    Full,
    #[error("gave up after {ATTEMPTS} conflicting writes")]
    Contended,
}

fn unavailable() -> ErrorReply {
    ErrorReply::new(503, "rate limiter unavailable")
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::key::tests::FakeRequest;
    use crate::proto::Code;
    use crate::slots::tests::Scripted;
    use palisade_kit::config::load;
    use palisade_kit::store::{BlindWrite, Cas, Entry, MemoryStore};
    use std::cell::{Cell, RefCell};
    use std::time::Duration;

    #[test]
    fn the_policy_window_is_whole_seconds_rounded_up_or_left_out() {
        assert_eq!(
            policy("a", 5, Some(Duration::from_millis(1500))),
            "\"a\";q=5;w=2"
        );
        assert_eq!(
            policy("a", 5, Some(Duration::from_secs(60))),
            "\"a\";q=5;w=60"
        );
        assert_eq!(policy("a", 5, None), "\"a\";q=5");
    }

    const T0: u64 = 1_700_000_000;

    fn at(secs: f64) -> Nanos {
        T0 * 1_000_000_000 + (secs * 1e9) as Nanos
    }

    /// The response headers an admitted request gets, as (name, value).
    fn headers(decision: &Decision) -> Vec<(String, String)> {
        match decision {
            Decision::Allow {
                response_headers, ..
            } => response_headers
                .iter()
                .flat_map(RateLimitHeaders::pairs)
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    fn limiter(config: &str) -> RateLimiter {
        RateLimiter::new(
            &load::<RateLimitConfig>(config.as_bytes()).unwrap(),
            HashKey::from_bytes([5; 16]),
        )
    }

    fn prepared(config: &str, store: &MemoryStore) -> RateLimiter {
        let limiter = limiter(config);
        limiter.prepare(store).unwrap();
        limiter
    }

    fn is_allowed(decision: &Decision) -> bool {
        matches!(decision, Decision::Allow { .. })
    }

    fn get(path: &str) -> FakeRequest {
        FakeRequest::new("GET", path)
    }

    const PER_TENANT: &str = r#"{"limits":[{"name":"per-tenant","rate":2,"period":"10s","burst":1,
        "key":[{"header":"x-tenant"}],"slots":64}]}"#;

    #[test]
    fn burst_then_refusal_with_retry_after_and_headers() {
        let store = MemoryStore::new();
        let limiter = prepared(PER_TENANT, &store);
        let mut request = get("/").header("x-tenant", "acme");
        let (first, tallies) = limiter.decide(&mut request, &store, at(0.0));
        assert_eq!(
            headers(&first),
            [
                ("ratelimit-policy".into(), "\"per-tenant\";q=3;w=10".into()),
                ("ratelimit".into(), "\"per-tenant\";r=1;t=5".into()),
            ]
        );
        assert_eq!(
            tallies[..],
            [(
                0,
                Tally {
                    allowed: true,
                    ..Tally::default()
                }
            )]
        );
        assert!(is_allowed(&limiter.decide(&mut request, &store, at(0.0)).0));
        let (third, tallies) = limiter.decide(&mut request, &store, at(1.0));
        let Decision::Deny(reply) = third else {
            panic!("{third:?}")
        };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.error, "rate limit exceeded");
        assert_eq!(
            reply.headers,
            [
                ("retry-after".to_owned(), "4".to_owned()),
                ("ratelimit-policy".into(), "\"per-tenant\";q=3;w=10".into()),
                ("ratelimit".into(), "\"per-tenant\";r=0;t=9".into()),
            ]
        );
        assert_eq!(
            tallies[..],
            [(
                0,
                Tally {
                    limited: true,
                    ..Tally::default()
                }
            )]
        );
        // Another tenant has its own budget; the first gets one more after 5 s.
        assert!(is_allowed(
            &limiter
                .decide(&mut get("/").header("x-tenant", "globex"), &store, at(1.0))
                .0
        ));
        assert!(is_allowed(&limiter.decide(&mut request, &store, at(5.0)).0));
        assert!(!is_allowed(
            &limiter.decide(&mut request, &store, at(5.0)).0
        ));
    }

    #[test]
    fn the_policy_lists_the_limits_that_applied() {
        let store = MemoryStore::new();
        let limiter = prepared(
            r#"{"limits":[
                {"name":"all","rate":100,"period":"60s","burst":99,"key":[{"constant":"x"}],"slots":4},
                {"name":"per-tenant","rate":1,"period":"1s","burst":1,"key":[{"header":"x-tenant"}],"slots":8}]}"#,
            &store,
        );
        // Both applied: the value built with the configuration.
        let (both, _) = limiter.decide(&mut get("/").header("x-tenant", "a"), &store, at(0.0));
        assert_eq!(
            headers(&both),
            [
                (
                    "ratelimit-policy".to_owned(),
                    "\"all\";q=199;w=60, \"per-tenant\";q=2;w=1".to_owned()
                ),
                ("ratelimit".to_owned(), "\"per-tenant\";r=1;t=1".to_owned()),
            ]
        );
        // No tenant: that limit is skipped and not listed.
        let (one, _) = limiter.decide(&mut get("/"), &store, at(0.0));
        assert_eq!(
            headers(&one),
            [
                (
                    "ratelimit-policy".to_owned(),
                    "\"all\";q=199;w=60".to_owned()
                ),
                ("ratelimit".to_owned(), "\"all\";r=98;t=2".to_owned()),
            ]
        );
    }

    #[test]
    fn the_rate_limit_value_is_written_in_place_or_as_a_string_when_too_long() {
        let item = |name: &str, remaining, reset| RateLimitHeaders {
            policy: Rc::from(""),
            prefix: Rc::from(format!("\"{name}\";r=")),
            remaining,
            reset,
        };
        let mut buf = [0; RATE_LIMIT_MAX_LEN];
        for (remaining, reset) in [(0, 0), (7, 1), (u64::MAX, u64::MAX), (1_000, 1_500_000_000)] {
            let longest = item(&"n".repeat(MAX_NAME_LEN), remaining, reset);
            let expected = format!(
                "\"{}\";r={remaining};t={}",
                "n".repeat(MAX_NAME_LEN),
                reset.div_ceil(1_000_000_000)
            );
            assert_eq!(longest.rate_limit(), expected);
            assert_eq!(
                longest.write_rate_limit(&mut buf),
                Some(expected.as_bytes())
            );
        }
        // Only a name no configuration accepts could make it overflow.
        let too_long = item(&"n".repeat(MAX_NAME_LEN + 20), u64::MAX, u64::MAX);
        assert_eq!(too_long.write_rate_limit(&mut buf), None);
        assert!(too_long.rate_limit().ends_with(";t=18446744074"));
    }

    #[test]
    fn headers_can_be_switched_off() {
        let store = MemoryStore::new();
        let config = PER_TENANT.replacen('{', r#"{"rate_limit_headers":false,"#, 1);
        let limiter = prepared(&config, &store);
        let mut request = get("/").header("x-tenant", "acme");
        assert_eq!(
            limiter.decide(&mut request, &store, at(0.0)).0,
            Decision::Allow {
                response_headers: None,
                service: None,
            }
        );
        limiter.decide(&mut request, &store, at(0.0));
        let (Decision::Deny(reply), _) = limiter.decide(&mut request, &store, at(0.0)) else {
            panic!()
        };
        assert_eq!(reply.headers, [("retry-after".to_owned(), "5".to_owned())]);
    }

    #[test]
    fn several_workers_on_one_store_admit_exactly_the_budget() {
        // Three limiters (three workers' VMs) on one store, interleaving: 10 + 0 burst per
        // minute admits exactly 10 of 40, whoever serves them.
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let config = r#"{"limits":[{"name":"all","rate":10,"period":"60s","burst":9,"key":[{"constant":"x"}],"slots":4}]}"#;
        let workers: Vec<RateLimiter> = (0..3).map(|_| prepared(config, &store)).collect();
        let admitted = (0..40)
            .filter(|i| is_allowed(&workers[i % 3].decide(&mut get("/"), &store, at(0.0)).0))
            .count();
        assert_eq!(admitted, 10);
    }

    /// Kong 3.8+ finds a shared-data key by its CRC32 alone: here every key of limit `b` is
    /// limit `a`'s key, as if each pair had the same CRC32.
    struct Aliasing<'a> {
        store: &'a MemoryStore,
        /// Limit `b`'s table prefix, and `a`'s it reads as.
        b: String,
        a: String,
    }

    impl Aliasing<'_> {
        fn alias(&self, key: &str) -> String {
            key.replace(&self.b, &self.a)
        }
    }

    impl SharedStore for Aliasing<'_> {
        fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            self.store.get(&self.alias(key))
        }
        fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
            self.store.set(&self.alias(key), value, expected)
        }
    }

    #[test]
    fn a_slot_shared_with_another_limit_never_reads_as_this_limits() {
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        // The same client key in both. Without the limit in the fingerprint, `b` would read
        // `a`'s entry as its own client's (a TAT `a` moved, at `a`'s pace) and refuse a first
        // request.
        let limiter = prepared(
            r#"{"limits":[
                {"name":"a","rate":100,"period":"60s","burst":100,"key":[{"header":"x-tenant"}],"slots":1},
                {"name":"b","rate":1,"period":"60s","key":[{"header":"x-tenant"}],"slots":1}]}"#,
            &store,
        );
        let aliasing = Aliasing {
            store: &store,
            b: limiter.limits[1].table.prefix().to_owned(),
            a: limiter.limits[0].table.prefix().to_owned(),
        };
        for second in 0..3 {
            let (decision, tallies) = limiter.decide(
                &mut get("/").header("x-tenant", "acme"),
                &aliasing,
                at(f64::from(second)),
            );
            assert!(is_allowed(&decision), "{second}: {decision:?}");
            // `b`'s one slot holds another key that is still limited: full, a store failure
            // (allowed unchecked by default), never `a`'s budget.
            let (_, b) = tallies.iter().find(|(i, _)| *i == 1).unwrap();
            assert!(
                !b.limited && (second == 0 || b.store_failure),
                "{second}: {b:?}"
            );
        }
    }

    /// A store where another worker writes the same key between our read and our write, a
    /// given number of times.
    struct Racing<'a> {
        inner: &'a MemoryStore,
        races: Cell<u32>,
        other: &'a RateLimiter,
    }

    impl SharedStore for Racing<'_> {
        fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
            if self.races.get() > 0 {
                self.races.set(self.races.get() - 1);
                let (decision, _) = self.other.decide(&mut get("/"), self.inner, at(0.0));
                assert!(is_allowed(&decision));
            }
            self.inner.set(key, value, expected)
        }
    }

    #[test]
    fn a_lost_compare_and_swap_is_read_again_and_can_turn_into_a_refusal() {
        let store = MemoryStore::new();
        let config = r#"{"limits":[{"name":"all","rate":1,"period":"60s","burst":1,"key":[{"constant":"x"}],"slots":4}]}"#;
        let us = prepared(config, &store);
        let other = prepared(config, &store);
        // One race: the other worker takes 1 of 2, we retry and take the second.
        let racing = Racing {
            inner: &store,
            races: Cell::new(1),
            other: &other,
        };
        let (decision, tallies) = us.decide(&mut get("/"), &racing, at(0.0));
        assert!(is_allowed(&decision));
        assert_eq!(tallies[0].1.conflicts, 1);
        // The budget is spent: with the other worker racing again we are refused after a retry.
        let store = MemoryStore::new();
        let us = prepared(config, &store);
        assert!(is_allowed(&other.decide(&mut get("/"), &store, at(0.0)).0));
        let racing = Racing {
            inner: &store,
            races: Cell::new(1),
            other: &other,
        };
        let (decision, tallies) = us.decide(&mut get("/"), &racing, at(0.0));
        assert!(
            matches!(decision, Decision::Deny(ref r) if r.status == 429),
            "{decision:?}"
        );
        assert_eq!(
            tallies[0].1,
            Tally {
                limited: true,
                conflicts: 1,
                ..Tally::default()
            }
        );
    }

    #[test]
    fn a_limit_written_before_another_refuses_in_a_race_gets_its_budget_back() {
        // "a" lets two through at once, "b" one. The other worker admits a request between our
        // reads and writes: "a" is written (after a retry), then "b" turns into a refusal.
        let both = r#"{"limits":[
            {"name":"a","rate":1,"period":"60s","burst":1,"key":[{"constant":"x"}],"slots":4},
            {"name":"b","rate":1,"period":"60s","key":[{"constant":"x"}],"slots":4}]}"#;
        let store = MemoryStore::new();
        let us = prepared(both, &store);
        let other = prepared(both, &store);
        let racing = Racing {
            inner: &store,
            races: Cell::new(1),
            other: &other,
        };
        let (decision, tallies) = us.decide(&mut get("/"), &racing, at(0.0));
        assert!(
            matches!(decision, Decision::Deny(ref r) if r.status == 429),
            "{decision:?}"
        );
        assert!(tallies[1].1.limited, "{tallies:?}");
        assert!(!tallies[0].1.store_failure, "{tallies:?}");
        // "a" still has the second of its two: only the other worker's request spent one.
        let only_a = prepared(
            r#"{"limits":[{"name":"a","rate":1,"period":"60s","burst":1,"key":[{"constant":"x"}],"slots":4}]}"#,
            &store,
        );
        assert!(is_allowed(&only_a.decide(&mut get("/"), &store, at(0.0)).0));
        assert!(!is_allowed(
            &only_a.decide(&mut get("/"), &store, at(0.0)).0
        ));
    }

    /// Refuses every write to the keys under `failing`.
    struct FailingWrites<'a> {
        inner: &'a MemoryStore,
        failing: &'static str,
    }

    impl SharedStore for FailingWrites<'_> {
        fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
            if key.starts_with(self.failing) {
                return Err(StoreError::Host(10));
            }
            self.inner.set(key, value, expected)
        }
    }

    /// Two configurations (two Kong routes' chains on one zone) each name a limit `per-ip`:
    /// the 100/s one must neither reset nor reclaim the 1/min one's state.
    #[test]
    fn limits_of_one_name_in_two_configurations_keep_apart() {
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let strict = prepared(
            r#"{"limits":[{"name":"per-ip","rate":1,"period":"60s","key":[{"constant":"x"}],"slots":1}]}"#,
            &store,
        );
        let loose = prepared(
            r#"{"limits":[{"name":"per-ip","rate":100,"period":"1s","key":[{"constant":"x"}],"slots":1}]}"#,
            &store,
        );
        assert!(is_allowed(&strict.decide(&mut get("/"), &store, at(0.0)).0));
        for step in 1..5 {
            let now = at(f64::from(step) * 0.5);
            assert!(is_allowed(&loose.decide(&mut get("/"), &store, now).0));
            assert!(
                !is_allowed(&strict.decide(&mut get("/"), &store, now).0),
                "step {step}"
            );
        }
        // One definition in both: one budget, as one limit.
        let again = prepared(
            r#"{"limits":[{"name":"per-ip","rate":1,"period":"60s","key":[{"constant":"x"}],"slots":1}]}"#,
            &store,
        );
        assert!(!is_allowed(&again.decide(&mut get("/"), &store, at(3.0)).0));
    }

    #[test]
    fn a_store_failure_that_denies_gives_back_the_limits_already_written() {
        let both = r#"{"on_store_failure":"deny","limits":[
            {"name":"a","rate":1,"period":"60s","burst":1,"key":[{"constant":"x"}],"slots":4},
            {"name":"b","rate":1,"period":"60s","key":[{"constant":"x"}],"slots":4}]}"#;
        let store = MemoryStore::new();
        let us = prepared(both, &store);
        let failing = FailingWrites {
            inner: &store,
            failing: "palisade/rate-limit/b/",
        };
        let (decision, tallies) = us.decide(&mut get("/"), &failing, at(0.0));
        assert!(
            matches!(decision, Decision::Deny(ref r) if r.status == 503),
            "{decision:?}"
        );
        assert!(tallies[1].1.store_failure, "{tallies:?}");
        // "a" still lets its two through: the 503 spent none of its budget.
        let only_a = prepared(
            r#"{"limits":[{"name":"a","rate":1,"period":"60s","burst":1,"key":[{"constant":"x"}],"slots":4}]}"#,
            &store,
        );
        assert!(is_allowed(&only_a.decide(&mut get("/"), &store, at(0.0)).0));
        assert!(is_allowed(&only_a.decide(&mut get("/"), &store, at(0.0)).0));
        assert!(!is_allowed(
            &only_a.decide(&mut get("/"), &store, at(0.0)).0
        ));
    }

    const MINUTE: Nanos = 60_000_000_000;

    /// One a minute and `burst` more at once, per tenant, in 4 slots.
    fn per_tenant(burst: u32) -> String {
        format!(
            r#"{{"limits":[{{"name":"t","rate":1,"period":"60s","burst":{burst},"key":[{{"header":"x-tenant"}}],"slots":4}}]}}"#
        )
    }

    fn tenant(name: &str) -> FakeRequest {
        get("/").header("x-tenant", name)
    }

    /// The setting of docs/rate-limit.md's race: tenant "x" is admitted at 0 s into its home
    /// slot `q`, where it stays limited until 60 s; `tenant` (fingerprint `fingerprint`) has
    /// the same home, so before 60 s it is placed in the next slot, `p`. With more `blockers`
    /// (the times they are admitted at, "x" first), tenants of that home fill the slots after
    /// `q`, each limited until 60 s after its time, and `p` is the slot after them.
    struct Race {
        tenant: String,
        fingerprint: u64,
        q: String,
        p: String,
    }

    impl Race {
        fn new(limiter: &RateLimiter, store: &impl SharedStore) -> Self {
            Self::with_blockers(limiter, store, &[0.0])
        }

        fn with_blockers(
            limiter: &RateLimiter,
            store: &impl SharedStore,
            blockers: &[f64],
        ) -> Self {
            let limit = &limiter.limits[0];
            let fingerprint = |name: &str| {
                let mut request = tenant(name);
                let mut parts = RequestParts::new(&mut request, limiter.client_ip);
                key::fingerprint_of(&limiter.hash_key, &limit.key, &mut parts).unwrap() ^ limit.salt
            };
            let home = fingerprint("x") % 4;
            let mut names = (0..)
                .map(|i| format!("k{i}"))
                .filter(|name| fingerprint(name) % 4 == home);
            for (i, admitted_at) in blockers.iter().enumerate() {
                let name = if i == 0 {
                    "x".to_owned()
                } else {
                    names.next().unwrap()
                };
                let (decision, _) = limiter.decide(&mut tenant(&name), store, at(*admitted_at));
                assert!(is_allowed(&decision));
            }
            let name = names.next().unwrap();
            let slot = |index: u64| limit.table.key(index as u32).into_owned();
            Self {
                fingerprint: fingerprint(&name),
                tenant: name,
                q: slot(home),
                p: slot((home + blockers.len() as u64) % 4),
            }
        }

        /// `op`s of slots `q` and `p` as [`Scripted`] logs them: `("get", "q")`.
        fn calls(&self, calls: &[(&str, &str)]) -> Vec<String> {
            let index = |key: &str| key.rsplit('/').next().unwrap().to_owned();
            calls
                .iter()
                .map(|(op, slot)| {
                    let (op, lost) = op
                        .split_once(' ')
                        .map_or((*op, ""), |(op, _)| (op, " lost"));
                    let slot = if *slot == "q" {
                        index(&self.q)
                    } else {
                        index(&self.p)
                    };
                    format!("{op} {slot}{lost}")
                })
                .collect()
        }

        fn held(&self, store: &MemoryStore, key: &str) -> Option<(u64, Nanos)> {
            slots::decode(&store.get(key).unwrap()?.value)
        }

        /// Another worker admits a request in `p` (it found the key there).
        fn admit_at_p(&self, store: &MemoryStore) {
            let entry = store.get(&self.p).unwrap().unwrap();
            let (held, tat) = slots::decode(&entry.value).unwrap();
            assert_eq!(held, self.fingerprint);
            let value = slots::encode(held, tat + MINUTE);
            assert_eq!(
                store.set(&self.p, &value, Some(entry.cas)),
                Ok(Write::Stored)
            );
        }
    }

    #[test]
    fn two_workers_placing_a_new_key_in_two_slots_admit_only_its_budget() {
        // docs/rate-limit.md's race: worker A reads `q` at 59.9 s ("x" limited) and places the
        // key in `p`; before A writes, worker B reads at 60 s ("x" idle) and places it in `q`.
        // Both writes land. A's seal then finds B's copy in `q`, the one every lookup finds,
        // and decides A's request again there.
        for (burst, a_admitted) in [(0, false), (2, true)] {
            let store = MemoryStore::new();
            let a = prepared(&per_tenant(burst), &store);
            let b = limiter(&per_tenant(burst));
            let race = Race::new(&a, &store);
            let scripted = Scripted::new(&store).before(3, || {
                let (decision, _) = b.decide(&mut tenant(&race.tenant), &store, at(60.0));
                assert!(is_allowed(&decision));
            });
            let (decision, tallies) = a.decide(&mut tenant(&race.tenant), &scripted, at(59.9));
            assert_eq!(is_allowed(&decision), a_admitted, "{burst}: {decision:?}");
            assert_eq!(tallies[0].1.conflicts, 1);
            let mut calls = vec![
                ("get", "q"),
                ("get", "p"),
                ("set", "p"),
                ("set lost", "q"),
                ("get", "q"),
                ("get", "p"),
            ];
            let mut in_q = at(60.0) + MINUTE;
            if a_admitted {
                calls.push(("set", "q"));
                in_q += MINUTE;
            }
            calls.push(("set", "p"));
            assert_eq!(scripted.log(), race.calls(&calls), "{burst}");
            assert_eq!(race.held(&store, &race.q), Some((race.fingerprint, in_q)));
            assert_eq!(
                race.held(&store, &race.p),
                Some((race.fingerprint, slots::MOVED))
            );
            // What is left of the budget: all of it counted, in one place.
            let later = (0..5)
                .filter(|_| is_allowed(&a.decide(&mut tenant(&race.tenant), &store, at(60.0)).0))
                .count();
            assert_eq!(
                1 + usize::from(a_admitted) + later,
                burst as usize + 1,
                "{burst}"
            );
        }
    }

    #[test]
    fn a_sealed_slot_makes_the_other_placement_read_again_and_find_the_key() {
        // The same race, the seal first: B (60 s) has read `q` idle and `p` empty when A
        // (59.9 s) places the key in `p` and seals `q`, at one more write. B's write to `q`
        // loses; B reads again and finds the key in `p`, its budget spent.
        let store = MemoryStore::new();
        let a = prepared(&per_tenant(0), &store);
        let b = limiter(&per_tenant(0));
        let race = Race::new(&a, &store);
        let x = store.get(&race.q).unwrap().unwrap();
        let a_calls = RefCell::new(Vec::new());
        let scripted = Scripted::new(&store).before(3, || {
            let a_store = Scripted::new(&store);
            let (decision, _) = a.decide(&mut tenant(&race.tenant), &a_store, at(59.9));
            assert!(is_allowed(&decision));
            *a_calls.borrow_mut() = a_store.log();
        });
        let (decision, tallies) = b.decide(&mut tenant(&race.tenant), &scripted, at(60.0));
        assert!(!is_allowed(&decision), "{decision:?}");
        assert_eq!(
            tallies[0].1,
            Tally {
                limited: true,
                conflicts: 1,
                ..Tally::default()
            }
        );
        assert_eq!(
            *a_calls.borrow(),
            race.calls(&[("get", "q"), ("get", "p"), ("set", "p"), ("set", "q")])
        );
        assert_eq!(
            scripted.log(),
            race.calls(&[
                ("get", "q"),
                ("get", "p"),
                ("set lost", "q"),
                ("get", "q"),
                ("get", "p")
            ])
        );
        assert_eq!(store.get(&race.q).unwrap().unwrap().value, x.value);
        assert_eq!(
            race.held(&store, &race.p),
            Some((race.fingerprint, at(59.9) + MINUTE))
        );
    }

    #[test]
    fn a_moved_admission_takes_along_what_others_admitted_where_it_was_placed() {
        // Workers whose read of `q` came before B's write find the key in `p` until A marks it
        // moved. What they admit there is added to `q`: once before A's mark (A reads it with
        // the move, and decides with it counted) and once after (A's mark loses; A adds it and
        // marks again). B's, A's and the two made in `p` fit a budget of 5. With one of 3, B's
        // (its clock 0.1 s ahead) and the first made in `p` leave A less than one admission's
        // room: A is refused (decided on `q` alone, it was admitted: four in a budget of 3),
        // and `q` ends all spent (at A's clock), no further: a TAT further ahead would read as
        // a clock stepped back.
        for (burst, a_admitted, in_q) in [
            (4, true, at(60.0) + 4 * MINUTE),
            (2, false, at(59.9) + 3 * MINUTE),
        ] {
            let store = MemoryStore::new();
            let a = prepared(&per_tenant(burst), &store);
            let b = limiter(&per_tenant(burst));
            let race = Race::new(&a, &store);
            let scripted = Scripted::new(&store)
                .before(3, || {
                    let (decision, _) = b.decide(&mut tenant(&race.tenant), &store, at(60.0));
                    assert!(is_allowed(&decision));
                })
                .before(6, || race.admit_at_p(&store))
                .before(8, || race.admit_at_p(&store));
            let (decision, tallies) = a.decide(&mut tenant(&race.tenant), &scripted, at(59.9));
            assert_eq!(is_allowed(&decision), a_admitted, "{burst}: {decision:?}");
            assert_eq!(tallies[0].1.conflicts, 2);
            assert_eq!(
                scripted.log(),
                race.calls(&[
                    ("get", "q"),
                    ("get", "p"),
                    ("set", "p"),
                    ("set lost", "q"),
                    ("get", "q"),
                    ("get", "p"),
                    ("set", "q"),
                    ("set lost", "p"),
                    ("get", "p"),
                    ("get", "q"),
                    ("set", "q"),
                    ("set", "p"),
                ]),
                "{burst}"
            );
            assert_eq!(
                race.held(&store, &race.q),
                Some((race.fingerprint, in_q)),
                "{burst}"
            );
            assert_eq!(
                race.held(&store, &race.p),
                Some((race.fingerprint, slots::MOVED))
            );
        }
    }

    #[test]
    fn a_lookup_that_meets_the_moved_copy_reads_again_and_finds_the_key_where_it_moved() {
        // D (60 s) reads `q` ("x" idle) before B places the key there; by its read of `p`, A
        // has moved its admission to B's copy and marked `p` moved. Read as the key's state,
        // that mark would take D's admission where no lookup finds it; read as free, D would
        // place the key anew and leave the seals to catch it. D reads again instead.
        let store = MemoryStore::new();
        let a = prepared(&per_tenant(2), &store);
        let b = limiter(&per_tenant(2));
        let d = limiter(&per_tenant(2));
        let race = Race::new(&a, &store);
        let scripted = Scripted::new(&store).before(2, || {
            let a_store = Scripted::new(&store).before(3, || {
                let (decision, _) = b.decide(&mut tenant(&race.tenant), &store, at(60.0));
                assert!(is_allowed(&decision));
            });
            let (decision, _) = a.decide(&mut tenant(&race.tenant), &a_store, at(59.9));
            assert!(is_allowed(&decision));
            assert_eq!(
                race.held(&store, &race.p),
                Some((race.fingerprint, slots::MOVED))
            );
        });
        let (decision, tallies) = d.decide(&mut tenant(&race.tenant), &scripted, at(60.0));
        assert!(is_allowed(&decision), "{decision:?}");
        assert_eq!(tallies[0].1.conflicts, 0);
        assert_eq!(
            scripted.log(),
            race.calls(&[("get", "q"), ("get", "p"), ("get", "q"), ("set", "q")])
        );
        // B's, A's and D's, all in `q`.
        assert_eq!(
            race.held(&store, &race.q),
            Some((race.fingerprint, at(60.0) + 3 * MINUTE))
        );
    }

    #[test]
    fn a_slot_kong_evicts_during_the_seal_is_filled_so_no_one_places_the_key_there() {
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let a = prepared(&per_tenant(0), &store);
        let race = Race::new(&a, &store);
        let scripted = Scripted::new(&store).before(4, || assert!(store.evict(&race.q)));
        let (decision, _) = a.decide(&mut tenant(&race.tenant), &scripted, at(59.9));
        assert!(is_allowed(&decision), "{decision:?}");
        assert_eq!(
            scripted.log(),
            race.calls(&[
                ("get", "q"),
                ("get", "p"),
                ("set", "p"),
                ("set lost", "q"),
                ("get", "q"),
                ("set", "q"),
            ])
        );
        // Idle, not the key's, and not empty (which would end a probe before `p`).
        let (held, tat) = race.held(&store, &race.q).unwrap();
        assert_ne!(held, race.fingerprint);
        assert_eq!(tat, slots::MOVED);
        // A worker that read `q` gone before cannot place the key there...
        let stale = slots::encode(race.fingerprint, at(60.0) + MINUTE);
        assert_eq!(store.set(&race.q, &stale, None), Ok(Write::Conflict));
        // ...and one reading it now finds the key in `p`, its budget spent.
        let (decision, _) = a.decide(&mut tenant(&race.tenant), &store, at(60.0));
        assert!(!is_allowed(&decision), "{decision:?}");
    }

    /// Workers as threads that take turns at each store call, in an order a schedule picks:
    /// any interleaving of their host calls can be played.
    #[cfg(not(target_arch = "wasm32"))]
    mod interleavings {
        use super::*;
        use proptest::prelude::*;
        use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

        struct Board {
            waiting: Vec<bool>,
            done: Vec<bool>,
            turn: Option<usize>,
        }

        struct Turns {
            board: Mutex<Board>,
            changed: Condvar,
        }

        impl Turns {
            fn new(workers: usize) -> Self {
                Self {
                    board: Mutex::new(Board {
                        waiting: vec![false; workers],
                        done: vec![false; workers],
                        turn: None,
                    }),
                    changed: Condvar::new(),
                }
            }

            fn board(&self) -> MutexGuard<'_, Board> {
                self.board.lock().unwrap_or_else(PoisonError::into_inner)
            }

            /// Worker `id` waits for its turn to make one call.
            fn take_turn(&self, id: usize) {
                let mut board = self.board();
                board.waiting[id] = true;
                self.changed.notify_all();
                let mut board = self
                    .changed
                    .wait_while(board, |b| b.turn != Some(id))
                    .unwrap_or_else(PoisonError::into_inner);
                board.turn = None;
                board.waiting[id] = false;
            }

            fn finish(&self, id: usize) {
                let mut board = self.board();
                board.done[id] = true;
                self.changed.notify_all();
            }

            /// Gives turns until every worker is done: each time all are waiting (or done),
            /// the next pick chooses among those waiting.
            fn play(&self, picks: &[u8]) {
                let mut picks = picks.iter().cycle();
                loop {
                    let mut board = self
                        .changed
                        .wait_while(self.board(), |b| {
                            b.turn.is_some() || b.waiting.iter().zip(&b.done).any(|(w, d)| !w && !d)
                        })
                        .unwrap_or_else(PoisonError::into_inner);
                    let waiting: Vec<usize> = (0..board.waiting.len())
                        .filter(|&i| board.waiting[i])
                        .collect();
                    if waiting.is_empty() {
                        return;
                    }
                    let pick = usize::from(picks.next().copied().unwrap_or(0));
                    board.turn = Some(waiting[pick % waiting.len()]);
                    self.changed.notify_all();
                }
            }
        }

        /// One worker's view of the store: each call waits for the worker's turn.
        struct Turn<'a> {
            id: usize,
            turns: &'a Turns,
            store: &'a Mutex<MemoryStore>,
        }

        impl Turn<'_> {
            fn store(&self) -> MutexGuard<'_, MemoryStore> {
                self.turns.take_turn(self.id);
                self.store.lock().unwrap_or_else(PoisonError::into_inner)
            }
        }

        impl SharedStore for Turn<'_> {
            fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
                self.store().get(key)
            }
            fn set(
                &self,
                key: &str,
                value: &[u8],
                expected: Option<Cas>,
            ) -> Result<Write, StoreError> {
                self.store().set(key, value, expected)
            }
        }

        /// Marks a worker done however its thread ends, so that the turns go on.
        struct Finish<'a>(&'a Turns, usize);

        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                self.0.finish(self.1);
            }
        }

        /// The clocks a worker may read: every tenant before the key limited; the one
        /// admitted at 0 s idle; all idle.
        const CLOCKS: [f64; 3] = [59.9, 60.0, 60.05];

        /// The tenants before the key ([`Race::with_blockers`]): one; two, the first going
        /// idle first; two, the second going idle first (so that the key may be placed between
        /// them).
        const LAYOUTS: [&[f64]; 3] = [&[0.0], &[0.0, 0.05], &[0.05, 0.0]];

        /// Plays the race's setting with a [`LAYOUTS`] of tenants before the key: each worker
        /// sends its requests for the key at the [`CLOCKS`] its list picks, its calls
        /// interleaved as `picks` says. How many were admitted, and the TAT where the key is
        /// found afterwards.
        fn play(burst: u32, layout: usize, workers: &[Vec<u8>], picks: &[u8]) -> (usize, Nanos) {
            let config = per_tenant(burst);
            let store = MemoryStore::new();
            let blockers = LAYOUTS[layout % LAYOUTS.len()];
            let race = Race::with_blockers(&prepared(&config, &store), &store, blockers);
            let store = Mutex::new(store);
            let turns = Turns::new(workers.len());
            let admitted = std::thread::scope(|scope| {
                let handles: Vec<_> = workers
                    .iter()
                    .enumerate()
                    .map(|(id, clocks)| {
                        let (turns, store, config, name) = (&turns, &store, &config, &race.tenant);
                        scope.spawn(move || {
                            let _finish = Finish(turns, id);
                            let limiter = limiter(config);
                            let store = Turn { id, turns, store };
                            clocks
                                .iter()
                                .filter(|clock| {
                                    let now = at(CLOCKS[usize::from(**clock) % CLOCKS.len()]);
                                    is_allowed(&limiter.decide(&mut tenant(name), &store, now).0)
                                })
                                .count()
                        })
                    })
                    .collect();
                turns.play(picks);
                handles
                    .into_iter()
                    .map(|handle| handle.join().unwrap())
                    .sum::<usize>()
            });
            let store = store.into_inner().unwrap();
            let limiter = limiter(&config);
            let located = limiter.limits[0]
                .table
                .locate(&store, race.fingerprint, at(60.0))
                .unwrap();
            let Located::Slot(slot) = located else {
                panic!("full")
            };
            (admitted, slot.tat.unwrap_or(0))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Two workers, any interleaving of their calls: never more admitted than the
            /// GCRA allows, and each admission counted where the key is found afterwards.
            #[test]
            fn two_workers_admit_at_most_the_budget_however_their_calls_interleave(
                burst in 0u32..3,
                layout in 0..LAYOUTS.len(),
                plan in proptest::collection::vec(proptest::collection::vec(0u8..3, 1..3), 2),
                picks in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let (admitted, tat) = play(burst, layout, &plan, &picks);
                prop_assert!(admitted <= burst as usize + 1, "{admitted} admitted");
                prop_assert!(tat >= at(59.9) + admitted as u64 * MINUTE, "TAT {tat}");
            }

            /// Three workers: one whose lookup reads `q` before one placement and `p` after
            /// the other finds the key in `p`, and what it admits there reaches `q` only with
            /// the seal, a few calls later; meanwhile `q` may admit one request too many
            /// (docs/rate-limit.md). Every admission is still charged to the key afterwards,
            /// up to its whole budget.
            #[test]
            fn three_workers_charge_every_admission_to_the_key(
                burst in 0u32..3,
                layout in 0..LAYOUTS.len(),
                plan in proptest::collection::vec(proptest::collection::vec(0u8..3, 1..3), 3),
                picks in proptest::collection::vec(any::<u8>(), 0..96),
            ) {
                let (admitted, tat) = play(burst, layout, &plan, &picks);
                let charged = admitted.min(burst as usize + 1) as u64;
                prop_assert!(tat >= at(59.9) + charged * MINUTE, "{admitted} admitted, TAT {tat}");
            }
        }
    }

    #[test]
    fn endless_contention_follows_the_failure_mode() {
        for (mode, status) in [("allow", None), ("deny", Some(503))] {
            let store = MemoryStore::new();
            let config = format!(
                r#"{{"on_store_failure":"{mode}","limits":[{{"name":"all","rate":1000,"period":"1s","burst":1000,"key":[{{"constant":"x"}}],"slots":4}}]}}"#
            );
            let us = prepared(&config, &store);
            let other = prepared(&config, &store);
            let racing = Racing {
                inner: &store,
                races: Cell::new(100),
                other: &other,
            };
            let (decision, tallies) = us.decide(&mut get("/"), &racing, at(0.0));
            assert_eq!(tallies[0].1.conflicts, ATTEMPTS);
            assert!(tallies[0].1.store_failure);
            match status {
                None => assert!(is_allowed(&decision)),
                Some(status) => {
                    assert_eq!(
                        decision,
                        Decision::Deny(ErrorReply::new(status, "rate limiter unavailable"))
                    )
                }
            }
        }
    }

    #[test]
    fn a_full_slot_table_follows_the_failure_mode() {
        for (mode, allowed) in [("allow", true), ("deny", false)] {
            let store = MemoryStore::new();
            // One slot, a long period: the second client finds it taken.
            let config = format!(
                r#"{{"on_store_failure":"{mode}","limits":[{{"name":"ip","rate":1,"period":"1h","key":["client_ip"],"slots":1}}]}}"#
            );
            let limiter = prepared(&config, &store);
            assert!(is_allowed(
                &limiter.decide(&mut get("/"), &store, at(0.0)).0
            ));
            let mut other = get("/");
            other.source = Some("10.9.9.9:1".into());
            let (decision, tallies) = limiter.decide(&mut other, &store, at(1.0));
            assert_eq!(is_allowed(&decision), allowed, "{mode}");
            assert!(tallies[0].1.store_failure);
            // Once the first client is idle, its slot is taken over.
            let (decision, tallies) = limiter.decide(&mut other, &store, at(3601.0));
            assert!(is_allowed(&decision));
            assert!(!tallies[0].1.store_failure);
        }
    }

    #[test]
    fn all_limits_must_pass_and_a_refusal_costs_the_others_nothing() {
        let store = MemoryStore::new();
        let limiter = prepared(
            r#"{"limits":[
                {"name":"per-ip","rate":1,"period":"60s","burst":4,"key":["client_ip"],"slots":16},
                {"name":"per-path","rate":1,"period":"60s","burst":1,"key":["path"],"slots":16}]}"#,
            &store,
        );
        let verdicts: Vec<bool> = (0..4)
            .map(|_| is_allowed(&limiter.decide(&mut get("/a"), &store, at(0.0)).0))
            .collect();
        assert_eq!(verdicts, [true, true, false, false]);
        // per-ip spent 2 of its 5: three more paths pass, then it refuses.
        let verdicts: Vec<bool> = ["/b", "/c", "/d", "/e"]
            .iter()
            .map(|p| is_allowed(&limiter.decide(&mut get(p), &store, at(0.0)).0))
            .collect();
        assert_eq!(verdicts, [true, true, true, false]);
        // The refusal names the tightest limit.
        let (Decision::Deny(reply), tallies) = limiter.decide(&mut get("/a"), &store, at(0.0))
        else {
            panic!()
        };
        assert_eq!(
            reply.headers[2],
            ("ratelimit".into(), "\"per-ip\";r=0;t=300".into())
        );
        assert!(tallies.iter().all(|(_, t)| t.limited));
    }

    #[test]
    fn missing_key_parts_skip_share_or_deny() {
        let store = MemoryStore::new();
        let config = |mode: &str| {
            format!(
                r#"{{"limits":[{{"name":"c-{mode}","rate":1,"period":"60s","key":["consumer"],"when_key_missing":"{mode}","slots":8}}]}}"#
            )
        };
        let skip = prepared(&config("skip"), &store);
        for _ in 0..3 {
            let (decision, tallies) = skip.decide(&mut get("/"), &store, at(0.0));
            assert_eq!(
                decision,
                Decision::Allow {
                    response_headers: None,
                    service: None,
                }
            );
            assert!(tallies.is_empty());
        }
        let shared = prepared(&config("shared"), &store);
        assert!(is_allowed(&shared.decide(&mut get("/"), &store, at(0.0)).0));
        assert!(!is_allowed(
            &shared.decide(&mut get("/x"), &store, at(0.0)).0
        ));
        let named = || get("/").header("x-palisade-consumer", "alice");
        assert!(is_allowed(&shared.decide(&mut named(), &store, at(0.0)).0));
        let deny = prepared(&config("deny"), &store);
        assert_eq!(
            deny.decide(&mut get("/"), &store, at(0.0)).0,
            Decision::Deny(ErrorReply::new(429, "rate limit key missing"))
        );
        assert!(is_allowed(&deny.decide(&mut named(), &store, at(0.0)).0));
    }

    #[test]
    fn the_first_matching_route_replaces_the_top_level_limits() {
        let store = MemoryStore::new();
        let limiter = prepared(
            r#"{"limits":[{"name":"default","rate":1,"period":"60s","key":[{"constant":"d"}],"slots":4}],
                "routes":[
                  {"match":{"path_prefix":"/search","methods":["GET"]},
                   "limits":[{"name":"search","rate":1,"period":"60s","burst":2,"key":[{"constant":"s"}],"slots":4}]},
                  {"match":{"path":"/health"},"limits":[]},
                  {"match":{"route":"admin"},
                   "limits":[{"name":"admin","rate":1,"period":"60s","key":[{"constant":"a"}],"slots":4}]}]}"#,
            &store,
        );
        let allowed =
            |request: &mut FakeRequest| is_allowed(&limiter.decide(request, &store, at(0.0)).0);
        let search: Vec<bool> = (0..4).map(|_| allowed(&mut get("/search?q=x"))).collect();
        assert_eq!(search, [true, true, true, false]);
        assert!(allowed(&mut get("/health")));
        assert!(allowed(&mut get("/health")));
        // POST /search is not the search route: the default limit.
        assert!(allowed(&mut FakeRequest::new("POST", "/search")));
        assert!(!allowed(&mut get("/other")));
        let mut admin = get("/x");
        admin.route = Some("admin".into());
        assert!(allowed(&mut admin.clone()));
        assert!(!allowed(&mut admin));
    }

    /// A login limit is not dodged by spelling the path as the upstream still reads it, nor a
    /// path key's budget multiplied by such spellings.
    #[test]
    fn routes_and_path_keys_see_the_path_as_servers_resolve_it() {
        let store = MemoryStore::new();
        let limiter = prepared(
            r#"{"limits":[],
                "routes":[
                  {"match":{"path":"/login","methods":["GET"]},
                   "limits":[{"name":"login","rate":1,"period":"60s","burst":1,"key":[{"constant":"l"}],"slots":4}]},
                  {"match":{"path_prefix":"/api/"},
                   "limits":[{"name":"per-path","rate":1,"period":"60s","key":["path"],"slots":16}]}]}"#,
            &store,
        );
        let allowed =
            |request: &mut FakeRequest| is_allowed(&limiter.decide(request, &store, at(0.0)).0);
        assert!(allowed(&mut get("/login")));
        assert!(allowed(&mut FakeRequest::new(
            "HEAD",
            "/login;jsessionid=1"
        )));
        // A route for HEAD itself still takes HEAD.
        let head_only = prepared(
            r#"{"routes":[{"match":{"methods":["HEAD"]},
                "limits":[{"name":"head","rate":1,"period":"60s","key":[{"constant":"h"}],"slots":4}]}]}"#,
            &store,
        );
        let head = || {
            is_allowed(
                &head_only
                    .decide(&mut FakeRequest::new("HEAD", "/x"), &store, at(0.0))
                    .0,
            )
        };
        assert!(head());
        assert!(!head(), "HEAD's own route");
        for dodge in [
            "/login;x=1",
            "//login",
            "/a/../login",
            "/%6cogin",
            "/login/",
            "/login/?q",
        ] {
            assert!(!allowed(&mut get(dodge)), "{dodge}");
        }
        assert!(allowed(&mut get("/api/orders")));
        for dodge in [
            "/api/orders;1",
            "/api//orders",
            "/api/./orders",
            "/api/orders/",
        ] {
            assert!(!allowed(&mut get(dodge)), "{dodge}");
        }
        // Other paths stay apart.
        assert!(allowed(&mut get("/api/orders/1")));
        assert!(allowed(&mut get("/login2")) && allowed(&mut get("/login2")));
    }

    #[test]
    fn window_rollover_restores_the_budget() {
        let store = MemoryStore::new();
        let limiter = prepared(
            r#"{"limits":[{"name":"all","rate":5,"period":"10s","burst":4,"key":[{"constant":"x"}],"slots":4}]}"#,
            &store,
        );
        let count = |secs: f64, n: usize| {
            (0..n)
                .filter(|_| is_allowed(&limiter.decide(&mut get("/"), &store, at(secs)).0))
                .count()
        };
        assert_eq!(count(0.0, 20), 5);
        assert_eq!(count(9.9, 20), 4);
        assert_eq!(count(19.9, 20), 5);
        assert_eq!(count(29.9, 20), 5);
    }

    const GLOBAL: &str = r#"{"global":{"domain":"edge","transport":"grpc","upstream":"rls"},
        "limits":[{"name":"local","rate":1,"period":"1h","burst":9,"key":[{"constant":"x"}],"slots":4},
                  {"name":"per-tenant","mode":"global","key":[{"header":"x-tenant"},"method"],
                   "pre_limit":{"rate":1,"period":"1h","burst":2},"slots":16},
                  {"name":"everyone","mode":"global","key":[{"constant":"all"}]}]}"#;

    fn ask(limiter: &RateLimiter, store: &MemoryStore, request: &mut FakeRequest) -> GlobalCheck {
        match limiter.decide(request, store, at(0.0)) {
            (Decision::Ask(check), tallies) => {
                assert_eq!(
                    tallies
                        .iter()
                        .map(|(i, t)| (*i, t.allowed))
                        .collect::<Vec<_>>(),
                    [(0, true), (1, false), (2, false)]
                );
                check
            }
            other => panic!("{other:?}"),
        }
    }

    fn status(
        code: Code,
        per_unit: u32,
        remaining: u32,
        reset: u64,
    ) -> crate::proto::DescriptorStatus {
        crate::proto::DescriptorStatus {
            code,
            current_limit: Some(crate::proto::CurrentLimit {
                requests_per_unit: per_unit,
                unit: Some(Duration::from_secs(60)),
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(Duration::from_secs(reset)),
        }
    }

    #[test]
    fn global_limits_ask_with_one_descriptor_each_after_the_local_ones_admit() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
        assert_eq!(
            check.descriptors,
            [
                vec![
                    ("limit".to_owned(), "per-tenant".to_owned()),
                    ("x-tenant".to_owned(), "acme".to_owned()),
                    ("method".to_owned(), "GET".to_owned()),
                ],
                vec![
                    ("limit".to_owned(), "everyone".to_owned()),
                    ("generic_key".to_owned(), "all".to_owned()),
                ],
            ]
        );
        // A request without the tenant skips that limit (and its pre-limit) only.
        let (decision, _) = limiter.decide(&mut get("/"), &store, at(0.0));
        let Decision::Ask(check) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(check.limits, [2]);
    }

    #[test]
    fn an_ok_answer_admits_with_the_services_limits_in_the_headers() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
        let answer = RateLimitResponse {
            overall_code: Code::Ok,
            statuses: vec![
                status(Code::Ok, 100, 7, 30),
                status(Code::Ok, 1000, 999, 59),
            ],
            ..RateLimitResponse::default()
        };
        let (decision, tallies) = limiter.conclude(&check, Ok(answer), &store);
        assert_eq!(
            headers(&decision),
            [
                (
                    "ratelimit-policy".into(),
                    "\"local\";q=10;w=3600, \"per-tenant\";q=100;w=60, \"everyone\";q=1000;w=60"
                        .into()
                ),
                ("ratelimit".into(), "\"per-tenant\";r=7;t=30".into()),
            ]
        );
        assert!(tallies.iter().all(|(_, t)| t.allowed && !t.limited));
    }

    #[test]
    fn an_over_limit_answer_is_429_with_the_services_reset() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
        let answer = RateLimitResponse {
            overall_code: Code::OverLimit,
            statuses: vec![
                status(Code::OverLimit, 100, 0, 41),
                status(Code::Ok, 1000, 5, 59),
            ],
            ..RateLimitResponse::default()
        };
        let (decision, tallies) = limiter.conclude(&check, Ok(answer), &store);
        let Decision::Deny(reply) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.error, "rate limit exceeded");
        assert_eq!(
            reply.headers,
            [
                ("retry-after".to_owned(), "41".to_owned()),
                (
                    "ratelimit-policy".to_owned(),
                    "\"local\";q=10;w=3600, \"per-tenant\";q=100;w=60, \"everyone\";q=1000;w=60"
                        .to_owned()
                ),
                ("ratelimit".to_owned(), "\"per-tenant\";r=0;t=41".to_owned()),
            ]
        );
        assert_eq!(
            tallies
                .iter()
                .map(|(i, t)| (*i, t.allowed, t.limited))
                .collect::<Vec<_>>(),
            [(1, false, true), (2, false, false)]
        );
    }

    fn service_asks(response: &[(&str, &str)], request: &[(&str, &str)]) -> RateLimitResponse {
        let own = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        RateLimitResponse {
            overall_code: Code::Ok,
            statuses: vec![status(Code::Ok, 100, 7, 30), status(Code::Ok, 1000, 9, 59)],
            response_headers: own(response),
            request_headers: own(request),
        }
    }

    #[test]
    fn an_admitting_answer_carries_the_headers_the_service_asked_for() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
        let answer = service_asks(
            &[
                ("ratelimit-remaining", "7"),
                ("x-palisade-consumer", "admin"),
                ("ratelimit", "\"svc\";r=1"),
                ("connection", "close"),
                ("ratelimit-remaining", "9"),
            ],
            &[
                ("x-ratelimit-tier", "gold"),
                ("x-palisade-subject", "admin"),
                ("transfer-encoding", "chunked"),
                ("host", "evil.example"),
                ("expect", "100-continue"),
                ("x-forwarded-for", "10.0.0.1"),
                ("x-envoy-max-retries", "10"),
            ],
        );
        let (decision, _) = limiter.conclude(&check, Ok(answer), &store);
        let Decision::Allow { service, .. } = decision else {
            panic!("{decision:?}")
        };
        // Repeats kept, in order (Envoy appends them); palisade's own, hop-by-hop, the
        // rate-limit headers this plugin writes itself, and (upstream) where the request goes,
        // the client's forwarding record and Envoy's routing controls are not the service's.
        assert_eq!(
            service.as_deref(),
            Some(&ServiceHeaders {
                response: vec![
                    ("ratelimit-remaining".into(), "7".into()),
                    ("ratelimit-remaining".into(), "9".into()),
                ],
                request: vec![("x-ratelimit-tier".into(), "gold".into())],
            })
        );

        // With this plugin's rate-limit headers off, the service's `ratelimit` goes through.
        let quiet = self::limiter(&GLOBAL.replacen('{', r#"{"rate_limit_headers":false,"#, 1));
        let answer = service_asks(&[("ratelimit", "\"svc\";r=1")], &[]);
        let (decision, _) = quiet.conclude(&check, Ok(answer), &store);
        let Decision::Allow { service, .. } = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(
            service.map(|s| s.response),
            Some(vec![("ratelimit".into(), "\"svc\";r=1".into())])
        );
    }

    #[test]
    fn a_refusal_carries_the_services_response_headers_but_keeps_its_own_fields() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
        let mut answer = service_asks(
            &[
                ("content-type", "text/plain"),
                ("retry-after", "3600"),
                ("x-ratelimit-reset", "41"),
            ],
            &[("x-ratelimit-tier", "gold")],
        );
        answer.overall_code = Code::OverLimit;
        answer.statuses = vec![status(Code::OverLimit, 100, 0, 41)];
        let (decision, _) = limiter.conclude(&check, Ok(answer), &store);
        let Decision::Deny(reply) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(reply.status, 429);
        assert_eq!(
            reply.headers,
            [
                ("retry-after".to_owned(), "41".to_owned()),
                (
                    "ratelimit-policy".to_owned(),
                    "\"local\";q=10;w=3600, \"per-tenant\";q=100;w=60".to_owned()
                ),
                ("ratelimit".to_owned(), "\"per-tenant\";r=0;t=41".to_owned()),
                ("x-ratelimit-reset".to_owned(), "41".to_owned()),
            ]
        );
    }

    #[test]
    fn answers_to_one_call_per_limit_read_as_one_answer() {
        let over = RateLimitResponse {
            overall_code: Code::OverLimit,
            // Limitador sends no statuses: the overall code stands for its one descriptor.
            statuses: vec![],
            response_headers: vec![("x-limit".into(), "b".into())],
            ..RateLimitResponse::default()
        };
        let ok = RateLimitResponse {
            overall_code: Code::Ok,
            statuses: vec![status(Code::Ok, 100, 7, 30)],
            response_headers: vec![("x-limit".into(), "a".into())],
            request_headers: vec![("x-tier".into(), "gold".into())],
        };

        // All OK: OK, a status per call, one of each header (each call sends its own set).
        let mut other = ok.clone();
        other.response_headers = vec![
            ("x-limit".into(), "c".into()),
            ("x-other".into(), "d".into()),
        ];
        let merged = merge_answers(vec![Ok(ok.clone()), Ok(other)]).unwrap();
        assert_eq!(merged.overall_code, Code::Ok);
        assert_eq!(merged.statuses, [ok.statuses[0], ok.statuses[0]]);
        assert_eq!(
            merged.response_headers,
            [
                ("x-limit".into(), "a".into()),
                ("x-other".into(), "d".into())
            ]
        );
        assert_eq!(merged.request_headers, [("x-tier".into(), "gold".into())]);

        // One over limit refuses, failures or not, and says which.
        let merged = merge_answers(vec![
            Ok(ok.clone()),
            Err(CalloutError::NoAnswer),
            Ok(over.clone()),
        ])
        .unwrap();
        assert_eq!(merged.overall_code, Code::OverLimit);
        assert_eq!(
            merged.statuses.iter().map(|s| s.code).collect::<Vec<_>>(),
            [Code::Ok, Code::Unknown, Code::OverLimit]
        );
        // One of each header, the refusing call's.
        assert_eq!(merged.response_headers, [("x-limit".into(), "b".into())]);

        // Otherwise a failed call is the answer: the failure mode decides.
        assert_eq!(
            merge_answers(vec![
                Ok(ok),
                Err(CalloutError::GrpcStatus(14)),
                Err(CalloutError::NoAnswer)
            ]),
            Err(CalloutError::GrpcStatus(14))
        );
    }

    #[test]
    fn only_a_limit_whose_own_call_failed_counts_a_callout_failure() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
        let answer = |code| {
            Ok(RateLimitResponse {
                overall_code: code,
                ..RateLimitResponse::default()
            })
        };
        let summary = |tallies: &Tallies| {
            tallies
                .iter()
                .map(|(i, t)| (*i, t.allowed, t.limited, t.callout_failure))
                .collect::<Vec<_>>()
        };
        // One call failed, the other admitted: fail-open lets it through; only "everyone"'s
        // call failed.
        let (decision, tallies) = limiter.conclude_calls(
            &check,
            vec![answer(Code::Ok), Err(CalloutError::NoAnswer)],
            &store,
        );
        assert!(is_allowed(&decision));
        assert_eq!(
            summary(&tallies),
            [(1, true, false, false), (2, true, false, true)]
        );
        // One call failed, the other refused: 429, the failure still counted where it was.
        let (decision, tallies) = limiter.conclude_calls(
            &check,
            vec![Err(CalloutError::NoAnswer), answer(Code::OverLimit)],
            &store,
        );
        assert!(matches!(decision, Decision::Deny(ref reply) if reply.status == 429));
        assert_eq!(
            summary(&tallies),
            [(1, false, false, true), (2, false, true, false)]
        );
        // One answer is concluded as it is.
        let (decision, tallies) =
            limiter.conclude_calls(&check, vec![Err(CalloutError::NoAnswer)], &store);
        assert!(is_allowed(&decision));
        assert_eq!(
            summary(&tallies),
            [(1, true, false, true), (2, true, false, true)]
        );
    }

    #[test]
    fn a_merged_refusal_limits_only_the_limit_whose_call_refused() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
        let over = RateLimitResponse {
            overall_code: Code::OverLimit,
            ..RateLimitResponse::default()
        };
        let ok = RateLimitResponse {
            overall_code: Code::Ok,
            ..RateLimitResponse::default()
        };
        let answer = merge_answers(vec![Ok(ok), Ok(over)]);
        let (decision, tallies) = limiter.conclude(&check, answer, &store);
        assert!(matches!(decision, Decision::Deny(ref reply) if reply.status == 429));
        assert_eq!(
            tallies
                .iter()
                .map(|(i, t)| (*i, t.allowed, t.limited))
                .collect::<Vec<_>>(),
            [(1, false, false), (2, false, true)]
        );
    }

    #[test]
    fn a_failed_call_admits_or_answers_500_by_failure_mode() {
        let store = MemoryStore::new();
        let open = prepared(GLOBAL, &store);
        let check = ask(&open, &store, &mut get("/").header("x-tenant", "acme"));
        let (decision, tallies) = open.conclude(&check, Err(CalloutError::NoAnswer), &store);
        assert_eq!(
            headers(&decision),
            [
                ("ratelimit-policy".into(), "\"local\";q=10;w=3600".into()),
                ("ratelimit".into(), "\"local\";r=9;t=3600".into()),
            ]
        );
        assert!(tallies.iter().all(|(_, t)| t.allowed && t.callout_failure));

        let closed = limiter(&GLOBAL.replace(
            r#""upstream":"rls""#,
            r#""upstream":"rls","failure_mode_deny":true"#,
        ));
        let (decision, tallies) =
            closed.conclude(&check, Err(CalloutError::GrpcStatus(14)), &store);
        let Decision::Deny(reply) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(
            (reply.status, reply.error.as_str()),
            (500, "rate limit service unavailable")
        );
        assert!(tallies.iter().all(|(_, t)| !t.allowed && t.callout_failure));
    }

    #[test]
    fn a_global_refusal_gives_back_local_admissions_but_not_the_pre_limits() {
        // Room for every tenant's pre-limit slot.
        let config = GLOBAL.replace(r#""burst":2},"slots":16"#, r#""burst":2},"slots":256"#);
        let store = MemoryStore::new();
        let limiter = prepared(&config, &store);
        let refused = || RateLimitResponse {
            overall_code: Code::OverLimit,
            statuses: vec![
                status(Code::OverLimit, 100, 0, 41),
                status(Code::Ok, 1000, 5, 59),
            ],
            ..RateLimitResponse::default()
        };
        // "local" admits 10 at once; twenty requests the service refuses spend none of it.
        for i in 0..20 {
            let tenant = format!("t{i}");
            let check = ask(&limiter, &store, &mut get("/").header("x-tenant", &tenant));
            let (decision, _) = limiter.conclude(&check, Ok(refused()), &store);
            assert!(matches!(decision, Decision::Deny(_)), "{i}");
        }
        // So do requests refused because the service failed, under failure_mode_deny.
        let closed_store = MemoryStore::new();
        let closed = prepared(
            &config.replace(
                r#""upstream":"rls"}"#,
                r#""upstream":"rls","failure_mode_deny":true}"#,
            ),
            &closed_store,
        );
        for i in 0..20 {
            let tenant = format!("t{i}");
            let check = ask(
                &closed,
                &closed_store,
                &mut get("/").header("x-tenant", &tenant),
            );
            let (decision, _) = closed.conclude(&check, Err(CalloutError::NoAnswer), &closed_store);
            assert!(matches!(decision, Decision::Deny(_)), "{i}");
        }
        // The pre-limit (3 per tenant at once) keeps counting what the service refused: it
        // sheds a key's calls, and the fourth refused call never reaches the service.
        for _ in 0..3 {
            let check = ask(&limiter, &store, &mut get("/").header("x-tenant", "acme"));
            let (decision, _) = limiter.conclude(&check, Ok(refused()), &store);
            assert!(matches!(decision, Decision::Deny(_)));
        }
        let (decision, _) =
            limiter.decide(&mut get("/").header("x-tenant", "acme"), &store, at(0.0));
        assert!(matches!(decision, Decision::Deny(_)), "{decision:?}");
        // An admitted request still counts: 10 of them exhaust "local".
        let ok = || RateLimitResponse {
            overall_code: Code::Ok,
            statuses: vec![status(Code::Ok, 100, 5, 41), status(Code::Ok, 1000, 5, 59)],
            ..RateLimitResponse::default()
        };
        for i in 0..10 {
            let check = ask(
                &limiter,
                &store,
                &mut get("/").header("x-tenant", &format!("u{i}")),
            );
            let (decision, _) = limiter.conclude(&check, Ok(ok()), &store);
            assert!(matches!(decision, Decision::Allow { .. }), "{i}");
        }
        let (decision, _) = limiter.decide(&mut get("/").header("x-tenant", "v"), &store, at(0.0));
        assert!(matches!(decision, Decision::Deny(_)), "{decision:?}");
    }

    #[test]
    fn the_pre_limit_sheds_before_any_call_out() {
        let store = MemoryStore::new();
        let limiter = prepared(GLOBAL, &store);
        let mut acme = get("/").header("x-tenant", "acme");
        // Burst 2: three asks, then the pre-limit refuses locally.
        for _ in 0..3 {
            ask(&limiter, &store, &mut acme);
        }
        let (decision, tallies) = limiter.decide(&mut acme, &store, at(0.0));
        let Decision::Deny(reply) = decision else {
            panic!("{decision:?}")
        };
        assert_eq!(reply.status, 429);
        assert_eq!(
            reply.headers[0],
            ("retry-after".to_owned(), "3600".to_owned())
        );
        assert!(tallies.iter().any(|(i, t)| *i == 1 && t.limited));
        // Another tenant still asks.
        ask(&limiter, &store, &mut get("/").header("x-tenant", "other"));
    }

    #[test]
    fn global_config_is_validated() {
        let err = load::<RateLimitConfig>(
            br#"{"proxy":"kong","global":{"domain":"","transport":"grpc","upstream":"","timeout":"0s"},
                 "limits":[{"name":"g","mode":"global","rate":5,"key":["path"]},
                           {"name":"l","key":["path"],"pre_limit":{"rate":1,"period":"1s"}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits[0].rate: is set in the rate-limit service for a global limit (use pre_limit \
             for a local limit in front of it); limits[1].rate: is required in local mode; \
             limits[1].period: is required in local mode; limits[1].pre_limit: is for global \
             limits only; global.domain: must not be empty; global.upstream: must not be empty; \
             global.transport: Kong has no gRPC call-outs (proxy_grpc_call traps in \
             ngx_wasm_module): use \"http\"; global.timeout: must be between 1ms and 60s"
        );
        let err =
            load::<RateLimitConfig>(br#"{"limits":[{"name":"g","mode":"global","key":["path"]}]}"#)
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "global: is required when a limit has mode \"global\""
        );
        let err = load::<RateLimitConfig>(
            br#"{"global":{"domain":"d","transport":"http","upstream":"rls:8080","path":"json"},
                 "limits":[{"name":"g","mode":"global","key":["path"]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "global.authority: must not be empty with the http transport; global.path: must start with '/'"
        );
    }
}
