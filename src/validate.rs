//! `palisade validate`: a plugin config from a JSON file, or from the `spec.pluginConfig` of an
//! Istio `WasmPlugin` in YAML, checked with the plugin's own types. Structural problems are all
//! found at once through the JSON Schema generated from those types; the plugin's semantic
//! checks then run exactly as in `on_configure`.

use palisade_kit::config::{Problem, Tree};

use crate::plugins::PluginInfo;

/// Why a file could not be validated at all.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("not JSON or YAML: {0}")]
    Syntax(String),
    /// A file that starts as JSON is read as the plugin reads it: as JSON only. YAML would
    /// accept trailing commas, comments and unquoted keys the plugin refuses.
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("a WasmPlugin has no spec")]
    NoSpec,
}

/// The configurations of `plugin` a file holds: the file itself (JSON or YAML object; empty
/// reads as `{}`, as the plugin reads it), or each `WasmPlugin`'s `spec.pluginConfig` (`{}`
/// when absent or null, as Kubernetes drops a null field), in YAML or JSON (`kubectl get -o
/// json`), with a label for messages. A `WasmPlugin` whose `spec.url` names another Palisade
/// plugin is skipped: a rendered manifest holds all five. YAML is read as Kubernetes reads it
/// (YAML 1.1 scalars, [`crate::kube_yaml`]), and read as the plugin reads it, as [`Tree`]s: a
/// key given twice is still there to be refused.
pub fn configs_in(text: &str, plugin: &PluginInfo) -> Result<Vec<(String, Tree)>, InputError> {
    if text.trim().is_empty() {
        return Ok(vec![(String::new(), Tree::Object(Vec::new()))]);
    }
    let documents = match serde_json::from_str::<Tree>(text) {
        Ok(tree) => vec![tree],
        Err(err) if text.trim_start().starts_with(['{', '[']) => {
            return Err(InputError::Json(err.to_string()))
        }
        Err(_) => {
            crate::kube_yaml::documents(text).map_err(|err| InputError::Syntax(err.to_string()))?
        }
    };
    let mut found = Vec::new();
    for (i, tree) in documents.into_iter().enumerate() {
        if tree == Tree::Null {
            continue;
        }
        let text = |tree: Option<&Tree>| match tree {
            Some(Tree::String(s)) => Some(s.clone()),
            _ => None,
        };
        if text(tree.get("kind")).as_deref() == Some("WasmPlugin") {
            let spec = tree.get("spec").ok_or(InputError::NoSpec)?;
            let name = text(tree.get("metadata").and_then(|m| m.get("name")))
                .unwrap_or_else(|| "?".to_owned());
            if text(spec.get("url")).is_some_and(|url| names_another_plugin(&url, plugin)) {
                continue;
            }
            let config = match spec.get("pluginConfig") {
                None | Some(Tree::Null) => Tree::Object(Vec::new()),
                Some(config) => config.clone(),
            };
            found.push((format!("WasmPlugin {name}: "), config));
        } else if tree.get("kind").is_none() {
            found.push((
                if i == 0 {
                    String::new()
                } else {
                    format!("document {}: ", i + 1)
                },
                tree,
            ));
        }
    }
    Ok(found)
}

/// Does this `WasmPlugin` url (`oci://registry/palisade-auth:0.1.0`,
/// `file:///wasm/palisade_auth.wasm`) name a Palisade plugin other than `plugin`?
fn names_another_plugin(url: &str, plugin: &PluginInfo) -> bool {
    let last = url.rsplit('/').next().unwrap_or_default();
    let image = last.split(['@', ':']).next().unwrap_or_default();
    crate::plugins::ALL
        .iter()
        .filter(|other| other.full_name != plugin.full_name)
        .any(|other| image == other.full_name || last == other.wasm_file)
}

