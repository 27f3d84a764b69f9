//! `palisade run`, the README's demo: real Envoy with all five plugins in front of the demo
//! upstream. Needs the built plugins (`just build`) and Envoy (`just setup`).

// Tests fail by panicking; clippy.toml allows that only inside #[test] functions. The deadlines
// here are the test's own, not plugin time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `palisade run` printed about where it serves.
struct Banner {
    port: u16,
    admin: String,
    log: PathBuf,
}

fn banner(lines: &mpsc::Receiver<String>) -> Banner {
    let (mut port, mut admin, mut log) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(90);
    while port.is_none() || admin.is_none() || log.is_none() {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("palisade run printed its banner");
        if let Some(rest) = line.strip_prefix("Envoy is serving on http://127.0.0.1:") {
            port = rest.split(' ').next().and_then(|p| p.parse().ok());
        } else if let Some(rest) = line.trim().strip_prefix("log:") {
            log = Some(PathBuf::from(rest.trim()));
        } else if let Some(rest) = line.trim().strip_prefix("curl -s http://") {
            if let Some(url) =
                rest.strip_suffix("/stats | grep wasm   # Envoy's Wasm stats (admin)")
            {
                admin = Some(format!("http://{url}"));
            }
        }
    }
    Banner {
        port: port.unwrap(),
        admin: admin.unwrap(),
        log: log.unwrap(),
    }
}

fn counter(admin: &str, name: &str) -> u64 {
    let stats = ureq::get(&format!("{admin}/stats?filter={name}"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(key, _)| key.ends_with(name))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

/// `palisade run` as a child, stopped on drop as the test itself would (SIGTERM, then
/// SIGKILL), so a failing assertion does not leave Envoy serving.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// The demo serves through all five plugins, its audit events reach the demo upstream, and a
/// SIGTERM (not only Ctrl-C) stops Envoy and removes its files.
#[test]
fn the_demo_serves_ships_audit_events_and_stops_on_sigterm() {
    let envoy = palisade::envoy::default_binary(&workspace());
    assert!(
        envoy.is_file(),
        "{} is missing: run `just setup`",
        envoy.display()
    );
    let child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["run", "--port", "0", "--envoy"])
        .arg(&envoy)
        .arg("--wasm-dir")
        .arg(workspace().join("target/wasm32-wasip1/release"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = Demo(child);
    let stdout = demo.0.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    let banner = banner(&lines);
    assert!(banner.log.is_file());

    // Audit samples every /api/ read; a batch leaves within its 1 s interval.
    for _ in 0..5 {
        let reply = ureq::get(&format!("http://127.0.0.1:{}/api/orders", banner.port))
            .call()
            .unwrap();
        assert_eq!(reply.status().as_u16(), 200);
        assert_eq!(
            reply.headers().get("x-content-type-options").unwrap(),
            "nosniff"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&banner.admin, "palisade_audit_events_sent") < 5 {
        assert!(
            Instant::now() < deadline,
            "audit sent {} of 5 events; dropped {}",
            counter(&banner.admin, "palisade_audit_events_sent"),
            counter(&banner.admin, "palisade_audit_events_dropped")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(counter(&banner.admin, "palisade_audit_events_dropped"), 0);

    let killed = Command::new("kill")
        .args(["-TERM", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = demo.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "palisade run ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status}");
    assert!(
        !listening(banner.port),
        "Envoy still serves on {}",
        banner.port
    );
    let dir: &Path = banner.log.parent().unwrap();
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
