//! A Wasm VM that traps is dead for good in Envoy unless its filter says `failure_policy:
//! FAIL_RELOAD`: these tests show both, with a fixture module that traps on demand, so the
//! failure-policy advice in SECURITY.md and the Istio manifests rests on Envoy's real behaviour.

use std::path::Path;
use std::time::Duration;

use palisade::envoy;
use palisade_host_tests::envoy_harness::EnvoyTest;
use serde_json::{json, Value};

/// A filter that marks every response with `x-fixture: ran`, except that a request with an
/// `x-trap` header makes it log and execute `unreachable`, as a panicking Rust plugin does after
/// its panic hook.
const TRAP_ON_HEADER: &str = r#"(module
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 1024) "x-trap")
  (data (i32.const 1040) "[trap-fixture] trapping as asked")
  (data (i32.const 1088) "x-fixture")
  (data (i32.const 1104) "ran")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $ptr) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $ptr))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (i32.eqz (call $get_header (i32.const 0) (i32.const 1024) (i32.const 6) (i32.const 16) (i32.const 20)))
      (then (drop (call $log (i32.const 4) (i32.const 1040) (i32.const 32))) (unreachable)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 1088) (i32.const 9) (i32.const 1104) (i32.const 3)))
    (i32.const 0)))"#;

/// The fixture as an Envoy Wasm filter with this failure policy.
fn trap_filter(dir: &Path, failure_policy: &str) -> Value {
    let wasm = dir.join("trap_on_header.wasm");
    std::fs::write(&wasm, wat::parse_str(TRAP_ON_HEADER).unwrap()).unwrap();
    let mut typed_config = envoy::wasm_filter_config("trap-fixture", &wasm, "");
    typed_config["config"]["failure_policy"] = json!(failure_policy);
    if failure_policy == "FAIL_RELOAD" {
        typed_config["config"]["reload_config"] =
            json!({"backoff": {"base_interval": "0.05s", "max_interval": "0.1s"}});
    }
    json!({"name": "trap-fixture", "typed_config": typed_config})
}

/// Starts Envoy with the fixture, checks it runs, then makes one request trap it. Returns the
/// Envoy and what the trapping request got. The harness's client keeps one connection open, so
/// every request lands on the worker whose VM trapped.
fn trap_once(failure_policy: &str) -> (EnvoyTest, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let test = EnvoyTest::start_with_native(
        vec![],
        vec![trap_filter(dir.path(), failure_policy)],
        json!({}),
    );
    let before = test.get("/before", &[]);
    assert_eq!(before.status, 200);
    assert_eq!(before.header("x-fixture"), Some("ran"));

    let trapped = test.get("/trap", &[("x-trap", "1")]);
    assert_eq!(trapped.status, 503, "{failure_policy}");
    assert_eq!(trapped.body, "", "{failure_policy}");
    assert_eq!(test.log_lines("[trap-fixture] trapping as asked").len(), 1);
    assert_eq!(
        test.log_lines(
            "Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
        )
        .len(),
        1,
        "{failure_policy}"
    );
    (test, dir)
}

/// The fixture's line of Envoy's admin stats, e.g. `vm_reload_success`.
fn stat(test: &EnvoyTest, name: &str) -> Option<u64> {
    let prefix = format!("wasm.trap-fixture.{name}: ");
    test.envoy
        .stats()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
}

#[test]
fn fail_closed_keeps_a_trapped_vm_dead_for_every_later_request() {
    let (test, _dir) = trap_once("FAIL_CLOSED");
    for _ in 0..10 {
        let after = test.get("/after", &[]);
        assert_eq!(after.status, 503);
        assert_eq!(after.header("x-fixture"), None);
    }
    assert_eq!(
        test.upstream.seen().len(),
        1,
        "only the request before the trap went up"
    );
}

#[test]
fn fail_open_lets_traffic_bypass_a_trapped_vm() {
    // Why auth and rate-limit never run FAIL_OPEN: after one trap the filter is skipped.
    let (test, _dir) = trap_once("FAIL_OPEN");
    for _ in 0..10 {
        let after = test.get("/after", &[]);
        assert_eq!(after.status, 200);
        assert_eq!(after.header("x-fixture"), None, "the filter no longer runs");
    }
}

#[test]
fn fail_reload_brings_a_trapped_vm_back_for_the_next_requests() {
    let (test, _dir) = trap_once("FAIL_RELOAD");
    std::thread::sleep(Duration::from_millis(200)); // past the 50 ms reload backoff
    for _ in 0..10 {
        let after = test.get("/after", &[]);
        assert_eq!(after.status, 200);
        assert_eq!(
            after.header("x-fixture"),
            Some("ran"),
            "the reloaded filter runs"
        );
    }
    assert_eq!(stat(&test, "vm_reload_success"), Some(1));
    assert_eq!(stat(&test, "vm_reload_failure"), Some(0));
}
