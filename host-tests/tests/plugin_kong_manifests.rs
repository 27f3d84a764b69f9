//! The Kong configs `palisade render` ships (manifests/kong) load and serve requests in the
//! test host's Kong profile of every release they are rendered for. A config that turns
//! metrics on traps there on Kong 3.4–3.7 (the profile enforces it), so the rendered files
//! must leave them off. rate-limit and resilience keep shared state, whose zone Kong 3.4–3.6
//! cannot define (the profile traps): kong-3.4.yml leaves them out, and on 3.5 and 3.6 they
//! trap as kong.yml's note says.

mod plugin_support;

use palisade::plugins::{PluginInfo, ALL};
use palisade::render::kong_filter_name;
use palisade_host_tests::wasm_host::{
    workspace_root, Failure, Host, KongVersion, Plugin, Profile, Request,
};
use plugin_support::send;
use serde_json::Value;

/// The chain's filters in a rendered declarative file, each with its config as JSON text.
fn filters(file: &str) -> Vec<(&'static PluginInfo, String)> {
    let text = std::fs::read_to_string(workspace_root().join("manifests").join(file)).unwrap();
    let document: Value = serde_yaml_ng::from_str(&text).unwrap();
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
                if minor < 7 && plugin.shared_state {
                    assert_ne!(minor, 4, "{file} carries {}", plugin.name);
                    // What kong.yml's note warns of: no zone for its shared state.
                    // rate-limit at configure time (it creates its slots), resilience on the
                    // first request.
                    let trapped = host
                        .load_workers(host_plugin(plugin), config, 2)
                        .and_then(|vms| send(&vms, 0, Request::get("/api/orders")));
                    let err = format!("{:?}", trapped.err());
                    assert!(
                        err.contains("could not resolve namespace"),
                        "{context}: {err}"
                    );
                    continue;
                }
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
    // 3 filters on 3.4, 3 on 3.5 and 3.6, 5 on 3.7–3.10.
    assert_eq!(loaded, 3 + 3 * 2 + 5 * 4);
    Ok(())
}
