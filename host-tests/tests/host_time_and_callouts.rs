//! Virtual time in the test host: ticks fired by clock advances, HTTP callouts answered after a
//! delay, failing or timing out (Envoy and each Kong behaviour), gRPC calls.

use std::time::Duration;

use palisade_host_tests::wasm_host::{
    CallState, CalloutReply, Failure, FailureKind, GrpcReply, Host, HttpStream, KongVersion,
    LogLevel, LogOrigin, Outcome, Plugin, PluginVms, Profile, Request, START_UNIX_SECS,
};

#[test]
fn clock_advances_fire_ticks_in_time_order_on_every_worker() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    let plugin = host.load_workers(Plugin::fixture("tick"), "", 2)?;
    host.advance_clock(Duration::from_millis(99))?;
    assert!(plugin.logs().is_empty(), "no tick before 100 ms");
    host.advance_clock(Duration::from_millis(251))?;
    let start = START_UNIX_SECS * 1_000_000_000;
    let expected: Vec<(usize, String)> = [100u64, 200, 300]
        .iter()
        .flat_map(|ms| {
            let nanos = start + ms * 1_000_000;
            [0, 1]
                .into_iter()
                .flat_map(move |w| [(w, format!("tick {nanos}")), (w, format!("wasi {nanos}"))])
        })
        .collect();
    let seen: Vec<(usize, String)> = plugin
        .logs()
        .into_iter()
        .map(|entry| (entry.worker, entry.message))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(host.elapsed(), Duration::from_millis(350));
    Ok(())
}

fn callout(profile: Profile) -> Result<(Host, PluginVms), Failure> {
    let host = Host::new(profile);
    let plugin = host.load(Plugin::fixture("callout"), "")?;
    Ok((host, plugin))
}

fn dispatch(plugin: &PluginVms, upstream: &str) -> Result<(HttpStream, Outcome), Failure> {
    let mut stream = plugin.http_request(Request::get("/orders").header("x-upstream", upstream))?;
    let outcome = stream.send_request_headers(true)?;
    Ok((stream, outcome))
}

#[test]
fn a_delayed_answer_resumes_the_request_at_its_time() -> Result<(), Failure> {
    let (host, plugin) = callout(Profile::Envoy)?;
    host.script_http_call(
        "authz",
        CalloutReply::status(200)
            .body("ok")
            .after(Duration::from_millis(50)),
    );
    let (stream, outcome) = dispatch(&plugin, "authz")?;
    assert_eq!(outcome, Outcome::Pause);
    let calls = host.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].upstream, "authz");
    assert_eq!(calls[0].headers.get(":path"), Some("/check"));
    assert_eq!(calls[0].timeout, Duration::from_millis(500));
    assert_eq!(calls[0].state, CallState::Pending);
    host.advance_clock(Duration::from_millis(49))?;
    assert_eq!(stream.outcome(), Outcome::Pause);
    host.advance_clock(Duration::from_millis(1))?;
    assert_eq!(stream.outcome(), Outcome::Continue);
    let upstream = stream.upstream_request_headers();
    assert_eq!(upstream.get("x-callout"), Some("200"));
    assert_eq!(upstream.get("x-callout-body"), Some("ok"));
    assert_eq!(
        upstream.get("x-effective"),
        Some("0"),
        "set_effective_context on the caller"
    );
    assert_eq!(host.http_calls()[0].state, CallState::Answered);
    Ok(())
}

#[test]
fn envoy_reports_failures_and_timeouts_as_empty_responses() -> Result<(), Failure> {
    let (host, plugin) = callout(Profile::Envoy)?;
    host.script_http_call("authz", CalloutReply::failure("connection reset"));
    host.script_http_call("authz", CalloutReply::never());
    let (failed, outcome) = dispatch(&plugin, "authz")?;
    assert_eq!(
        outcome,
        Outcome::Continue,
        "a failure at once is delivered before returning"
    );
    assert_eq!(
        failed.upstream_request_headers().get("x-callout"),
        Some("failed")
    );

    let (timed_out, outcome) = dispatch(&plugin, "authz")?;
    assert_eq!(outcome, Outcome::Pause);
    host.advance_clock(Duration::from_millis(499))?;
    assert_eq!(timed_out.outcome(), Outcome::Pause);
    host.advance_clock(Duration::from_millis(1))?;
    assert_eq!(timed_out.outcome(), Outcome::Continue);
    assert_eq!(
        timed_out.upstream_request_headers().get("x-callout"),
        Some("failed")
    );
    let states: Vec<CallState> = host.http_calls().into_iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            CallState::Failed("connection reset".to_owned()),
            CallState::TimedOut
        ]
    );
    Ok(())
}

