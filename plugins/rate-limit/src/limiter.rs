//! The decision for one request: which limits apply (the route overrides, else the top level),
//! each limit's key and slot, the GCRA verdicts, and the writes that make them stick.
//!
//! All limits must pass. Every limit is read first; if any refuses, nothing is written, so a
//! refused request costs no limit any budget. Only then are the admissions written, each with
//! compare-and-swap on the version read: a conflict means another worker moved that key in
//! between, so the key is read and decided again (its budget may now be spent).
//!
//! Global limits are decided by a rate-limit service: once every local limit (and every global
//! limit's local pre-limit) has admitted the request, [`Decision::Ask`] carries the descriptors
//! to send, and [`RateLimiter::conclude`] turns the service's answer (or its absence) into the
//! final decision.

use std::time::{SystemTime, UNIX_EPOCH};

use palisade_kit::reply::ErrorReply;
use palisade_kit::store::{SharedStore, StoreError, Write};

use crate::config::{
    FailureMode, GlobalService, KeyPart, Limit, MissingKey, Mode, RateLimitConfig, RouteMatch,
};
use crate::gcra::{Gcra, Nanos, Verdict};
use crate::key::{self, Descriptor, RequestParts, RequestView};
use crate::proto::{Code, RateLimitResponse};
use crate::slots::{self, Located, SlotTable};

/// Reads and writes one admission may take before the limiter gives up on a contended key.
pub const ATTEMPTS: u32 = 8;

/// A limit ready to decide.
#[derive(Debug, Clone)]
pub struct CompiledLimit {
    pub name: String,
    /// The local limit: the whole limit in local mode, the pre-limit in global mode.
    gcra: Option<Gcra>,
    /// Decided by the rate-limit service.
    pub global: bool,
    key: Vec<KeyPart>,
    when_missing: MissingKey,
    table: SlotTable,
    /// The local limit's `RateLimit-Policy` item, built once.
    policy: String,
}

impl CompiledLimit {
    fn new(limit: &Limit) -> Self {
        let (rate, period, burst) = match (&limit.mode, &limit.pre_limit) {
            (Mode::Local, _) => (limit.rate, limit.period.map(|p| p.get()), limit.burst),
            (Mode::Global, Some(pre)) => (Some(pre.rate), Some(pre.period.get()), pre.burst),
            (Mode::Global, None) => (None, None, 0),
        };
        let gcra = match (rate, period) {
            (Some(rate), Some(period)) => Some(Gcra::new(rate, period, burst)),
            _ => None,
        };
        Self {
            policy: gcra.map_or_else(String::new, |gcra| {
                policy(&limit.name, gcra.quota(), gcra.period().as_secs())
            }),
            name: limit.name.clone(),
            gcra,
            global: limit.mode == Mode::Global,
            key: limit.key.clone(),
            when_missing: limit.when_key_missing,
            table: SlotTable::new(&limit.name, limit.slots),
        }
    }
}

fn policy(name: &str, quota: u64, window_secs: u64) -> String {
    format!("\"{name}\";q={quota};w={window_secs}")
}

#[derive(Debug, Clone)]
struct Route {
    matches: RouteMatch,
    limits: Vec<usize>,
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

/// The limiter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through; add these headers to its response.
    Allow {
        response_headers: Vec<(String, String)>,
    },
    /// Answer locally.
    Deny(ErrorReply),
    /// Every local limit admitted the request; ask the rate-limit service, hold the request
    /// until it answers, then [`RateLimiter::conclude`].
    Ask(GlobalCheck),
}

/// A request waiting for the rate-limit service: what to send, and what the local limits
/// decided (for the response headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalCheck {
    /// The global limits asked, in descriptor order.
    limits: Vec<usize>,
    /// One descriptor per global limit.
    pub descriptors: Vec<Descriptor>,
    /// The local limits that admitted: (limit, remaining, reset).
    local: Vec<(usize, u64, Nanos)>,
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
}

/// What one request did to each limit: (index into [`RateLimiter::limits`], tally).
pub type Tallies = Vec<(usize, Tally)>;

/// Every limit of the configuration, compiled, and the rules choosing them.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limits: Vec<CompiledLimit>,
    default: Vec<usize>,
    routes: Vec<Route>,
    trusted_hops: u32,
    headers: bool,
    on_store_failure: FailureMode,
    failure_mode_deny: bool,
}

