//! Properties, shared data, shared queues and metrics: the state a plugin reads beyond its own
//! stream, much of it shared by every VM of the host.

use wasmtime::{Caller, Linker};

use super::{enter, trap};
use crate::wasm_host::abi::{status, LogLevel};
use crate::wasm_host::error::FailureKind;
use crate::wasm_host::logs::LogOrigin;
use crate::wasm_host::memory;
use crate::wasm_host::properties::{self, Lookup};
use crate::wasm_host::queues::QueueOwner;
use crate::wasm_host::vm::VmState;
use crate::wasm_host::world::{Event, RefusedProperty, SharedDataFault};

type Ret = wasmtime::Result<u32>;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_get_property", proxy_get_property)?;
    linker.func_wrap("env", "proxy_set_property", proxy_set_property)?;
    linker.func_wrap("env", "proxy_get_shared_data", proxy_get_shared_data)?;
    linker.func_wrap("env", "proxy_set_shared_data", proxy_set_shared_data)?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        proxy_register_shared_queue,
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        proxy_resolve_shared_queue,
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        proxy_enqueue_shared_queue,
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        proxy_dequeue_shared_queue,
    )?;
    linker.func_wrap("env", "proxy_define_metric", proxy_define_metric)?;
    linker.func_wrap("env", "proxy_increment_metric", proxy_increment_metric)?;
    linker.func_wrap("env", "proxy_record_metric", proxy_record_metric)?;
    linker.func_wrap("env", "proxy_get_metric", proxy_get_metric)?;
    Ok(())
}

fn ok_if(written: bool) -> u32 {
    if written {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    }
}

/// Records a property Kong refuses, logged as Kong logs it.
fn refuse_property(state: &VmState, path: &str, log: String) {
    state.log(LogOrigin::Host, LogLevel::Error, log.clone());
    state
        .world
        .borrow_mut()
        .refused_properties
        .push(RefusedProperty {
            worker: state.worker,
            path: path.to_owned(),
            log,
        });
}

