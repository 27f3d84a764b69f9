//! Reading and writing the guest's linear memory from a host function, and handing the guest
//! bytes through its own allocator (`proxy_on_memory_allocate`, or `malloc`), as the ABI wants.

use wasmtime::Caller;

use super::abi::status;
use super::vm::{Phase, VmState};

/// Bytes at `ptr..ptr+len`; `None` when out of bounds.
pub(crate) fn read(caller: &mut Caller<'_, VmState>, ptr: u32, len: u32) -> Option<Vec<u8>> {
    let memory = caller.data().memory?;
    let mut bytes = vec![0; usize::try_from(len).ok()?];
    memory
        .read(&*caller, usize::try_from(ptr).ok()?, &mut bytes)
        .ok()?;
    Some(bytes)
}

/// A text argument (a log line, a property path), lossily decoded.
pub(crate) fn read_text(caller: &mut Caller<'_, VmState>, ptr: u32, len: u32) -> Option<String> {
    read(caller, ptr, len).map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn write(caller: &mut Caller<'_, VmState>, ptr: u32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory else {
        return false;
    };
    usize::try_from(ptr).is_ok_and(|at| memory.write(&mut *caller, at, bytes).is_ok())
}

pub(crate) fn write_u32(caller: &mut Caller<'_, VmState>, ptr: u32, value: u32) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Caller<'_, VmState>, ptr: u32, value: u64) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the guest allocates and stores its address and size at `ptr_ptr`
/// and `size_ptr`. Empty data is returned as a null pointer and size 0, without allocating (as
/// cpp-host's `copyString` does). Returns the ABI status.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_ptr: u32,
    size_ptr: u32,
) -> wasmtime::Result<u32> {
    let Ok(size) = u32::try_from(bytes.len()) else {
        return Ok(status::INTERNAL_FAILURE);
    };
    let address = if bytes.is_empty() {
        0
    } else {
        let address = allocate(caller, size)?;
        if !write(caller, address, bytes) {
            return Ok(status::INVALID_MEMORY_ACCESS);
        }
        address
    };
    if write_u32(caller, ptr_ptr, address) && write_u32(caller, size_ptr, size) {
        Ok(status::OK)
    } else {
        Ok(status::INVALID_MEMORY_ACCESS)
    }
}

/// Calls the guest's allocator. Host calls made from inside it are restricted, as cpp-host's
/// `allocMemory` restricts them.
fn allocate(caller: &mut Caller<'_, VmState>, size: u32) -> wasmtime::Result<u32> {
    let Some(allocator) = caller.data().allocator.clone() else {
        return Err(wasmtime::Error::msg(
            "the module exports neither proxy_on_memory_allocate nor malloc: the host cannot hand it data",
        ));
    };
    caller
        .data_mut()
        .count_host_call(super::abi::GUEST_ALLOCATION);
    let previous = std::mem::replace(&mut caller.data_mut().phase, Phase::Allocating);
    let address = allocator.call(&mut *caller, size);
    caller.data_mut().phase = previous;
    let address = address?;
    if address == 0 {
        return Err(wasmtime::Error::msg(format!(
            "proxy_on_memory_allocate({size}) returned a null pointer"
        )));
    }
    Ok(address)
}
