//! palisade-header-security in the test host, under Envoy and Kong: configuration refusal,
//! pass-through, security headers added and leaky ones removed, request ids, non-UTF-8 values,
//! local replies and host properties.

mod plugin_support;

use palisade_host_tests::wasm_host::{
    Callback, Failure, Host, HttpStream, KongVersion, Outcome, Plugin, Profile, Request, Response,
};
use plugin_support::{assert_pass_through, assert_rejected, exchange, load, request, PROFILES};

const NEUTRAL: &str = r#"{"security_headers":{"preset":"none","remove":[]},
    "request_id":{"generate":false,"echo":false},"trace_context":{"create":false}}"#;

#[test]
fn a_bad_header_name_is_refused_with_one_line() -> Result<(), Failure> {
    assert_rejected(
        Plugin::HeaderSecurity,
        r#"{"security_headers":{"remove":["Bad Name"]}}"#,
        r#"[palisade-header-security] configuration rejected: security_headers.remove[0]: "Bad Name" is not a lower-case HTTP header name"#,
    )
}

/// CORS entries that cannot match, or that would let any site send credentials, are refused
/// with the field named and why.
#[test]
fn cors_origins_that_never_match_or_grant_any_site_credentials_are_refused() -> Result<(), Failure>
{
    assert_rejected(
        Plugin::HeaderSecurity,
        r#"{"cors":{"allow_origins":[{"exact":"https://app.example.com:443"}]}}"#,
        r#"[palisade-header-security] configuration rejected: cors.allow_origins[0].exact: "https://app.example.com:443" can never match: browsers leave out the default port :443"#,
    )?;
    assert_rejected(
        Plugin::HeaderSecurity,
        r#"{"cors":{"allow_origins":[{"exact":"null"}],"allow_credentials":true}}"#,
        r#"[palisade-header-security] configuration rejected: cors.allow_credentials: cannot be true when the origin "null" is allowed: sandboxed iframes and files of any site send it"#,
    )
}

/// The refusal the client got: this status and exactly the kit's JSON body, whose request id
/// is the one echoed in `x-request-id` (Kong appends a newline to local response bodies,
/// ngx_http_wasm_local_response.c).
fn assert_refusal(stream: &HttpStream, profile: Profile, status: u16, error: &str) {
    assert_eq!(stream.response_status(), status, "{profile:?}");
    let client = stream.response_headers();
    assert_eq!(
        client.get("content-type"),
        Some("application/json"),
        "{profile:?}"
    );
    let id = client.get("x-request-id").unwrap_or("<none>");
    let mut expected = format!(r#"{{"error":"{error}","status":{status},"request_id":"{id}"}}"#);
    if profile.is_kong() {
        expected.push('\n');
    }
    assert_eq!(
        String::from_utf8_lossy(&stream.response_body()),
        expected,
        "{profile:?}"
    );
}

#[test]
fn with_every_feature_off_requests_pass_through_untouched() -> Result<(), Failure> {
    assert_pass_through(Plugin::HeaderSecurity, NEUTRAL)
}

#[test]
fn defaults_add_security_headers_remove_leaky_ones_and_keep_the_rest() -> Result<(), Failure> {
    let mut ids = Vec::new();
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::HeaderSecurity, "{}")?;
        let mut stream = vms.http_request(request())?;
        assert_eq!(stream.send_request_headers(false)?, Outcome::Continue);
        stream.send_request_body(plugin_support::REQUEST_BODY, true)?;
        let upstream = stream.upstream_request_headers();
        let id = upstream
            .get("x-request-id")
            .expect("a generated id")
            .to_owned();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "UUID v4: {id}");
        assert!(upstream.contains("traceparent"));
        let untouched = upstream.without("x-request-id").without("traceparent");
        assert_eq!(
            untouched,
            profile.request_map(request().headers()),
            "{profile:?}"
        );

        let upstream_response = Response::status(200)
            .header("content-type", "application/json")
            .header("server", "nginx/1.25")
            .header("x-powered-by", "Express")
            .header("x-upstream", "orders-7");
        stream.send_response_headers(upstream_response, false)?;
        stream.send_response_body("{}", true)?;
        let client = stream.response_headers();
        assert!(!client.contains("server"), "{profile:?}: {client:?}");
        assert!(!client.contains("x-powered-by"));
        for (name, value) in [
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains",
            ),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            (
                "content-security-policy",
                "default-src 'none'; frame-ancestors 'none'",
            ),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
            ("x-request-id", id.as_str()),
            ("content-type", "application/json"),
            ("x-upstream", "orders-7"),
        ] {
            assert_eq!(client.get(name), Some(value), "{profile:?}: {name}");
        }
        assert_eq!(stream.response_status(), 200);
        assert_eq!(stream.response_body(), b"{}");
        stream.finish()?;
        ids.push(id);
    }
    // The host's randomness is seeded: the same worker draws the same id under either profile.
    assert_eq!(ids[0], ids[1]);
    Ok(())
}

