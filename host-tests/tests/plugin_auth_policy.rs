//! palisade-auth's policy half in the test host, under Envoy and Kong: ordered rules on host,
//! normalised path, method and mTLS peer; API keys (hashed, each naming a consumer); claims and
//! scopes (403 `insufficient_scope`); the default deny; identity headers; metrics by source and
//! reason; no key in any log line; configuration refusals naming the field.

mod plugin_support;

use palisade_host_tests::auth_tokens::{self, claims, Signer};
use palisade_host_tests::wasm_host::{
    CalloutReply, Failure, Headers, Host, KongVersion, LogOrigin, MetricValue, Outcome, Plugin,
    PluginVms, Profile, Request, Response, START_UNIX_SECS,
};
use plugin_support::{assert_rejected, load, plugin_warnings, PROFILES};
use serde_json::{json, Value};

const NOW: u64 = START_UNIX_SECS;
/// `printf %s k-billing-123 | sha256sum`
const BILLING_KEY: &str = "k-billing-123";
const BILLING_SHA256: &str = "f657680beac81a82a4a1c6475628929dc3e5fa453a1960c653e006dbb443b47c";
/// `printf %s k-reader-456 | sha256sum`: a key without scopes.
const READER_KEY: &str = "k-reader-456";
const READER_SHA256: &str = "d5e1c2bc0af577b74dd4a8a267050e9786d0b9245ec2ada6d4c3e3943b2e111f";

fn api_keys() -> Value {
    json!({
        "from": [{"header": {"name": "x-api-key"}}, {"query": {"name": "api_key"}}],
        "keys": [
            {"sha256": BILLING_SHA256, "consumer": "billing", "scopes": ["invoices:read"],
             "labels": {"team": "billing"}},
            {"sha256": READER_SHA256, "consumer": "reader"}
        ]
    })
}

fn rules() -> Value {
    json!([
        {"name": "health", "paths": [{"exact": "/healthz"}], "methods": ["GET"],
         "action": "allow_anonymous"},
        {"name": "admin-block", "paths": [{"path_separated_prefix": "/admin"}], "action": "deny"},
        {"name": "mesh-jobs", "principals": ["cluster.local/ns/jobs/sa/*"],
         "action": "allow_anonymous"},
        {"name": "invoices", "paths": [{"path_separated_prefix": "/invoices"}],
         "action": {"require": {"api_keys": true, "scopes": ["invoices:read"]}}},
        {"name": "orders-write", "methods": ["POST"], "paths": [{"prefix": "/orders"}],
         "action": {"require": {"providers": ["idp"], "claims": {"email": ["alice@example.com"]},
                                "scopes": ["orders:write"]}}},
        {"name": "api", "hosts": ["api.example.com"], "paths": [{"regex": "/api/v[0-9]+/.*"}],
         "action": {"require": {"providers": ["idp"], "api_keys": true}}}
    ])
}

/// The provider of `auth_tokens::config`, with API keys and the rules above.
fn policy_config() -> String {
    let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
    config["api_keys"] = api_keys();
    config["rules"] = rules();
    config.to_string()
}

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

