//! Each plugin's Envoy build (`palisade::envoy_module`): the module without the stream callbacks
//! the plugin does nothing in, which Envoy then does not call (each call costs Envoy ~2,300
//! instructions, `just bench --instructions`). Every Envoy-profile test in host-tests and every
//! Envoy end-to-end test runs these builds; the Kong profile runs the modules as built. Here:
//! what each build leaves out and keeps, and that Kong, which calls every stream callback
//! without checking the module exports it, must never get one.

use palisade::envoy_module::OPTIONAL_CALLBACKS;
use palisade::plugins::ALL;
use palisade_host_tests::envoy_harness::{envoy_wasm_dir, wasm_dir};
use palisade_host_tests::wasm_host::{FailureKind, Host, Plugin, Profile, Request};

fn exports(module: &[u8]) -> Vec<String> {
    let engine = wasmtime::Engine::default();
    let module = wasmtime::Module::new(&engine, module).expect("the module compiles");
    module.exports().map(|e| e.name().to_owned()).collect()
}

#[test]
fn each_envoy_build_leaves_out_exactly_the_callbacks_its_plugin_does_nothing_in() {
    for plugin in &ALL {
        let built = exports(&std::fs::read(wasm_dir().join(plugin.wasm_file)).unwrap());
        let envoy = exports(&std::fs::read(envoy_wasm_dir().join(plugin.wasm_file)).unwrap());
        // The SDK exports every callback; the Envoy build drops the plugin's list, nothing else.
        for callback in OPTIONAL_CALLBACKS {
            assert!(
                built.iter().any(|e| e == callback),
                "{}: {callback}",
                plugin.name
            );
        }
        let mut expected: Vec<String> = built
            .iter()
            .filter(|e| !plugin.envoy_unused.contains(&e.as_str()))
            .cloned()
            .collect();
        expected.sort();
        let mut kept = envoy.clone();
        kept.sort();
        assert_eq!(kept, expected, "{}", plugin.name);
        for always in [
            "proxy_on_context_create",
            "proxy_on_request_headers",
            "proxy_on_delete",
            "proxy_on_http_call_response",
        ] {
            assert!(
                envoy.iter().any(|e| e == always),
                "{}: {always}",
                plugin.name
            );
        }
    }
    // The root context's on_done is audit's last chance to count unsent events: it stays.
    let audit = ALL.iter().find(|p| p.name == "audit").unwrap();
    assert!(!audit.envoy_unused.contains(&"proxy_on_done"));
}

/// A POST with a body, then the stream's end: every stream callback Kong makes. Returns the
/// first failure (a body refused after a local reply is not one).
fn post_through(plugin: Plugin, config: &str) -> Option<palisade_host_tests::wasm_host::Failure> {
    let vms = Host::new(Profile::kong())
        .load(plugin, config)
        .expect("the module loads in Kong: a crash comes with a request");
    let request = Request::new("POST", "/orders").header("authorization", "Bearer x");
    let mut stream = vms.http_request(request).expect("a stream");
    let sent = stream
        .send_request_headers(false)
        .and_then(|_| stream.send_request_body(b"{}", true));
    match sent {
        Err(failure) if failure.kind != FailureKind::Usage => Some(failure),
        _ => stream.finish().err(),
    }
}

#[test]
fn kong_would_crash_on_an_envoy_build_and_runs_the_module_as_built() {
    for plugin in &ALL {
        let envoy_build = Plugin::Wasm(envoy_wasm_dir().join(plugin.wasm_file));
        let failure = post_through(envoy_build, plugin.example_config).expect(plugin.name);
        assert_eq!(
            failure.kind,
            FailureKind::HostCrash,
            "{}: {failure}",
            plugin.name
        );
        let message = failure.to_string();
        assert!(
            plugin.envoy_unused.iter().any(|c| message.contains(c)),
            "{}: {message}",
            plugin.name
        );

        let as_built = Plugin::Wasm(wasm_dir().join(plugin.wasm_file));
        // The Kong build runs the whole stream in Kong: no crash, no trap, no failure at all.
        let failure = post_through(as_built, plugin.example_config);
        assert!(
            failure.is_none(),
            "{}: the as-built module failed in Kong: {:?}",
            plugin.name,
            failure.map(|f| (f.kind, f.message))
        );
    }
}
