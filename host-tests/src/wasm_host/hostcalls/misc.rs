//! Logging, time, ticks, the effective context, `proxy_done`.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use super::{enter, trap};
use crate::wasm_host::abi::{status, LogLevel};
use crate::wasm_host::error::FailureKind;
use crate::wasm_host::logs::LogOrigin;
use crate::wasm_host::memory;
use crate::wasm_host::vm::VmState;

type Ret = wasmtime::Result<u32>;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_log", proxy_log)?;
    linker.func_wrap("env", "proxy_get_log_level", proxy_get_log_level)?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        proxy_set_effective_context,
    )?;
    linker.func_wrap("env", "proxy_done", proxy_done)?;
    Ok(())
}

fn proxy_log(mut caller: Caller<'_, VmState>, level: u32, ptr: u32, len: u32) -> Ret {
    enter(&mut caller, "proxy_log")?;
    let Some(level) = LogLevel::from_abi(level) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let Some(message) = memory::read_text(&mut caller, ptr, len) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    caller.data().log(LogOrigin::Plugin, level, message);
    Ok(status::OK)
}

/// Envoy answers its own level; the test host's is `info`, the level Envoy runs at by default.
fn proxy_get_log_level(mut caller: Caller<'_, VmState>, ret: u32) -> Ret {
    enter(&mut caller, "proxy_get_log_level")?;
    Ok(
        if memory::write_u32(&mut caller, ret, LogLevel::Info.to_abi()) {
            status::OK
        } else {
            status::INVALID_MEMORY_ACCESS
        },
    )
}

fn proxy_get_current_time_nanoseconds(mut caller: Caller<'_, VmState>, ret: u32) -> Ret {
    enter(&mut caller, "proxy_get_current_time_nanoseconds")?;
    let nanos = caller.data().world.borrow().clock.unix_nanos();
    Ok(if memory::write_u64(&mut caller, ret, nanos) {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    })
}

/// Ticks go to this VM's root context, the first `period` after this call; 0 stops them.
fn proxy_set_tick_period_milliseconds(mut caller: Caller<'_, VmState>, period: u32) -> Ret {
    enter(&mut caller, "proxy_set_tick_period_milliseconds")?;
    let now = caller.data().world.borrow().clock.elapsed();
    if caller.data().tick_period.is_some() && caller.data().profile.second_tick_traps(period) {
        let version = caller.data().profile.describe();
        return Err(trap(
            &mut caller,
            FailureKind::Refused,
            format!("{version} profile: proxy_set_tick_period_milliseconds traps \"tick_period already set\": Kong sets a root context's tick once"),
        ));
    }
    let state = caller.data_mut();
    if period == 0 {
        state.tick_period = None;
        state.next_tick = None;
    } else {
        let period = Duration::from_millis(u64::from(period));
        state.tick_period = Some(period);
        state.next_tick = Some(now + period);
    }
    Ok(status::OK)
}

fn proxy_set_effective_context(mut caller: Caller<'_, VmState>, context: u32) -> Ret {
    enter(&mut caller, "proxy_set_effective_context")?;
    let state = caller.data_mut();
    // ngx_wasm_module answers Ok and changes nothing, on every pin
    // (ngx_proxy_wasm_hfuncs_set_effective_context): the call stays in the current context.
    if state.profile.is_kong() {
        return Ok(status::OK);
    }
    let live = context == state.root_context
        || state
            .streams
            .get(&context)
            .is_some_and(|stream| !stream.finished);
    if !live {
        return Ok(status::BAD_ARGUMENT);
    }
    state.active_context = context;
    Ok(status::OK)
}

/// cpp-host answers NotFound unless the root context's `on_done` returned false
/// (`WasmBase::done`); then the root is deleted once the call returns: no more ticks, and its
/// call-outs are cancelled.
fn proxy_done(mut caller: Caller<'_, VmState>) -> Ret {
    enter(&mut caller, "proxy_done")?;
    let state = caller.data_mut();
    if !state.pending_done {
        return Ok(status::NOT_FOUND);
    }
    state.pending_done = false;
    state.root_deleted = true;
    state.tick_period = None;
    state.next_tick = None;
    Ok(status::OK)
}
