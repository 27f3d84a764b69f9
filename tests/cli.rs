//! The `palisade` binary as an operator runs it.

// Tests fail by panicking; clippy.toml allows that only inside #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn palisade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
        .expect("palisade runs")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_every_shipped_example() {
    for plugin in [
        "auth",
        "rate-limit",
        "resilience",
        "header-security",
        "audit",
    ] {
        let file = format!(
            "{}/manifests/examples/{plugin}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = palisade(&["validate", plugin, &file]);
        assert!(out.status.success(), "{plugin}: {}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout),
            format!("{file}: valid palisade-{plugin} configuration\n")
        );
    }
}

#[test]
fn validate_prints_every_problem_with_its_path_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "limits.json",
        r#"{"limits":[{"name":"a","rate":"ten","period":"1s","key":["consumer"]},
                      {"name":"b","rate":1,"period":"soon","key":["consumer"]}]}"#,
    );
    let out = palisade(&["validate", "rate-limit", &file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{file}: limits[0].rate: ")),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!("{file}: limits[1].period: ")),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn validate_runs_the_plugins_own_checks() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "r.json",
        r#"{"retry":{"max_retries":11},"timeouts":{"default":"0s"}}"#,
    );
    let out = palisade(&["validate", "resilience", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{file}: retry.max_retries: must be at most 10\n{file}: timeouts.default: must be between 1ms and 24h\n"
        )
    );
}

#[test]
fn validate_reads_istio_wasm_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "wasmplugin.yaml",
        r#"apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: palisade-header-security
spec:
  phase: AUTHN
  pluginConfig:
    security_headers:
      preset: strict
      headers:
        X-Bad: "v"
"#,
    );
    let out = palisade(&["validate", "header-security", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{file}: WasmPlugin palisade-header-security: security_headers.headers[\"X-Bad\"]: is not a lower-case HTTP header name\n"
        )
    );
}

#[test]
fn validate_refuses_what_is_not_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "broken.json", "limits: [");
    let out = palisade(&["validate", "rate-limit", &file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(&format!("{file}: not JSON or YAML: ")),
        "{}",
        text(&out.stderr)
    );
}

/// A file that starts as JSON is read as the plugins read it, as JSON only: YAML would let a
/// trailing comma, a comment or a single quote through, and Envoy would then refuse the config.
#[test]
fn validate_reads_json_as_the_plugin_does() {
    let dir = tempfile::tempdir().unwrap();
    for (name, json) in [
        ("comma.json", r#"{"limits":[],}"#),
        ("comment.json", "{\"limits\": [] # none\n}"),
        ("quotes.json", "{'limits': []}"),
    ] {
        let file = write(&dir, name, json);
        let out = palisade(&["validate", "rate-limit", &file]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(out.stdout.is_empty(), "{name}");
        assert!(
            text(&out.stderr).starts_with(&format!("{file}: not valid JSON: ")),
            "{name}: {}",
            text(&out.stderr)
        );
    }
}

/// What the plugin reads as `{}` is `{}` here too: an empty file, and a WasmPlugin whose
/// `pluginConfig` is null (Kubernetes drops the field). A WasmPlugin in JSON, as `kubectl get
/// -o json` prints it, is read as a WasmPlugin.
#[test]
fn validate_reads_empty_configs_and_json_wasm_plugins_as_the_cluster_does() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(&dir, "empty.json", "\n");
    let out = palisade(&["validate", "header-security", &empty]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{empty}: valid palisade-header-security configuration\n")
    );

    let null = write(
        &dir,
        "null.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: hs\nspec:\n  pluginConfig:\n    # all commented out\n",
    );
    let out = palisade(&["validate", "header-security", &null]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let json = write(
        &dir,
        "wasmplugin.json",
        r#"{"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
            "metadata": {"name": "hs"},
            "spec": {"pluginConfig": {"security_headers": {"preset": "loud"}}}}"#,
    );
    let out = palisade(&["validate", "header-security", &json]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{json}: WasmPlugin hs: security_headers.preset: ")),
        "{stderr}"
    );
}

#[test]
fn schema_is_json_that_refuses_unknown_fields() {
    let out = palisade(&["schema", "audit"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "AuditConfig");
    assert_eq!(schema["additionalProperties"], false);
    assert!(schema["properties"]["batch"].is_object());
}

#[test]
fn unknown_plugin_is_a_usage_error() {
    let out = palisade(&["schema", "waf"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "unknown plugin \"waf\"; one of: header-security, auth, rate-limit, resilience, audit\n"
    );
}

/// Render owns `istio/` and `kong/` under `--out`: a file it does not make there is removed,
/// and named, so an operator who pointed it at a tree of their own sees what went.
#[test]
fn render_names_each_file_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    std::fs::create_dir_all(dir.path().join("istio")).unwrap();
    let theirs = write(&dir, "istio/team-gateway.yaml", "kind: Gateway\n");
    let kept = write(&dir, "notes.md", "mine\n");
    let run = palisade(&["render", "--out", out]);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    let stdout = text(&run.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{theirs}: removed (render no longer makes it)\n{out}: "
        )),
        "{stdout}"
    );
    assert!(!std::path::Path::new(&theirs).exists());
    assert!(std::path::Path::new(&kept).exists());
    // A second render removes nothing.
    let again = text(&palisade(&["render", "--out", out]).stdout);
    assert!(!again.contains("removed"), "{again}");
}
