//! The committed manifests cannot drift from the code: they are exactly what `palisade render`
//! generates, every plugin config in them passes the plugin's own parser (and Kong's draft 4
//! schema), and a pinned render carries the digests of the images built from the `.wasm` files
//! in `target/wasm32-wasip1/release`. Editing a manifest alone, or a config type alone, fails
//! here until `just render` is rerun and committed.

// Tests fail by panicking; clippy.toml allows that only inside #[test] functions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use palisade::kong_schema;
use palisade::oci::Digest;
use palisade::plugins::{self, PluginInfo, ALL};
use palisade::render::{self, kong_filter_name, RenderOptions};
use serde::Deserialize;
use serde_json::Value;

fn manifests() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    // As Kubernetes and Kong read it (YAML 1.1 scalars): a JWK's plain `n:` is the key `false`.
    let text = std::fs::read_to_string(path).unwrap();
    palisade::kube_yaml::documents(&text)
        .unwrap()
        .iter()
        .map(palisade_kit::config::Tree::to_value)
        .filter(|value| !value.is_null())
        .collect()
}

fn by_filter_name(name: &str) -> &'static PluginInfo {
    ALL.iter()
        .find(|plugin| kong_filter_name(plugin) == name)
        .unwrap_or_else(|| panic!("{name} is no Palisade filter"))
}

/// The plugin's own parser, then (for Kong) the draft 4 schema Kong checks configs with.
fn assert_valid(plugin: &PluginInfo, config: &Value, context: &str) {
    let tree = palisade_kit::config::Tree::deserialize(config).unwrap();
    let problems = palisade::validate::problems(plugin, &tree);
    assert!(problems.is_empty(), "{context}: {problems:?}");
    plugin
        .validate(&tree)
        .unwrap_or_else(|err| panic!("{context}: {err}"));
}

fn assert_valid_for_kong(plugin: &PluginInfo, config: &Value, context: &str) {
    assert_valid(plugin, config, context);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(manifests().join(format!(
            "kong/filters/{}.meta.json",
            kong_filter_name(plugin)
        )))
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::draft4::new(&meta["config_schema"]).unwrap();
    let errors: Vec<_> = validator
        .iter_errors(config)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{context}: Kong would refuse it: {errors:?}"
    );
    // These files serve Kong 3.4–3.7 too, whose metric host calls trap.
    if plugin.schema()["properties"].get("metrics").is_some() {
        assert_eq!(config["metrics"], false, "{context}: metrics on for Kong");
    }
}

#[test]
fn committed_manifests_are_what_render_generates() {
    let files = render::render(&RenderOptions::default()).unwrap();
    let drift = render::check(&manifests(), &files);
    assert!(
        drift.is_empty(),
        "the manifests drifted from the code; run `just render` and commit:\n{}",
        drift.join("\n")
    );
}

#[test]
fn kong_meta_files_are_the_draft4_schemas_of_the_config_types() {
    for plugin in &ALL {
        let path = manifests().join(format!(
            "kong/filters/{}.meta.json",
            kong_filter_name(plugin)
        ));
        let committed: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            committed,
            kong_schema::filter_meta(&plugin.schema()).unwrap(),
            "{}",
            path.display()
        );
        assert!(
            jsonschema::draft4::meta::is_valid(&committed["config_schema"]),
            "{}: not a draft 4 schema",
            path.display()
        );
    }
}

#[test]
fn every_wasm_plugin_config_validates_with_its_plugin() {
    let mut seen = Vec::new();
    for file in ["istio/ingress-gateway.yaml"]
        .into_iter()
        .map(String::from)
        .chain(ALL.iter().map(|p| format!("istio/{}.yaml", p.full_name)))
    {
        for document in yaml_documents(&manifests().join(&file)) {
            assert_eq!(
                document["apiVersion"], "extensions.istio.io/v1alpha1",
                "{file}"
            );
            assert_eq!(document["kind"], "WasmPlugin", "{file}");
            let spec = &document["spec"];
            let plugin = plugins::find(spec["pluginName"].as_str().unwrap()).unwrap();
            let context = format!("{file}: {}", document["metadata"]["name"]);
            assert_eq!(spec["phase"].as_str(), plugin.istio_phase, "{context}");
            // Sidecars: one side only (Istio installs a filter without `match` on inbound and
            // outbound both); the gateway: no mode, since all its listeners are CLIENT.
            let expected_match = if file == "istio/ingress-gateway.yaml" {
                serde_json::Value::Null
            } else {
                serde_json::json!([{"mode": plugin.istio_sidecar_mode}])
            };
            assert_eq!(spec["match"], expected_match, "{context}");
            assert!(
                spec["url"]
                    .as_str()
                    .unwrap()
                    .starts_with("oci://ghcr.io/palisade-proxy/palisade-"),
                "{context}"
            );
            // Committed manifests are unpinned: see `pinned_render_names_the_images_built_from_target`.
            assert!(
                spec.get("sha256").is_none(),
                "{context}: a pinned digest was committed"
            );
            assert!(
                ["FAIL_CLOSE", "FAIL_OPEN"].contains(&spec["failStrategy"].as_str().unwrap()),
                "{context}"
            );
            assert_valid(plugin, &spec["pluginConfig"], &context);
            seen.push(plugin.name);
        }
    }
    assert_eq!(seen.len(), ALL.len() * 2, "{seen:?}");
}

