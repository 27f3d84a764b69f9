//! Every plugin loads in real Envoy (V8, 2 workers) and passes traffic; all five chain.

use std::time::Duration;

use palisade::envoy::Filter;
use palisade::plugins::{self, ALL};
use palisade_host_tests::envoy_harness::{EnvoyTest, WORKERS};

/// Requests on fresh connections, so both workers serve some.
const REQUESTS: usize = 8;

#[test]
fn each_plugin_but_header_security_and_auth_passes_requests_and_responses_untouched() {
    // header-security edits responses; auth refuses the test's made-up bearer token.
    for plugin in ALL
        .iter()
        .filter(|p| p.name != "header-security" && p.name != "auth")
    {
        let test = EnvoyTest::start(vec![Filter::new(plugin, plugin.example_config)]);
        for i in 0..REQUESTS {
            let path = format!("/orders/{i}?page=2");
            let reply = test.get(
                &path,
                &[("x-tenant", "acme"), ("authorization", "Bearer abc")],
            );
            assert_eq!(reply.status, 200, "{}: {}", plugin.name, reply.body);
            // The upstream's own headers reach the client: nothing was changed on the way back.
            assert_eq!(
                reply.header("server"),
                Some("demo-upstream/1.0"),
                "{}",
                plugin.name
            );
            assert_eq!(
                reply.header("x-powered-by"),
                Some("palisade-demo"),
                "{}",
                plugin.name
            );
        }
        let seen = test.upstream.seen();
        assert_eq!(seen.len(), REQUESTS, "{}", plugin.name);
        for (i, request) in seen.iter().enumerate() {
            assert_eq!(
                request.path,
                format!("/orders/{i}?page=2"),
                "{}",
                plugin.name
            );
            assert_eq!(request.header("x-tenant"), Some("acme"), "{}", plugin.name);
            assert_eq!(
                request.header("authorization"),
                Some("Bearer abc"),
                "{}",
                plugin.name
            );
        }
        // Configured once in the main thread and once per worker, never refused.
        let accepted = test.log_lines(&format!("[{}] configuration accepted", plugin.full_name));
        assert!(
            accepted.len() > WORKERS as usize,
            "{}: {accepted:?}",
            plugin.name
        );
        assert!(test.log_lines("configuration rejected").is_empty());
        assert!(test.log_lines("panic").is_empty(), "{}", test.envoy.log());
    }
}

/// The demo's chain (`palisade run`): the examples, auth letting anonymous requests through.
#[test]
fn all_five_plugins_chain_in_one_envoy() {
    let test = EnvoyTest::start(
        ALL.iter()
            .map(|plugin| Filter::new(plugin, plugin.demo_config()))
            .collect(),
    );
    for _ in 0..REQUESTS {
        let reply = test.get("/hello", &[("x-request-id", "req-1")]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(reply.header("server"), None);
        let echoed: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(echoed["path"], "/hello");
    }
    assert_eq!(test.upstream.seen().len(), REQUESTS);
    for plugin in &ALL {
        assert!(
            test.wait_for_log(
                &format!("[{}] version 0.1.0", plugin.full_name),
                Duration::from_secs(5)
            ),
            "{} never logged its start",
            plugin.full_name
        );
    }
    // Envoy counted the requests as served by the listener, none failed.
    let stats = test.envoy.stats();
    assert!(
        stats
            .lines()
            .any(|l| l == format!("http.palisade.downstream_rq_2xx: {REQUESTS}")),
        "{stats}"
    );
    assert!(plugins::find("auth").is_some());
}
