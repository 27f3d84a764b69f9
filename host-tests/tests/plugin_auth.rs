//! palisade-auth in the test host, under Envoy and Kong: every rejection reason with its exact
//! status, challenge and body; identity headers stripped and set; claims, token forwarding,
//! anonymous requests, metrics; configuration refusal; no token in any log line.

mod plugin_support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::EncodingKey;
use palisade_host_tests::auth_tokens::{self, claims, config, Signer, ISSUER, RSA2};
use palisade_host_tests::wasm_host::{
    Failure, Headers, KongVersion, LogOrigin, MetricValue, Outcome, Plugin, PluginVms, Profile,
    Request, START_UNIX_SECS,
};
use plugin_support::{assert_rejected, load, plugin_warnings, PROFILES};
use serde_json::{json, Value};

const NOW: u64 = START_UNIX_SECS;

/// Sends `request` and returns the stream's outcome and the headers the upstream got.
fn send(vms: &PluginVms, request: Request) -> Result<(Outcome, Headers), Failure> {
    let mut stream = vms.http_request(request)?;
    let outcome = stream.send_request_headers(true)?;
    let upstream = if outcome == Outcome::Continue {
        stream.upstream_request_headers()
    } else {
        Headers::new()
    };
    Ok((outcome, upstream))
}

fn with_token(token: &str) -> Request {
    Request::get("/orders").header("authorization", format!("Bearer {token}"))
}

