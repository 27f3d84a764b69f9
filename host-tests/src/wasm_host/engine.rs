//! Which module to load (a built plugin, a `.wasm` path, a WAT fixture) and compiling it once per
//! test process: one wasmtime engine with fuel metering, modules cached by source.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use wasmtime::{Config, Engine, Module};

use super::error::{Failure, FailureKind, Result};
use super::profile::Profile;
use super::vm::Callback;

/// A module to run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Plugin {
    Auth,
    RateLimit,
    Resilience,
    HeaderSecurity,
    Audit,
    /// Any built `.wasm`.
    Wasm(PathBuf),
    /// A fixture under `host-tests/fixtures/`: `prelude.wat` (imports, memory, allocator,
    /// helpers) followed by `<name>.wat`, wrapped in one module.
    Fixture(String),
    /// WAT text of a whole module.
    Wat(String),
}

impl Plugin {
    /// The five Palisade plugins.
    pub const ALL: [Plugin; 5] = [
        Plugin::Auth,
        Plugin::RateLimit,
        Plugin::Resilience,
        Plugin::HeaderSecurity,
        Plugin::Audit,
    ];

    pub fn fixture(name: &str) -> Self {
        Self::Fixture(name.to_owned())
    }

    /// The crate name (`palisade-rate-limit`), which prefixes the plugin's log lines.
    pub fn crate_name(&self) -> Option<&'static str> {
        Some(match self {
            Self::Auth => "palisade-auth",
            Self::RateLimit => "palisade-rate-limit",
            Self::Resilience => "palisade-resilience",
            Self::HeaderSecurity => "palisade-header-security",
            Self::Audit => "palisade-audit",
            Self::Wasm(_) | Self::Fixture(_) | Self::Wat(_) => return None,
        })
    }

    /// The filter name hosts know it by: the `.wasm` file stem (Kong names filters after
    /// their file; Envoy's plugin `name` is set to the same here).
    pub fn name(&self) -> String {
        match self {
            Self::Wasm(path) => path
                .file_stem()
                .map_or_else(|| "module".to_owned(), |s| s.to_string_lossy().into_owned()),
            Self::Fixture(name) => format!("fixture_{name}"),
            Self::Wat(_) => "wat_module".to_owned(),
            _ => self
                .crate_name()
                .map_or_else(String::new, |name| name.replace('-', "_")),
        }
    }

    /// Where `cargo build --target wasm32-wasip1 --release` puts a Palisade plugin.
    pub fn built_path(&self) -> Option<PathBuf> {
        self.crate_name().map(|_| {
            workspace_root()
                .join("target/wasm32-wasip1/release")
                .join(format!("{}.wasm", self.name()))
        })
    }
}

/// The cargo workspace root (host-tests' parent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub(crate) fn engine() -> Result<&'static Engine> {
    static ENGINE: OnceLock<std::result::Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config.consume_fuel(true);
            Engine::new(&config).map_err(|err| format!("{err:#}"))
        })
        .as_ref()
        .map_err(|err| Failure::load(format!("cannot create the wasmtime engine: {err}")))
}

/// The compiled module as `profile`'s proxy gets it, from the cache when this process compiled
/// it already: a Palisade plugin's Envoy build for Envoy (`palisade::envoy_module`, without the
/// callbacks it does nothing in), the module as built for Kong.
pub(crate) fn module(plugin: &Plugin, profile: Profile) -> Result<Module> {
    static MODULES: OnceLock<Mutex<HashMap<(Plugin, bool), Module>>> = OnceLock::new();
    let cache = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (plugin.clone(), profile.is_kong());
    if let Some(module) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(module);
    }
    let mut bytes = source(plugin)?;
    let info = plugin
        .crate_name()
        .and_then(|name| palisade::plugins::ALL.iter().find(|p| p.full_name == name));
    if let (Some(info), false) = (info, profile.is_kong()) {
        bytes = info
            .envoy_build(&bytes)
            .map_err(|err| Failure::load(format!("{}: its Envoy build: {err}", plugin.name())))?;
    }
    let module = Module::new(engine()?, &bytes)
        .map_err(|err| Failure::load(format!("{} does not compile: {err:#}", plugin.name())))?;
    if let Ok(mut cache) = cache.lock() {
        cache.insert(key, module.clone());
    }
    Ok(module)
}

fn source(plugin: &Plugin) -> Result<Vec<u8>> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                Failure::new(
                    FailureKind::MissingWasm,
                    format!(
                        "{} is missing: run `just build` first (cargo build --target wasm32-wasip1 --release -p palisade-auth -p palisade-rate-limit -p palisade-resilience -p palisade-header-security -p palisade-audit)",
                        path.display()
                    ),
                )
            } else {
                Failure::load(format!("cannot read {}: {err}", path.display()))
            }
        })
    };
    let wat = |text: &str| {
        wat::parse_str(text)
            .map_err(|err| Failure::load(format!("{} is not valid WAT: {err}", plugin.name())))
    };
    match plugin {
        Plugin::Wasm(path) => read(path),
        Plugin::Wat(text) => wat(text),
        Plugin::Fixture(name) => {
            let text = |file: &str| {
                let path = fixtures_dir().join(file);
                std::fs::read_to_string(&path).map_err(|err| {
                    Failure::load(format!("cannot read fixture {}: {err}", path.display()))
                })
            };
            let fixture = text(&format!("{name}.wat"))?;
            let module = format!(
                "(module\n{}\n{fixture}\n{}\n)",
                text("prelude.wat")?,
                stream_callback_stubs(&fixture)
            );
            wat(&module)
        }
        _ => match plugin.built_path() {
            Some(path) => read(&path),
            None => Err(Failure::load("no path for this plugin")),
        },
    }
}

/// Do-nothing exports of the stream callbacks a fixture does not define, as an SDK-built module
/// has: Kong calls them whether or not they exist (the Kong profile fails a module without them).
fn stream_callback_stubs(fixture: &str) -> String {
    Callback::KONG_CALLS_UNCHECKED
        .iter()
        .filter(|callback| !fixture.contains(&format!("(export \"{}\")", callback.export())))
        .map(|callback| {
            let body = match callback {
                Callback::Log | Callback::Delete => "(param i32)",
                Callback::Done => "(param i32) (result i32) (i32.const 1)",
                // The header and body callbacks: Continue.
                _ => "(param i32 i32 i32) (result i32) (i32.const 0)",
            };
            format!("(func (export \"{}\") {body})\n", callback.export())
        })
        .collect()
}
