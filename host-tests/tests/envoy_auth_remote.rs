//! palisade-auth in real Envoy (V8, 2 workers) against loopback servers: a JWKS server the
//! plugin fetches its keys from (`jwks.remote`) and an RFC 7662 introspection endpoint. Both up,
//! down (nothing listening) and, for JWKS, slow: each follows its fail mode exactly (status,
//! body), and nothing unauthenticated reaches the upstream.

// Test infrastructure outside any proxy: the wall clock is the right one here.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::envoy::Filter;
use palisade::http_server::{Response, Server};
use palisade::plugins;
use palisade_host_tests::auth_tokens::{self, claims, jwks, jwks_with, Signer};
use palisade_host_tests::envoy_harness::{static_cluster, EnvoyTest};
use palisade_host_tests::ratelimit_server::free_port;
use serde_json::{json, Value};

/// Requests on fresh connections, so both workers serve some.
const REQUESTS: usize = 8;

/// A loopback endpoint that counts requests and answers each after `delay_ms` with `body`.
struct Endpoint {
    server: Server,
    hits: Arc<AtomicUsize>,
    body: Arc<Mutex<Value>>,
}

impl Endpoint {
    fn start(delay_ms: u64, body: Value) -> Endpoint {
        let hits = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(AtomicU64::new(delay_ms));
        let body = Arc::new(Mutex::new(body));
        let counted = Arc::clone(&hits);
        let served = Arc::clone(&body);
        let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), move |_request| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(delay.load(Ordering::SeqCst)));
            let body = served.lock().map(|b| b.to_string()).unwrap_or_default();
            Response {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.into_bytes(),
            }
        })
        .expect("loopback endpoint");
        Endpoint { server, hits, body }
    }

    /// What the endpoint answers from now on.
    fn serve(&self, body: Value) {
        if let Ok(mut current) = self.body.lock() {
            *current = body;
        }
    }

    fn port(&self) -> u16 {
        self.server.addr().port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Envoy with palisade-auth configured by `config`, and clusters `jwks` and `introspection`
/// pointing at these ports.
fn start(config: String, jwks_port: u16, introspection_port: u16) -> EnvoyTest {
    let auth = plugins::find("auth").unwrap();
    EnvoyTest::start_edited(vec![Filter::new(auth, config)], |envoy| {
        let clusters = envoy["static_resources"]["clusters"]
            .as_array_mut()
            .unwrap();
        clusters.push(static_cluster("jwks", jwks_port));
        clusters.push(static_cluster("introspection", introspection_port));
    })
}

fn remote_config(timeout: &str) -> String {
    auth_tokens::config(json!({"jwks": {"remote": {
        "upstream": "jwks", "authority": "idp.example", "path": "/jwks.json",
        "scheme": "http", "timeout": timeout,
    }}}))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn assert_refused(reply: &palisade_host_tests::envoy_harness::Reply, status: u16, error: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    let body: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        body,
        json!({"error": error, "status": status, "request_id": "r-1"})
    );
}

#[test]
fn keys_fetched_from_the_jwks_server_serve_both_workers() {
    let server = Endpoint::start(0, jwks());
    let test = start(remote_config("2s"), server.port(), free_port().unwrap());
    for i in 0..REQUESTS {
        let alg = ["RS256", "ES256", "EdDSA", "PS256"][i % 4];
        let token = Signer::for_alg(alg).sign(&claims(auth_tokens::unix_now()));
        let auth = bearer(&token);
        let reply = test.get(
            &format!("/orders/{i}"),
            &[
                ("authorization", auth.as_str()),
                ("x-palisade-subject", "mallory"),
            ],
        );
        assert_eq!(
            reply.status,
            200,
            "{alg}: {}\n{}",
            reply.body,
            test.envoy.log()
        );
    }
    let seen = test.upstream.seen();
    assert_eq!(seen.len(), REQUESTS);
    for request in &seen {
        assert_eq!(request.header("x-palisade-subject"), Some("alice"));
        assert_eq!(request.header("authorization"), None);
    }
    // Cold requests may each fetch, and the timer prefetches once; after that no worker
    // fetches again within refresh_interval (10m).
    let fetches = server.hits();
    assert!((1..=3).contains(&fetches), "{fetches} fetches");
    std::thread::sleep(Duration::from_secs(2));
    let token = Signer::for_alg("RS256").sign(&claims(auth_tokens::unix_now()));
    for _ in 0..4 {
        let auth = bearer(&token);
        assert_eq!(
            test.get("/", &[("authorization", auth.as_str())]).status,
            200
        );
    }
    assert_eq!(server.hits(), fetches, "no fetch while the keys are fresh");
    assert!(
        test.log_lines("JWKS fetch").is_empty(),
        "{}",
        test.envoy.log()
    );
    assert!(test.log_lines("panic").is_empty());
}

#[test]
fn a_rotated_key_is_fetched_once_early_and_unknown_kids_are_refused() {
    let server = Endpoint::start(0, jwks_with(&["rsa-1"]));
    let test = start(remote_config("2s"), server.port(), free_port().unwrap());
    let now = auth_tokens::unix_now();
    let rs = bearer(&Signer::for_alg("RS256").sign(&claims(now)));
    assert_eq!(test.get("/", &[("authorization", rs.as_str())]).status, 200);
    // Let a timer prefetch that raced the cold request land first.
    std::thread::sleep(Duration::from_millis(1500));
    let before = server.hits();
    // The IdP rotates in an EC key; a token naming it makes one early refresh.
    server.serve(jwks());
    let es = bearer(&Signer::for_alg("ES256").sign(&claims(now)));
    for _ in 0..REQUESTS {
        let reply = test.get("/", &[("authorization", es.as_str())]);
        assert_eq!(reply.status, 200, "{}\n{}", reply.body, test.envoy.log());
    }
    assert_eq!(
        server.hits(),
        before + 1,
        "one early refresh for both workers"
    );
    // Unknown kids within the 30s interval: refused at once, no fetch.
    for i in 0..REQUESTS {
        let token = Signer::for_alg("RS256")
            .kid(Some(&format!("forged-{i}")))
            .sign(&claims(now));
        let auth = bearer(&token);
        let reply = test.get(
            "/",
            &[("authorization", auth.as_str()), ("x-request-id", "r-1")],
        );
        assert_refused(&reply, 401, "token kid matches no key of its issuer");
    }
    assert_eq!(server.hits(), before + 1);
    assert_eq!(test.upstream.seen().len(), 1 + REQUESTS);
}

#[test]
fn a_jwks_server_that_is_down_fails_closed_with_503() {
    let test = start(
        remote_config("1s"),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    for _ in 0..REQUESTS / 2 {
        let token = Signer::for_alg("RS256").sign(&claims(auth_tokens::unix_now()));
        let auth = bearer(&token);
        let reply = test.get(
            "/orders",
            &[("authorization", auth.as_str()), ("x-request-id", "r-1")],
        );
        assert_refused(&reply, 503, "the issuer's keys are unavailable");
    }
    assert!(test.upstream.seen().is_empty());
    // Envoy answers the refused connection itself with a 503, which the plugin reports.
    assert!(
        test.wait_for_log(
            "[palisade-auth] JWKS fetch for provider \"idp\" failed (no usable keys): JWKS server \
         answered with status 503; no usable keys",
            Duration::from_secs(5)
        ),
        "{}",
        test.envoy.log()
    );
    assert!(test.log_lines("panic").is_empty());
}

#[test]
fn a_slow_jwks_server_times_out_and_fails_closed() {
    let server = Endpoint::start(3000, jwks());
    let test = start(remote_config("500ms"), server.port(), free_port().unwrap());
    let token = Signer::for_alg("ES256").sign(&claims(auth_tokens::unix_now()));
    let auth = bearer(&token);
    let started = Instant::now();
    let reply = test.get(
        "/orders",
        &[("authorization", auth.as_str()), ("x-request-id", "r-1")],
    );
    assert_refused(&reply, 503, "the issuer's keys are unavailable");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "bounded by the timeout: {:?}",
        started.elapsed()
    );
    assert!(test.upstream.seen().is_empty());
    // Envoy's async client ends a timed-out call with its own 504.
    assert!(
        test.wait_for_log(
            "[palisade-auth] JWKS fetch for provider \"idp\" failed (no usable keys): JWKS server \
         answered with status 504; no usable keys",
            Duration::from_secs(5)
        ),
        "{}",
        test.envoy.log()
    );
}

fn introspection_config(fail_mode: &str) -> String {
    let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
    config["introspection"] = json!({
        "upstream": "introspection", "authority": "idp.example", "path": "/introspect",
        "scheme": "http", "client_id": "gateway", "client_secret": "s3cret",
        "timeout": "1s", "fail_mode": fail_mode,
    });
    config.to_string()
}

#[test]
fn introspection_up_then_down_follows_each_fail_mode() {
    let now = auth_tokens::unix_now();
    let endpoint = Endpoint::start(
        0,
        json!({"active": true, "sub": "svc-reports", "exp": now + 600}),
    );
    let up = start(
        introspection_config("closed"),
        free_port().unwrap(),
        endpoint.port(),
    );
    let reply = up.get(
        "/reports",
        &[
            ("authorization", "Bearer opaque-1"),
            ("x-palisade-subject", "m"),
        ],
    );
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, up.envoy.log());
    assert_eq!(endpoint.hits(), 1);
    let seen = up.upstream.seen();
    assert_eq!(seen[0].header("x-palisade-subject"), Some("svc-reports"));
    assert_eq!(
        seen[0].header("x-palisade-auth-provider"),
        Some("introspection")
    );
    drop(up);

    let closed = start(
        introspection_config("closed"),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    for _ in 0..REQUESTS / 2 {
        let reply = closed.get(
            "/reports",
            &[
                ("authorization", "Bearer opaque-2"),
                ("x-request-id", "r-1"),
            ],
        );
        // Envoy's async HTTP client answers a refused connection with its own 503 ("upstream
        // connect error ..."), so the plugin sees a status, not a missing response.
        assert_refused(
            &reply,
            503,
            "introspection endpoint answered with status 503",
        );
    }
    assert!(closed.upstream.seen().is_empty());
    drop(closed);

    let open = start(
        introspection_config("open"),
        free_port().unwrap(),
        free_port().unwrap(),
    );
    for _ in 0..REQUESTS / 2 {
        let reply = open.get(
            "/reports",
            &[
                ("authorization", "Bearer opaque-3"),
                ("x-palisade-subject", "m"),
            ],
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let seen = open.upstream.seen();
    assert_eq!(seen.len(), REQUESTS / 2);
    for request in &seen {
        // Through anonymous: the spoofed identity is stripped, none is set.
        assert_eq!(request.header("x-palisade-subject"), None);
        assert_eq!(request.header("x-palisade-auth-provider"), None);
    }
}