/// Asserts a 401 with this `error_description` (RFC 6750) and the kit's JSON body.
fn assert_invalid(outcome: &Outcome, description: &str, context: &str) {
    let Outcome::LocalReply(reply) = outcome else {
        panic!("{context}: expected a local reply, got {outcome:?}");
    };
    assert_eq!(reply.status, 401, "{context}");
    assert_eq!(
        reply.headers.get("www-authenticate"),
        Some(
            format!("Bearer error=\"invalid_token\", error_description=\"{description}\"").as_str()
        ),
        "{context}"
    );
    assert_eq!(reply.headers.get("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body,
        json!({"error": description, "status": 401, "request_id": "req-7"}),
        "{context}"
    );
}

fn with_claims(patch: Value) -> Value {
    let mut c = claims(NOW);
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

/// Every way a token is refused, with the description the client gets.
fn refused_tokens() -> Vec<(&'static str, String, &'static str)> {
    let rs = Signer::for_alg("RS256");
    let good = rs.sign(&claims(NOW));
    let mut parts = good.split('.');
    let (head, payload, sig) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut forged = claims(NOW);
    forged["sub"] = json!("admin");
    let forged_payload = URL_SAFE_NO_PAD.encode(forged.to_string());
    vec![
        (
            "oversized",
            format!("{head}.{}.{sig}", "A".repeat(9000)),
            "token is longer than 8192 bytes",
        ),
        (
            "two segments",
            format!("{head}.{payload}"),
            "token must have 3 dot-separated segments, not 2",
        ),
        (
            "a JWE",
            format!("{head}.a.b.c.{sig}"),
            "encrypted tokens (JWE) are not accepted",
        ),
        (
            "padded header",
            format!("{head}=.{payload}.{sig}"),
            "token header is not unpadded base64url",
        ),
        (
            "bad payload base64",
            format!("{head}.{payload}!.{sig}"),
            "token payload is not unpadded base64url",
        ),
        (
            "bad signature base64",
            format!("{head}.{payload}.{sig}+"),
            "token signature is not unpadded base64url",
        ),
        (
            "header not JSON",
            format!("{}.{payload}.{sig}", b64("{\"alg\":")),
            "token header is not a JSON object",
        ),
        (
            "payload not JSON",
            format!("{head}.{}.{sig}", b64("[1,2]")),
            "token payload is not a JSON object",
        ),
        (
            "alg none",
            format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#)),
            "unsigned tokens (alg none) are not accepted",
        ),
        (
            "no alg",
            format!("{}.{payload}.{sig}", b64(r#"{"typ":"JWT"}"#)),
            "token header has no alg",
        ),
        (
            "unknown alg",
            format!("{}.{payload}.{sig}", b64(r#"{"alg":"ES512"}"#)),
            "token alg is not supported",
        ),
        (
            "crit extension",
            format!(
                "{}.{payload}.{sig}",
                b64(r#"{"alg":"RS256","kid":"rsa-1","crit":["b64"],"b64":false}"#)
            ),
            "token header has unsupported crit extensions",
        ),
        (
            "HS256 signed with the public JWKS (algorithm confusion)",
            Signer::for_alg("HS256")
                .kid(Some("rsa-1"))
                .key(EncodingKey::from_secret(auth_tokens::JWKS.as_bytes()))
                .sign(&claims(NOW)),
            "token alg is not allowed for its issuer",
        ),
        (
            "unknown kid",
            rs.clone().kid(Some("rsa-9")).sign(&claims(NOW)),
            "token kid matches no key of its issuer",
        ),
        (
            "ES256 header on an RSA kid",
            Signer::for_alg("ES256")
                .kid(Some("rsa-1"))
                .sign(&claims(NOW)),
            "no key of the issuer can verify the token alg",
        ),
        (
            "signed by another key",
            rs.clone()
                .key(EncodingKey::from_rsa_der(RSA2))
                .sign(&claims(NOW)),
            "token signature is invalid",
        ),
        (
            "tampered payload",
            format!("{head}.{forged_payload}.{sig}"),
            "token signature is invalid",
        ),
        (
            "expired",
            rs.sign(&with_claims(json!({"exp": NOW - 61}))),
            "token is expired",
        ),
        (
            "not yet valid",
            rs.sign(&with_claims(json!({"nbf": NOW + 61}))),
            "token is not valid yet (nbf)",
        ),
        (
            "issued in the future",
            rs.sign(&with_claims(json!({"iat": NOW + 3600}))),
            "token is issued in the future (iat)",
        ),
        (
            "no exp",
            rs.sign(&with_claims(json!({"exp": null}))),
            "token has no exp claim",
        ),
        (
            "exp not a number",
            rs.sign(&with_claims(json!({"exp": "tomorrow"}))),
            "token claim exp has the wrong type",
        ),
        (
            "wrong audience",
            rs.sign(&with_claims(json!({"aud": ["web", "mobile"]}))),
            "token audience is not allowed",
        ),
        (
            "unknown issuer",
            rs.sign(&with_claims(json!({"iss": "https://evil.example"}))),
            "token issuer is not configured",
        ),
        (
            "no issuer",
            rs.sign(&with_claims(json!({"iss": null}))),
            "token has no iss claim",
        ),
    ]
}

#[test]
fn every_refused_token_gets_its_precise_reason_under_both_profiles() -> Result<(), Failure> {
    let tokens = refused_tokens();
    for profile in PROFILES {
        let (host, vms) = load(profile, Plugin::Auth, &config(json!({})))?;
        for (case, token, description) in &tokens {
            let (outcome, _) = send(&vms, with_token(token).header("x-request-id", "req-7"))?;
            assert_invalid(&outcome, description, &format!("{profile:?} {case}"));
        }
        // Nothing of any token reached a log line.
        for entry in host.logs() {
            for (_, token, _) in &tokens {
                let signature = token.rsplit('.').next().unwrap_or_default();
                assert!(
                    signature.len() < 8 || !entry.message.contains(signature),
                    "{entry:?}"
                );
            }
            assert!(!entry.message.contains("alice"), "{entry:?}");
        }
        // Refused requests are counted by provider (when one was named) and reason.
        let metrics = host.metrics();
        let count = |name: &str| match metrics.get(name) {
            Some(MetricValue::Counter(n)) => *n,
            other => panic!("{profile:?} {name}: {other:?}"),
        };
        assert_eq!(count("palisade_auth.denied.idp.expired"), 1);
        assert_eq!(count("palisade_auth.denied.idp.bad_signature"), 2);
        assert_eq!(count("palisade_auth.denied.none.alg_none"), 1);
        assert_eq!(count("palisade_auth.denied.none.unknown_issuer"), 2);
        assert_eq!(count("palisade_auth.allowed.idp"), 0);
    }
    Ok(())
}

#[test]
fn a_request_without_a_token_gets_a_bare_challenge() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::Auth, &config(json!({})))?;
        for request in [
            Request::get("/orders"),
            Request::get("/orders").header("authorization", "Basic dXNlcjpwYXNz"),
            Request::get("/orders").header("authorization", "Bearer "),
        ] {
            let (outcome, _) = send(&vms, request)?;
            let Outcome::LocalReply(reply) = outcome else {
                panic!("{profile:?}: {outcome:?}")
            };
            assert_eq!(reply.status, 401);
            assert_eq!(reply.headers.get("www-authenticate"), Some("Bearer"));
            let body: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(
                body,
                json!({"error": "missing token", "status": 401, "request_id": null})
            );
        }
    }
    Ok(())
}

#[test]
fn every_algorithm_is_accepted_and_identity_set_from_the_token() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(
            profile,
            Plugin::Auth,
            &config(json!({
                "algorithms": ["RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"],
            })),
        )?;
        for alg in [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ] {
            let token = Signer::for_alg(alg).sign(&claims(NOW));
            let request = with_token(&token)
                .header("x-palisade-subject", "mallory")
                .header("X-Palisade-Consumer", "mallory")
                .header("x-palisade-claim-email", "mallory@evil.example")
                .header("x-palisade-role", "admin")
                .header("x-tenant", "acme");
            let (outcome, upstream) = send(&vms, request)?;
            assert_eq!(outcome, Outcome::Continue, "{profile:?} {alg}");
            assert_eq!(upstream.get("x-palisade-subject"), Some("alice"));
            assert_eq!(upstream.all("x-palisade-subject").len(), 1);
            assert_eq!(
                upstream.get("x-palisade-consumer"),
                Some("https://idp.example/alice")
            );
            assert_eq!(upstream.all("x-palisade-consumer").len(), 1);
            assert_eq!(upstream.get("x-palisade-auth-provider"), Some("idp"));
            assert_eq!(
                upstream.get("x-palisade-claim-email"),
                Some("alice@example.com")
            );
            assert!(!upstream.contains("x-palisade-role"), "spoofed header kept");
            assert_eq!(upstream.get("x-tenant"), Some("acme"));
            // The verified token is not forwarded by default.
            assert!(!upstream.contains("authorization"));
        }
        assert_eq!(
            host.metrics().get("palisade_auth.allowed.idp"),
            Some(&MetricValue::Counter(9))
        );
    }
    Ok(())
}

/// Kong hands a plugin at most 100 header pairs (pseudo-headers first): an identity header
/// past them is invisible to the stripping. On Kong such a request is refused with 431 (Envoy
/// refuses over 100 headers by default too); Envoy hands every pair, and the spoofed header
/// is stripped as always.
#[test]
fn an_identity_header_hidden_past_kongs_header_cap_is_refused_not_missed() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_, vms) = load(profile, Plugin::Auth, &config(json!({})))?;
        let token = Signer::for_alg("RS256").sign(&claims(NOW));
        let request = (0..110)
            .fold(with_token(&token), |r, i| {
                r.header(&format!("x-filler-{i}"), "x")
            })
            .header("x-palisade-role", "admin")
            .header("x-palisade-subject", "mallory")
            .header("x-request-id", "req-7");
        if profile.is_kong() {
            let mut stream = vms.http_request(request)?;
            let Outcome::LocalReply(reply) = stream.send_request_headers(true)? else {
                panic!("{profile:?}: not refused")
            };
            // palisade-audit reads the identity by name past the cap: the claimed one is gone.
            let left = stream.request_headers();
            assert_eq!(left.get("x-palisade-subject"), None, "{left:?}");
            assert_eq!(left.get("x-filler-109"), Some("x"));
            assert_eq!(reply.status, 431);
            let body: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(
                body,
                json!({"error": "request header fields too large", "status": 431, "request_id": null})
            );
        } else {
            let (outcome, upstream) = send(&vms, request)?;
            assert_eq!(outcome, Outcome::Continue);
            assert!(!upstream.contains("x-palisade-role"), "spoofed header kept");
            assert_eq!(upstream.get("x-palisade-subject"), Some("alice"));
        }
        // A request under the cap passes on both.
        let request = (0..50).fold(with_token(&token), |r, i| {
            r.header(&format!("x-filler-{i}"), "x")
        });
        assert_eq!(send(&vms, request)?.0, Outcome::Continue, "{profile:?}");
    }
    Ok(())
}

