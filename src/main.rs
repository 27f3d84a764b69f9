//! `palisade`: the operator's command line.

// A command line prints; it is not a request path.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use palisade::envoy::{self, Bootstrap, EnvoyProcess, Filter};
use palisade::plugins::{self, PluginInfo};
use palisade::upstream::EchoUpstream;
use palisade::validate;

#[derive(Parser)]
#[command(name = "palisade", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PALISADE_GIT_REV"), ")"))]
/// Palisade: proxy-wasm plugins for Envoy, Istio and Kong.
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a plugin configuration: JSON, or YAML with Istio WasmPlugins (reads spec.pluginConfig).
    Validate {
        /// auth, rate-limit, resilience, header-security or audit
        plugin: String,
        file: PathBuf,
    },
    /// Print the JSON Schema of a plugin's configuration.
    Schema { plugin: String },
    /// Run real Envoy with all five plugins in front of a demo upstream, until Ctrl-C.
    Run {
        /// Listener port on 127.0.0.1.
        #[arg(long, default_value_t = 10000)]
        port: u16,
        /// Envoy binary (default: $PALISADE_ENVOY, else .venv/bin/envoy).
        #[arg(long)]
        envoy: Option<PathBuf>,
        /// Where the built .wasm files are.
        #[arg(long, default_value = "target/wasm32-wasip1/release")]
        wasm_dir: PathBuf,
        /// Envoy worker threads.
        #[arg(long, default_value_t = 2)]
        concurrency: u32,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { plugin, file } => {
            with_plugin(&plugin, |plugin| validate_file(plugin, &file))
        }
        Command::Schema { plugin } => with_plugin(&plugin, |plugin| {
            println!(
                "{}",
                serde_json::to_string_pretty(&plugin.schema()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }),
        Command::Run {
            port,
            envoy,
            wasm_dir,
            concurrency,
        } => run(port, envoy, wasm_dir, concurrency),
    }
}

fn with_plugin(name: &str, f: impl FnOnce(&PluginInfo) -> ExitCode) -> ExitCode {
    match plugins::find(name) {
        Some(plugin) => f(plugin),
        None => {
            eprintln!("unknown plugin {name:?}; one of: {}", plugins::names());
            ExitCode::from(2)
        }
    }
}

fn validate_file(plugin: &PluginInfo, file: &std::path::Path) -> ExitCode {
    let shown = file.display();
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("{shown}: {err}");
            return ExitCode::from(2);
        }
    };
    let configs = match validate::configs_in(&text) {
        Ok(configs) if configs.is_empty() => {
            eprintln!("{shown}: no configuration and no WasmPlugin found");
            return ExitCode::FAILURE;
        }
        Ok(configs) => configs,
        Err(err) => {
            eprintln!("{shown}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for (label, config) in &configs {
        let problems = validate::problems(plugin, config);
        for problem in &problems {
            eprintln!("{shown}: {label}{problem}");
        }
        failed |= !problems.is_empty();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        println!("{shown}: valid {} configuration", plugin.full_name);
        ExitCode::SUCCESS
    }
}

fn run(port: u16, binary: Option<PathBuf>, wasm_dir: PathBuf, concurrency: u32) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let binary = binary.unwrap_or_else(|| envoy::default_binary(std::path::Path::new(".")));
        let upstream = EchoUpstream::start(0).map_err(|err| format!("demo upstream: {err}"))?;
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let bootstrap = Bootstrap {
            listen_port: port,
            upstream: upstream.addr(),
            wasm_dir: std::fs::canonicalize(&wasm_dir).unwrap_or(wasm_dir),
            filters: plugins::ALL
                .iter()
                .map(|plugin| Filter::new(plugin, plugin.example_config))
                .collect(),
            native_filters: Vec::new(),
            route_filter_configs: serde_json::json!({}),
        };
        let mut envoy = EnvoyProcess::start(&binary, &bootstrap, dir.path(), concurrency)
            .map_err(|err| err.to_string())?;
        let chain: Vec<_> = plugins::ALL.iter().map(|p| p.full_name).collect();
        println!("Envoy is serving on http://127.0.0.1:{port} with {concurrency} workers");
        println!(
            "  chain: {} -> router -> demo upstream {}",
            chain.join(" -> "),
            upstream.addr()
        );
        println!("  log:   {}", dir.path().join("envoy.log").display());
        println!();
        println!("Try:");
        println!("  curl -i http://127.0.0.1:{port}/hello          # security headers set, server/x-powered-by gone");
        println!("  curl -s http://127.0.0.1:{port}/echo | python3 -m json.tool   # what the upstream received");
        println!(
            "  curl -s {}/stats | grep wasm   # Envoy's Wasm stats (admin)",
            envoy.admin_url()
        );
        println!();
        println!("Ctrl-C stops Envoy and the demo upstream.");
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
                .map_err(|err| format!("cannot handle Ctrl-C: {err}"))?;
        }
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        envoy.stop();
        println!("\nstopped");
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palisade run: {err}");
            ExitCode::FAILURE
        }
    }
}
