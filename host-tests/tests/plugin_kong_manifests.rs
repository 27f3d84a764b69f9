//! The Kong configs `palisade render` ships (manifests/kong) load and serve requests in the
//! test host's Kong profile of every release they are rendered for. A config that turns
//! metrics on traps there on Kong 3.4–3.7 (the profile enforces it), so the rendered files
//! must leave them off. Shared data lives in the shm_kv zone the rendered kong.conf defines,
//! the only one the profile knows, so every filter runs on every release, 3.4 included.

mod plugin_support;

use palisade::plugins::{PluginInfo, ALL};
use palisade::render::kong_filter_name;
use palisade_host_tests::wasm_host::{
    workspace_root, Failure, Host, KongVersion, Plugin, Profile, Request, KONG_SHM_KV_ZONES,
};
use plugin_support::send;
use serde_json::Value;

/// The chain's filters in a rendered declarative file, each with its config as JSON text.
fn filters(file: &str) -> Vec<(&'static PluginInfo, String)> {
    let text = std::fs::read_to_string(workspace_root().join("manifests").join(file)).unwrap();
    // Read as Kong's YAML 1.1 reader does: a plain `n:` or `on` is a boolean there.
    let document: Value = palisade::kube_yaml::documents(&text).unwrap()[0].to_value();
    document["services"][0]["filter_chains"][0]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|filter| {
            let name = filter["name"].as_str().unwrap();
            let plugin = ALL
                .iter()
                .find(|plugin| kong_filter_name(plugin) == name)
                .unwrap_or_else(|| panic!("{file}: {name} is no Palisade filter"));
            let config = match &filter["config"] {
                // Kong 3.4's form: the config as a string.
                Value::String(text) => text.clone(),
                object => object.to_string(),
            };
            (plugin, config)
        })
        .collect()
}

fn host_plugin(plugin: &PluginInfo) -> Plugin {
    Plugin::ALL
        .into_iter()
        .find(|p| p.crate_name() == Some(plugin.full_name))
        .unwrap()
}

#[test]
fn every_rendered_kong_filter_loads_and_serves_on_the_kong_releases_it_is_for(
) -> Result<(), Failure> {
    let releases: [(&str, &[u8]); 2] = [
        ("kong/kong-3.4.yml", &[4]),
        ("kong/kong.yml", &[5, 6, 7, 8, 9, 10]),
    ];
    let mut loaded = 0;
    for (file, minors) in releases {
        let filters = filters(file);
        for &minor in minors {
            let version = KongVersion::new(minor).unwrap();
            for (plugin, config) in &filters {
                let context = format!("{file} on Kong {version}: {}", plugin.name);
                let host = Host::new(Profile::Kong(version));
                let vms = host.load_workers(host_plugin(plugin), config, 2)?;
                assert!(vms.is_accepted(), "{context}: {:?}", vms.logs());
                // Two requests on each worker: whatever the plugin answers, no host call traps.
                for i in 0..4 {
                    send(
                        &vms,
                        i % 2,
                        Request::get("/api/orders").header("x-request-id", "k-1"),
                    )
                    .map_err(|err| panic!("{context}: {err:?}"))?;
                }
                loaded += 1;
            }
        }
    }
    // 5 filters on each of 3.4–3.10.
    assert_eq!(loaded, 5 * 7);
    Ok(())
}

/// The zones the Kong profile knows are the ones the rendered kong.conf defines: on Kong 3.6+
/// the active `nginx_wasm_shm_kv_<zone>` lines, on 3.4 and 3.5 the commented
/// `nginx_wasm_shm_<zone>` alternative; and the zone is the first segment of every key.
#[test]
fn the_profile_knows_the_zones_the_rendered_kong_conf_defines() {
    let conf = std::fs::read_to_string(workspace_root().join("manifests/kong/kong.conf")).unwrap();
    let setting = |prefix: &str| -> Vec<String> {
        conf.lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .filter_map(|rest| rest.split_once(" = "))
            .map(|(zone, _)| zone.to_owned())
            .collect()
    };
    assert_eq!(setting("nginx_wasm_shm_kv_"), KONG_SHM_KV_ZONES);
    assert_eq!(setting("# nginx_wasm_shm_"), KONG_SHM_KV_ZONES);
    // No default zone `*`: Kong 3.4–3.6 cannot define it and would not start with the line.
    assert!(
        !conf.lines().any(|l| l.starts_with("nginx_wasm_shm_kv =")),
        "{conf}"
    );
    assert_eq!(
        palisade_kit::store::NAMESPACE,
        format!("{}/", KONG_SHM_KV_ZONES[0])
    );
}