#[test]
fn hmac_tokens_need_the_configured_secret() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(
            profile,
            Plugin::Auth,
            &config(json!({
                "algorithms": ["HS256", "HS512"],
                "jwks": null,
                "hmac_secret": auth_tokens::HMAC_SECRET,
            })),
        )?;
        for alg in ["HS256", "HS512"] {
            let (outcome, _) = send(&vms, with_token(&Signer::for_alg(alg).sign(&claims(NOW))))?;
            assert_eq!(outcome, Outcome::Continue, "{profile:?} {alg}");
        }
        let forged = Signer::for_alg("HS256")
            .key(EncodingKey::from_secret(
                b"not-the-secret-not-the-secret-not-the",
            ))
            .sign(&claims(NOW));
        let (outcome, _) = send(&vms, with_token(&forged).header("x-request-id", "req-7"))?;
        assert_invalid(&outcome, "token signature is invalid", "forged HS256");
        let (outcome, _) = send(
            &vms,
            with_token(&Signer::for_alg("HS384").sign(&claims(NOW)))
                .header("x-request-id", "req-7"),
        )?;
        assert_invalid(&outcome, "token alg is not allowed for its issuer", "HS384");
    }
    Ok(())
}

#[test]
fn tokens_are_read_from_query_and_cookie_and_removed_unless_forwarded() -> Result<(), Failure> {
    let locations = json!([{"query": "access_token"}, {"cookie": "session"}]);
    for profile in PROFILES {
        let token = Signer::for_alg("ES256").sign(&claims(NOW));
        let (_host, vms) = load(
            profile,
            Plugin::Auth,
            &config(json!({"token_locations": locations})),
        )?;
        let (outcome, upstream) = send(
            &vms,
            Request::get(&format!("/orders?page=2&access_token={token}")),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get(":path"), Some("/orders?page=2"));
        // The token alone: no query left (on Kong the query is cleared, not kept).
        let (outcome, upstream) =
            send(&vms, Request::get(&format!("/orders?access_token={token}")))?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get(":path"), Some("/orders"), "{profile:?}");
        let (outcome, upstream) = send(
            &vms,
            Request::get("/orders").header("cookie", format!("theme=dark; session={token}")),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get("cookie"), Some("theme=dark"));

        let (_host, forwarding) = load(
            profile,
            Plugin::Auth,
            &config(json!({"token_locations": locations, "forward_token": true})),
        )?;
        let path = format!("/orders?access_token={token}");
        let (outcome, upstream) = send(&forwarding, Request::get(&path))?;
        assert_eq!(outcome, Outcome::Continue);
        assert_eq!(upstream.get(":path"), Some(path.as_str()));
    }
    Ok(())
}

