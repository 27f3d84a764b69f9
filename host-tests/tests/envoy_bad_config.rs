//! A bad config is refused by every plugin with one log line naming the field; nothing of it
//! applies, and traffic fails closed.

use std::time::Duration;

use palisade::envoy::{EnvoyError, Filter};
use palisade::plugins::{self, PluginInfo};
use palisade_host_tests::envoy_harness::{eventually, EnvoyTest};

/// For each plugin: a config it must refuse, and the exact reason it logs.
fn bad_configs() -> Vec<(&'static PluginInfo, &'static str, &'static str)> {
    let p = |name| plugins::find(name).unwrap();
    vec![
        (
            p("auth"),
            r#"{"providers":[{"name":"idp","issuer":"","algorithms":["RS256"]}]}"#,
            "providers[0].issuer: must not be empty; providers[0].jwks: is required for RS*, PS*, ES* and EdDSA",
        ),
        (
            p("rate-limit"),
            r#"{"limits":[{"name":"per-consumer","rate":0,"period":"1s","key":["consumer"]}]}"#,
            "limits[0].rate: must be at least 1",
        ),
        (
            p("resilience"),
            r#"{"retry":{"max_retries":11}}"#,
            "retry.max_retries: must be at most 10",
        ),
        (
            p("header-security"),
            r#"{"security_headers":{"preset":"paranoid"}}"#,
            "security_headers.preset: unknown variant, expected one of `api`, `strict`, `none`",
        ),
        (
            p("audit"),
            r#"{"batch":{"max_event":5}}"#,
            "batch.max_event: unknown field `max_event`, expected one of `max_events`, `max_interval`, `max_buffered_events`, `max_buffered_bytes`",
        ),
        (p("audit"), "{not json", ".: key must be a string at line 1 column 2"),
        (p("rate-limit"), "[]", ".: the configuration must be a JSON object"),
        // serde_json alone would read this limit field by field; the schema refuses it.
        (
            p("rate-limit"),
            r#"{"limits":[["per-consumer",10,"1s",0,["consumer"]]]}"#,
            "limits[0]: invalid type: sequence, expected struct Limit",
        ),
    ]
}

fn rejection(plugin: &PluginInfo, reason: &str) -> String {
    // Envoy prefixes plugin logs with "wasm log <plugin name> <vm id>:".
    format!(
        "wasm log {0} {0}: [{0}] configuration rejected: {reason}",
        plugin.full_name
    )
}

#[test]
fn a_static_bad_config_stops_envoy_from_starting() {
    for (plugin, config, reason) in bad_configs() {
        match EnvoyTest::try_start(vec![Filter::new(plugin, config)]) {
            Err(EnvoyError::Exited { status, log }) => {
                assert!(!status.success(), "{}", plugin.name);
                let expected = rejection(plugin, reason);
                let lines: Vec<_> = log
                    .lines()
                    .filter(|l| l.contains("configuration rejected"))
                    .collect();
                assert_eq!(lines.len(), 1, "{}: {lines:?}", plugin.name);
                assert!(
                    lines[0].ends_with(&expected),
                    "{}:\n{}\nwanted: {expected}",
                    plugin.name,
                    lines[0]
                );
                assert!(log.contains(&format!(
                    "Unable to create Wasm plugin {}",
                    plugin.full_name
                )));
            }
            Err(other) => panic!("{}: unexpected error {other}", plugin.name),
            Ok(_) => panic!("{}: Envoy started with a bad config", plugin.name),
        }
    }
}

#[test]
fn a_discovered_bad_config_fails_requests_closed() {
    for (plugin, config, reason) in bad_configs() {
        // Delivered like an Istio WasmPlugin (ECDS): Envoy runs, the plugin's filter has no
        // config. A good filter in front proves the listener itself works: header-security,
        // whose headers show on the refusal, or (when it is the one refused) resilience.
        let front = if plugin.name == "header-security" {
            "resilience"
        } else {
            "header-security"
        };
        let test = EnvoyTest::start(vec![
            Filter::new(plugins::find(front).unwrap(), "{}").discovered(),
            Filter::new(plugin, config).discovered(),
        ]);
        let expected = rejection(plugin, reason);
        assert!(
            test.wait_for_log(&expected, Duration::from_secs(10)),
            "{}: no {expected:?}",
            plugin.name
        );
        for _ in 0..4 {
            let reply = test.get("/private", &[]);
            assert_eq!(reply.status, 500, "{}: {}", plugin.name, reply.body);
            if front == "header-security" {
                // It ran on the way out: the listener is up, only the bad filter refused.
                assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
            }
        }
        assert!(
            test.upstream.seen().is_empty(),
            "{}: a request reached the upstream",
            plugin.name
        );
        let rejected = test.log_lines("configuration rejected");
        assert!(
            rejected.iter().all(|l| l.ends_with(&expected)),
            "{}: {rejected:?}",
            plugin.name
        );
        assert!(!test
            .log_lines("Filesystem config update rejected")
            .is_empty());
    }
}

#[test]
fn a_bad_config_after_a_good_one_keeps_the_good_one_and_the_next_good_one_applies() {
    // What happens when an operator edits a WasmPlugin: good, then a typo, then fixed. Envoy
    // keeps the last accepted config through the refused one, and the VM that refused it is
    // not poisoned: the next good config takes over.
    let hs = plugins::find("header-security").unwrap();
    let with_marker = |value: &str| {
        format!(
            r#"{{"security_headers":{{"preset":"none","headers":{{"x-config-version":"{value}"}}}}}}"#
        )
    };
    let test = EnvoyTest::start(vec![Filter::new(hs, with_marker("1")).discovered()]);
    let version = |test: &EnvoyTest| {
        let reply = test.get("/", &[]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.header("x-config-version").map(str::to_owned)
    };
    assert_eq!(version(&test).as_deref(), Some("1"));

    test.push_discovered(
        &Filter::new(hs, r#"{"security_headers":{"preset":"paranoid"}}"#).discovered(),
    );
    let expected = rejection(
        hs,
        "security_headers.preset: unknown variant, expected one of `api`, `strict`, `none`",
    );
    assert!(
        test.wait_for_log(&expected, Duration::from_secs(10)),
        "no {expected:?}"
    );
    assert!(test.wait_for_log("Filesystem config update rejected", Duration::from_secs(10)));
    for _ in 0..4 {
        assert_eq!(
            version(&test).as_deref(),
            Some("1"),
            "the good config stays"
        );
    }

    test.push_discovered(&Filter::new(hs, with_marker("2")).discovered());
    eventually(Duration::from_secs(10), "the fixed config applying", || {
        version(&test).as_deref() == Some("2")
    });
    for _ in 0..4 {
        assert_eq!(version(&test).as_deref(), Some("2"));
    }
    assert_eq!(test.log_lines("configuration rejected").len(), 1);
}