#[test]
fn non_utf8_header_values_pass_through_without_a_panic() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::HeaderSecurity, "{}")?;
        let mut stream =
            vms.http_request(Request::get("/").header("x-legacy", b"caf\xe9".as_slice()))?;
        stream.send_request_headers(true)?;
        assert_eq!(
            stream.upstream_request_headers().get_bytes("x-legacy"),
            Some(b"caf\xe9".as_slice())
        );
        let response = Response::status(200)
            .header("x-bin", b"\xff\xfe\x80".as_slice())
            .header("server", b"\xc3\x28".as_slice());
        assert_eq!(
            stream.send_response_headers(response, true)?,
            Outcome::Continue
        );
        let client = stream.response_headers();
        assert_eq!(
            client.get_bytes("x-bin"),
            Some(b"\xff\xfe\x80".as_slice()),
            "{profile:?}"
        );
        assert!(!client.contains("server"));
        stream.finish()?;
        let critical = vms.logs().into_iter().find(|e| e.message.contains("panic"));
        assert_eq!(critical, None, "{profile:?}");
    }
    Ok(())
}

#[test]
fn a_body_over_the_limit_gets_a_local_413_through_the_response_callbacks() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(
            profile,
            Plugin::HeaderSecurity,
            r#"{"limits":{"max_body_bytes":8}}"#,
        )?;
        // As palisade-auth sets it after this plugin's request headers: a refusal at the body
        // leaves it for palisade-audit's event.
        let mut stream =
            vms.http_request(Request::post("/upload").header("x-palisade-subject", "alice"))?;
        assert_eq!(stream.send_request_headers(false)?, Outcome::Continue);
        let Outcome::LocalReply(reply) = stream.send_request_body("0123456789", true)? else {
            panic!("{profile:?}: expected a local reply");
        };
        assert_eq!(reply.status, 413);
        assert_refusal(&stream, profile, 413, "request body too large");
        let client = stream.response_headers();
        assert_eq!(
            client.get("x-request-id").map(str::len),
            Some(36),
            "{profile:?}: the generated id"
        );
        assert_eq!(client.get("x-content-type-options"), Some("nosniff"));
        assert!(
            stream.upstream_request_body().is_empty(),
            "the body never left"
        );
        // Nor are they read or edited there (Envoy refuses request header edits by then).
        let at_body: Vec<_> = stream
            .host_calls()
            .into_iter()
            .filter(|(callback, _)| *callback == Callback::RequestBody)
            .map(|(_, call)| call)
            .collect();
        assert!(
            !at_body.iter().any(|call| call.contains("header_map")),
            "{profile:?}: {at_body:?}"
        );
        stream.finish()?;
    }
    Ok(())
}

/// nginx keeps `authorization` as a single field: on Kong an add to it, present or removed
/// earlier, does nothing though the host answers Ok (docs/kong-proxy-wasm.md, fact 19). A
/// rename into it must still land.
#[test]
fn a_rename_into_a_field_kong_keeps_single_lands() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(
            profile,
            Plugin::HeaderSecurity,
            r#"{"transforms":{"request":[{"rename":{"from":"x-token","to":"authorization"}}]}}"#,
        )?;
        let mut stream = vms.http_request(
            Request::get("/")
                .header("x-token", "Bearer t0k")
                .header("authorization", "Basic old"),
        )?;
        assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
        let upstream = stream.upstream_request_headers();
        assert_eq!(
            upstream.all("authorization"),
            [b"Bearer t0k".as_slice()],
            "{profile:?}"
        );
        assert!(!upstream.contains("x-token"), "{profile:?}");
        stream.send_response_headers(Response::status(200), true)?;
        stream.finish()?;
    }
    Ok(())
}

/// A request transform that renames reads the whole map: past what Kong can hand over whole
/// (it would write past its buffer), the request is refused with 431 rather than renamed from
/// an empty map.
#[test]
fn a_rename_past_what_kong_hands_over_whole_is_refused() -> Result<(), Failure> {
    let profile = Profile::Kong(KongVersion::V3_10);
    let (_host, vms) = load(
        profile,
        Plugin::HeaderSecurity,
        r#"{"transforms":{"request":[{"rename":{"from":"x-client-role","to":"x-untrusted-role"}}]}}"#,
    )?;
    let mut request = Request::get("/");
    for i in 0..100 {
        request = request.header(&format!("x-filler-{i}"), "1");
    }
    let mut stream = vms.http_request(request.header("x-client-role", "admin"))?;
    let Outcome::LocalReply(reply) = stream.send_request_headers(true)? else {
        panic!("expected a local reply");
    };
    assert_eq!(reply.status, 431);
    // The map unread, no request id is known to echo.
    assert_eq!(
        String::from_utf8_lossy(&stream.response_body()),
        "{\"error\":\"too many request headers\",\"status\":431,\"request_id\":null}\n"
    );
    assert!(!stream.reached_upstream());
    Ok(())
}