/// Kong before 3.9 cannot take a parameter out of the query (a `:path` with a `?` traps
/// there): a credential in the query is refused rather than forwarded, with one warning per
/// worker; a forwarded one goes on. A path that rules would rewrite is left to Kong's router,
/// which proxies its own normalised path, so no `:path` is written (it would trap too).
#[test]
fn kong_before_3_9_refuses_a_credential_it_cannot_take_out_of_the_query() -> Result<(), Failure> {
    let locations = json!([{"query": "access_token"}]);
    let profile = Profile::Kong(KongVersion::V3_8);
    let token = Signer::for_alg("ES256").sign(&claims(NOW));
    let (host, vms) = load(
        profile,
        Plugin::Auth,
        &config(json!({"token_locations": locations})),
    )?;
    for _ in 0..2 {
        let (outcome, _) = send(
            &vms,
            Request::get(&format!("/orders?page=2&access_token={token}")),
        )?;
        let Outcome::LocalReply(reply) = &outcome else {
            panic!("expected a local reply, got {outcome:?}");
        };
        assert_eq!(reply.status, 400);
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "credentials in the query string are not accepted", "status": 400, "request_id": null})
        );
    }
    let warnings = plugin_warnings(host.logs());
    assert_eq!(
        warnings,
        ["[palisade-auth] Kong before 3.9 cannot take a parameter out of the query: requests with their credential in the query are refused with 400 (send it in a header, or forward it: forward_token / api_keys.forward)"]
    );
    let (_host, forwarding) = load(
        profile,
        Plugin::Auth,
        &config(json!({"token_locations": locations, "forward_token": true})),
    )?;
    let path = format!("/orders?access_token={token}");
    let (outcome, upstream) = send(&forwarding, Request::get(&path))?;
    assert_eq!(outcome, Outcome::Continue);
    assert_eq!(upstream.get(":path"), Some(path.as_str()));
    Ok(())
}