/// Asserts a local reply with this status, `WWW-Authenticate` and JSON error.
fn assert_reply(outcome: &Outcome, status: u16, challenge: Option<&str>, error: &str, ctx: &str) {
    let Outcome::LocalReply(reply) = outcome else {
        panic!("{ctx}: expected a local reply, got {outcome:?}");
    };
    assert_eq!(reply.status, status, "{ctx}");
    assert_eq!(reply.headers.get("www-authenticate"), challenge, "{ctx}");
    assert_eq!(reply.headers.get("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(
        body,
        json!({"error": error, "status": status, "request_id": null}),
        "{ctx}"
    );
}

fn assert_denied(outcome: &Outcome, ctx: &str) {
    assert_reply(outcome, 403, None, "access denied", ctx);
}

fn invalid(description: &str) -> String {
    format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
}

fn insufficient(scope: &str) -> String {
    format!(
        "Bearer error=\"insufficient_scope\", error_description=\"the token lacks a required \
         scope or claim\", scope=\"{scope}\""
    )
}

fn token(patch: Value) -> String {
    let mut c = claims(NOW);
    for (k, v) in patch.as_object().unwrap() {
        c[k] = v.clone();
    }
    Signer::for_alg("RS256").sign(&c)
}

fn count(host: &Host, name: &str) -> u64 {
    match host.metrics().get(name) {
        Some(MetricValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn anonymous_and_deny_rules_match_the_normalised_path() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(profile, Plugin::Auth, &policy_config())?;
        // An anonymous rule: identity headers still stripped; the path the rule judged goes on.
        for path in [
            "/healthz",
            "/./healthz",
            "//healthz",
            "/x/../healthz",
            "/%68ealthz",
        ] {
            let (outcome, upstream) = send(
                &vms,
                Request::get(path)
                    .header("x-palisade-subject", "mallory")
                    .header("x-palisade-consumer", "mallory"),
            )?;
            assert_eq!(outcome, Outcome::Continue, "{profile:?} {path}");
            assert!(
                !upstream.contains("x-palisade-subject"),
                "{profile:?} {path}"
            );
            assert!(
                !upstream.contains("x-palisade-consumer"),
                "{profile:?} {path}"
            );
            assert_eq!(
                upstream.get(":path"),
                Some("/healthz"),
                "{profile:?} {path}"
            );
        }
        // The health rule is GET only: a POST falls through to the default deny.
        let (outcome, _) = send(&vms, Request::post("/healthz"))?;
        assert_denied(&outcome, &format!("{profile:?} POST /healthz"));
        // Every spelling of /admin meets the deny rule, with or without a valid token.
        let good = token(json!({}));
        for path in [
            "/admin",
            "/admin/users",
            "/public/../admin",
            "/%61dmin/users",
            "//admin",
            "/public/%2e%2e/admin",
            // Path parameters, which servlet containers strip before mapping the path.
            "/admin;jsessionid=x/users",
        ] {
            let (outcome, _) = send(
                &vms,
                Request::get(path).header("authorization", format!("Bearer {good}")),
            )?;
            assert_denied(&outcome, &format!("{profile:?} {path}"));
        }
        // Paths that cannot be normalised safely are refused outright.
        for (path, error) in [
            ("/admin%2Fusers", "path has an encoded slash"),
            ("/a%00b", "path has an encoded NUL"),
            ("/a%zz", "path has an invalid percent-encoding"),
        ] {
            let (outcome, _) = send(&vms, Request::get(path))?;
            assert_reply(&outcome, 400, None, error, &format!("{profile:?} {path}"));
        }
        // No rule matches: the default deny.
        let (outcome, _) = send(&vms, Request::get("/elsewhere"))?;
        assert_denied(&outcome, &format!("{profile:?} no match"));
        assert_eq!(count(&host, "palisade_auth.anonymous"), 5);
        assert_eq!(count(&host, "palisade_auth.denied.none.denied"), 9);
        assert_eq!(
            count(&host, "palisade_auth.denied.none.path_escaped_slash"),
            1
        );
    }
    Ok(())
}

/// Kong hands over `:path` decoded (nginx's `r->uri`): rules judge the target as sent instead,
/// as on Envoy, or a double-encoded `..` would be decoded twice and an encoded space refused.
/// A rewrite is left to Kong's router (a `:path` with a `?` traps before Kong 3.9).
#[test]
fn rules_judge_the_target_as_sent_on_every_host() -> Result<(), Failure> {
    let profiles = [
        Profile::Envoy,
        Profile::Kong(KongVersion::V3_8),
        Profile::Kong(KongVersion::V3_10),
    ];
    for profile in profiles {
        let (_host, vms) = load(profile, Plugin::Auth, &policy_config())?;
        // `%252e%252e` is `%2e%2e` to the upstream, a segment under /admin, not `..`.
        let (outcome, _) = send(&vms, Request::get("/admin/x/%252e%252e/%252e%252e/healthz"))?;
        assert_denied(&outcome, &format!("{profile:?} double-encoded"));
        // An encoded space is an ordinary byte of the path.
        let (outcome, upstream) = send(
            &vms,
            Request::get("/invoices/a%20b.pdf").header("x-api-key", BILLING_KEY),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?} encoded space");
        assert_eq!(upstream.get(":path"), Some("/invoices/a%20b.pdf"));
        // A `\` the rules read as `/`: Envoy forwards the path they judged; Kong's router would
        // forward the `\`, so the request is refused there.
        let (outcome, upstream) = send(&vms, Request::get("/admin/x\\..\\..\\healthz"))?;
        if profile.is_kong() {
            assert_reply(
                &outcome,
                400,
                None,
                "path has a backslash or an escaped slash",
                &format!("{profile:?} backslash"),
            );
        } else {
            assert_eq!(outcome, Outcome::Continue, "{profile:?} backslash");
            assert_eq!(upstream.get(":path"), Some("/healthz"));
        }
        // A path the rules normalise, with a query: no trap on Kong 3.8, the upstream gets the
        // normalised path and the query.
        let (outcome, upstream) = send(&vms, Request::get("//healthz?probe=1"))?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?} rewrite");
        assert_eq!(
            upstream.get(":path"),
            Some("/healthz?probe=1"),
            "{profile:?}"
        );
    }
    Ok(())
}

/// A deny rule before a catch-all that asks for a token: a path parameter
/// (`/admin;jsessionid=x`) must not turn the denied path into one any token opens, as Tomcat,
/// Jetty and Spring map it to `/admin/...`.
#[test]
fn path_parameters_do_not_get_past_a_deny_rule() -> Result<(), Failure> {
    let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
    config["rules"] = json!([
        {"name": "admin-block", "paths": [{"path_separated_prefix": "/admin"}], "action": "deny"},
        {"name": "rest", "paths": [{"prefix": "/"}], "action": {"require": {"providers": ["idp"]}}}
    ]);
    let good = token(json!({}));
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        for path in ["/admin;jsessionid=x/users", "/admin;/users"] {
            let (outcome, _) = send(
                &vms,
                Request::get(path).header("authorization", format!("Bearer {good}")),
            )?;
            assert_denied(&outcome, &format!("{profile:?} {path}"));
        }
        // A dot segment with parameters is `..` to a servlet container and a name to Envoy's
        // and Kong's routers: refused, whichever side of it a rule is.
        for path in ["/x/..;/admin/users", "/admin/..;/x"] {
            let (outcome, _) = send(
                &vms,
                Request::get(path).header("authorization", format!("Bearer {good}")),
            )?;
            assert_reply(
                &outcome,
                400,
                None,
                "path has a dot segment with parameters",
                &format!("{profile:?} {path}"),
            );
        }
        // Elsewhere the parameters go upstream as sent.
        let (outcome, upstream) = send(
            &vms,
            Request::get("/shop;jsessionid=x/cart")
                .header("authorization", format!("Bearer {good}")),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(
            upstream.get(":path"),
            Some("/shop;jsessionid=x/cart"),
            "{profile:?}"
        );
    }
    Ok(())
}

#[test]
fn an_mtls_principal_rule_matches_on_envoy_and_never_on_kong() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(profile, Plugin::Auth, &policy_config())?;
        let job =
            Request::get("/jobs/run").tls_peer("spiffe://cluster.local/ns/jobs/sa/cron", "CN=cron");
        let (outcome, _) = send(&vms, job)?;
        if profile.is_kong() {
            // Kong's Wasm API exposes no peer certificate: the rule never matches.
            assert_denied(&outcome, "Kong principal");
        } else {
            assert_eq!(outcome, Outcome::Continue, "Envoy principal");
        }
        let other = Request::get("/jobs/run")
            .tls_peer("spiffe://cluster.local/ns/web/sa/frontend", "CN=web");
        let (outcome, _) = send(&vms, other)?;
        assert_denied(&outcome, &format!("{profile:?} other principal"));
        // Without mTLS the SAN is not even asked for.
        let (outcome, _) = send(&vms, Request::get("/jobs/run"))?;
        assert_denied(&outcome, &format!("{profile:?} plaintext"));
        let reads = host
            .refused_properties()
            .into_iter()
            .filter(|r| r.path.starts_with("connection.uri_san"))
            .count();
        assert_eq!(reads, if profile.is_kong() { 2 } else { 0 }, "{profile:?}");
    }
    Ok(())
}

