//! `palisade package` and `palisade push` against a real registry: Debian's `docker-registry`
//! (CNCF distribution) on loopback, every image pulled back with `skopeo`, checked the way
//! Istio's agent reads it (istio `pkg/wasm/imagefetcher.go`): the oci variant has the wasm
//! config and exactly two layers, one of them the raw module; the compat variant one tar+gzip
//! layer with `plugin.wasm`. `just setup` installs both tools.

// Tests fail by panicking; clippy.toml allows that only inside #[test] functions. The deadlines
// waiting for servers are the test's own, not plugin time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use palisade::oci::{self, Digest};
use palisade::plugins::ALL;
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wasm_dir() -> PathBuf {
    let dir = workspace().join("target/wasm32-wasip1/release");
    for plugin in &ALL {
        let wasm = dir.join(plugin.wasm_file);
        assert!(
            wasm.is_file(),
            "{} is missing: run `just build` first",
            wasm.display()
        );
    }
    dir
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: run `just setup` (it installs Debian's docker-registry and skopeo)"
    );
}

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loopback port nothing listens on now (the kernel's choice, released at once).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` on a free loopback port, with its storage in a temp dir; killed on drop.
struct LocalRegistry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    fn start() -> Self {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = format!("http://{}/v2/", registry.addr);
            if ureq::get(&url)
                .call()
                .map(|r| r.status() == 200)
                .unwrap_or(false)
            {
                return registry;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {}: {}",
                registry.addr,
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skopeo_raw(reference: &str) -> (Vec<u8>, Value) {
    let out =
        run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", reference]));
    let manifest = serde_json::from_slice(&out.stdout).unwrap();
    (out.stdout, manifest)
}

/// Copies an image into a `dir:` layout (blobs named by their hex digest).
fn skopeo_copy(reference: &str, into: &Path) {
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        reference,
        &format!("dir:{}", into.display()),
    ]));
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(dir.join(digest.strip_prefix("sha256:").unwrap())).unwrap()
}

fn untar_gz(layer: &[u8], name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("layer.tar.gz"), layer).unwrap();
    run(Command::new("tar")
        .args(["-xzf", "layer.tar.gz"])
        .current_dir(dir.path()));
    std::fs::read(dir.path().join(name)).unwrap()
}

