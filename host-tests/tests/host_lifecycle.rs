//! The test host's module and stream lifecycle: `_initialize` restrictions, traps and panics,
//! missing builds, imports and host calls a profile lacks, properties, pauses and buffering.

use palisade_host_tests::wasm_host::{
    workspace_root, Failure, FailureKind, Headers, Host, KongVersion, LogLevel, LogOrigin, Outcome,
    Plugin, Profile, Request, Response,
};

#[test]
fn host_calls_during_initialize_are_refused_like_envoy_does() {
    let err = Host::new(Profile::Envoy)
        .load(Plugin::fixture("init_restricted"), "")
        .err()
        .unwrap();
    assert_eq!(err.kind, FailureKind::Restricted);
    assert!(
        err.message
            .contains("host call proxy_get_current_time_nanoseconds during _initialize"),
        "{err}"
    );
}

#[test]
fn logging_and_stdout_during_initialize_are_allowed() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let plugin = host.load(Plugin::fixture("init_log"), "")?;
    assert_eq!(plugin.worker(0).stdout(), "initialising");
    assert_eq!(plugin.logs()[0].message, "initialising");
    Ok(())
}

#[test]
fn a_plugin_panic_fails_with_its_message_and_kills_the_vm() -> Result<(), Failure> {
    let plugin = Host::new(Profile::Envoy).load(Plugin::fixture("panic"), "")?;
    let mut stream = plugin.http_request(Request::get("/"))?;
    let err = stream.send_request_headers(true).unwrap_err();
    assert_eq!(err.kind, FailureKind::Trap);
    assert!(
        err.message
            .contains("proxy_on_request_headers trapped: [fixture] panic, this worker's VM stops: boom at src/filter.rs:7:9"),
        "{err}"
    );
    let again = plugin.http_request(Request::get("/")).err().unwrap();
    assert!(
        again.message.contains("dead after an earlier failure"),
        "{again}"
    );
    Ok(())
}

#[test]
fn a_missing_build_says_how_to_make_it() {
    let path = workspace_root().join("target/wasm32-wasip1/release/palisade_nothing.wasm");
    let err = Host::new(Profile::Envoy)
        .load(Plugin::Wasm(path), "")
        .err()
        .unwrap();
    assert_eq!(err.kind, FailureKind::MissingWasm);
    assert!(err.message.contains("run `just build` first"), "{err}");
}

#[test]
fn kong_does_not_load_modules_importing_functions_it_lacks() -> Result<(), Failure> {
    let wat = r#"(module
        (import "env" "proxy_get_header_map_size" (func (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "proxy_abi_version_0_2_1")))"#;
    Host::new(Profile::Envoy).load(Plugin::Wat(wat.to_owned()), "")?;
    let err = Host::new(Profile::kong())
        .load(Plugin::Wat(wat.to_owned()), "")
        .err()
        .unwrap();
    assert_eq!(err.kind, FailureKind::Load);
    assert!(
        err.message.contains("env.proxy_get_header_map_size"),
        "{err}"
    );
    assert!(err.message.contains("missing host function"), "{err}");
    Ok(())
}

#[test]
fn kong_fails_host_calls_ngx_wasm_module_does_not_implement() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let plugin = host.load(Plugin::fixture("host_calls"), "")?;
    let mut stream = plugin.http_request(Request::get("/"))?;
    stream.send_request_headers(true)?;
    assert_eq!(
        stream.upstream_request_headers().get("x-log-level"),
        Some("2")
    );
    stream.send_response_headers(Response::status(200), true)?;
    assert_eq!(plugin.logs().last().unwrap().message, "done 1", "NotFound");

    let plugin = Host::new(Profile::kong()).load(Plugin::fixture("host_calls"), "")?;
    let mut stream = plugin.http_request(Request::get("/"))?;
    let err = stream.send_request_headers(true).unwrap_err();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(
        err.message.contains(
            "kong profile (Kong 3.10): proxy_get_log_level is not implemented by ngx_wasm_module (docs/PROXY_WASM.md"
        ),
        "{err}"
    );
    Ok(())
}

