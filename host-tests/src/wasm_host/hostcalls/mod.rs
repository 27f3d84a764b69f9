//! The host functions a plugin imports: proxy-wasm ABI 0.2.1 in module `env`, and the few WASI
//! preview1 functions Rust's `wasm32-wasip1` output needs ([`wasi`]).
//!
//! Every function starts with [`enter`], which fails the test when the host would refuse the
//! call at that moment (during `_initialize`, inside the allocator) or the profile's proxy does
//! not implement it.

mod callouts;
mod http;
mod misc;
mod shared;
mod wasi;

use wasmtime::{Caller, Engine, Linker};

use super::error::FailureKind;
use super::profile::Profile;
use super::vm::{Phase, VmState};

/// What proxy-wasm-cpp-host lets through while `_initialize` runs (`WasmBase::startVm` calls
/// `setRestrictedCallback` with this list): logging, args, environment, preopens, time, random.
const ALLOWED_DURING_INITIALIZE: &[&str] = &[
    "proxy_log",
    "wasi_snapshot_preview1.fd_write",
    "wasi_snapshot_preview1.args_sizes_get",
    "wasi_snapshot_preview1.args_get",
    "wasi_snapshot_preview1.environ_sizes_get",
    "wasi_snapshot_preview1.environ_get",
    "wasi_snapshot_preview1.fd_prestat_get",
    "wasi_snapshot_preview1.fd_prestat_dir_name",
    "wasi_snapshot_preview1.clock_time_get",
    "wasi_snapshot_preview1.random_get",
];

/// What cpp-host's `allocMemory` lets through while the guest allocator runs.
const ALLOWED_DURING_ALLOCATION: &[&str] = &[
    "proxy_log",
    "wasi_snapshot_preview1.fd_write",
    "wasi_snapshot_preview1.clock_time_get",
];

/// Checks that `name` may be called now; the error it returns traps the guest and fails the test
/// with the recorded reason.
pub(crate) fn enter(caller: &mut Caller<'_, VmState>, name: &'static str) -> wasmtime::Result<()> {
    let state = caller.data_mut();
    match state.phase {
        Phase::Initializing if !ALLOWED_DURING_INITIALIZE.contains(&name) => {
            return Err(state.fail(
                FailureKind::Restricted,
                format!(
                    "host call {name} during _initialize: Envoy refuses every host call but logging, WASI args/environ/clock/random while the module initialises (proxy-wasm-cpp-host WasmBase::startVm, restricted_callback); make it from on_vm_start or later"
                ),
            ));
        }
        Phase::Allocating if !ALLOWED_DURING_ALLOCATION.contains(&name) => {
            return Err(state.fail(
                FailureKind::Restricted,
                format!(
                    "host call {name} inside proxy_on_memory_allocate: proxy-wasm-cpp-host (allocMemory) only allows logging and the clock there"
                ),
            ));
        }
        _ => {}
    }
    if let Some(refusal) = state.profile.refusal(name) {
        return Err(state.fail(FailureKind::Refused, refusal));
    }
    state.count_host_call(name);
    Ok(())
}

/// A host function failing the test on purpose (a Kong trap, a test-host limitation).
pub(crate) fn trap(
    caller: &mut Caller<'_, VmState>,
    kind: FailureKind,
    message: String,
) -> wasmtime::Error {
    caller.data_mut().fail(kind, message)
}

/// The linker for one profile. Kong does not link the two spec functions ngx_wasm_module lacks,
/// so a module importing them fails to load as it would there.
pub(crate) fn linker(engine: &Engine, profile: Profile) -> wasmtime::Result<Linker<VmState>> {
    let mut linker = Linker::new(engine);
    misc::define(&mut linker)?;
    http::define(&mut linker, profile)?;
    shared::define(&mut linker)?;
    callouts::define(&mut linker)?;
    wasi::define(&mut linker)?;
    Ok(linker)
}
