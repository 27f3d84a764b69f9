//! `palisade`: the operator's command line.

// A command line prints; it is not a request path.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
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
    /// Package every built plugin as OCI images (Istio's Wasm image spec: the oci and compat
    /// variants), one OCI image layout per plugin.
    Package {
        /// Where the layouts go: <out>/palisade-<name>/, tags <version> and <version>-compat.
        #[arg(long, default_value = "target/oci")]
        out: PathBuf,
        /// Where the built .wasm files are.
        #[arg(long, default_value = "target/wasm32-wasip1/release")]
        wasm_dir: PathBuf,
    },
    /// Regenerate the Istio and Kong manifests from the code (manifests/istio, manifests/kong).
    Render {
        /// Output directory. Render owns its istio/ and kong/: files there it does not make
        /// are removed (and listed).
        #[arg(long, default_value = "manifests")]
        out: PathBuf,
        /// Registry and namespace the WasmPlugins pull from.
        #[arg(long, default_value = palisade::render::DEFAULT_REGISTRY)]
        registry: String,
        /// Pin each WasmPlugin to the digest of the image built from --wasm-dir (`sha256`).
        #[arg(long)]
        pin: bool,
        /// Where the built .wasm files are (for --pin).
        #[arg(long, default_value = "target/wasm32-wasip1/release")]
        wasm_dir: PathBuf,
        /// Write nothing; list the files that differ and fail if any does.
        #[arg(long)]
        check: bool,
    },
    /// Push the packaged images to a registry: host[:port][/namespace].
    Push {
        registry: String,
        /// Plain HTTP instead of HTTPS (a loopback or in-cluster registry).
        #[arg(long)]
        plain_http: bool,
        /// Where `palisade package` wrote the layouts.
        #[arg(long, default_value = "target/oci")]
        dir: PathBuf,
        /// Trust only the CA certificates in this PEM file (a registry with a private CA).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Registry username; the password comes from $PALISADE_REGISTRY_PASSWORD or stdin.
        #[arg(long)]
        username: Option<String>,
        /// Read the password (or token) from the first line of stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// Replace a tag that already names different content. Without it, such a tag stops
        /// the push: nodes that cached the old image under the same tag would keep running it.
        #[arg(long)]
        overwrite: bool,
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
        Command::Package { out, wasm_dir } => package(&wasm_dir, &out),
        Command::Render {
            out,
            registry,
            pin,
            wasm_dir,
            check,
        } => render(&out, registry, pin, &wasm_dir, check),
        Command::Push {
            registry,
            plain_http,
            dir,
            ca_file,
            username,
            password_stdin,
            overwrite,
        } => push(
            &registry,
            plain_http,
            &dir,
            ca_file.as_deref(),
            username,
            password_stdin,
            overwrite,
        ),
    }
}