/// Kong hands a filter at most 100 header pairs (and cannot hand over a map near that whole): a
/// check that needs every header cannot pass a request at that cap, since the header it looks
/// for may be the 101st.
#[test]
fn a_check_of_every_header_refuses_a_map_kong_may_have_cut_short() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(
            profile,
            Plugin::HeaderSecurity,
            r#"{"limits":{"reject_control_characters":true}}"#,
        )?;
        let mut request = Request::get("/");
        for i in 0..100 {
            request = request.header(&format!("x-filler-{i}"), "1");
        }
        // An identity claimed past the cap, where the map Kong hands over cannot show it:
        // palisade-audit would read it by name for the refused request's event.
        let request = request
            .header("x-evil", b"a\x01b".as_slice())
            .header("x-palisade-subject", "admin");
        let mut stream = vms.http_request(request)?;
        let Outcome::LocalReply(reply) = stream.send_request_headers(true)? else {
            panic!("{profile:?}: expected a local reply");
        };
        assert!(
            !stream.request_headers().contains("x-palisade-subject"),
            "{profile:?}"
        );
        let (status, error) = if profile.is_kong() {
            (431, "too many request headers")
        } else {
            (400, "request header value has control characters")
        };
        assert_eq!(reply.status, status, "{profile:?}");
        if profile.is_kong() {
            // Not read at all (Kong would write past its buffer): no request id to echo.
            assert_eq!(
                String::from_utf8_lossy(&stream.response_body()),
                format!("{{\"error\":\"{error}\",\"status\":431,\"request_id\":null}}\n")
            );
        } else {
            assert_refusal(&stream, profile, status, error);
        }
        assert!(!stream.reached_upstream(), "{profile:?}");
        stream.finish()?;

        // Below the cap, Kong's map is whole and the check reads it.
        let mut stream = vms.http_request(Request::get("/").header("x-ok", "fine"))?;
        assert_eq!(
            stream.send_request_headers(true)?,
            Outcome::Continue,
            "{profile:?}"
        );
        stream.finish()?;
    }
    Ok(())
}

/// The client's Host is checked on both hosts, though Kong's `:authority` is its own server
/// name (`kong:8000`) and the client's Host its `host` header.
#[test]
fn allowed_hosts_check_the_host_the_client_asked_for() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(
            profile,
            Plugin::HeaderSecurity,
            r#"{"limits":{"allowed_hosts":["api.example.com"]}}"#,
        )?;
        let mut stream = vms.http_request(Request::get("/").authority("api.example.com"))?;
        assert_eq!(
            stream.send_request_headers(true)?,
            Outcome::Continue,
            "{profile:?}"
        );
        stream.finish()?;
        for refused in ["evil.example.com", "api.example.com:x"] {
            let mut stream = vms.http_request(Request::get("/").authority(refused))?;
            let Outcome::LocalReply(reply) = stream.send_request_headers(true)? else {
                panic!("{profile:?} {refused}: expected a local reply");
            };
            assert_eq!(reply.status, 403, "{profile:?} {refused}");
            assert_refusal(&stream, profile, 403, "host not allowed");
            assert!(!stream.reached_upstream(), "{profile:?} {refused}");
            stream.finish()?;
        }
    }
    Ok(())
}

#[test]
fn a_cors_preflight_is_answered_locally() -> Result<(), Failure> {
    let config = r#"{"cors":{"allow_origins":[{"exact":"https://app.example.com"}],"allow_methods":["GET","POST"]}}"#;
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::HeaderSecurity, config)?;
        let mut stream = vms.http_request(
            Request::new("OPTIONS", "/api/orders")
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "POST"),
        )?;
        let outcome = stream.send_request_headers(true)?;
        assert!(
            matches!(outcome, Outcome::LocalReply(ref r) if r.status == 204),
            "{profile:?}: {outcome:?}"
        );
        let client = stream.response_headers();
        assert_eq!(
            client.get("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            client.get("access-control-allow-methods"),
            Some("GET, POST")
        );
        assert!(!stream.reached_upstream(), "{profile:?}");
    }
    Ok(())
}

