//! palisade-auth's rules and API keys in real Envoy (V8, 2 workers): the first matching rule
//! decides on the normalised path, API keys name their consumer upstream, scopes refuse with
//! 403 `insufficient_scope`, and the default denies.

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::auth_tokens::{self, claims, Signer};
use palisade_host_tests::envoy_harness::EnvoyTest;
use serde_json::{json, Value};

/// `printf %s k-billing-123 | sha256sum`
const BILLING_KEY: &str = "k-billing-123";
const BILLING_SHA256: &str = "f657680beac81a82a4a1c6475628929dc3e5fa453a1960c653e006dbb443b47c";

fn config() -> String {
    let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
    config["api_keys"] = json!({"keys": [
        {"sha256": BILLING_SHA256, "consumer": "billing", "scopes": ["invoices:read"]}
    ]});
    config["rules"] = json!([
        {"name": "internal", "hosts": ["internal.example.com"], "action": "deny"},
        {"name": "health", "paths": [{"exact": "/healthz"}], "action": "allow_anonymous"},
        {"name": "admin", "paths": [{"path_separated_prefix": "/admin"}], "action": "deny"},
        {"name": "invoices", "paths": [{"path_separated_prefix": "/invoices"}],
         "action": {"require": {"api_keys": true, "providers": ["idp"],
                                "scopes": ["invoices:read"]}}},
    ]);
    config.to_string()
}

#[test]
fn rules_and_api_keys_decide_in_envoy_under_two_workers() {
    let auth = plugins::find("auth").unwrap();
    let test = EnvoyTest::start(vec![Filter::new(auth, config())]);
    // Fresh connections, so both workers serve some of each.
    for i in 0..4 {
        let reply = test.get(
            &format!("/invoices/{i}"),
            &[
                ("x-api-key", BILLING_KEY),
                ("x-palisade-consumer", "mallory"),
            ],
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        let reply = test.get("/healthz", &[("x-palisade-subject", "mallory")]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let reply = test.get("/admin/users", &[("x-api-key", BILLING_KEY)]);
        assert_eq!(reply.status, 403, "{}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["error"], "access denied");
    }
    // A token without the rule's scope: 403 insufficient_scope; with it: through.
    let now = auth_tokens::unix_now();
    let token = Signer::for_alg("ES256").sign(&claims(now));
    let auth = format!("Bearer {token}");
    let reply = test.get("/invoices", &[("authorization", auth.as_str())]);
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(
            "Bearer error=\"insufficient_scope\", error_description=\"the token lacks a \
             required scope or claim\", scope=\"invoices:read\""
        )
    );
    let mut scoped = claims(now);
    scoped["scope"] = json!("invoices:read");
    let auth = format!("Bearer {}", Signer::for_alg("ES256").sign(&scoped));
    let reply = test.get("/invoices", &[("authorization", auth.as_str())]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    // An unknown key, and no credential: 401.
    let reply = test.get("/invoices", &[("x-api-key", "k-guess")]);
    assert_eq!(reply.status, 401);
    let reply = test.get("/invoices", &[]);
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    // The default deny.
    assert_eq!(test.get("/elsewhere", &[]).status, 403);
    // A rule on hosts: Envoy routes `internal.example.com:x` (its virtual host matches `*`),
    // so read as "no host" it would have skipped the deny; it is refused instead.
    let host = |host: &str| {
        test.raw(
            format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
    };
    assert_eq!(host("internal.example.com").status, 403);
    let bad = host("internal.example.com:x");
    assert_eq!(bad.status, 400);
    let body: Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(
        body["error"],
        "the request's host is not a host name and port"
    );
    assert_eq!(host("localhost").status, 200);

    let seen = test.upstream.seen();
    assert_eq!(seen.len(), 10, "4 keyed, 5 health, 1 scoped token");
    let keyed: Vec<_> = seen
        .iter()
        .filter(|r| r.header("x-palisade-auth-provider") == Some("api_key"))
        .collect();
    assert_eq!(keyed.len(), 4);
    for request in keyed {
        assert_eq!(request.header("x-palisade-consumer"), Some("billing"));
        assert_eq!(request.header("x-api-key"), None);
    }
    for request in &seen {
        assert_ne!(request.header("x-palisade-consumer"), Some("mallory"));
        assert_ne!(request.header("x-palisade-subject"), Some("mallory"));
    }
    assert!(test.log_lines(BILLING_KEY).is_empty());
    assert!(test.log_lines("k-guess").is_empty());
    assert!(test.log_lines("panic").is_empty(), "{}", test.envoy.log());
}
