//! palisade-auth in real Envoy (V8, 2 workers), inline JWKS: verified tokens reach the upstream
//! with the identity set and the token removed; spoofed identity headers never do; every kind of
//! bad token gets its RFC 6750 refusal.

use palisade::envoy::Filter;
use palisade::plugins;
use palisade_host_tests::auth_tokens::{self, claims, config, Signer};
use palisade_host_tests::envoy_harness::EnvoyTest;
use serde_json::json;

/// Requests on fresh connections, so both workers serve some.
const REQUESTS: usize = 6;

fn now() -> u64 {
    auth_tokens::unix_now()
}

fn start() -> EnvoyTest {
    let auth = plugins::find("auth").unwrap();
    EnvoyTest::start(vec![Filter::new(auth, config(json!({})))])
}

#[test]
fn verified_tokens_reach_the_upstream_with_the_identity_and_without_the_token() {
    let test = start();
    for i in 0..REQUESTS {
        let alg = ["RS256", "ES256", "EdDSA"][i % 3];
        let token = Signer::for_alg(alg).sign(&claims(now()));
        let auth = format!("Bearer {token}");
        let reply = test.get(
            &format!("/orders/{i}"),
            &[
                ("authorization", auth.as_str()),
                ("x-palisade-subject", "mallory"),
                ("x-palisade-claim-email", "mallory@evil.example"),
            ],
        );
        assert_eq!(reply.status, 200, "{alg}: {}", reply.body);
    }
    let seen = test.upstream.seen();
    assert_eq!(seen.len(), REQUESTS);
    for request in &seen {
        assert_eq!(request.header("x-palisade-subject"), Some("alice"));
        assert_eq!(
            request.header("x-palisade-consumer"),
            Some("https://idp.example/alice")
        );
        assert_eq!(request.header("x-palisade-auth-provider"), Some("idp"));
        assert_eq!(
            request.header("x-palisade-claim-email"),
            Some("alice@example.com")
        );
        assert_eq!(request.header("authorization"), None);
    }
    assert!(test.log_lines("configuration rejected").is_empty());
    assert!(test.log_lines("panic").is_empty(), "{}", test.envoy.log());
}

#[test]
fn bad_tokens_are_refused_with_their_reason_and_never_reach_the_upstream() {
    let test = start();
    let rs = Signer::for_alg("RS256");
    let mut expired = claims(now());
    expired["exp"] = json!(now() - 3600);
    let mut wrong_aud = claims(now());
    wrong_aud["aud"] = json!("web");
    let good = rs.sign(&claims(now()));
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let none = format!("eyJhbGciOiJub25lIn0.{}.", rest.split_once('.').unwrap().0);
    let cases = [
        (rs.sign(&expired), "token is expired"),
        (rs.sign(&wrong_aud), "token audience is not allowed"),
        (none, "unsigned tokens (alg none) are not accepted"),
        (
            rs.clone().kid(Some("rsa-9")).sign(&claims(now())),
            "token kid matches no key of its issuer",
        ),
        (
            format!("{head}.eyJzdWIiOiJhZG1pbiJ9.{sig}"),
            "token has no iss claim",
        ),
        (
            format!("{head}.x"),
            "token must have 3 dot-separated segments, not 2",
        ),
    ];
    for (token, description) in &cases {
        let auth = format!("Bearer {token}");
        let reply = test.get(
            "/orders",
            &[("authorization", auth.as_str()), ("x-request-id", "r-1")],
        );
        assert_eq!(reply.status, 401, "{description}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
                    .as_str()
            )
        );
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"error": description, "status": 401, "request_id": "r-1"})
        );
    }
    let reply = test.get("/orders", &[]);
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert!(test.upstream.seen().is_empty());
    // No token reached Envoy's log.
    assert!(test.log_lines(sig).is_empty());
}