#[test]
fn every_image_pushed_to_a_registry_pulls_back_as_istio_expects() {
    require("skopeo");
    let wasm_dir = wasm_dir();
    let work = tempfile::tempdir().unwrap();
    let layouts = work.path().join("oci");
    run(Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["package", "--out"])
        .arg(&layouts)
        .arg("--wasm-dir")
        .arg(&wasm_dir));

    let registry = LocalRegistry::start();
    let target = format!("{}/palisade", registry.addr);
    let pushed = run(Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["push", &target, "--plain-http", "--dir"])
        .arg(&layouts));
    let pushed = String::from_utf8(pushed.stdout).unwrap();
    assert_eq!(pushed.lines().count(), ALL.len() * 2 + 1, "{pushed}");

    for plugin in &ALL {
        let module = palisade::package::read_envoy_module(&wasm_dir, plugin).unwrap();
        let module_digest = Digest::of(&module).to_string();
        let image = format!("docker://{target}/{}", plugin.full_name);

        // The oci variant.
        let (raw, manifest) = skopeo_raw(&format!("{image}:{VERSION}"));
        let digest = Digest::of(&raw).to_string();
        assert!(
            pushed.contains(&format!(
                "{target}/{}:{VERSION}@{digest}\n",
                plugin.full_name
            )),
            "{}: pushed {pushed}",
            plugin.name
        );
        assert_eq!(manifest["mediaType"], oci::OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], oci::WASM_CONFIG);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(
            layers.len(),
            2,
            "Istio requires exactly two layers: {manifest}"
        );
        assert_eq!(layers[0]["mediaType"], oci::WASM_CONFIG);
        assert_eq!(layers[1]["mediaType"], oci::WASM_CONTENT_LAYER);
        assert_eq!(layers[1]["digest"], module_digest, "{}", plugin.name);
        assert_eq!(layers[1]["size"], module.len());
        let annotations = &manifest["annotations"];
        assert_eq!(annotations["org.opencontainers.image.version"], VERSION);
        assert_eq!(
            annotations["org.opencontainers.image.revision"],
            palisade::package::REVISION
        );
        assert_eq!(
            annotations[oci::annotation::CONFIG_SCHEMA_DIGEST],
            palisade::package::schema_digest(plugin).to_string()
        );
        let pulled = work.path().join(format!("{}-oci", plugin.name));
        skopeo_copy(&format!("{image}:{VERSION}"), &pulled);
        assert_eq!(blob(&pulled, &module_digest), module, "{}", plugin.name);
        let runtime: Value = serde_json::from_slice(&blob(
            &pulled,
            manifest["config"]["digest"].as_str().unwrap(),
        ))
        .unwrap();
        assert_eq!(runtime["type"], "envoy_proxy");
        assert_eq!(runtime["config"]["root_ids"][0], plugin.full_name);

        // The compat variant.
        let (_, manifest) = skopeo_raw(&format!("{image}:{VERSION}-compat"));
        assert_eq!(manifest["mediaType"], oci::OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], oci::OCI_IMAGE_CONFIG);
        assert_eq!(
            manifest["annotations"]["module.wasm.image/variant"],
            "compat"
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{manifest}");
        assert_eq!(layers[0]["mediaType"], oci::OCI_LAYER_TAR_GZIP);
        let pulled = work.path().join(format!("{}-compat", plugin.name));
        skopeo_copy(&format!("{image}:{VERSION}-compat"), &pulled);
        let layer = blob(&pulled, layers[0]["digest"].as_str().unwrap());
        assert_eq!(untar_gz(&layer, "plugin.wasm"), module, "{}", plugin.name);
    }

    // Kong's filters image: every module and its meta.json under the filter name.
    let reference = format!("docker://{target}/palisade-filters:{VERSION}");
    let (_, manifest) = skopeo_raw(&reference);
    let pulled = work.path().join("kong-filters");
    skopeo_copy(&reference, &pulled);
    let layer = blob(&pulled, manifest["layers"][0]["digest"].as_str().unwrap());
    for plugin in &ALL {
        let module = std::fs::read(wasm_dir.join(plugin.wasm_file)).unwrap();
        assert_eq!(
            untar_gz(&layer, plugin.wasm_file),
            module,
            "{}",
            plugin.name
        );
        let meta_name = plugin.wasm_file.replace(".wasm", ".meta.json");
        let meta: Value = serde_json::from_slice(&untar_gz(&layer, &meta_name)).unwrap();
        assert!(meta["config_schema"].is_object(), "{}", plugin.name);
    }

    // The same images again: nothing changes, the push succeeds.
    run(Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["push", &target, "--plain-http", "--dir"])
        .arg(&layouts));
    // Another build under the same tag is refused, and leaves the tag alone...
    // (The other build: these layouts with the first plugin's replaced.)
    let plugin = &ALL[0];
    let other = work.path().join("other");
    run(Command::new("cp").arg("-r").arg(&layouts).arg(&other));
    std::fs::remove_dir_all(other.join(plugin.full_name)).unwrap();
    let images = palisade::package::images(plugin, b"\0asm\x01\0\0\0", "other").unwrap();
    palisade::oci::layout::write(&other.join(plugin.full_name), &images.tagged()).unwrap();
    let push_other = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["push", &target, "--plain-http"])
            .args(extra)
            .arg("--dir")
            .arg(&other)
            .output()
            .unwrap()
    };
    let refused = push_other(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1));
    let reference = format!("palisade/{}:{VERSION}", plugin.full_name);
    assert!(
        stderr.contains(&format!("{reference} already names sha256:"))
            && stderr.contains(&format!("not this build's {}", images.oci.digest()))
            && stderr.contains("--overwrite"),
        "{stderr}"
    );
    let image = format!("docker://{target}/{}:{VERSION}", plugin.full_name);
    let (raw, _) = skopeo_raw(&image);
    assert_ne!(Digest::of(&raw), *images.oci.digest());
    // ...unless asked to: then it names the new build.
    let replaced = push_other(&["--overwrite"]);
    let stderr = String::from_utf8_lossy(&replaced.stderr);
    assert_eq!(replaced.status.code(), Some(0), "{stderr}");
    let (raw, _) = skopeo_raw(&image);
    assert_eq!(Digest::of(&raw), *images.oci.digest());
}

