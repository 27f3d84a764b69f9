//! `RoutePolicy`: the retry and timeout headers Envoy's router reads, set on each request, and
//! the client's deadline checked before the upstream sees the request.

use std::borrow::Cow;
use std::time::Duration;

use palisade_kit::header_pairs::{get, Edit};

use crate::config::{Proxy, RetryConfig, TimeoutConfig};

/// Headers Envoy's router obeys: a client must not pick its own retries and timeouts unless
/// the hop before is trusted (Envoy strips them from external requests too, when it knows
/// which ones are external).
pub const ROUTER_HEADERS: &[&str] = &[
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-expected-rq-timeout-ms",
];

const RETRY_ON: &str = "x-envoy-retry-on";
const MAX_RETRIES: &str = "x-envoy-max-retries";
const TIMEOUT: &str = "x-envoy-upstream-rq-timeout-ms";
const PER_TRY_TIMEOUT: &str = "x-envoy-upstream-rq-per-try-timeout-ms";

#[derive(Debug, Clone)]
pub struct RoutePolicy {
    proxy: Proxy,
    trust_client_headers: bool,
    max_retries: Cow<'static, [u8]>,
    retry_on: Vec<u8>,
    retry_on_non_idempotent: Vec<u8>,
    per_try_timeout_ms: Option<Vec<u8>>,
    default_timeout: Duration,
    long_running_timeout: Duration,
    /// The two timeouts as header values, formatted once (a deadline-capped one is formatted
    /// per request).
    default_timeout_ms: Vec<u8>,
    long_running_timeout_ms: Vec<u8>,
    long_running_prefixes: Vec<String>,
    deadline_header: Option<String>,
    /// A deadline-capped timeout this long or longer is judged like any other.
    deadline_counted_from: Duration,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision<'a> {
    Forward(Vec<Edit<'a>>),
    /// The client's deadline has passed: answer 504 without the upstream.
    DeadlineExceeded,
}

fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `x-envoy-upstream-rq-timeout-ms`'s value: whole milliseconds, at least 1 (0 means none).
fn timeout_value(timeout: Duration) -> Vec<u8> {
    millis(timeout).max(1).to_string().into_bytes()
}

impl RoutePolicy {
    pub fn new(proxy: Proxy, retry: &RetryConfig, timeouts: &TimeoutConfig) -> Self {
        Self {
            proxy,
            trust_client_headers: retry.trust_client_headers,
            max_retries: Cow::Owned(retry.max_retries.to_string().into_bytes()),
            retry_on: retry.retry_on.clone().into_bytes(),
            retry_on_non_idempotent: retry.retry_on_non_idempotent.clone().into_bytes(),
            per_try_timeout_ms: retry
                .per_try_timeout
                .map(|t| millis(t.get()).to_string().into_bytes()),
            default_timeout: timeouts.default.get(),
            long_running_timeout: timeouts.long_running.get(),
            default_timeout_ms: timeout_value(timeouts.default.get()),
            long_running_timeout_ms: timeout_value(timeouts.long_running.get()),
            long_running_prefixes: timeouts.long_running_prefixes.clone(),
            deadline_header: timeouts.deadline_header.clone(),
            deadline_counted_from: timeouts.deadline_counted_from.get(),
        }
    }

