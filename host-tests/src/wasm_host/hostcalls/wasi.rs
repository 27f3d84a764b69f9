//! The WASI preview1 functions Rust's `wasm32-wasip1` output imports (the plugins import
//! `fd_write`, `environ_get`, `environ_sizes_get`, `proc_exit` and `random_get`), written here
//! rather than pulled from wasmtime-wasi: stdout/stderr are captured, the environment and
//! arguments are empty, the clock is the host's virtual one and randomness is seeded. No files.

use wasmtime::{Caller, Linker};

use super::{enter, trap};
use crate::wasm_host::error::FailureKind;
use crate::wasm_host::memory;
use crate::wasm_host::vm::VmState;

const MODULE: &str = "wasi_snapshot_preview1";

/// WASI errno values.
const SUCCESS: u32 = 0;
const BADF: u32 = 8;
const FAULT: u32 = 21;
const INVAL: u32 = 28;

type Ret = wasmtime::Result<u32>;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(MODULE, "fd_write", fd_write)?;
    linker.func_wrap(MODULE, "environ_sizes_get", environ_sizes_get)?;
    linker.func_wrap(MODULE, "environ_get", environ_get)?;
    linker.func_wrap(MODULE, "args_sizes_get", args_sizes_get)?;
    linker.func_wrap(MODULE, "args_get", args_get)?;
    linker.func_wrap(MODULE, "clock_time_get", clock_time_get)?;
    linker.func_wrap(MODULE, "random_get", random_get)?;
    linker.func_wrap(MODULE, "proc_exit", proc_exit)?;
    linker.func_wrap(MODULE, "sched_yield", sched_yield)?;
    linker.func_wrap(MODULE, "fd_close", fd_close)?;
    linker.func_wrap(MODULE, "fd_fdstat_get", fd_fdstat_get)?;
    linker.func_wrap(MODULE, "fd_prestat_get", fd_prestat_get)?;
    linker.func_wrap(MODULE, "fd_prestat_dir_name", fd_prestat_dir_name)?;
    linker.func_wrap(MODULE, "fd_seek", fd_seek)?;
    Ok(())
}

fn fd_write(
    mut caller: Caller<'_, VmState>,
    fd: u32,
    iovs: u32,
    iovs_len: u32,
    nwritten: u32,
) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.fd_write")?;
    let Some(table) = iovs_len
        .checked_mul(8)
        .and_then(|size| memory::read(&mut caller, iovs, size))
    else {
        return Ok(FAULT);
    };
    let mut written = Vec::new();
    for iov in table.chunks_exact(8) {
        let field = |at: usize| {
            iov.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        let (Some(ptr), Some(len)) = (field(0), field(4)) else {
            return Ok(FAULT);
        };
        let Some(bytes) = memory::read(&mut caller, ptr, len) else {
            return Ok(FAULT);
        };
        written.extend(bytes);
    }
    let count = u32::try_from(written.len()).unwrap_or(u32::MAX);
    match fd {
        1 => caller.data_mut().stdout.extend(written),
        2 => caller.data_mut().stderr.extend(written),
        _ => return Ok(BADF),
    }
    Ok(if memory::write_u32(&mut caller, nwritten, count) {
        SUCCESS
    } else {
        FAULT
    })
}

/// No variables, no arguments.
fn zero_sizes(caller: &mut Caller<'_, VmState>, count: u32, size: u32) -> u32 {
    if memory::write_u32(caller, count, 0) && memory::write_u32(caller, size, 0) {
        SUCCESS
    } else {
        FAULT
    }
}

fn environ_sizes_get(mut caller: Caller<'_, VmState>, count: u32, size: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.environ_sizes_get")?;
    Ok(zero_sizes(&mut caller, count, size))
}

fn environ_get(mut caller: Caller<'_, VmState>, _environ: u32, _buf: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.environ_get")?;
    Ok(SUCCESS)
}

fn args_sizes_get(mut caller: Caller<'_, VmState>, count: u32, size: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.args_sizes_get")?;
    Ok(zero_sizes(&mut caller, count, size))
}

fn args_get(mut caller: Caller<'_, VmState>, _argv: u32, _buf: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.args_get")?;
    Ok(SUCCESS)
}

/// Realtime (0) is the virtual wall clock; the others count from the host's start.
fn clock_time_get(mut caller: Caller<'_, VmState>, clock: u32, _precision: u64, time: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.clock_time_get")?;
    let now = caller.data().world.borrow().clock;
    let nanos = match clock {
        0 => now.unix_nanos(),
        1..=3 => now.monotonic_nanos(),
        _ => return Ok(INVAL),
    };
    Ok(if memory::write_u64(&mut caller, time, nanos) {
        SUCCESS
    } else {
        FAULT
    })
}

fn random_get(mut caller: Caller<'_, VmState>, buf: u32, len: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.random_get")?;
    let Ok(size) = usize::try_from(len) else {
        return Ok(INVAL);
    };
    let mut bytes = vec![0; size];
    caller.data_mut().random.fill(&mut bytes);
    Ok(if memory::write(&mut caller, buf, &bytes) {
        SUCCESS
    } else {
        FAULT
    })
}

fn proc_exit(mut caller: Caller<'_, VmState>, code: u32) -> wasmtime::Result<()> {
    enter(&mut caller, "wasi_snapshot_preview1.proc_exit")?;
    Err(trap(
        &mut caller,
        FailureKind::Trap,
        format!("the plugin called proc_exit({code})"),
    ))
}

fn sched_yield(mut caller: Caller<'_, VmState>) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.sched_yield")?;
    Ok(SUCCESS)
}

// No file descriptors but stdout and stderr, and no preopened directories.

fn fd_close(mut caller: Caller<'_, VmState>, _fd: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.fd_close")?;
    Ok(BADF)
}

fn fd_fdstat_get(mut caller: Caller<'_, VmState>, _fd: u32, _stat: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.fd_fdstat_get")?;
    Ok(BADF)
}

fn fd_prestat_get(mut caller: Caller<'_, VmState>, _fd: u32, _stat: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.fd_prestat_get")?;
    Ok(BADF)
}

fn fd_prestat_dir_name(mut caller: Caller<'_, VmState>, _fd: u32, _path: u32, _len: u32) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.fd_prestat_dir_name")?;
    Ok(BADF)
}

fn fd_seek(
    mut caller: Caller<'_, VmState>,
    _fd: u32,
    _offset: i64,
    _whence: u32,
    _new_offset: u32,
) -> Ret {
    enter(&mut caller, "wasi_snapshot_preview1.fd_seek")?;
    Ok(BADF)
}