#[test]
fn api_keys_name_their_consumer_and_are_checked_against_the_rule() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(profile, Plugin::Auth, &policy_config())?;
        let (outcome, upstream) = send(
            &vms,
            Request::get("/invoices/7")
                .header("x-api-key", BILLING_KEY)
                .header("x-palisade-consumer", "mallory")
                .header("x-palisade-auth-provider", "idp"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get("x-palisade-consumer"), Some("billing"));
        assert_eq!(upstream.all("x-palisade-consumer").len(), 1);
        assert_eq!(upstream.get("x-palisade-subject"), Some("billing"));
        assert_eq!(upstream.get("x-palisade-auth-provider"), Some("api_key"));
        assert_eq!(upstream.all("x-palisade-auth-provider").len(), 1);
        assert!(!upstream.contains("x-api-key"), "the key is not forwarded");
        // From the query: the parameter is taken out, the rest of the query kept.
        let (outcome, upstream) = send(
            &vms,
            Request::get(&format!("/invoices?page=2&api_key={BILLING_KEY}&sort=asc")),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get(":path"), Some("/invoices?page=2&sort=asc"));
        assert_eq!(upstream.get("x-palisade-consumer"), Some("billing"));
        // A valid key without the rule's scope: 403 insufficient_scope.
        let (outcome, _) = send(
            &vms,
            Request::get("/invoices").header("x-api-key", READER_KEY),
        )?;
        assert_reply(
            &outcome,
            403,
            Some(&insufficient("invoices:read")),
            "the token lacks a required scope or claim",
            &format!("{profile:?} reader"),
        );
        // Unknown and repeated keys: 401 with their reason.
        let (outcome, _) = send(
            &vms,
            Request::get("/invoices").header("x-api-key", "k-guess"),
        )?;
        assert_reply(
            &outcome,
            401,
            Some(&invalid("unknown API key")),
            "unknown API key",
            "unknown",
        );
        let (outcome, _) = send(
            &vms,
            Request::get("/invoices")
                .header("x-api-key", BILLING_KEY)
                .header("x-api-key", BILLING_KEY),
        )?;
        assert_reply(
            &outcome,
            401,
            Some(&invalid("API key sent more than once")),
            "API key sent more than once",
            "ambiguous",
        );
        // This rule accepts API keys only: a valid JWT is not read there.
        let (outcome, _) = send(
            &vms,
            Request::get("/invoices")
                .header("authorization", format!("Bearer {}", token(json!({})))),
        )?;
        assert_reply(
            &outcome,
            401,
            Some("Bearer"),
            "missing token",
            "jwt on keys",
        );
        // A rule accepting both: key or token.
        let api = || Request::get("/api/v1/things").authority("api.example.com");
        let (outcome, upstream) = send(&vms, api().header("x-api-key", READER_KEY))?;
        assert_eq!(outcome, Outcome::Continue);
        assert_eq!(upstream.get("x-palisade-consumer"), Some("reader"));
        let (outcome, upstream) = send(
            &vms,
            api().header("authorization", format!("Bearer {}", token(json!({})))),
        )?;
        assert_eq!(outcome, Outcome::Continue);
        assert_eq!(
            upstream.get("x-palisade-consumer"),
            Some("https://idp.example/alice")
        );
        assert_eq!(upstream.get("x-palisade-auth-provider"), Some("idp"));
        // The host condition: the same request to another host meets the default deny.
        let (outcome, _) = send(
            &vms,
            Request::get("/api/v1/things").header("x-api-key", READER_KEY),
        )?;
        assert_denied(&outcome, "other host");
        // A Host that is not a host and port would pass every rule naming hosts: 400.
        let (outcome, _) = send(
            &vms,
            Request::get("/api/v1/things")
                .authority("api.example.com:x")
                .header("x-api-key", READER_KEY),
        )?;
        assert_reply(
            &outcome,
            400,
            None,
            "the request's host is not a host name and port",
            &format!("{profile:?} bad authority"),
        );

        assert_eq!(count(&host, "palisade_auth.allowed.api_key"), 3);
        assert_eq!(count(&host, "palisade_auth.allowed.idp"), 1);
        assert_eq!(
            count(&host, "palisade_auth.denied.api_key.api_key_unknown"),
            1
        );
        assert_eq!(
            count(&host, "palisade_auth.denied.api_key.api_key_ambiguous"),
            1
        );
        assert_eq!(
            count(&host, "palisade_auth.denied.api_key.insufficient_scope"),
            1
        );
        assert_eq!(count(&host, "palisade_auth.denied.none.missing"), 1);
        assert_eq!(count(&host, "palisade_auth.denied.none.bad_authority"), 1);
        // No key in any log line, and no plugin line past start-up.
        for entry in host.logs() {
            for key in [BILLING_KEY, READER_KEY, "k-guess"] {
                assert!(!entry.message.contains(key), "{entry:?}");
            }
        }
        let plugin_lines = host
            .logs()
            .into_iter()
            .filter(|e| e.origin == LogOrigin::Plugin)
            .count();
        assert_eq!(plugin_lines, 2, "{profile:?}: {:?}", host.logs());
    }
    Ok(())
}