/// Every problem with one configuration; empty when it is valid.
pub fn problems(plugin: &PluginInfo, config: &Tree) -> Vec<Problem> {
    // The schema cannot see a repeated key (a JSON object has each once), the plugin refuses it.
    if let Some(problem) = palisade_kit::config::duplicate(config) {
        return vec![problem];
    }
    let schema = plugin.schema();
    if let Ok(validator) = jsonschema::validator_for(&schema) {
        let structural: Vec<Problem> = validator
            .iter_errors(&config.to_value())
            .map(|err| Problem {
                path: field_path(&err.instance_path().to_string()),
                reason: without_text(err.to_string(), err.instance()),
            })
            .collect();
        if !structural.is_empty() {
            return structural;
        }
    }
    match plugin.validate(config) {
        Ok(()) => Vec::new(),
        Err(err) => err.problems,
    }
}

/// A schema error names the value it refuses; a string in it may be a secret (an API key
/// written where its hash belongs), so a string, array or object is named by its kind, as in
/// the plugins' own errors. Numbers and booleans stay.
fn without_text(reason: String, instance: &serde_json::Value) -> String {
    let kind = match instance {
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "the array",
        serde_json::Value::Object(_) => "the object",
        _ => return reason,
    };
    match serde_json::to_string(instance) {
        Ok(text) => reason.replace(&text, kind),
        Err(_) => reason,
    }
}

/// `/limits/0/rate` as `limits[0].rate`, the form the plugins log.
fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    if path.is_empty() {
        ".".to_owned()
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::find;

    #[test]
    fn every_structural_problem_is_listed_with_its_path() {
        let plugin = find("rate-limit").unwrap();
        let config: Tree = serde_json::from_str(
            r#"{"limits":[{"name":"a","rate":"ten","period":"1s","key":["consumer"],"burts":1},
                          {"name":"b","rate":1,"period":"soon","key":["tenant"]}]}"#,
        )
        .unwrap();
        let found = problems(plugin, &config);
        let paths: Vec<_> = found.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"limits[0].rate"), "{found:?}");
        assert!(paths.contains(&"limits[0]"), "{found:?}"); // the unknown `burts`
        assert!(paths.contains(&"limits[1].period"), "{found:?}");
        assert!(paths.contains(&"limits[1].key[0]"), "{found:?}");
        assert!(
            found.iter().any(|p| p.reason.contains("burts")),
            "{found:?}"
        );
    }

    #[test]
    fn semantic_problems_come_from_the_plugin() {
        let plugin = find("rate-limit").unwrap();
        let config: Tree = serde_json::from_str(
            r#"{"limits":[{"name":"a","rate":0,"period":"1s","key":["consumer"]}]}"#,
        )
        .unwrap();
        let found = problems(plugin, &config);
        assert_eq!(
            found,
            vec![Problem {
                path: "limits[0].rate".into(),
                reason: "must be at least 1".into()
            }]
        );
    }

    #[test]
    fn reads_plugin_config_from_wasm_plugins() {
        let yaml = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: palisade-rate-limit, namespace: istio-system}