/// One applicable limit during phase one.
struct Pending {
    limit: usize,
    fingerprint: u64,
    slot: Option<slots::Slot>,
    verdict: Verdict,
}

pub fn unix_nanos(now: SystemTime) -> Nanos {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn ceil_secs(nanos: Nanos) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        let mut limits = Vec::new();
        let mut add = |list: &[Limit]| {
            list.iter()
                .map(|limit| {
                    limits.push(CompiledLimit::new(limit));
                    limits.len() - 1
                })
                .collect::<Vec<_>>()
        };
        let default = add(&config.limits);
        let routes = config
            .routes
            .iter()
            .map(|route| Route {
                matches: route.matches.clone(),
                limits: add(&route.limits),
            })
            .collect();
        Self {
            limits,
            default,
            routes,
            trusted_hops: config.client_ip.trusted_hops,
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

    fn applicable<V: RequestView>(&self, request: &mut RequestParts<'_, V>) -> &[usize] {
        for route in &self.routes {
            let m = &route.matches;
            let path_ok = |request: &mut RequestParts<'_, V>| {
                let path = request.path().unwrap_or_default();
                m.path.as_ref().is_none_or(|p| path == p.as_bytes())
                    && m.path_prefix
                        .as_ref()
                        .is_none_or(|p| path.starts_with(p.as_bytes()))
            };
            let method_ok = |request: &mut RequestParts<'_, V>| {
                m.methods.is_empty() || {
                    let method = request.method().unwrap_or_default();
                    m.methods.iter().any(|x| x.as_bytes() == method)
                }
            };
            let route_ok = |request: &mut RequestParts<'_, V>| {
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

    /// Decides one request at `now`.
    pub fn decide<V: RequestView>(
        &self,
        view: &mut V,
        store: &impl SharedStore,
        now: SystemTime,
    ) -> (Decision, Tallies) {
        let now = unix_nanos(now);
        let mut request = RequestParts::new(view, self.trusted_hops);
        let applicable = self.applicable(&mut request);
        let mut tallies: Tallies = Vec::new();
        let mut pending: Vec<Pending> = Vec::with_capacity(applicable.len());
        let mut globals: Vec<usize> = Vec::new();
        let mut descriptors: Vec<Descriptor> = Vec::new();

        // Phase one: read and decide every limit, write nothing.
        for &index in applicable {
            let Some(limit) = self.limits.get(index) else {
                continue;
            };
            let mut tally = Tally::default();
            let key = match key::build(&limit.key, &mut request) {
                Ok(key) => key,
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
            };
            if limit.global {
                globals.push(index);
                descriptors.push(key::descriptor(&limit.name, &limit.key, &mut request));
            }
            let Some(gcra) = limit.gcra else {
                tallies.push((index, tally));
                continue;
            };
            let fingerprint = key::fingerprint(&key);
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
            return (self.refuse(&pending, &mut tallies), tallies);
        }

        // Phase two: write each admission; on a conflict, read and decide that key again.
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
                Ok(verdict) => {
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
            if failed && self.on_store_failure == FailureMode::Deny {
                return (Decision::Deny(unavailable()), tallies);
            }
            if pending
                .get(i)
                .is_some_and(|p| matches!(p.verdict, Verdict::Refuse { .. }))
            {
                // Another worker took the last of this budget between our read and write.
                return (self.refuse(&pending, &mut tallies), tallies);
            }
        }

        for (index, tally) in &mut tallies {
            // A global limit is allowed once the service says so.
            tally.allowed = !globals.contains(index);
        }
        if !globals.is_empty() {
            let local = pending
                .iter()
                .filter(|p| !globals.contains(&p.limit))
                .map(|p| {
                    let (remaining, reset) = remaining_and_reset(p.verdict);
                    (p.limit, remaining, reset)
                })
                .collect();
            let check = GlobalCheck {
                limits: globals,
                descriptors,
                local,
            };
            return (Decision::Ask(check), tallies);
        }
        let response_headers = if self.headers {
            self.rate_limit_headers(&pending)
        } else {
            Vec::new()
        };
        (Decision::Allow { response_headers }, tallies)
    }

    /// The decision for a request held by [`Decision::Ask`], given the service's answer.
    /// Like Envoy's rate-limit filter: only an `OVER_LIMIT` overall code refuses (429); an
    /// error lets the request through, or refuses it with 500 under `failure_mode_deny`.
    pub fn conclude(
        &self,
        check: &GlobalCheck,
        answer: Result<RateLimitResponse, CalloutError>,
    ) -> (Decision, Tallies) {
        let mut tallies: Tallies = check
            .limits
            .iter()
            .map(|&index| (index, Tally::default()))
            .collect();
        let response = match answer {
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
                let response_headers = if self.headers {
                    self.header_pairs(self.local_items(check))
                } else {
                    Vec::new()
                };
                return (Decision::Allow { response_headers }, tallies);
            }
        };
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
            let window = current.unit.map_or(0, |unit| unit.as_secs());
            let reset = status
                .duration_until_reset
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            items.push(HeaderItem {
                policy: policy(&limit.name, u64::from(current.requests_per_unit), window),
                name: &limit.name,
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
            let response_headers = if self.headers {
                self.header_pairs(items)
            } else {
                Vec::new()
            };
            return (Decision::Allow { response_headers }, tallies);
        }
        let retry_after = response
            .statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit)
            .filter_map(|s| s.duration_until_reset)
            .max()
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut reply = ErrorReply::new(429, "rate limit exceeded")
            .with_header("retry-after", ceil_secs(retry_after).max(1).to_string());
        if self.headers {
            for (name, value) in self.header_pairs(items) {
                reply = reply.with_header(name, value);
            }
        }
        (Decision::Deny(reply), tallies)
    }

    fn local_items<'s>(&'s self, check: &GlobalCheck) -> Vec<HeaderItem<'s>> {
        check
            .local
            .iter()
            .filter_map(|&(index, remaining, reset)| {
                let limit = self.limits.get(index)?;
                Some(HeaderItem {
                    policy: limit.policy.clone(),
                    name: &limit.name,
                    remaining,
                    reset,
                })
            })
            .collect()
    }

    /// `RateLimit-Policy` lists every item; `RateLimit` reports the one closest to refusing.
    fn header_pairs(&self, items: Vec<HeaderItem<'_>>) -> Vec<(String, String)> {
        let tightest = items
            .iter()
            .fold(None::<&HeaderItem<'_>>, |best, item| match best {
                Some(b) if b.remaining <= item.remaining => Some(b),
                _ => Some(item),
            });
        let Some(tightest) = tightest else {
            return Vec::new();
        };
        let rate_limit = rate_limit_item(tightest.name, tightest.remaining, tightest.reset);
        let policies: Vec<&str> = items.iter().map(|i| i.policy.as_str()).collect();
        vec![
            ("ratelimit-policy".to_owned(), policies.join(", ")),
            ("ratelimit".to_owned(), rate_limit),
        ]
    }

    /// Writes one admission; on a lost compare-and-swap, locates and decides again.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        limit: &CompiledLimit,
        fingerprint: u64,
        mut slot: slots::Slot,
        mut verdict: Verdict,
        store: &impl SharedStore,
        now: Nanos,
        tally: &mut Tally,
    ) -> Result<Verdict, CommitError> {
        for _ in 0..ATTEMPTS {
            let Verdict::Admit { tat, .. } = verdict else {
                return Ok(verdict);
            };
            match store.set(&slot.key, &slots::encode(fingerprint, tat), slot.cas)? {
                Write::Stored => return Ok(verdict),
                Write::Conflict => {
                    tally.conflicts += 1;
                    match limit.table.locate(store, fingerprint, now)? {
                        Located::Slot(again) => {
                            let Some(gcra) = limit.gcra else {
                                return Ok(verdict);
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

    fn refuse(&self, pending: &[Pending], tallies: &mut Tallies) -> Decision {
        let mut retry_after = 0;
        for p in pending {
            if let Verdict::Refuse { retry_after: r, .. } = p.verdict {
                retry_after = retry_after.max(r);
                if let Some((_, tally)) = tallies.iter_mut().find(|(i, _)| *i == p.limit) {
                    tally.limited = true;
                }
            }
        }
        let mut reply = ErrorReply::new(429, "rate limit exceeded")
            .with_header("retry-after", ceil_secs(retry_after).max(1).to_string());
        if self.headers {
            for (name, value) in self.rate_limit_headers(pending) {
                reply = reply.with_header(name, value);
            }
        }
        Decision::Deny(reply)
    }

    /// `RateLimit-Policy` lists every limit that applied; `RateLimit` reports the one closest
    /// to refusing (draft-ietf-httpapi-ratelimit-headers).
    fn rate_limit_headers(&self, pending: &[Pending]) -> Vec<(String, String)> {
        let mut policies = String::new();
        let mut tightest: Option<(u64, u64, &str)> = None;
        for p in pending {
            let Some(limit) = self.limits.get(p.limit) else {
                continue;
            };
            if !policies.is_empty() {
                policies.push_str(", ");
            }
            policies.push_str(&limit.policy);
            let (remaining, reset) = remaining_and_reset(p.verdict);
            if tightest.is_none_or(|(r, _, _)| remaining < r) {
                tightest = Some((remaining, reset, &limit.name));
            }
        }
        let Some((remaining, reset, name)) = tightest else {
            return Vec::new();
        };
        vec![
            ("ratelimit-policy".to_owned(), policies),
            (
                "ratelimit".to_owned(),
                rate_limit_item(name, remaining, reset),
            ),
        ]
    }
}

/// `"<name>";r=<remaining>;t=<seconds to reset>`, written without `format!` (it runs on every
/// admitted request).
fn rate_limit_item(name: &str, remaining: u64, reset: Nanos) -> String {
    let mut item = String::with_capacity(name.len() + 32);
    item.push('"');
    item.push_str(name);
    item.push_str("\";r=");
    palisade_kit::decimal::push_u64(&mut item, remaining);
    item.push_str(";t=");
    palisade_kit::decimal::push_u64(&mut item, ceil_secs(reset));
    item
}

/// One limit's contribution to the `RateLimit-Policy` and `RateLimit` headers.
struct HeaderItem<'a> {
    policy: String,
    name: &'a str,
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
    use palisade_kit::config::load;
    use palisade_kit::store::{BlindWrite, Cas, Entry, MemoryStore};
    use std::cell::Cell;
    use std::time::Duration;

    const T0: u64 = 1_700_000_000;

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(secs)
    }

    fn limiter(config: &str) -> RateLimiter {
        RateLimiter::new(&load::<RateLimitConfig>(config.as_bytes()).unwrap())
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
            first,
            Decision::Allow {
                response_headers: vec![
                    ("ratelimit-policy".into(), "\"per-tenant\";q=3;w=10".into()),
                    ("ratelimit".into(), "\"per-tenant\";r=1;t=5".into()),
                ]
            }
        );
        assert_eq!(
            tallies,
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
            tallies,
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
    fn headers_can_be_switched_off() {
        let store = MemoryStore::new();
        let config = PER_TENANT.replacen('{', r#"{"rate_limit_headers":false,"#, 1);
        let limiter = prepared(&config, &store);
        let mut request = get("/").header("x-tenant", "acme");
        assert_eq!(
            limiter.decide(&mut request, &store, at(0.0)).0,
            Decision::Allow {
                response_headers: vec![]
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
                    response_headers: vec![]
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
        };
        let (decision, tallies) = limiter.conclude(&check, Ok(answer));
        assert_eq!(
            decision,
            Decision::Allow {
                response_headers: vec![
                    (
                        "ratelimit-policy".into(),
                        "\"local\";q=10;w=3600, \"per-tenant\";q=100;w=60, \"everyone\";q=1000;w=60"
                            .into()
                    ),
                    ("ratelimit".into(), "\"per-tenant\";r=7;t=30".into()),
                ]
            }
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
        };
        let (decision, tallies) = limiter.conclude(&check, Ok(answer));
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

    #[test]
    fn a_failed_call_admits_or_answers_500_by_failure_mode() {
        let store = MemoryStore::new();
        let open = prepared(GLOBAL, &store);
        let check = ask(&open, &store, &mut get("/").header("x-tenant", "acme"));
        let (decision, tallies) = open.conclude(&check, Err(CalloutError::NoAnswer));
        assert_eq!(
            decision,
            Decision::Allow {
                response_headers: vec![
                    ("ratelimit-policy".into(), "\"local\";q=10;w=3600".into()),
                    ("ratelimit".into(), "\"local\";r=9;t=3600".into()),
                ]
            }
        );
        assert!(tallies.iter().all(|(_, t)| t.allowed && t.callout_failure));

        let closed = limiter(&GLOBAL.replace(
            r#""upstream":"rls""#,
            r#""upstream":"rls","failure_mode_deny":true"#,
        ));
        let (decision, tallies) = closed.conclude(&check, Err(CalloutError::GrpcStatus(14)));
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