/// On Kong a decoded `%3F` is a `?` in `:path`: a query credential's removal must not turn the
/// path's `?` into the query's, or the upstream would get a second, forged token.
#[test]
fn kong_takes_a_query_token_out_without_splitting_the_path_at_a_decoded_question_mark(
) -> Result<(), Failure> {
    let token = Signer::for_alg("ES256").sign(&claims(NOW));
    let (_host, vms) = load(
        Profile::kong(),
        Plugin::Auth,
        &config(json!({"token_locations": [{"query": "access_token"}]})),
    )?;
    let (outcome, upstream) = send(
        &vms,
        Request::get(&format!(
            "/orders%3Faccess_token=EVIL?access_token={token}&page=2"
        )),
    )?;
    assert_eq!(outcome, Outcome::Continue);
    assert_eq!(
        upstream.get(":path"),
        Some("/orders%3Faccess_token=EVIL?page=2")
    );
    Ok(())
}

#[test]
fn a_refused_identity_strip_fails_closed() -> Result<(), Failure> {
    for profile in PROFILES {
        let mut config: Value = serde_json::from_str(&config(json!({}))).unwrap();
        config["allow_missing"] = json!(true);
        let (host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        host.refuse_header_writes(true);
        let (outcome, _) = send(
            &vms,
            Request::get("/orders")
                .header("x-palisade-subject", "admin")
                .header("x-request-id", "req-7"),
        )?;
        let Outcome::LocalReply(reply) = &outcome else {
            panic!("{profile:?}: expected a local reply, got {outcome:?}");
        };
        assert_eq!(reply.status, 500, "{profile:?}");
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            body,
            json!({"error": "internal error", "status": 500, "request_id": "req-7"}),
            "{profile:?}"
        );
        assert!(
            host.logs().iter().any(|l| l
                .message
                .contains("identity header edits refused by the host, refusing the request")),
            "{profile:?}"
        );
        // The host accepting edits again, the same request goes through stripped.
        host.refuse_header_writes(false);
        let (outcome, upstream) = send(
            &vms,
            Request::get("/orders").header("x-palisade-subject", "admin"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert!(!upstream.contains("x-palisade-subject"));
    }
    Ok(())
}

#[test]
fn anonymous_requests_pass_only_when_allowed_and_never_keep_spoofed_identity() -> Result<(), Failure>
{
    for profile in PROFILES {
        let mut config: Value = serde_json::from_str(&config(json!({}))).unwrap();
        config["allow_missing"] = json!(true);
        let (host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        let (outcome, upstream) = send(
            &vms,
            Request::get("/orders")
                .header("x-palisade-subject", "admin")
                .header("x-palisade-auth-provider", "idp"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert!(!upstream.contains("x-palisade-subject"));
        assert!(!upstream.contains("x-palisade-auth-provider"));
        // A token that is present must still be valid.
        let (outcome, _) = send(&vms, with_token("a.b").header("x-request-id", "req-7"))?;
        assert_invalid(
            &outcome,
            "token must have 3 dot-separated segments, not 2",
            "anonymous with a bad token",
        );
        assert_eq!(
            host.metrics().get("palisade_auth.anonymous"),
            Some(&MetricValue::Counter(1))
        );
    }
    Ok(())
}

#[test]
fn metrics_can_be_switched_off_for_kong_before_3_8() -> Result<(), Failure> {
    use palisade_host_tests::wasm_host::{Host, KongVersion, Profile};
    let mut config: Value = serde_json::from_str(&config(json!({}))).unwrap();
    config["metrics"] = json!(false);
    let host = Host::new(Profile::Kong(KongVersion::V3_4));
    let vms = host.load(Plugin::Auth, &config.to_string())?;
    assert!(vms.is_accepted(), "{:?}", vms.logs());
    let (outcome, _) = send(
        &vms,
        with_token(&Signer::for_alg("RS256").sign(&claims(NOW))),
    )?;
    assert_eq!(outcome, Outcome::Continue);
    let (outcome, _) = send(&vms, Request::get("/"))?;
    assert!(matches!(outcome, Outcome::LocalReply(ref r) if r.status == 401));
    assert!(host.metrics().is_empty());
    Ok(())
}

#[test]
fn bad_configurations_are_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::Auth,
        r#"{"providers":[{"name":"idp","issuer":"https://idp.example","algorithms":[]}]}"#,
        "[palisade-auth] configuration rejected: providers[0].algorithms: must list at least one algorithm",
    )?;
    assert_rejected(
        Plugin::Auth,
        r#"{"providers":[{"name":"idp","issuer":"https://idp.example","algorithms":["RS256"]}]}"#,
        "[palisade-auth] configuration rejected: providers[0].jwks: is required for RS*, PS*, ES* and EdDSA",
    )?;
    assert_rejected(
        Plugin::Auth,
        &config(json!({"algorithms": ["HS256"], "jwks": null, "hmac_secret": "c2hvcnQ"})),
        "[palisade-auth] configuration rejected: providers[0].hmac_secret: must be at least 32 bytes for HS256 (RFC 7518 §3.2)",
    )
}

#[test]
fn an_unconfigured_auth_plugin_fails_closed() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::Auth, "")?;
        let (outcome, upstream) = send(&vms, Request::get("/").header("x-palisade-subject", "x"))?;
        assert!(
            matches!(outcome, Outcome::LocalReply(ref r) if r.status == 401),
            "{profile:?}: {outcome:?} {upstream:?}"
        );
    }
    Ok(())
}

