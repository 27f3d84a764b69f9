//! The decision for one request: which limits apply (the route overrides, else the top level),
//! each limit's key and slot, the GCRA verdicts, and the writes that make them stick.
//!
//! All limits must pass. Every limit is read first; if any refuses, nothing is written, so a
//! refused request costs no limit any budget. Only then are the admissions written, each with
//! compare-and-swap on the version read: a conflict means another worker moved that key in
//! between, so the key is read and decided again (its budget may now be spent).

use std::time::{SystemTime, UNIX_EPOCH};

use palisade_kit::reply::ErrorReply;
use palisade_kit::store::{SharedStore, StoreError, Write};

use crate::config::{FailureMode, KeyPart, Limit, MissingKey, RateLimitConfig, RouteMatch};
use crate::gcra::{Gcra, Nanos, Verdict};
use crate::key::{self, RequestParts, RequestView};
use crate::slots::{self, Located, SlotTable};

/// Reads and writes one admission may take before the limiter gives up on a contended key.
pub const ATTEMPTS: u32 = 8;

/// A limit ready to decide.
#[derive(Debug, Clone)]
pub struct CompiledLimit {
    pub name: String,
    gcra: Gcra,
    key: Vec<KeyPart>,
    when_missing: MissingKey,
    table: SlotTable,
    /// This limit's `RateLimit-Policy` item, built once.
    policy: String,
}

impl CompiledLimit {
    fn new(limit: &Limit) -> Self {
        let gcra = Gcra::new(limit.rate, limit.period.get(), limit.burst);
        Self {
            policy: format!(
                "\"{}\";q={};w={}",
                limit.name,
                gcra.quota(),
                limit.period.get().as_secs()
            ),
            name: limit.name.clone(),
            gcra,
            key: limit.key.clone(),
            when_missing: limit.when_key_missing,
            table: SlotTable::new(&limit.name, limit.slots),
        }
    }
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
            let fingerprint = key::fingerprint(&key);
            match limit.table.locate(store, fingerprint, now) {
                Ok(Located::Slot(slot)) => {
                    let verdict = limit.gcra.check(slot.tat, now);
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
                        verdict: limit.gcra.check(None, now),
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

        for (_, tally) in &mut tallies {
            tally.allowed = true;
        }
        let response_headers = if self.headers {
            self.rate_limit_headers(&pending)
        } else {
            Vec::new()
        };
        (Decision::Allow { response_headers }, tallies)
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
                            verdict = limit.gcra.check(again.tat, now);
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
        let mut policies = Vec::new();
        let mut tightest: Option<(u64, u64, &str)> = None;
        for p in pending {
            let Some(limit) = self.limits.get(p.limit) else {
                continue;
            };
            policies.push(limit.policy.as_str());
            let (remaining, reset) = match p.verdict {
                Verdict::Admit {
                    remaining,
                    reset_after,
                    ..
                } => (remaining, reset_after),
                Verdict::Refuse { reset_after, .. } => (0, reset_after),
            };
            if tightest.is_none_or(|(r, _, _)| remaining < r) {
                tightest = Some((remaining, reset, &limit.name));
            }
        }
        let Some((remaining, reset, name)) = tightest else {
            return Vec::new();
        };
        vec![
            ("ratelimit-policy".to_owned(), policies.join(", ")),
            (
                "ratelimit".to_owned(),
                format!("\"{name}\";r={remaining};t={}", ceil_secs(reset)),
            ),
        ]
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
}
