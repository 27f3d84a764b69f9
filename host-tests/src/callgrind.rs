//! Envoy's instructions per request, counted by Valgrind's callgrind. CPU time on a shared
//! machine drifts by more than a small filter costs; the count of instructions Envoy executes
//! for the same requests hardly does (repeat runs agree within 0.1% on an idle machine, 1% on a
//! busy one, where Envoy's periodic work such as stats flushes lands on more requests), so one
//! run shows what a plugin adds, down to a single host call. It counts instructions, not
//! cycles: cache misses and the kernel's share of each request are not in it.

use std::fs::Permissions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade::envoy::{Bootstrap, EnvoyError, EnvoyProcess};

/// Under Valgrind, Envoy compiles each Wasm module for minutes (auth's keys take longest).
const READY_WITHIN: Duration = Duration::from_secs(900);

/// An Envoy with one worker, every instruction of it counted.
pub struct CallgrindEnvoy {
    envoy: EnvoyProcess,
    dir: PathBuf,
}

impl CallgrindEnvoy {
    /// Starts `binary` (Envoy, or the Python launcher that execs it) with `bootstrap` under
    /// callgrind, in `dir`. One worker: every request runs on the same thread, in the same order.
    pub fn start(binary: &Path, bootstrap: &Bootstrap, dir: &Path) -> Result<Self, EnvoyError> {
        let wrapper = dir.join("envoy-under-callgrind");
        let script = format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --trace-children=yes --smc-check=all-non-file \
             --callgrind-out-file={}/callgrind.%p.out {} \"$@\"\n",
            dir.display(),
            binary.display()
        );
        let files = |source| EnvoyError::Files {
            path: wrapper.clone(),
            source,
        };
        std::fs::write(&wrapper, script)
            .and_then(|()| std::fs::set_permissions(&wrapper, Permissions::from_mode(0o755)))
            .map_err(files)?;
        // Setups start two at a time: the other thread may fork while this script is still
        // open for writing, and its child holds that descriptor until it execs, so exec'ing the
        // script fails with "Text file busy" for a moment. Retry for up to a second.
        let mut attempts = 0;
        let envoy = loop {
            match EnvoyProcess::start_within(&wrapper, bootstrap, dir, 1, READY_WITHIN) {
                Err(EnvoyError::Spawn(err))
                    if err.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 20 =>
                {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                started => break started?,
            }
        };
        Ok(Self {
            envoy,
            dir: dir.to_owned(),
        })
    }

    /// Sends `warm_up` requests, then counts what `requests` more cost Envoy: instructions per
    /// request. Every request is `GET path` with `headers` on one keep-alive connection and must
    /// be answered 200.
    pub fn instructions_per_request(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        warm_up: u32,
        requests: u32,
    ) -> Result<f64, String> {
        let mut client = KeepAlive::connect(self.envoy.port())?;
        for i in 0..warm_up {
            client.get(&format!("{path}?w={i}"), headers)?;
        }
        self.control("-z")?;
        for i in 0..requests {
            client.get(&format!("{path}?r={i}"), headers)?;
        }
        let dumps_before = self.dumps().len();
        self.control("-d")?;
        let started = Instant::now();
        loop {
            let dumps = self.dumps();
            if dumps.len() > dumps_before {
                if let Some(total) = dumps.iter().rev().find_map(|p| summary(p)) {
                    return Ok(total as f64 / f64::from(requests));
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("no callgrind dump in {}", self.dir.display()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn control(&self, what: &str) -> Result<(), String> {
        let out = Command::new("callgrind_control")
            .arg(what)
            .arg(self.envoy.pid().to_string())
            .output()
            .map_err(|err| format!("callgrind_control (install valgrind): {err}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "callgrind_control {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The dumps `callgrind_control -d` wrote (`callgrind.<pid>.out.<n>`), oldest first.
    fn dumps(&self) -> Vec<PathBuf> {
        let mut dumps: Vec<(u32, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter_map(|p| {
                        let name = p.file_name()?.to_str()?.to_owned();
                        if !name.starts_with("callgrind.") {
                            return None;
                        }
                        let number = name.rsplit_once(".out.")?.1.parse().ok()?;
                        Some((number, p))
                    })
                    .collect()
            })
            .unwrap_or_default();
        dumps.sort();
        dumps.into_iter().map(|(_, p)| p).collect()
    }
}

/// The `summary:` line of a complete callgrind dump (its `totals:` line comes last).
fn summary(dump: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dump).ok()?;
    text.lines().find(|l| l.starts_with("totals:"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))?
        .trim()
        .parse()
        .ok()
}

/// HTTP/1.1 requests one after another on one connection, as `wrk` sends them.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(port: u16) -> Result<Self, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<(), String> {
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.reader
            .get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut status = String::new();
        self.reader
            .read_line(&mut status)
            .map_err(|e| e.to_string())?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(|_| line.to_owned())?;
                }
            }
        }
        let mut body = vec![0; length];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        if status.split(' ').nth(1) == Some("200") {
            Ok(())
        } else {
            Err(format!(
                "{path}: {} {}",
                status.trim_end(),
                String::from_utf8_lossy(&body)
            ))
        }
    }
}