#[test]
fn plugin_log_lines_are_only_lifecycle_lines() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(profile, Plugin::Auth, &config(json!({})))?;
        for (_, token, _) in refused_tokens() {
            send(&vms, with_token(&token))?;
        }
        send(
            &vms,
            with_token(&Signer::for_alg("RS256").sign(&claims(NOW))),
        )?;
        let lines: Vec<String> = host
            .logs()
            .into_iter()
            .filter(|e| e.origin == LogOrigin::Plugin)
            .map(|e| e.message)
            .collect();
        assert_eq!(
            lines,
            [
                format!(
                    "[palisade-auth] version 0.1.0 (revision {}) starting",
                    rev(&lines)
                ),
                "[palisade-auth] configuration accepted".to_owned()
            ],
            "{profile:?}"
        );
    }
    Ok(())
}

/// The revision the build stamped, read back from the start line.
fn rev(lines: &[String]) -> String {
    lines
        .first()
        .and_then(|l| l.split("(revision ").nth(1))
        .and_then(|r| r.strip_suffix(") starting"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn issuer_is_the_routing_key_between_providers() -> Result<(), Failure> {
    for profile in PROFILES {
        let mut config: Value = serde_json::from_str(&config(json!({}))).unwrap();
        let mut partner = config["providers"][0].clone();
        partner["name"] = json!("partner");
        partner["issuer"] = json!("https://partner.example");
        partner["jwks"] = json!({"inline": auth_tokens::jwks_with(&["ec256-1"])});
        partner["algorithms"] = json!(["ES256"]);
        config["providers"].as_array_mut().unwrap().push(partner);
        let (_host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        let partner_claims = with_claims(json!({"iss": "https://partner.example"}));
        let (outcome, upstream) = send(
            &vms,
            with_token(&Signer::for_alg("ES256").sign(&partner_claims)),
        )?;
        assert_eq!(outcome, Outcome::Continue);
        assert_eq!(upstream.get("x-palisade-auth-provider"), Some("partner"));
        // An RS256 token claiming the partner's issuer: the partner's keys and allowlist apply.
        let (outcome, _) = send(
            &vms,
            with_token(&Signer::for_alg("RS256").sign(&partner_claims))
                .header("x-request-id", "req-7"),
        )?;
        assert_invalid(
            &outcome,
            "token alg is not allowed for its issuer",
            "cross-issuer",
        );
        let idp = claims(NOW);
        assert_eq!(idp["iss"], ISSUER);
    }
    Ok(())
}