    /// The deadline check and the header edits for a request, in one step.
    pub fn decide<'a>(
        &'a self,
        headers: &[(&[u8], &[u8])],
        now_ms: u64,
        retry_granted: bool,
    ) -> RouteDecision<'a> {
        match self.deadline(headers, now_ms) {
            Deadline::Expired => RouteDecision::DeadlineExceeded,
            deadline => RouteDecision::Forward(self.edits(headers, deadline, retry_granted).0),
        }
    }

    /// The client's deadline, if the configured header carries one.
    pub fn deadline(&self, headers: &[(&[u8], &[u8])], now_ms: u64) -> Deadline {
        let Some(name) = &self.deadline_header else {
            return Deadline::None;
        };
        match get(headers, name).and_then(parse_millis) {
            Some(deadline_ms) if deadline_ms <= now_ms => Deadline::Expired,
            Some(deadline_ms) => Deadline::In(Duration::from_millis(deadline_ms - now_ms)),
            None => Deadline::None,
        }
    }

    /// The header the client's deadline comes in, if one is configured.
    pub fn deadline_header(&self) -> Option<&str> {
        self.deadline_header.as_deref()
    }

    /// Removals of every router header, for a request whose header map the host may have cut
    /// short (Kong hands over 100 pairs): a client's copy past the cap goes unseen by
    /// [`Self::edits`], so each is removed blind. None when client headers are trusted.
    pub fn unseen_router_header_removals(&self) -> impl Iterator<Item = Edit<'static>> + '_ {
        ROUTER_HEADERS
            .iter()
            .filter(|_| !self.trust_client_headers)
            .map(|name| Edit::Remove(Cow::Borrowed(*name)))
    }

    /// The header edits: client router headers removed (unless trusted), then the retry
    /// policy and the timeout (capped by the deadline). `retry_granted`: false when the retry
    /// budget is spent or the request is a half-open trial (it goes out with no retries).
    /// The flag: the timeout sent was lowered to fit the client's deadline, below
    /// `deadline_counted_from`, so the router's 504 on it is the client's haste, not the
    /// upstream's failure.
    pub fn edits<'a>(
        &'a self,
        headers: &[(&[u8], &[u8])],
        deadline: Deadline,
        retry_granted: bool,
    ) -> (Vec<Edit<'a>>, bool) {
        let path = get(headers, ":path").unwrap_or_default();
        let long_running = self
            .long_running_prefixes
            .iter()
            .any(|prefix| path.starts_with(prefix.as_bytes()));
        let (timeout, formatted) = if long_running {
            (self.long_running_timeout, &self.long_running_timeout_ms)
        } else {
            (self.default_timeout, &self.default_timeout_ms)
        };
        let (timeout_ms, capped): (Cow<'a, [u8]>, bool) = match deadline {
            Deadline::In(left) if left < timeout => (
                Cow::Owned(timeout_value(left)),
                left < self.deadline_counted_from,
            ),
            _ => (Cow::Borrowed(formatted.as_slice()), false),
        };
        let mut edits = Vec::new();
        if !self.trust_client_headers {
            // One pass over the request's headers (most have no x-envoy-* at all), not one
            // scan per router header.
            for (name, _) in headers {
                let envoy = name
                    .get(..8)
                    .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"x-envoy-"));
                if envoy {
                    if let Some(known) = ROUTER_HEADERS
                        .iter()
                        .find(|known| name.eq_ignore_ascii_case(known.as_bytes()))
                    {
                        let remove = Edit::Remove(Cow::Borrowed(*known));
                        if !edits.contains(&remove) {
                            edits.push(remove);
                        }
                    }
                }
            }
        }
        // Kong's router reads none of these: sending them would only tell the upstream.
        if self.proxy == Proxy::Kong {
            return (edits, false);
        }
        let trusted = |name: &str| self.trust_client_headers && get(headers, name).is_some();
        let method = get(headers, ":method").unwrap_or_default();
        let retry_on: &[u8] = if is_idempotent(method) {
            &self.retry_on
        } else {
            &self.retry_on_non_idempotent
        };
        // A spent budget or a half-open trial overrides a trusted hop too: the budget is what
        // stops a retry storm, and a trial is one probe.
        if !trusted(MAX_RETRIES) || !retry_granted {
            let max: &[u8] = if retry_granted && !retry_on.is_empty() {
                &self.max_retries
            } else {
                b"0"
            };
            edits.push(Edit::Set(Cow::Borrowed(MAX_RETRIES), Cow::Borrowed(max)));
        }
        if !trusted(RETRY_ON) && !retry_on.is_empty() && retry_granted {
            edits.push(Edit::Set(Cow::Borrowed(RETRY_ON), Cow::Borrowed(retry_on)));
        }
        let capped = capped && !trusted(TIMEOUT);
        if !trusted(TIMEOUT) {
            edits.push(Edit::Set(Cow::Borrowed(TIMEOUT), timeout_ms));
        }
        // A long-running route keeps its whole timeout for one try: a per-try timeout would
        // cut a 1-hour report at 15 s and run it again.
        if let Some(per_try) = self.per_try_timeout_ms.as_ref().filter(|_| !long_running) {
            if !trusted(PER_TRY_TIMEOUT) {
                edits.push(Edit::Set(
                    Cow::Borrowed(PER_TRY_TIMEOUT),
                    Cow::Borrowed(per_try.as_slice()),
                ));
            }
        }
        (edits, capped)
    }
}

/// The client's deadline for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    None,
    In(Duration),
    Expired,
}