#[test]
fn every_kong_filter_config_validates_with_its_plugin_and_kong_schema() {
    // filter_chains, with JSON configs (3.5+) and with string configs (3.4).
    for (file, stringly) in [("kong/kong.yml", false), ("kong/kong-3.4.yml", true)] {
        let config = &yaml_documents(&manifests().join(file))[0];
        let filters = config["services"][0]["filter_chains"][0]["filters"]
            .as_array()
            .unwrap();
        let names: Vec<_> = filters
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        let expected: Vec<_> = ALL.iter().map(kong_filter_name).collect();
        assert_eq!(names, expected, "{file}: the chain runs edge first");
        for filter in filters {
            let plugin = by_filter_name(filter["name"].as_str().unwrap());
            let context = format!("{file}: {}", plugin.name);
            let config = if stringly {
                serde_json::from_str(filter["config"].as_str().unwrap()).unwrap()
            } else {
                filter["config"].clone()
            };
            assert_valid_for_kong(plugin, &config, &context);
        }
    }
    // Filters as plugins (3.9+).
    let config = &yaml_documents(&manifests().join("kong/kong-plugins.yml"))[0];
    let configured = config["services"][0]["routes"][0]["plugins"]
        .as_array()
        .unwrap();
    assert_eq!(configured.len(), ALL.len());
    for entry in configured {
        let plugin = by_filter_name(entry["name"].as_str().unwrap());
        assert_valid_for_kong(
            plugin,
            &entry["config"],
            &format!("kong-plugins.yml: {}", plugin.name),
        );
    }
    // Kong Ingress Controller KongPlugins.
    let documents = yaml_documents(&manifests().join("kong/kic/kong-plugins.yaml"));
    let kong_plugins: Vec<_> = documents
        .iter()
        .filter(|d| d["kind"] == "KongPlugin")
        .collect();
    assert_eq!(kong_plugins.len(), ALL.len());
    for document in kong_plugins {
        let plugin = by_filter_name(document["plugin"].as_str().unwrap());
        assert_valid_for_kong(
            plugin,
            &document["config"],
            &format!("kic: {}", plugin.name),
        );
    }
    // kong.conf enables exactly these filters.
    let conf = std::fs::read_to_string(manifests().join("kong/kong.conf")).unwrap();
    let expected: Vec<_> = ALL.iter().map(kong_filter_name).collect();
    assert!(
        conf.contains(&format!("\nwasm_filters = {}\n", expected.join(","))),
        "{conf}"
    );
    assert!(conf.contains("\nwasm = on\n"), "{conf}");
}