spec:
  url: oci://registry/palisade-rate-limit:0.1.0
  pluginConfig:
    limits:
      - {name: a, rate: 5, period: 1s, key: [consumer]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
"#;
        let configs = configs_in(yaml, find("rate-limit").unwrap()).unwrap();
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].0, "WasmPlugin palisade-rate-limit: ");
        assert_eq!(configs[0].1.to_value()["limits"][0]["rate"], 5);
        assert!(problems(find("rate-limit").unwrap(), &configs[0].1).is_empty());
    }

    /// A rendered manifest holds every plugin's WasmPlugin: each is checked by its own plugin.
    #[test]
    fn only_the_named_plugins_wasm_plugins_are_checked() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("manifests/istio/ingress-gateway.yaml"),
        )
        .unwrap();
        for plugin in &crate::plugins::ALL {
            let configs = configs_in(&text, plugin).unwrap();
            assert_eq!(configs.len(), 1, "{}", plugin.name);
            assert!(configs[0].0.contains(plugin.full_name), "{}", configs[0].0);
            assert!(
                problems(plugin, &configs[0].1).is_empty(),
                "{}",
                plugin.name
            );
        }
        assert!(names_another_plugin(
            "file:///wasm/palisade_audit.wasm",
            find("auth").unwrap()
        ));
        assert!(!names_another_plugin(
            "oci://r/palisade-auth@sha256:ab",
            find("auth").unwrap()
        ));
        assert!(!names_another_plugin(
            "oci://r/my-auth:1",
            find("auth").unwrap()
        ));
    }

    #[test]
    fn json_is_taken_as_the_config_itself() {
        let configs = configs_in(r#"{"providers": []}"#, find("auth").unwrap()).unwrap();
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].0, "");
        assert_eq!(
            configs[0].1.to_value(),
            serde_json::json!({"providers": []})
        );
    }

    /// A key given twice is refused as the plugin refuses it, in JSON and in YAML: a JSON
    /// `Value` (and the schema, which checks one) would keep the last silently.
    #[test]
    fn a_key_given_twice_is_refused_with_its_path() {
        let plugin = find("rate-limit").unwrap();
        let json =
            r#"{"limits":[{"name":"a","name":"b","rate":1,"period":"1s","key":["method"]}]}"#;
        let yaml = "
kind: WasmPlugin
metadata: {name: rl}
spec:
  pluginConfig:
    limits:
      - name: a
        name: b
        rate: 1
        period: 1s
        key: [method]
";
        for text in [json, yaml] {
            let configs = configs_in(text, plugin).unwrap();
            assert_eq!(
                problems(plugin, &configs[0].1),
                vec![Problem {
                    path: "limits[0]".into(),
                    reason: "duplicate field `name`".into()
                }],
                "{text}"
            );
        }
        // In a map too (header names), where serde alone keeps the last.
        let headers = find("header-security").unwrap();
        let configs = configs_in(
            r#"{"security_headers":{"headers":{"x-frame-options":"DENY","x-frame-options":"SAMEORIGIN"}}}"#,
            headers,
        )
        .unwrap();
        assert_eq!(
            problems(headers, &configs[0].1),
            vec![Problem {
                path: "security_headers.headers".into(),
                reason: "duplicate field `x-frame-options`".into()
            }]
        );
    }

    /// Kubernetes reads YAML 1.1: a plain `on` reaches the plugin as `true`, so a header value
    /// written that way is refused here as the plugin would refuse it; quoted, it is a string.
    #[test]
    fn yaml_is_read_as_kubernetes_reads_it() {
        let headers = find("header-security").unwrap();
        let manifest = |value: &str| {
            format!(
                "kind: WasmPlugin\nmetadata: {{name: hs}}\nspec:\n  pluginConfig:\n    \
                 security_headers:\n      headers:\n        x-feature: {value}\n"
            )
        };
        let configs = configs_in(&manifest("on"), headers).unwrap();
        let found = problems(headers, &configs[0].1);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "security_headers.headers.x-feature");
        assert!(found[0].reason.contains("true"), "{found:?}");
        let configs = configs_in(&manifest("'on'"), headers).unwrap();
        assert!(problems(headers, &configs[0].1).is_empty());
    }

    /// An API key written where its hash belongs is not echoed (docs/auth-policy.md).
    #[test]
    fn a_misplaced_secret_is_never_echoed() {
        let plugin = find("auth").unwrap();
        for text in [
            r#"{"api_keys":{"keys":["sk-live-abcdef123456"]}}"#,
            r#"{"api_keys":{"keys":"sk-live-abcdef123456"}}"#,
            r#"{"api_keys":{"keys":[{"sha256":"sk-live-abcdef123456","consumer":"c"}]}}"#,
        ] {
            let configs = configs_in(text, plugin).unwrap();
            let found = problems(plugin, &configs[0].1);
            assert!(!found.is_empty(), "{text}");
            for problem in &found {
                assert!(!problem.reason.contains("sk-live"), "{text}: {problem:?}");
                assert!(!problem.path.contains("sk-live"), "{text}: {problem:?}");
            }
        }
    }

    #[test]
    fn pointer_to_field_path() {
        assert_eq!(field_path(""), ".");
        assert_eq!(field_path("/limits/0/key/2"), "limits[0].key[2]");
        assert_eq!(
            field_path("/security_headers/headers/x~1y"),
            "security_headers.headers.x/y"
        );
    }
}