/// An upstream that answers CORS itself (Express's `cors({credentials: true})` reflects any
/// origin) cannot grant what the policy does not: credentials to an origin allowed without
/// them, or anything to an origin the policy refuses.
#[test]
fn the_upstreams_own_cors_headers_grant_nothing_the_policy_does_not() -> Result<(), Failure> {
    let config = r#"{"cors":{"allow_origins":[{"exact":"https://app.example.com"}]}}"#;
    for profile in PROFILES {
        let (_host, vms) = load(profile, Plugin::HeaderSecurity, config)?;
        for (origin, allowed) in [
            ("https://app.example.com", true),
            ("https://evil.com", false),
        ] {
            let mut stream = vms.http_request(Request::get("/me").header("origin", origin))?;
            assert_eq!(stream.send_request_headers(true)?, Outcome::Continue);
            stream.send_response_headers(
                Response::status(200)
                    .header("access-control-allow-origin", origin)
                    .header("access-control-allow-credentials", "true"),
                true,
            )?;
            let client = stream.response_headers();
            assert_eq!(
                client.get("access-control-allow-origin"),
                allowed.then_some(origin),
                "{profile:?} {origin}"
            );
            assert_eq!(
                client.get("access-control-allow-credentials"),
                None,
                "{profile:?} {origin}"
            );
            stream.finish()?;
        }
    }
    Ok(())
}

/// A method outside `allowed_methods` is refused 405 with `Allow` naming the allowed ones.
#[test]
fn a_method_not_allowed_gets_405_with_allow() -> Result<(), Failure> {
    for profile in PROFILES {
        let (_host, vms) = load(
            profile,
            Plugin::HeaderSecurity,
            r#"{"limits":{"allowed_methods":["GET","POST"]}}"#,
        )?;
        let mut stream =
            vms.http_request(Request::new("DELETE", "/orders/7").header("x-request-id", "del-1"))?;
        let Outcome::LocalReply(reply) = stream.send_request_headers(true)? else {
            panic!("{profile:?}: expected a local reply");
        };
        assert_eq!(reply.status, 405, "{profile:?}");
        assert_eq!(reply.headers.get("allow"), Some("GET, POST"), "{profile:?}");
        assert_eq!(stream.response_headers().get("x-request-id"), Some("del-1"));
        assert_refusal(&stream, profile, 405, "method not allowed");
        assert!(!stream.reached_upstream(), "{profile:?}");
        stream.finish()?;
    }
    Ok(())
}

#[test]
fn the_route_comes_from_each_hosts_own_property() -> Result<(), Failure> {
    let config = r#"{"transforms":{"request":[{"set":{"name":"x-route","value":"${route}"}}]},
        "request_id":{"generate":false},"trace_context":{"create":false}}"#;
    let route = |host: &Host, request: Request| -> Result<Option<String>, Failure> {
        let vms = host.load(Plugin::HeaderSecurity, config)?;
        let mut stream = vms.http_request(request)?;
        stream.send_request_headers(true)?;
        Ok(stream
            .upstream_request_headers()
            .get("x-route")
            .map(str::to_owned))
    };

    let envoy = Host::new(Profile::Envoy);
    envoy.set_property("xds.route_name", "orders");
    assert_eq!(route(&envoy, Request::get("/"))?, Some("orders".to_owned()));
    assert!(envoy.refused_properties().is_empty());

    // Kong 3.9+: only Kong's property is asked (asking Envoy's would log an error per request).
    // A route without a name answers for itself only: the next, named, route is read.
    let kong = Host::new(Profile::kong());
    let vms = kong.load(Plugin::HeaderSecurity, config)?;
    let mut unnamed = vms.http_request(Request::get("/"))?;
    unnamed.send_request_headers(true)?;
    assert_eq!(unnamed.upstream_request_headers().get("x-route"), Some(""));
    for _ in 0..2 {
        let mut stream =
            vms.http_request(Request::get("/").property("kong.route_name", "orders"))?;
        stream.send_request_headers(true)?;
        assert_eq!(
            stream.upstream_request_headers().get("x-route"),
            Some("orders")
        );
    }
    assert!(kong.refused_properties().is_empty());

    // Kong 3.8 has no route name (its `kong.version` says so): never asked, no error line.
    let kong = Host::new(Profile::Kong(KongVersion::V3_8));
    let vms = kong.load(Plugin::HeaderSecurity, config)?;
    for _ in 0..3 {
        let mut stream = vms.http_request(Request::get("/"))?;
        stream.send_request_headers(true)?;
        assert_eq!(stream.upstream_request_headers().get("x-route"), Some(""));
    }
    assert!(kong.refused_properties().is_empty());
    Ok(())
}

#[test]
fn exchange_helper_is_deterministic_in_fuel() -> Result<(), Failure> {
    let fuel = |profile| -> Result<u64, Failure> {
        let (_host, vms) = load(profile, Plugin::HeaderSecurity, "{}")?;
        Ok(exchange(&vms)?.fuel())
    };
    for profile in PROFILES {
        assert_eq!(fuel(profile)?, fuel(profile)?, "{profile:?}");
    }
    Ok(())
}