/// A whole number of milliseconds, nothing else.
fn parse_millis(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_kit::config::load;

    use crate::config::ResilienceConfig;

    fn policy(json: &str) -> RoutePolicy {
        let config: ResilienceConfig = load(json.as_bytes()).unwrap();
        RoutePolicy::new(config.proxy, &config.retry, &config.timeouts)
    }

    #[test]
    fn unseen_router_headers_are_removed_blind_unless_trusted() {
        let removed: Vec<_> = policy("{}").unseen_router_header_removals().collect();
        assert_eq!(removed.len(), ROUTER_HEADERS.len());
        assert!(removed.contains(&Edit::Remove(Cow::Borrowed("x-envoy-max-retries"))));
        let trusted = policy(r#"{"retry":{"trust_client_headers":true}}"#);
        assert_eq!(trusted.unseen_router_header_removals().count(), 0);
    }

    fn set(name: &'static str, value: &'static str) -> Edit<'static> {
        Edit::Set(Cow::Borrowed(name), Cow::Borrowed(value.as_bytes()))
    }

    fn remove(name: &'static str) -> Edit<'static> {
        Edit::Remove(Cow::Borrowed(name))
    }

    const GET: &[(&[u8], &[u8])] = &[(b":method", b"GET"), (b":path", b"/orders")];

    #[test]
    fn idempotent_requests_get_the_retry_policy_and_the_default_timeout() {
        let policy = policy("");
        assert_eq!(
            policy.decide(GET, 0, true),
            RouteDecision::Forward(vec![
                set("x-envoy-max-retries", "3"),
                set(
                    "x-envoy-retry-on",
                    "connect-failure,refused-stream,reset,gateway-error"
                ),
                set("x-envoy-upstream-rq-timeout-ms", "60000"),
            ])
        );
    }

    #[test]
    fn a_post_retries_only_when_the_upstream_never_saw_it() {
        let policy = policy(r#"{"retry":{"per_try_timeout":"2s"}}"#);
        let post: &[(&[u8], &[u8])] = &[(b":method", b"POST"), (b":path", b"/orders")];
        assert_eq!(
            policy.decide(post, 0, true),
            RouteDecision::Forward(vec![
                set("x-envoy-max-retries", "3"),
                set("x-envoy-retry-on", "connect-failure,refused-stream"),
                set("x-envoy-upstream-rq-timeout-ms", "60000"),
                set("x-envoy-upstream-rq-per-try-timeout-ms", "2000"),
            ])
        );
    }

    #[test]
    fn a_spent_budget_sends_no_retries() {
        let policy = policy("");
        assert_eq!(
            policy.decide(GET, 0, false),
            RouteDecision::Forward(vec![
                set("x-envoy-max-retries", "0"),
                set("x-envoy-upstream-rq-timeout-ms", "60000"),
            ])
        );
    }

    #[test]
    fn long_running_routes_get_the_long_timeout() {
        let policy = policy(r#"{"timeouts":{"long_running_prefixes":["/reports/"]}}"#);
        let report: &[(&[u8], &[u8])] = &[(b":method", b"GET"), (b":path", b"/reports/q1")];
        let RouteDecision::Forward(edits) = policy.decide(report, 0, true) else {
            panic!()
        };
        assert!(edits.contains(&set("x-envoy-upstream-rq-timeout-ms", "3600000")));
    }

    #[test]
    fn a_long_running_route_gets_no_per_try_timeout() {
        let policy = policy(
            r#"{"retry":{"per_try_timeout":"15s"},"timeouts":{"long_running_prefixes":["/reports/"]}}"#,
        );
        let report: &[(&[u8], &[u8])] = &[(b":method", b"GET"), (b":path", b"/reports/q1")];
        let RouteDecision::Forward(edits) = policy.decide(report, 0, true) else {
            panic!()
        };
        assert!(edits.contains(&set("x-envoy-upstream-rq-timeout-ms", "3600000")));
        assert!(
            !edits
                .iter()
                .any(|e| matches!(e, Edit::Set(n, _) if n == PER_TRY_TIMEOUT)),
            "{edits:?}"
        );
        let RouteDecision::Forward(edits) = policy.decide(GET, 0, true) else {
            panic!()
        };
        assert!(edits.contains(&set("x-envoy-upstream-rq-per-try-timeout-ms", "15000")));
    }

    #[test]
    fn only_a_timeout_the_deadline_lowered_is_flagged() {
        let json = r#"{"timeouts":{"deadline_header":"x-d"}}"#;
        let in_ms = |ms| Deadline::In(Duration::from_millis(ms));
        let envoy = policy(json);
        assert!(envoy.edits(GET, in_ms(1), true).1);
        assert!(envoy.edits(GET, in_ms(999), true).1);
        // From `deadline_counted_from` (1s) on, a capped timeout is the upstream's to meet:
        // a hung upstream still opens the circuit for callers that pass deadlines on.
        assert!(!envoy.edits(GET, in_ms(1000), true).1);
        assert!(!envoy.edits(GET, in_ms(60_000), true).1);
        let strict =
            policy(r#"{"timeouts":{"deadline_header":"x-d","deadline_counted_from":"0s"}}"#);
        assert!(!strict.edits(GET, in_ms(1), true).1);
        assert!(!envoy.edits(GET, Deadline::None, true).1);
        // Kong's router reads no timeout header: nothing was lowered.
        let kong = policy(r#"{"proxy":"kong","timeouts":{"deadline_header":"x-d"}}"#);
        assert!(!kong.edits(GET, in_ms(1), true).1);
        // A trusted hop's own timeout is kept: the plugin lowered nothing.
        let trusting = policy(r#"{"retry":{"trust_client_headers":true}}"#);
        let sent: &[(&[u8], &[u8])] = &[(b":path", b"/"), (TIMEOUT.as_bytes(), b"5")];
        assert!(!trusting.edits(sent, in_ms(1), true).1);
    }

    #[test]
    fn client_router_headers_are_removed_unless_trusted() {
        let sent: &[(&[u8], &[u8])] = &[
            (b":method", b"GET"),
            (b":path", b"/"),
            (b"x-envoy-max-retries", b"50"),
            (b"x-envoy-upstream-rq-timeout-ms", b"0"),
        ];
        let strict = policy("");
        let RouteDecision::Forward(edits) = strict.decide(sent, 0, true) else {
            panic!()
        };
        assert_eq!(
            edits[..3],
            [
                remove("x-envoy-max-retries"),
                remove("x-envoy-upstream-rq-timeout-ms"),
                set("x-envoy-max-retries", "3"),
            ]
        );
        let trusting = policy(r#"{"retry":{"trust_client_headers":true}}"#);
        assert_eq!(
            trusting.decide(sent, 0, true),
            RouteDecision::Forward(vec![set(
                "x-envoy-retry-on",
                "connect-failure,refused-stream,reset,gateway-error"
            )])
        );
        // No retry granted (budget spent, or a trial): the trusted hop's 50 becomes 0.
        assert_eq!(
            trusting.decide(sent, 0, false),
            RouteDecision::Forward(vec![set("x-envoy-max-retries", "0")])
        );
    }

    #[test]
    fn an_expired_deadline_is_refused_and_a_later_one_caps_the_timeout() {
        let policy = policy(r#"{"timeouts":{"deadline_header":"x-request-deadline-ms"}}"#);
        let with = |deadline: &'static [u8]| -> Vec<(&'static [u8], &'static [u8])> {
            vec![
                (b":method", b"GET"),
                (b":path", b"/"),
                (b"x-request-deadline-ms", deadline),
            ]
        };
        assert_eq!(
            policy.decide(&with(b"1000"), 1_000, true),
            RouteDecision::DeadlineExceeded
        );
        let RouteDecision::Forward(edits) = policy.decide(&with(b"1250"), 1_000, true) else {
            panic!()
        };
        assert!(edits.contains(&set("x-envoy-upstream-rq-timeout-ms", "250")));
        // Garbage is no deadline.
        let RouteDecision::Forward(edits) = policy.decide(&with(b"-5"), 1_000, true) else {
            panic!()
        };
        assert!(edits.contains(&set("x-envoy-upstream-rq-timeout-ms", "60000")));
    }

    #[test]
    fn on_kong_only_the_client_headers_are_removed() {
        let policy = policy(r#"{"proxy":"kong"}"#);
        let sent: &[(&[u8], &[u8])] = &[(b":method", b"GET"), (b"x-envoy-retry-on", b"5xx")];
        assert_eq!(
            policy.decide(sent, 0, true),
            RouteDecision::Forward(vec![remove("x-envoy-retry-on")])
        );
    }
}