/// The property the properties fixture read: status and value.
fn property(host: &Host, request: Request, path: &str) -> Result<(u32, Option<Vec<u8>>), Failure> {
    let plugin = host.load(Plugin::fixture("properties"), "")?;
    let mut stream = plugin.http_request(request.header("x-property", path))?;
    stream.send_request_headers(true)?;
    let seen = stream.upstream_request_headers();
    Ok((
        seen.get("x-property-status").unwrap().parse().unwrap(),
        seen.get_bytes("x-property-value").map(<[u8]>::to_vec),
    ))
}

#[test]
fn properties_come_from_the_request_the_host_and_the_profile() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    host.set_property("xds.route_name", "orders");
    let request = || Request::get("/orders?id=7").header("x-tenant", "acme");
    let found = |value: &str| (0, Some(value.as_bytes().to_vec()));
    assert_eq!(
        property(&host, request(), "request.path")?,
        found("/orders?id=7")
    );
    assert_eq!(
        property(&host, request(), "request.url_path")?,
        found("/orders")
    );
    assert_eq!(property(&host, request(), "request.method")?, found("GET"));
    assert_eq!(
        property(&host, request(), "request.headers.x-tenant")?,
        found("acme")
    );
    assert_eq!(
        property(&host, request(), "source.address")?,
        found("10.0.0.1:40000")
    );
    assert_eq!(
        property(&host, request(), "xds.route_name")?,
        found("orders")
    );
    assert_eq!(
        property(&host, request(), "plugin_name")?,
        found("fixture_properties")
    );
    assert_eq!(
        property(
            &host,
            request().tls_peer("spiffe://acme/ns/a/sa/b", "CN=b"),
            "connection.uri_san_peer_certificate"
        )?,
        found("spiffe://acme/ns/a/sa/b")
    );
    assert_eq!(
        property(
            &host,
            request().property("source.address", "192.0.2.9:1234"),
            "source.address"
        )?,
        found("192.0.2.9:1234")
    );
    assert_eq!(property(&host, request(), "cluster_name")?, (1, None));
    assert!(host.refused_properties().is_empty());
    Ok(())
}

#[test]
fn kong_answers_not_found_for_properties_it_lacks_and_records_them() -> Result<(), Failure> {
    let host = Host::new(Profile::Kong(KongVersion::V3_9));
    host.set_property("xds.route_name", "orders");
    let request = || Request::get("/orders").property("kong.route_name", "orders-route");
    assert_eq!(property(&host, request(), "xds.route_name")?, (1, None));
    assert_eq!(
        property(&host, request(), "kong.route_name")?,
        (0, Some(b"orders-route".to_vec()))
    );
    assert_eq!(
        property(&host, request(), "source.address")?,
        (0, Some(b"10.0.0.1".to_vec()))
    );
    assert_eq!(
        property(
            &host,
            request().tls_peer("spiffe://a", "CN=a"),
            "connection.uri_san_peer_certificate"
        )?,
        (1, None)
    );
    let refused: Vec<(String, String)> = host
        .refused_properties()
        .into_iter()
        .map(|r| (r.path, r.log))
        .collect();
    assert_eq!(
        refused,
        [
            (
                "xds.route_name".to_owned(),
                "\"xds.route_name\" property not supported".to_owned()
            ),
            (
                "connection.uri_san_peer_certificate".to_owned(),
                "NYI - \"connection.uri_san_peer_certificate\" property".to_owned()
            ),
        ]
    );
    // kong.route_name is a 3.9 getter.
    let old = Host::new(Profile::Kong(KongVersion::V3_8));
    assert_eq!(property(&old, request(), "kong.route_name")?, (1, None));
    Ok(())
}

#[test]
fn a_paused_body_keeps_buffering_until_the_plugin_continues() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let plugin = host.load(Plugin::fixture("pause"), "")?;
    let mut stream = plugin.http_request(Request::post("/upload"))?;
    assert_eq!(stream.send_request_headers(false)?, Outcome::Continue);
    assert_eq!(stream.send_request_body("ab", false)?, Outcome::Pause);
    assert_eq!(stream.send_request_body("cd", false)?, Outcome::Pause);
    assert!(stream.upstream_request_body().is_empty());
    assert_eq!(stream.send_request_body("ef", true)?, Outcome::Continue);
    assert_eq!(stream.upstream_request_body(), b"abcdef");
    let seen: Vec<String> = plugin.logs().into_iter().map(|e| e.message).collect();
    assert_eq!(seen, ["ab", "abcd", "abcdef"]);
    Ok(())
}