#[test]
fn a_test_can_answer_a_pending_call_itself() -> Result<(), Failure> {
    let (host, plugin) = callout(Profile::Envoy)?;
    host.add_cluster("authz");
    let (stream, outcome) = dispatch(&plugin, "authz")?;
    assert_eq!(outcome, Outcome::Pause);
    host.advance_clock(Duration::from_millis(10))?;
    let token = host.http_calls()[0].token;
    host.answer_http_call(token, CalloutReply::status(204))?;
    assert_eq!(
        stream.upstream_request_headers().get("x-callout"),
        Some("204")
    );
    assert!(host
        .answer_http_call(token, CalloutReply::status(200))
        .is_err());
    Ok(())
}

#[test]
fn envoy_refuses_unknown_clusters() -> Result<(), Failure> {
    let (host, plugin) = callout(Profile::Envoy)?;
    let (stream, outcome) = dispatch(&plugin, "nowhere")?;
    assert_eq!(outcome, Outcome::Continue);
    assert_eq!(
        stream.upstream_request_headers().get("x-dispatch-status"),
        Some("2")
    );
    assert!(host.http_calls().is_empty());
    Ok(())
}

#[test]
fn kong_3_9_calls_back_a_timeout_with_its_dispatch_status() -> Result<(), Failure> {
    let (host, plugin) = callout(Profile::Kong(KongVersion::V3_9))?;
    let (stream, outcome) = dispatch(&plugin, "127.0.0.1:8080")?;
    assert_eq!(outcome, Outcome::Pause);
    host.advance_clock(Duration::from_millis(500))?;
    assert_eq!(stream.outcome(), Outcome::Continue);
    assert_eq!(
        stream.upstream_request_headers().get("x-callout"),
        Some("timeout")
    );
    Ok(())
}

#[test]
fn kong_3_8_logs_a_failed_dispatch_and_resumes_without_a_callback() -> Result<(), Failure> {
    let (host, plugin) = callout(Profile::Kong(KongVersion::V3_8))?;
    let (stream, _) = dispatch(&plugin, "127.0.0.1:8080")?;
    host.advance_clock(Duration::from_millis(500))?;
    assert_eq!(stream.outcome(), Outcome::Continue);
    assert_eq!(stream.upstream_request_headers().get("x-callout"), None);
    assert!(host.logs().iter().any(|e| e.origin == LogOrigin::Host
        && e.level == LogLevel::Error
        && e.message == "dispatch failed: timeout"));
    Ok(())
}

#[test]
fn kong_answers_host_addresses_and_traps_on_cluster_names() -> Result<(), Failure> {
    let (host, plugin) = callout(Profile::kong())?;
    host.script_http_call("authz.internal:8443", CalloutReply::status(200));
    let (stream, _) = dispatch(&plugin, "authz.internal:8443")?;
    assert_eq!(
        stream.upstream_request_headers().get("x-callout"),
        Some("200")
    );

    let err = dispatch(&plugin, "outbound|8080||authz.default.svc.cluster.local")
        .err()
        .unwrap();
    assert_eq!(err.kind, FailureKind::Trap);
    assert!(err.message.contains("not to an Envoy cluster"), "{err}");
    Ok(())
}

fn grpc(host: &Host) -> Result<(HttpStream, Outcome), Failure> {
    let plugin = host.load(Plugin::fixture("grpc"), "")?;
    let mut stream = plugin.http_request(Request::post("/"))?;
    let outcome = stream.send_request_headers(true)?;
    Ok((stream, outcome))
}

#[test]
fn grpc_calls_get_their_scripted_message_status_or_deadline() -> Result<(), Failure> {
    let host = Host::new(Profile::Envoy);
    host.script_grpc_call(
        "grpc-svc",
        GrpcReply::message("pong").after(Duration::from_millis(5)),
    );
    host.script_grpc_call("grpc-svc", GrpcReply::status(7, "denied"));
    host.script_grpc_call("grpc-svc", GrpcReply::never());

    let (answered, outcome) = grpc(&host)?;
    assert_eq!(outcome, Outcome::Pause);
    host.advance_clock(Duration::from_millis(5))?;
    assert_eq!(
        answered.upstream_request_headers().get("x-grpc-reply"),
        Some("pong")
    );
    let call = &host.grpc_calls()[0];
    assert_eq!(
        (call.service.as_str(), call.method.as_str()),
        ("pkg.Checker", "Check")
    );
    assert_eq!(call.message, b"ping");

    let (denied, _) = grpc(&host)?;
    assert_eq!(
        denied.upstream_request_headers().get("x-grpc-status"),
        Some("7")
    );

    let (deadline, _) = grpc(&host)?;
    host.advance_clock(Duration::from_secs(1))?;
    assert_eq!(
        deadline.upstream_request_headers().get("x-grpc-status"),
        Some("4")
    );
    Ok(())
}

#[test]
fn kong_does_not_implement_grpc() {
    let host = Host::new(Profile::kong());
    host.script_grpc_call("grpc-svc", GrpcReply::message("pong"));
    let err = grpc(&host).err().unwrap();
    assert_eq!(err.kind, FailureKind::Refused);
    assert!(
        err.message
            .contains("proxy_grpc_call is not implemented by ngx_wasm_module (docs/PROXY_WASM.md"),
        "{err}"
    );
}