#[test]
fn packaging_twice_gives_the_same_bytes() {
    let wasm_dir = wasm_dir();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for out in [a.path(), b.path()] {
        run(Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["package", "--out"])
            .arg(out)
            .arg("--wasm-dir")
            .arg(&wasm_dir));
    }
    let out = run(Command::new("diff").arg("-r").arg(a.path()).arg(b.path()));
    assert!(out.stdout.is_empty());
    let index: Value =
        serde_json::from_slice(&std::fs::read(a.path().join("palisade-auth/index.json")).unwrap())
            .unwrap();
    let tags: Vec<_> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"]["org.opencontainers.image.ref.name"].clone())
        .collect();
    assert_eq!(tags, [VERSION.to_owned(), format!("{VERSION}-compat")]);
}

/// A registry that demands a bearer token: the push follows the challenge to the token realm,
/// sends the basic credentials there, and retries with the token.
#[test]
fn push_follows_a_bearer_challenge() {
    let registry = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = registry.server_addr().to_ip().unwrap();
    let (layouts, packaged) = built_layouts();
    let plugin = &ALL[0];
    let images = &packaged.plugins[0];

    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut token_basic = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Ok(Some(mut request)) = registry.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let url = request.url().to_owned();
            let auth = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("authorization"))
                .map(|h| h.value.to_string());
            let mut body = Vec::new();
            request.as_reader().read_to_end(&mut body).unwrap();
            seen.push(format!("{} {url}", request.method()));
            let header = |name: &str, value: &str| {
                tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap()
            };
            if url.starts_with("/token") {
                token_basic = auth;
                let _ = request.respond(tiny_http::Response::from_string(r#"{"token":"t0k"}"#));
                continue;
            }
            if auth.as_deref() != Some("Bearer t0k") {
                let challenge = format!(
                    r#"Bearer realm="http://{addr}/token",service="test",scope="repository:ns/{}:pull,push""#,
                    plugin.full_name
                );
                let _ = request.respond(
                    tiny_http::Response::empty(401)
                        .with_header(header("WWW-Authenticate", &challenge)),
                );
                continue;
            }
            let response = if request.method().as_str() == "HEAD" {
                tiny_http::Response::empty(404)
            } else if request.method().as_str() == "POST" {
                tiny_http::Response::empty(202)
                    .with_header(header("Location", "/upload/1?_state=x"))
            } else if url.contains("/manifests/") {
                // The Kong filters image goes last.
                let stop = url.contains(palisade::package::KONG_FILTERS_IMAGE);
                let _ = request.respond(tiny_http::Response::empty(201));
                if stop {
                    return (seen, token_basic);
                }
                continue;
            } else {
                tiny_http::Response::empty(201)
            };
            let _ = request.respond(response);
        }
        (seen, token_basic)
    });

    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "push",
            &format!("{addr}/ns"),
            "--plain-http",
            "--username",
            "ci",
            "--dir",
        ])
        .arg(layouts.path().join("oci"))
        .env("PALISADE_REGISTRY_PASSWORD", "secret")
        .output()
        .unwrap();
    let (seen, token_basic) = server.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{addr}/ns/{}:{VERSION}@{}\n",
            plugin.full_name,
            images.oci.digest()
        )),
        "{stdout}"
    );
    assert_eq!(token_basic.as_deref(), Some("Basic Y2k6c2VjcmV0"));
    assert!(
        seen.iter()
            .any(|s| s.starts_with("GET /token?service=test&scope=repository%3Ans%2F")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| s.starts_with("PUT /upload/1?_state=x&digest=sha256:")),
        "{seen:?}"
    );
    assert_eq!(stdout.lines().count(), ALL.len() * 2 + 1, "{stdout}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every layout `palisade package` writes, from the built plugins.
fn built_layouts() -> (tempfile::TempDir, palisade::package::Packaged) {
    let dir = tempfile::tempdir().unwrap();
    let packaged = palisade::package::package(&wasm_dir(), &dir.path().join("oci")).unwrap();
    (dir, packaged)
}

#[test]
fn push_refuses_a_url_for_a_registry_and_a_missing_layout() {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["push", "https://registry.example.com"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "palisade push: \"https://registry.example.com\" is not a registry (host[:port][/namespace])\n"
    );
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["push", "127.0.0.1:9/ns", "--plain-http", "--dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "palisade push: {}: ",
            empty
                .path()
                .join("palisade-header-security/index.json")
                .display()
        )) && stderr.ends_with("; run `palisade package` first\n"),
        "{stderr}"
    );
}