fn package(wasm_dir: &std::path::Path, out: &std::path::Path) -> ExitCode {
    match palisade::package::package(wasm_dir, out) {
        Ok(packaged) => {
            for images in &packaged.plugins {
                println!(
                    "{}: module {} oci {} compat {}",
                    out.join(images.plugin.full_name).display(),
                    images.module,
                    images.oci.digest(),
                    images.compat.digest()
                );
            }
            println!(
                "{}: {}",
                out.join(palisade::package::KONG_FILTERS_IMAGE).display(),
                packaged.kong_filters.digest()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("palisade package: {err}");
            ExitCode::FAILURE
        }
    }
}

fn render(
    out: &std::path::Path,
    registry: String,
    pin: bool,
    wasm_dir: &std::path::Path,
    check: bool,
) -> ExitCode {
    use palisade::render::{self, RenderOptions};
    let result = (|| -> Result<ExitCode, String> {
        let pins = if pin {
            let all = palisade::package::all_images(wasm_dir).map_err(|err| err.to_string())?;
            Some(
                all.iter()
                    .map(|images| {
                        (
                            images.plugin.full_name.to_owned(),
                            images.oci.digest().clone(),
                        )
                    })
                    .collect(),
            )
        } else {
            None
        };
        let files = render::render(&RenderOptions { registry, pins }).map_err(|e| e.to_string())?;
        if check {
            let drift = render::check(out, &files);
            for line in &drift {
                eprintln!("{line}");
            }
            if !drift.is_empty() {
                eprintln!("run `just render` and commit the result");
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: up to date", out.display());
        } else {
            let removed = render::write(out, &files).map_err(|err| err.to_string())?;
            for path in &removed {
                println!("{}: removed (render no longer makes it)", path.display());
            }
            println!("{}: {} files rendered", out.display(), files.len());
        }
        Ok(ExitCode::SUCCESS)
    })();
    result.unwrap_or_else(|err| {
        eprintln!("palisade render: {err}");
        ExitCode::FAILURE
    })
}

fn push(
    registry: &str,
    plain_http: bool,
    dir: &std::path::Path,
    ca_file: Option<&std::path::Path>,
    username: Option<String>,
    password_stdin: bool,
    overwrite: bool,
) -> ExitCode {
    use palisade::oci::{layout, registry};
    let result = (|| -> Result<(), String> {
        let target = registry::Target::parse(registry)?;
        let credentials = match username {
            None => None,
            Some(username) => {
                let password = if password_stdin {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map_err(|err| format!("reading the password from stdin: {err}"))?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                } else {
                    std::env::var("PALISADE_REGISTRY_PASSWORD").map_err(|_| {
                        "--username needs $PALISADE_REGISTRY_PASSWORD or --password-stdin"
                            .to_owned()
                    })?
                };
                Some(registry::Credentials { username, password })
            }
        };
        let mut client = registry::Registry::new(&target, plain_http, credentials);
        if let Some(ca_file) = ca_file {
            let pem = std::fs::read(ca_file)
                .map_err(|err| format!("--ca-file {}: {err}", ca_file.display()))?;
            client = client.trusting(&pem).map_err(|err| err.to_string())?;
        }
        let names = plugins::ALL
            .iter()
            .map(|plugin| plugin.full_name)
            .chain([palisade::package::KONG_FILTERS_IMAGE]);
        // Every layout read and every tag checked before the first push: a missing package or
        // a taken tag must not leave the registry with some plugins of this build only.
        let mut all = Vec::new();
        for name in names {
            let images = layout::read(&dir.join(name))
                .map_err(|err| format!("{err}; run `palisade package` first"))?;
            all.push((name, target.repository(name), images));
        }
        if !overwrite {
            for (_, repository, images) in &all {
                for (tag, image) in images {
                    client
                        .check_tag(repository, tag, image)
                        .map_err(|err| err.to_string())?;
                }
            }
        }
        for (name, repository, images) in &all {
            for (tag, image) in images {
                let digest = client
                    .push(repository, tag, image, overwrite)
                    .map_err(|err| err.to_string())?;
                println!("{}:{tag}@{digest}", target.image(name));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palisade push: {err}");
            ExitCode::FAILURE
        }
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
    let configs = match validate::configs_in(&text, plugin) {
        Ok(configs) if configs.is_empty() => {
            eprintln!(
                "{shown}: no configuration and no WasmPlugin of {} found",
                plugin.full_name
            );
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
        // Handled from the start: Ctrl-C, a `kill` or a closed terminal while Envoy starts or
        // serves ends this function, whose drops kill Envoy and remove its directory. (Envoy
        // ignores SIGHUP, and nothing else would stop it.)
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
                .map_err(|err| format!("cannot handle signals: {err}"))?;
        }
        let binary = binary.unwrap_or_else(|| envoy::default_binary(std::path::Path::new(".")));
        let upstream =
            EchoUpstream::start_unrecorded(0).map_err(|err| format!("demo upstream: {err}"))?;
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let bootstrap = Bootstrap {
            listen_port: port,
            upstream: upstream.addr(),
            // Envoy gets each plugin without the callbacks it does nothing in.
            wasm_dir: palisade::envoy_module::write_envoy_builds(
                &wasm_dir,
                &dir.path().join("envoy-modules"),
            )?,
            filters: plugins::ALL
                .iter()
                .map(|plugin| Filter::new(plugin, plugin.demo_config()))
                .collect(),
            native_filters: Vec::new(),
            route_filter_configs: serde_json::json!({}),
        };
        let mut envoy = EnvoyProcess::start(&binary, &bootstrap, dir.path(), concurrency)
            .map_err(|err| err.to_string())?;
        if stop.load(Ordering::SeqCst) {
            envoy.stop();
            return Ok(());
        }
        let chain: Vec<_> = plugins::ALL.iter().map(|p| p.full_name).collect();
        // The port Envoy bound (`--port 0` lets the kernel choose).
        let port = envoy.port();
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
        println!("  curl -i -H 'authorization: Bearer not.a.jwt' http://127.0.0.1:{port}/hello   # auth: 401 invalid_token");
        println!(
            "  curl -s {}/stats | grep wasm   # Envoy's Wasm stats (admin)",
            envoy.admin_url()
        );
        println!();
        println!("Ctrl-C stops Envoy and the demo upstream.");
        while !stop.load(Ordering::SeqCst) {
            if let Some(status) = envoy.exited() {
                // The log goes with the temporary directory: show its end.
                let log = envoy.log();
                let skip = log.lines().count().saturating_sub(20);
                let tail: Vec<&str> = log.lines().skip(skip).collect();
                let tail = tail.join("\n");
                return Err(format!(
                    "Envoy exited ({status}); the end of its log:\n{tail}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        envoy.stop();
        // Not println!: after SIGHUP the terminal may be gone, and a failed print panics.
        let _ = writeln!(std::io::stdout(), "\nstopped");
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