/// Kong reads the whole request body before a filter sees it: one `on_request_body`, with the
/// full size and end of stream.
#[test]
fn kong_hands_the_body_over_once_whole() -> Result<(), Failure> {
    let host = Host::new(Profile::kong());
    let plugin = host.load(Plugin::fixture("pause"), "")?;
    let mut stream = plugin.http_request(Request::post("/upload"))?;
    assert_eq!(stream.send_request_headers(false)?, Outcome::Continue);
    stream.send_request_body("ab", false)?;
    stream.send_request_body("cd", false)?;
    assert!(stream.upstream_request_body().is_empty());
    assert!(plugin.logs().is_empty());
    assert_eq!(stream.send_request_body("ef", true)?, Outcome::Continue);
    assert_eq!(stream.upstream_request_body(), b"abcdef");
    let seen: Vec<String> = plugin.logs().into_iter().map(|e| e.message).collect();
    assert_eq!(seen, ["abcdef"]);
    Ok(())
}

#[test]
fn trailers_reach_the_plugin_on_envoy_only() -> Result<(), Failure> {
    for (profile, called) in [(Profile::Envoy, true), (Profile::kong(), false)] {
        let host = Host::new(profile);
        let plugin = host.load(Plugin::fixture("pause"), "")?;
        let mut stream = plugin.http_request(Request::post("/"))?;
        stream.send_request_headers(false)?;
        let trailers = Headers::new().with("grpc-status", "0");
        assert_eq!(
            stream.send_request_trailers(trailers.clone())?,
            Outcome::Continue
        );
        assert_eq!(stream.upstream_request_trailers(), Some(trailers));
        let logged = plugin
            .logs()
            .iter()
            .any(|e| e.message == "request trailers");
        assert_eq!(logged, called, "{profile:?}");
    }
    Ok(())
}

#[test]
fn pausing_response_headers_waits_on_envoy_and_depends_on_the_kong_version() -> Result<(), Failure>
{
    let paused = || Request::get("/").header("x-pause-response", "1");
    let upstream = || Response::status(200).header("server", "upstream");

    let envoy = Host::new(Profile::Envoy).load(Plugin::fixture("pause"), "")?;
    let mut stream = envoy.http_request(paused())?;
    stream.send_request_headers(true)?;
    assert_eq!(
        stream.send_response_headers(upstream(), true)?,
        Outcome::Pause
    );

    let host = Host::new(Profile::Kong(KongVersion::V3_6));
    let kong_3_6 = host.load(Plugin::fixture("pause"), "")?;
    let mut stream = kong_3_6.http_request(paused())?;
    stream.send_request_headers(true)?;
    stream.send_response_headers(upstream(), true)?;
    assert_eq!(stream.response_status(), 500);
    assert!(host.logs().iter().any(|e| e.origin == LogOrigin::Host
        && e.message == "bad \"on_response_headers\" return action: \"PAUSE\""));

    let host = Host::new(Profile::Kong(KongVersion::V3_7));
    let kong_3_7 = host.load(Plugin::fixture("pause"), "")?;
    let mut stream = kong_3_7.http_request(paused())?;
    stream.send_request_headers(true)?;
    assert_eq!(
        stream.send_response_headers(upstream(), true)?,
        Outcome::Continue
    );
    assert_eq!(stream.response_status(), 200);
    assert!(host.logs().iter().any(|e| e.level == LogLevel::Warn
        && e.message
            .contains("local response expected but none produced")));
    Ok(())
}

#[test]
fn fuel_is_metered_per_callback() -> Result<(), Failure> {
    let plugin = Host::new(Profile::Envoy).load(Plugin::fixture("pause"), "")?;
    let mut stream = plugin.http_request(Request::post("/"))?;
    stream.send_request_headers(false)?;
    stream.send_request_body("abc", true)?;
    stream.finish()?;
    let by_callback = stream.fuel_by_callback();
    let body = by_callback
        .iter()
        .find(|(callback, _)| callback.export() == "proxy_on_request_body")
        .map(|(_, fuel)| *fuel)
        .unwrap();
    assert!(body > 0);
    assert_eq!(
        stream.fuel(),
        by_callback.iter().map(|(_, f)| f).sum::<u64>()
    );
    Ok(())
}
