//! Plugin configurations `just bench` runs, shared with the tests that measure their
//! per-request cost in the test host (plugin_fuel.rs, plugin_host_calls.rs), so a regression
//! shows without running the benchmark. Each is the plugin doing its job on every bench request
//! (`GET /orders` with an allowed Origin, a request id and a valid RS256 bearer token) without
//! refusing any: the cost of the check, not of the answer.

/// The bench's RS256 and ES256 tokens (host-tests/fixtures/bench; issued 2025-12-01, valid
/// until 2100).
pub const RS256_TOKEN: &str = "token-rs256.jwt";
pub const ES256_TOKEN: &str = "token-es256.jwt";

/// When the bench tokens were issued (seconds since the epoch): a test host whose clock starts
/// earlier must move past it.
pub const TOKENS_ISSUED_AT: u64 = 1_764_547_200;

/// A bench token's text, by its file name.
pub fn token(file: &str) -> String {
    let path = crate::envoy_harness::workspace()
        .join("host-tests/fixtures/bench")
        .join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .trim()
        .to_owned()
}

/// header-security as an edge would run it: the API preset, CORS for one app, a request id.
pub const HEADER_SECURITY: &str = r#"{
    "security_headers": {"preset": "api"},
    "cors": {"allow_origins": [{"exact": "https://app.example.com"}], "allow_methods": ["GET", "POST"],
             "allow_headers": ["authorization", "content-type"], "max_age": "10m"},
    "trace_context": {"create": false}
}"#;

/// auth verifying the bench token (RS256) against the bench JWKS, the same provider Envoy's
/// `jwt_authn` gets in the native setup, and passing the subject upstream. Both forward the
/// token upstream (`forward: true` there), so neither pays for a removal the other skips.
pub fn auth() -> String {
    let jwks = include_str!("../fixtures/bench/jwks.json");
    format!(
        r#"{{"metrics": false, "providers": [{{
            "name": "bench", "issuer": "https://idp.bench.example", "audiences": ["palisade-bench"],
            "algorithms": ["RS256", "ES256"], "forward_token": true,
            "token_locations": [{{"header": {{"name": "authorization", "prefix": "Bearer "}}}}],
            "jwks": {{"inline": {jwks}}}
        }}]}}"#
    )
}

/// One proxy-wide limit, as the native setup's single `local_ratelimit` bucket: large enough
/// that the bench is never limited, exact across both workers.
pub const RATE_LIMIT: &str = r#"{
    "limits": [{"name": "bench", "rate": 1000000, "period": "1s", "burst": 100000,
                "key": [{"constant": "all"}], "slots": 16}]
}"#;

/// resilience with its defaults: the breaker on the route's cluster, the concurrency cap, retry,
/// timeout and deadline headers.
pub const RESILIENCE: &str = r#"{"concurrency": {"max_requests": 100000}}"#;

/// audit shipping every request as an event, batched as NDJSON to the bench upstream (which
/// answers 200 to anything).
pub const AUDIT: &str = r#"{
    "sink": {"http": {"upstream": "upstream", "authority": "collector.bench", "path": "/events"}},
    "sampling": {"api_call": 1.0},
    "metrics": true
}"#;