#[test]
fn required_claims_and_scopes_refuse_with_403() -> Result<(), Failure> {
    for profile in PROFILES {
        let (host, vms) = load(profile, Plugin::Auth, &policy_config())?;
        let post =
            |t: &str| Request::post("/orders").header("authorization", format!("Bearer {t}"));
        let (outcome, upstream) = send(
            &vms,
            post(&token(json!({"scope": "orders:read orders:write"}))),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get("x-palisade-subject"), Some("alice"));
        assert!(!upstream.contains("authorization"));
        let (outcome, _) = send(&vms, post(&token(json!({"scope": "orders:read"}))))?;
        assert_reply(
            &outcome,
            403,
            Some(&insufficient("orders:write")),
            "the token lacks a required scope or claim",
            "no scope",
        );
        let (outcome, _) = send(
            &vms,
            post(&token(
                json!({"scp": ["orders:write"], "email": "mallory@example.com"}),
            )),
        )?;
        assert_reply(
            &outcome,
            403,
            None,
            "a required claim is missing or has another value",
            "claim",
        );
        // The token is checked before the claims: a bad one is still a 401.
        let (outcome, _) = send(&vms, post(&token(json!({"exp": NOW - 3600}))))?;
        assert_reply(
            &outcome,
            401,
            Some(&invalid("token is expired")),
            "token is expired",
            "expired",
        );
        // No credential at all: the bare challenge.
        let (outcome, _) = send(&vms, Request::post("/orders"))?;
        assert_reply(&outcome, 401, Some("Bearer"), "missing token", "none");
        assert_eq!(
            count(&host, "palisade_auth.denied.idp.insufficient_scope"),
            1
        );
        assert_eq!(count(&host, "palisade_auth.denied.idp.claim_mismatch"), 1);
        assert_eq!(count(&host, "palisade_auth.denied.idp.expired"), 1);
    }
    Ok(())
}