/// The digests in a pinned render (what an operator applies after `palisade push`) are those of
/// the images `palisade package` builds from the modules in `target/wasm32-wasip1/release`, and
/// those images' module layers are the plugins' Envoy builds byte for byte.
#[test]
fn pinned_render_names_the_images_built_from_target() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let wasm_dir = root.join("target/wasm32-wasip1/release");
    for plugin in &ALL {
        let wasm = wasm_dir.join(plugin.wasm_file);
        assert!(
            wasm.is_file(),
            "{} is missing: run `just build` first",
            wasm.display()
        );
    }
    let work = tempfile::tempdir().unwrap();
    let palisade = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .arg("--wasm-dir")
            .arg(&wasm_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let layouts = work.path().join("oci");
    let pinned = work.path().join("pinned");
    palisade(&["package", "--out", layouts.to_str().unwrap()]);
    palisade(&["render", "--pin", "--out", pinned.to_str().unwrap()]);
    for plugin in &ALL {
        let document = &yaml_documents(&pinned.join(format!("istio/{}.yaml", plugin.full_name)))[0];
        let sha256 = document["spec"]["sha256"].as_str().unwrap();
        let index: Value = serde_json::from_slice(
            &std::fs::read(layouts.join(plugin.full_name).join("index.json")).unwrap(),
        )
        .unwrap();
        let oci = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                m["annotations"]["org.opencontainers.image.ref.name"] == env!("CARGO_PKG_VERSION")
            })
            .unwrap();
        assert_eq!(oci["digest"], format!("sha256:{sha256}"), "{}", plugin.name);
        let manifest: Value = serde_json::from_slice(
            &std::fs::read(
                layouts
                    .join(plugin.full_name)
                    .join("blobs/sha256")
                    .join(sha256),
            )
            .unwrap(),
        )
        .unwrap();
        let module = palisade::package::read_envoy_module(&wasm_dir, plugin).unwrap();
        assert_eq!(
            manifest["layers"][1]["digest"],
            Digest::of(&module).to_string(),
            "{}",
            plugin.name
        );
        // Pinning changes nothing else.
        let committed =
            std::fs::read_to_string(manifests().join(format!("istio/{}.yaml", plugin.full_name)))
                .unwrap();
        let pinned_text =
            std::fs::read_to_string(pinned.join(format!("istio/{}.yaml", plugin.full_name)))
                .unwrap();
        assert_eq!(
            pinned_text
                .replace(&format!("  sha256: {sha256}\n"), "")
                // Quoted when it could read as a number.
                .replace(&format!("  sha256: '{sha256}'\n"), ""),
            committed,
            "{}",
            plugin.name
        );
    }
}

#[test]
fn render_check_fails_on_an_edited_manifest() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    assert!(run(&["render"]).status.success());
    let file = out.join("istio/palisade-rate-limit.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("rate: 100\n", "rate: 1000000\n")).unwrap();
    let checked = run(&["render", "--check"]);
    assert_eq!(checked.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&checked.stderr),
        format!(
            "{}: differs from what `palisade render` generates\nrun `just render` and commit the result\n",
            file.display()
        )
    );
}

#[test]
fn kong_settings_define_the_zone_every_shared_data_key_lives_in() {
    let zone = palisade::render::kong_shm_kv_zone();
    assert_eq!(format!("{zone}/"), palisade_kit::store::NAMESPACE);
    let values = &yaml_documents(&manifests().join("kong/kic/values.yaml"))[0];
    assert_eq!(
        values["env"][format!("nginx_wasm_shm_kv_{zone}").as_str()],
        "32m"
    );
    let conf = std::fs::read_to_string(manifests().join("kong/kong.conf")).unwrap();
    assert!(
        conf.contains(&format!("\nnginx_wasm_shm_kv_{zone} = 32m\n")),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("\n# nginx_wasm_shm_{zone} = 32m\n")),
        "{conf}"
    );
}

/// The tests' keys sign tokens anyone with the repository can make: no deployable manifest may
/// trust them, and the shipped auth example refuses a request without credentials.
#[test]
fn no_manifest_trusts_a_test_key_and_the_auth_example_fails_closed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let test_jwks: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("plugins/auth/testdata/jwks.json")).unwrap(),
    )
    .unwrap();
    let public_parts: Vec<String> = test_jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|key| ["n", "x", "k"].map(|member| key[member].as_str().map(str::to_owned)))
        .flatten()
        .collect();
    assert!(public_parts.len() >= 3, "{public_parts:?}");
    let mut checked = 0;
    let mut pending = vec![manifests()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for part in &public_parts {
                assert!(
                    !text.contains(part.as_str()),
                    "{} trusts a test key",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 15, "{checked} files");
    let auth = plugins::find("palisade-auth").unwrap();
    let example: Value = serde_json::from_str(auth.example_config).unwrap();
    assert_eq!(example["allow_missing"], false);
}

/// Under KIC Kong runs the filters in no set order: no rendered KIC limit may key on the
/// consumer auth sets, which rate-limit could read before auth strips a client's copy.
#[test]
fn kic_limits_never_key_on_the_consumer() {
    let mut limits_seen = 0;
    for document in yaml_documents(&manifests().join("kong/kic/kong-plugins.yaml")) {
        if document["plugin"] != "palisade_rate_limit" {
            continue;
        }
        let config = &document["config"];
        let route_limits = config["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|route| route["limits"].as_array().into_iter().flatten());
        for limit in config["limits"]
            .as_array()
            .unwrap()
            .iter()
            .chain(route_limits)
        {
            limits_seen += 1;
            let key = limit["key"].as_array().unwrap();
            assert!(!key.iter().any(|part| part == "consumer"), "{limit}");
        }
    }
    assert!(limits_seen > 0);
}