fn proxy_get_property(
    mut caller: Caller<'_, VmState>,
    path_ptr: u32,
    path_size: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_get_property")?;
    let Some(encoded) = memory::read(&mut caller, path_ptr, path_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let path = properties::path_of(&encoded);
    match properties::get(caller.data(), &path) {
        Lookup::Found(value) => memory::return_bytes(&mut caller, &value, ret_ptr, ret_size),
        Lookup::NotFound => Ok(status::NOT_FOUND),
        Lookup::Unsupported(log) => {
            refuse_property(caller.data(), &path, log);
            Ok(status::NOT_FOUND)
        }
        Lookup::OutsideRequest => {
            caller.data().log(
                LogOrigin::Host,
                LogLevel::Error,
                format!("cannot get scoped properties outside of a request (\"{path}\")"),
            );
            Ok(status::INTERNAL_FAILURE)
        }
    }
}

fn proxy_set_property(
    mut caller: Caller<'_, VmState>,
    path_ptr: u32,
    path_size: u32,
    value_ptr: u32,
    value_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_set_property")?;
    let (Some(encoded), Some(value)) = (
        memory::read(&mut caller, path_ptr, path_size),
        memory::read(&mut caller, value_ptr, value_size),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let path = properties::path_of(&encoded);
    match properties::set(caller.data_mut(), &path, value) {
        Ok(()) => Ok(status::OK),
        Err(log) => {
            refuse_property(caller.data(), &path, log);
            Ok(status::NOT_FOUND)
        }
    }
}

fn proxy_get_shared_data(
    mut caller: Caller<'_, VmState>,
    key_ptr: u32,
    key_size: u32,
    ret_ptr: u32,
    ret_size: u32,
    ret_cas: u32,
) -> Ret {
    enter(&mut caller, "proxy_get_shared_data")?;
    let Some(key) = memory::read(&mut caller, key_ptr, key_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    if let Some(refusal) = caller
        .data()
        .profile
        .shared_data_refusal("proxy_get_shared_data", &key)
    {
        return Err(trap(&mut caller, FailureKind::Refused, refusal));
    }
    if let Some(SharedDataFault::Status(status)) = caller.data().world.borrow().shared_data_fault {
        return Ok(status);
    }
    let entry = caller.data().world.borrow().shared_data.get(&key);
    match entry {
        None => Ok(status::NOT_FOUND),
        Some((value, cas)) => {
            let result = memory::return_bytes(&mut caller, &value, ret_ptr, ret_size)?;
            if result != status::OK {
                return Ok(result);
            }
            Ok(ok_if(memory::write_u32(&mut caller, ret_cas, cas)))
        }
    }
}

/// A NULL value pointer is a delete on Kong (ngx_wa_shm_kv); Envoy reads it as empty.
fn proxy_set_shared_data(
    mut caller: Caller<'_, VmState>,
    key_ptr: u32,
    key_size: u32,
    value_ptr: u32,
    value_size: u32,
    cas: u32,
) -> Ret {
    enter(&mut caller, "proxy_set_shared_data")?;
    let Some(key) = memory::read(&mut caller, key_ptr, key_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    if let Some(refusal) = caller
        .data()
        .profile
        .shared_data_refusal("proxy_set_shared_data", &key)
    {
        return Err(trap(&mut caller, FailureKind::Refused, refusal));
    }
    let fault = caller.data().world.borrow().shared_data_fault;
    match fault {
        Some(SharedDataFault::LoseEveryWrite) => {
            return Ok(caller
                .data()
                .world
                .borrow_mut()
                .shared_data
                .lose_write(&key));
        }
        Some(SharedDataFault::Status(status)) => return Ok(status),
        None => {}
    }
    let value = if value_ptr == 0 && value_size == 0 {
        None
    } else {
        match memory::read(&mut caller, value_ptr, value_size) {
            Some(value) => Some(value),
            None => return Ok(status::INVALID_MEMORY_ACCESS),
        }
    };
    if let Some(value) = &value {
        let replaced = caller
            .data()
            .world
            .borrow()
            .shared_data
            .replaced_len(&key, cas);
        let overrun = replaced.and_then(|old_len| {
            caller
                .data()
                .profile
                .shared_data_overrun(&key, old_len, value.len())
        });
        if let Some(overrun) = overrun {
            return Err(trap(&mut caller, FailureKind::Refused, overrun));
        }
    }
    let result = caller
        .data()
        .world
        .borrow_mut()
        .shared_data
        .set(&key, value.as_deref(), cas);
    Ok(result)
}

fn proxy_register_shared_queue(
    mut caller: Caller<'_, VmState>,
    name_ptr: u32,
    name_size: u32,
    ret_id: u32,
) -> Ret {
    enter(&mut caller, "proxy_register_shared_queue")?;
    let Some(name) = memory::read(&mut caller, name_ptr, name_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let state = caller.data();
    let owner = QueueOwner {
        vm: state.worker,
        root_context: state.root_context,
    };
    let id = state
        .world
        .borrow_mut()
        .queues
        .register(&state.plugin.vm_id, &name, owner);
    Ok(ok_if(memory::write_u32(&mut caller, ret_id, id)))
}

fn proxy_resolve_shared_queue(
    mut caller: Caller<'_, VmState>,
    vm_id_ptr: u32,
    vm_id_size: u32,
    name_ptr: u32,
    name_size: u32,
    ret_id: u32,
) -> Ret {
    enter(&mut caller, "proxy_resolve_shared_queue")?;
    let (Some(vm_id), Some(name)) = (
        memory::read_text(&mut caller, vm_id_ptr, vm_id_size),
        memory::read(&mut caller, name_ptr, name_size),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let id = caller.data().world.borrow().queues.resolve(&vm_id, &name);
    match id {
        Some(id) => Ok(ok_if(memory::write_u32(&mut caller, ret_id, id))),
        None => Ok(status::NOT_FOUND),
    }
}

/// Appends and tells the queue's owner (`on_queue_ready`) once this callback has returned.
fn proxy_enqueue_shared_queue(
    mut caller: Caller<'_, VmState>,
    id: u32,
    value_ptr: u32,
    value_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_enqueue_shared_queue")?;
    let Some(value) = memory::read(&mut caller, value_ptr, value_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let mut world = caller.data().world.borrow_mut();
    match world.queues.enqueue(id, &value) {
        None => Ok(status::NOT_FOUND),
        Some(owner) => {
            world.events.push_back(Event::QueueReady {
                vm: owner.vm,
                root_context: owner.root_context,
                queue: id,
            });
            Ok(status::OK)
        }
    }
}

fn proxy_dequeue_shared_queue(
    mut caller: Caller<'_, VmState>,
    id: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_dequeue_shared_queue")?;
    let item = caller.data().world.borrow_mut().queues.dequeue(id);
    match item {
        None => Ok(status::NOT_FOUND),
        Some(None) => Ok(status::EMPTY),
        Some(Some(value)) => memory::return_bytes(&mut caller, &value, ret_ptr, ret_size),
    }
}

fn kong_trap(caller: &mut Caller<'_, VmState>, message: String) -> wasmtime::Error {
    trap(caller, FailureKind::Trap, message)
}

fn proxy_define_metric(
    mut caller: Caller<'_, VmState>,
    kind: u32,
    name_ptr: u32,
    name_size: u32,
    ret_id: u32,
) -> Ret {
    enter(&mut caller, "proxy_define_metric")?;
    let Some(name) = memory::read_text(&mut caller, name_ptr, name_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let state = caller.data();
    let defined =
        state
            .world
            .borrow_mut()
            .metrics
            .define(state.profile, &state.plugin.name, kind, &name);
    match defined {
        Err(message) => Err(kong_trap(&mut caller, message)),
        Ok(Err(status)) => Ok(status),
        Ok(Ok(id)) => Ok(ok_if(memory::write_u32(&mut caller, ret_id, id))),
    }
}

fn proxy_increment_metric(mut caller: Caller<'_, VmState>, id: u32, offset: i64) -> Ret {
    enter(&mut caller, "proxy_increment_metric")?;
    let state = caller.data();
    let result = state
        .world
        .borrow_mut()
        .metrics
        .increment(state.profile, id, offset);
    result.map_err(|message| kong_trap(&mut caller, message))
}

fn proxy_record_metric(mut caller: Caller<'_, VmState>, id: u32, value: u64) -> Ret {
    enter(&mut caller, "proxy_record_metric")?;
    let state = caller.data();
    let result = state
        .world
        .borrow_mut()
        .metrics
        .record(state.profile, id, value);
    result.map_err(|message| kong_trap(&mut caller, message))
}

fn proxy_get_metric(mut caller: Caller<'_, VmState>, id: u32, ret: u32) -> Ret {
    enter(&mut caller, "proxy_get_metric")?;
    let state = caller.data();
    let value = state.world.borrow().metrics.get(state.profile, id);
    match value {
        Err(message) => Err(kong_trap(&mut caller, message)),
        Ok(Err(status)) => Ok(status),
        Ok(Ok(value)) => Ok(ok_if(memory::write_u64(&mut caller, ret, value))),
    }
}