/// A tag holding an OCI index (or any manifest kind) is seen as taken: a registry answers 404
/// when the request does not accept the stored kind, which must not read as a free tag. Every
/// tag is checked before anything is written: the last image's taken tag stops the push
/// before the first upload.
#[test]
fn push_sees_a_tag_held_by_another_kind_of_manifest() {
    let registry = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = registry.server_addr().to_ip().unwrap();
    let (layouts, _) = built_layouts();
    let taken = palisade::package::KONG_FILTERS_IMAGE;
    let index_digest = format!("sha256:{}", "ab".repeat(32));
    let held = index_digest.clone();
    let server = std::thread::spawn(move || {
        let mut puts = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let Ok(Some(request)) = registry.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            let url = request.url().to_owned();
            let accepts_index = request
                .headers()
                .iter()
                .any(|h| h.field.equiv("accept") && h.value.as_str().contains("image.index"));
            if request.method().as_str() == "HEAD" && url.contains("/manifests/") {
                if !url.contains(taken) {
                    let _ = request.respond(tiny_http::Response::empty(404));
                    continue;
                }
                // As Distribution does for a tag whose stored manifest is an index.
                let response = if accepts_index {
                    tiny_http::Response::empty(200).with_header(
                        tiny_http::Header::from_bytes(
                            &b"Docker-Content-Digest"[..],
                            held.as_bytes(),
                        )
                        .unwrap(),
                    )
                } else {
                    tiny_http::Response::empty(404)
                };
                let _ = request.respond(response);
                return puts;
            }
            if matches!(request.method().as_str(), "PUT" | "POST") {
                puts += 1;
            }
            let _ = request.respond(tiny_http::Response::empty(404));
        }
        puts
    });
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["push", &format!("{addr}/ns"), "--plain-http", "--dir"])
        .arg(layouts.path().join("oci"))
        .output()
        .unwrap();
    assert_eq!(server.join().unwrap(), 0, "nothing was written");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&format!(
            "ns/{taken}:{VERSION} already names {index_digest}"
        )),
        "{stderr}"
    );
}

/// `openssl s_server` on a free loopback port with a certificate from a CA of its own; it
/// closes each connection right after the handshake (its stdin is empty). Killed on drop.
struct PrivateCaServer {
    child: Child,
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateCaServer {
    fn start() -> Self {
        require("openssl");
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").args(args).current_dir(dir.path()));
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=palisade-test-ca",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            at("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ]);
        let port = free_port();
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-cert",
                "server.pem",
                "-key",
                "server.key",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            ca: at("ca.pem"),
            _dir: dir,
        }
    }
}

impl Drop for PrivateCaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry whose certificate comes from a private CA: refused as an unknown issuer with the
/// public roots, trusted with `--ca-file` (the handshake succeeds; this server then hangs up).
#[test]
fn push_trusts_a_private_ca_given_with_ca_file() {
    let server = PrivateCaServer::start();
    let (layouts, _) = built_layouts();
    let push = |extra: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(["push", &format!("127.0.0.1:{}/ns", server.port), "--dir"])
            .arg(layouts.path().join("oci"))
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let refused = push(&[]);
    assert!(
        refused.ends_with("io: invalid peer certificate: UnknownIssuer\n"),
        "{refused}"
    );
    let trusted = push(&["--ca-file".as_ref(), server.ca.as_os_str()]);
    assert!(trusted.ends_with("io: Peer disconnected\n"), "{trusted}");

    // A file without a certificate is refused before any connection.
    let empty = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["push", "127.0.0.1:9/ns", "--ca-file"])
        .arg(empty.path())
        .args(["--dir"])
        .arg(layouts.path().join("oci"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "palisade push: --ca-file: the CA file holds no certificate\n"
    );
}