#[test]
fn without_rules_api_keys_are_one_more_accepted_credential() -> Result<(), Failure> {
    for profile in PROFILES {
        let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
        config["api_keys"] = api_keys();
        let (_host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        // A copy spelled `x_api_key` (CGI-style upstreams read it as X-Api-Key) goes too.
        let (outcome, upstream) = send(
            &vms,
            Request::get("/anything")
                .header("x-api-key", READER_KEY)
                .header("x_api_key", "k-other"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get("x-palisade-consumer"), Some("reader"));
        assert_eq!(upstream.get("x-api-key"), None);
        assert_eq!(upstream.get("x_api_key"), None, "{profile:?}");
        let (outcome, _) = send(
            &vms,
            Request::get("/anything")
                .header("authorization", format!("Bearer {}", token(json!({})))),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        // Paths are not normalised without rules: the request goes on as it came (Kong's
        // router normalises the path it proxies by itself).
        let (outcome, upstream) = send(
            &vms,
            Request::get("/a/../b").header("x-api-key", READER_KEY),
        )?;
        assert_eq!(outcome, Outcome::Continue);
        let expected = if profile.is_kong() { "/b" } else { "/a/../b" };
        assert_eq!(upstream.get(":path"), Some(expected), "{profile:?}");
        let (outcome, _) = send(&vms, Request::get("/anything"))?;
        assert_reply(&outcome, 401, Some("Bearer"), "missing token", "none");
    }
    Ok(())
}

/// A forwarded key goes on; a copy of its header spelled `x_api_key`, which nobody checked and
/// CGI-style upstreams read as the same header, does not.
#[test]
fn a_forwarded_key_goes_on_without_its_unchecked_copies() -> Result<(), Failure> {
    for profile in PROFILES {
        let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
        config["api_keys"] = api_keys();
        config["api_keys"]["forward"] = json!(true);
        let (_host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        let (outcome, upstream) = send(
            &vms,
            Request::get("/anything")
                .header("x-api-key", READER_KEY)
                .header("x_api_key", "k-forged"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get("x-api-key"), Some(READER_KEY), "{profile:?}");
        assert_eq!(upstream.get("x_api_key"), None, "{profile:?}");
    }
    Ok(())
}

/// A key won, so the tokens beside it were never checked: they do not reach an upstream that
/// reads the tokens its provider forwards (a valid low key plus a forged admin token).
#[test]
fn tokens_beside_an_accepted_key_do_not_go_upstream() -> Result<(), Failure> {
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    for profile in PROFILES {
        let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({
            "forward_token": true,
            "token_locations": [{"header": {"name": "authorization", "prefix": "Bearer "}},
                                {"query": "access_token"}, {"cookie": "session"},
                                {"cookie": "id_token"}]
        })))
        .unwrap();
        config["api_keys"] = api_keys();
        config["rules"] = rules();
        let (_host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        let (outcome, upstream) = send(
            &vms,
            Request::get(&format!(
                "/api/v1/x?access_token={forged}&page=2&api_key={READER_KEY}"
            ))
            .authority("api.example.com")
            .header("authorization", format!("Bearer {forged}"))
            .header(
                "cookie",
                format!("theme=dark; session={forged}; id_token={forged}"),
            ),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get("x-palisade-consumer"), Some("reader"));
        assert_eq!(
            upstream.get(":path"),
            Some("/api/v1/x?page=2"),
            "{profile:?}"
        );
        assert_eq!(upstream.get("authorization"), None, "{profile:?}");
        assert_eq!(upstream.get("cookie"), Some("theme=dark"), "{profile:?}");
        // Another scheme in the token's header is no token of this plugin's: it stays.
        let (outcome, upstream) = send(
            &vms,
            Request::get("/api/v1/x")
                .authority("api.example.com")
                .header("x-api-key", READER_KEY)
                .header("authorization", "Basic dTpw"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert_eq!(upstream.get("authorization"), Some("Basic dTpw"));
    }
    Ok(())
}

#[test]
fn no_match_may_allow_anonymous_access() -> Result<(), Failure> {
    let mut config: Value = serde_json::from_str(&policy_config()).unwrap();
    config["no_match"] = json!("allow_anonymous");
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        let (outcome, upstream) = send(
            &vms,
            Request::get("/elsewhere").header("x-palisade-subject", "x"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        assert!(!upstream.contains("x-palisade-subject"));
        let (outcome, _) = send(&vms, Request::get("/admin"))?;
        assert_denied(&outcome, "deny rule first");
    }
    Ok(())
}

fn with(patch: Value) -> String {
    let mut config: Value = serde_json::from_str(&policy_config()).unwrap();
    for (k, v) in patch.as_object().unwrap() {
        config[k] = v.clone();
    }
    config.to_string()
}

#[test]
fn bad_policies_are_refused_with_one_line_naming_the_field() -> Result<(), Failure> {
    let rejected = |config: &str, reason: &str| {
        assert_rejected(
            Plugin::Auth,
            config,
            &format!("[palisade-auth] configuration rejected: {reason}"),
        )
    };
    rejected(
        &with(json!({"rules": [{"action": {"require": {"providers": ["nope"]}}}]})),
        "rules[0].action.require.providers[0]: no provider is named \"nope\"",
    )?;
    rejected(
        &auth_tokens::config(json!({})).replace(
            "\"providers\"",
            "\"rules\":[{\"action\":{\"require\":{\"api_keys\":true}}}],\"providers\"",
        ),
        "rules[0].action.require.api_keys: no `api_keys` are configured",
    )?;
    rejected(
        &with(json!({"allow_missing": true})),
        "allow_missing: does not apply with `rules`: use an `allow_anonymous` rule or `no_match`",
    )?;
    rejected(
        &with(json!({"rules": [{"paths": [{"regex": "/a(b"}], "action": "deny"}]})),
        &regex_error(),
    )?;
    rejected(
        &with(json!({"rules": [{"methods": ["get"], "action": "deny"}]})),
        "rules[0].methods[0]: \"get\" is not an upper-case method (methods are case-sensitive)",
    )?;
    rejected(
        &auth_tokens::config(json!({}))
            .replace("\"providers\"", "\"no_match\":\"deny\",\"providers\""),
        "no_match: only applies with `rules`",
    )?;
    // A key given in clear instead of its hash: the message never repeats it.
    let mut keys = api_keys();
    keys["keys"][0]["sha256"] = json!(BILLING_KEY);
    let config = with(json!({"api_keys": keys}));
    rejected(
        &config,
        "api_keys.keys[0].sha256: must be the key's SHA-256 as 64 hex digits, never the key \
         itself: compute it with `printf %s \"$KEY\" | sha256sum`",
    )
}

/// The refusal for an unbalanced regex, as `regex-lite` words it.
fn regex_error() -> String {
    let host = Host::new(Profile::Envoy);
    let vms = host
        .load(
            Plugin::Auth,
            &with(json!({"rules": [{"paths": [{"regex": "/a(b"}], "action": "deny"}]})),
        )
        .unwrap();
    let line = vms
        .logs()
        .into_iter()
        .find(|e| e.message.contains("configuration rejected"))
        .map(|e| e.message)
        .unwrap_or_default();
    assert!(
        line.starts_with("[palisade-auth] configuration rejected: rules[0].paths[0].regex: "),
        "{line}"
    );
    line.trim_start_matches("[palisade-auth] configuration rejected: ")
        .to_owned()
}

const INTROSPECT: &str = "idp.example:443";

fn introspection_config(fail_mode: &str) -> String {
    let mut config: Value = serde_json::from_str(&policy_config()).unwrap();
    config["introspection"] = json!({
        "upstream": INTROSPECT, "authority": "idp.example", "path": "/oauth2/introspect",
        "client_id": "gateway", "client_secret": "s3cret", "timeout": "2s",
        "negative_cache_ttl": "10s", "fail_mode": fail_mode,
    });
    config["rules"].as_array_mut().unwrap().push(json!(
        {"name": "reports", "paths": [{"prefix": "/reports"}],
         "action": {"require": {"introspection": true, "scopes": ["reports:read"]}}}
    ));
    config.to_string()
}

fn opaque(token: &str) -> Request {
    Request::get("/reports").header("authorization", format!("Bearer {token}"))
}

fn active(scope: &str) -> CalloutReply {
    CalloutReply::status(200)
        .header("content-type", "application/json")
        .body(
            json!({"active": true, "sub": "svc-reports", "scope": scope, "exp": NOW + 600})
                .to_string(),
        )
}

#[test]
fn opaque_tokens_are_introspected_cached_and_refused_when_inactive() -> Result<(), Failure> {
    for profile in PROFILES {
        let host = Host::new(profile);
        let vms = host.load(Plugin::Auth, &introspection_config("closed"))?;
        host.script_http_call(INTROSPECT, active("reports:read"));
        let (outcome, upstream) = send(
            &vms,
            opaque("opaque-good").header("x-palisade-subject", "m"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}: {:?}", host.logs());
        assert_eq!(upstream.get("x-palisade-subject"), Some("svc-reports"));
        assert_eq!(
            upstream.get("x-palisade-auth-provider"),
            Some("introspection")
        );
        assert!(!upstream.contains("authorization"));
        let calls = host.http_calls();
        assert_eq!(calls.len(), 1);
        let call = &calls[0];
        assert_eq!(call.headers.get(":method"), Some("POST"));
        assert_eq!(call.headers.get(":path"), Some("/oauth2/introspect"));
        assert_eq!(call.headers.get(":authority"), Some("idp.example"));
        // RFC 6749 §2.3.1: base64("gateway:s3cret").
        assert_eq!(
            call.headers.get("authorization"),
            Some("Basic Z2F0ZXdheTpzM2NyZXQ=")
        );
        assert_eq!(
            call.body,
            b"token=opaque-good&token_type_hint=access_token".to_vec()
        );
        // The same token again: from the cache, no second call.
        let (outcome, _) = send(&vms, opaque("opaque-good"))?;
        assert_eq!(outcome, Outcome::Continue);
        assert_eq!(host.http_calls().len(), 1);
        // Inactive: 401, and cached as such.
        host.script_http_call(
            INTROSPECT,
            CalloutReply::status(200).body(r#"{"active":false}"#),
        );
        for _ in 0..2 {
            let (outcome, _) = send(&vms, opaque("opaque-revoked"))?;
            assert_reply(
                &outcome,
                401,
                Some(&invalid("token is not active")),
                "token is not active",
                "inactive",
            );
        }
        assert_eq!(host.http_calls().len(), 2);
        // Active without the scope: 403.
        host.script_http_call(INTROSPECT, active("reports:list"));
        let (outcome, _) = send(&vms, opaque("opaque-narrow"))?;
        assert_reply(
            &outcome,
            403,
            Some(&insufficient("reports:read")),
            "the token lacks a required scope or claim",
            "scope",
        );
        // Endpoint down, then an error status: 503 (fail closed), never cached.
        host.script_http_call(INTROSPECT, CalloutReply::failure("connection refused"));
        let (outcome, _) = send(&vms, opaque("opaque-x"))?;
        assert_reply(
            &outcome,
            503,
            None,
            "introspection endpoint unreachable",
            "down",
        );
        host.script_http_call(INTROSPECT, CalloutReply::status(500));
        let (outcome, _) = send(&vms, opaque("opaque-x"))?;
        assert_reply(
            &outcome,
            503,
            None,
            "introspection endpoint answered with status 500",
            "500",
        );
        // A timeout: the request waits, then 503.
        host.script_http_call(INTROSPECT, CalloutReply::never());
        let mut stream = vms.http_request(opaque("opaque-slow"))?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Pause);
        host.advance_clock(std::time::Duration::from_secs(2))?;
        assert_reply(
            &stream.outcome(),
            503,
            None,
            "introspection endpoint unreachable",
            "timeout",
        );
        assert_eq!(host.http_calls().len(), 6);
        assert_eq!(count(&host, "palisade_auth.allowed.introspection"), 2);
        assert_eq!(
            count(&host, "palisade_auth.denied.introspection.token_inactive"),
            2
        );
        assert_eq!(
            count(
                &host,
                "palisade_auth.denied.introspection.introspection_unreachable"
            ),
            2
        );
        for entry in host.logs() {
            assert!(!entry.message.contains("opaque-"), "{entry:?}");
            assert!(!entry.message.contains("s3cret"), "{entry:?}");
        }
    }
    Ok(())
}

/// `client_id` and `username` are not subjects (RFC 7662 §2.2): a client registered as
/// `alice` must not reach the upstream as the user whose `sub` is `alice`.
#[test]
fn an_answer_without_sub_names_no_subject() -> Result<(), Failure> {
    for profile in PROFILES {
        let host = Host::new(profile);
        let vms = host.load(Plugin::Auth, &introspection_config("closed"))?;
        host.script_http_call(
            INTROSPECT,
            CalloutReply::status(200).body(
                json!({"active": true, "client_id": "alice", "username": "alice",
                       "iss": "https://idp.example", "scope": "reports:read", "exp": NOW + 600})
                .to_string(),
            ),
        );
        let (outcome, upstream) = send(
            &vms,
            opaque("client-token")
                .header("x-palisade-subject", "alice")
                .header("x-palisade-consumer", "https://idp.example/alice"),
        )?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}: {:?}", host.logs());
        assert_eq!(
            upstream.get("x-palisade-auth-provider"),
            Some("introspection")
        );
        assert!(!upstream.contains("x-palisade-subject"), "{upstream:?}");
        assert!(!upstream.contains("x-palisade-consumer"), "{upstream:?}");
        assert_eq!(count(&host, "palisade_auth.allowed.introspection"), 1);
    }
    Ok(())
}

#[test]
fn fail_open_lets_requests_through_anonymous_when_the_endpoint_is_down() -> Result<(), Failure> {
    for profile in PROFILES {
        let host = Host::new(profile);
        let vms = host.load(Plugin::Auth, &introspection_config("open"))?;
        host.script_http_call(INTROSPECT, CalloutReply::failure("connection refused"));
        let request = opaque("opaque-1")
            .header("x-palisade-subject", "m")
            .header("x-tenant", "acme");
        let (outcome, upstream) = send(&vms, request.clone())?;
        assert_eq!(outcome, Outcome::Continue, "{profile:?}");
        // Anonymous: the client's identity claim gone, no identity set, and the token no
        // further than forward_token (off) says; everything else as the client sent it.
        assert_eq!(
            upstream,
            profile
                .request_map(request.headers())
                .without("authorization")
                .without("x-palisade-subject"),
            "{profile:?}"
        );
        assert_eq!(count(&host, "palisade_auth.anonymous"), 1);
    }
    Ok(())
}

/// Kong 3.4–3.7 end a request whose call-out fails with nginx's own 500, before the upstream
/// and without calling the plugin again (docs/kong-proxy-wasm.md §6): closed, whatever the
/// plugin would have answered.
#[test]
fn kong_before_3_8_answers_a_failed_introspection_with_500() -> Result<(), Failure> {
    for version in [KongVersion::V3_4, KongVersion::V3_6, KongVersion::V3_7] {
        let host = Host::new(Profile::Kong(version));
        let mut config: Value = serde_json::from_str(&introspection_config("open")).unwrap();
        config["metrics"] = json!(false);
        let vms = host.load(Plugin::Auth, &config.to_string())?;
        for _ in 0..2 {
            host.script_http_call(INTROSPECT, CalloutReply::failure("connection refused"));
            let mut stream = vms.http_request(opaque("opaque-1"))?;
            let outcome = stream.send_request_headers(true)?;
            let Outcome::LocalReply(reply) = outcome else {
                panic!("{version:?}: {outcome:?}")
            };
            assert_eq!(reply.status, 500, "{version:?}");
            assert!(
                !stream.reached_upstream(),
                "{version:?}: the upstream saw it"
            );
        }
        // Not held: each request asks again (the plugin never learns the call failed).
        assert_eq!(host.http_calls().len(), 2, "{version:?}");
        assert!(host
            .logs()
            .iter()
            .any(|e| e.origin == LogOrigin::Host
                && e.message == "dispatch failed: connection refused"));
    }
    Ok(())
}

/// Kong 3.8 resumes the request when its call-out fails, without calling the plugin back
/// (docs/auth.md "Kong"): the request reaches the upstream, with the identity headers stripped
/// before the call. Its response is then refused as Kong 3.9+ refuse the request, with the
/// reply's own headers (ngx_wasm_module keeps the upstream's unless the plugin replaces them),
/// and for the call's timeout and a second introspection counts as down: the next requests are
/// refused before the upstream.
#[test]
fn kong_3_8_resuming_a_failed_introspection_refuses_its_response() -> Result<(), Failure> {
    {
        let version = KongVersion::V3_8;
        let host = Host::new(Profile::Kong(version));
        let vms = host.load(Plugin::Auth, &introspection_config("closed"))?;
        host.script_http_call(INTROSPECT, CalloutReply::failure("connection refused"));
        let mut stream = vms.http_request(
            opaque("opaque-1")
                .header("x-palisade-subject", "mallory")
                .header("x-palisade-consumer", "mallory"),
        )?;
        stream.send_request_headers(true)?;
        let upstream = stream.upstream_request_headers();
        assert!(!upstream.contains("x-palisade-subject"), "{upstream:?}");
        assert!(!upstream.contains("x-palisade-consumer"));
        let outcome = stream.send_response_headers(
            Response::status(200)
                .header("content-type", "text/plain")
                .header("set-cookie", "session=upstream"),
            false,
        )?;
        let errors = plugin_warnings(host.logs());
        assert_reply(
            &outcome,
            503,
            None,
            "introspection endpoint unreachable",
            "3.8",
        );
        let Outcome::LocalReply(reply) = &outcome else {
            unreachable!()
        };
        assert_eq!(
            reply.headers.get("set-cookie"),
            None,
            "the upstream's cookie"
        );
        assert!(
            reply
                .headers
                .get("x-palisade-denied-by")
                .is_some_and(|by| by.starts_with("palisade-auth; reason=")),
            "{reply:?}"
        );
        assert_eq!(
            count(
                &host,
                "palisade_auth.denied.introspection.introspection_unreachable"
            ),
            1
        );
        assert_eq!(errors, ["[palisade-auth] the introspection call-out failed and the host sent the request upstream without calling the plugin back (Kong before 3.9): the request went without identity, and its response is replaced by this plugin's refusal"]);
        // Until the call's timeout (2s) and a second have passed, no call: refused at once.
        host.advance_clock(std::time::Duration::from_millis(2900))?;
        let (outcome, _) = send(&vms, opaque("opaque-2"))?;
        assert_reply(
            &outcome,
            503,
            None,
            "introspection endpoint unreachable",
            "held",
        );
        assert_eq!(host.http_calls().len(), 1, "{version:?}");
        // Then introspection is asked again.
        host.advance_clock(std::time::Duration::from_millis(200))?;
        host.script_http_call(INTROSPECT, active("reports:read"));
        let (outcome, upstream) = send(&vms, opaque("opaque-2"))?;
        assert_eq!(outcome, Outcome::Continue, "{version:?}");
        assert_eq!(upstream.get("x-palisade-subject"), Some("svc-reports"));
        assert_eq!(host.http_calls().len(), 2, "{version:?}");
    }
    Ok(())
}

/// `escaped_slashes: unescape_and_redirect`: a path with `%2F` is answered 307 to its decoded
/// form, with no body, before anything goes upstream, and the client's identity claim is gone
/// from the request the proxy keeps (what the access log and later filters read).
#[test]
fn escaped_slashes_are_redirected_to_the_decoded_path() -> Result<(), Failure> {
    let mut config: Value = serde_json::from_str(&auth_tokens::config(json!({}))).unwrap();
    config["rules"] = json!([{"action": "allow_anonymous"}]);
    config["path_normalization"] = json!({"escaped_slashes": "unescape_and_redirect"});
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::Auth, &config.to_string())?;
        let mut stream = vms.http_request(
            Request::get("/a%2Fb?q=1")
                .header("x-palisade-subject", "mallory")
                .header("x-palisade-consumer", "mallory-app"),
        )?;
        let outcome = stream.send_request_headers(true)?;
        let Outcome::LocalReply(reply) = outcome else {
            panic!("{profile:?}: expected a 307, got {outcome:?}");
        };
        assert_eq!(reply.status, 307, "{profile:?}");
        assert_eq!(
            reply.headers,
            Headers::new().with("location", "/a/b?q=1"),
            "{profile:?}"
        );
        // No body; Kong's local replies always end with a newline (ngx_http_wasm_local_response.c).
        let body: &[u8] = if profile.is_kong() { b"\n" } else { b"" };
        assert_eq!(reply.body, body, "{profile:?}");
        let details = if profile.is_kong() {
            ""
        } else {
            "palisade_local_reply"
        };
        assert_eq!(reply.details, details, "{profile:?}");
        let kept = stream.request_headers();
        assert!(
            !kept.contains("x-palisade-subject"),
            "{profile:?}: {kept:?}"
        );
        assert!(
            !kept.contains("x-palisade-consumer"),
            "{profile:?}: {kept:?}"
        );
        assert!(!stream.reached_upstream(), "{profile:?}: nothing upstream");
    }
    Ok(())
}
