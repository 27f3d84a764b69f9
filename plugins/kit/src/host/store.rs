//! [`SharedStore`] over proxy-wasm shared data.

use std::cell::Cell;
use std::num::NonZeroU32;

use super::abi;
use crate::store::{self, Cas, Entry, SharedStore, StoreError, Write};

thread_local! {
    /// Whether this host wants version 0 for an insert (Kong), learned from the VM's first
    /// insert ([`store::insert`]).
    static INSERTS_NAME_ZERO: Cell<bool> = const { Cell::new(false) };
}

/// One `proxy_set_shared_data` naming `cas`.
fn write(key: &str, value: &[u8], cas: u32) -> Result<Write, StoreError> {
    // SAFETY: pointers to live slices (an empty one is dangling but not null: Kong reads a
    // null value pointer as a delete).
    let status = unsafe {
        abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    };
    match status {
        abi::OK => Ok(Write::Stored),
        abi::CAS_MISMATCH => Ok(Write::Conflict),
        status => Err(StoreError::Host(status)),
    }
}

/// The host's shared data: one store for every worker's VM of this plugin (Envoy scopes it by
/// `vm_id`; Kong by its shm zone). Keys are `palisade/<plugin>/...` ([`crate::store::NAMESPACE`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut data = std::ptr::null_mut();
        let mut size = 0;
        let mut cas = 0u32;
        // SAFETY: pointers to locals; the host writes a buffer from our allocator.
        let status = unsafe {
            abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            abi::OK => {
                let value = unsafe { abi::take(data, size) };
                // Envoy never hands out version 0. Kong's version is a u32 that wraps to 0
                // after 2^32 writes of one key, and then takes only a write naming 0, which is
                // what a write after "absent" names: read it as absent (its state as fresh,
                // once per 2^32 writes) rather than fail every later read.
                let Some(cas) = NonZeroU32::new(cas) else {
                    return Ok(None);
                };
                Ok(Some(Entry {
                    value,
                    cas: Cas(cas),
                }))
            }
            abi::NOT_FOUND => Ok(None),
            status => Err(StoreError::Host(status)),
        }
    }

    fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
        match expected {
            Some(Cas(cas)) => write(key, value, cas.get()),
            None => INSERTS_NAME_ZERO.with(|names_zero| {
                store::insert(
                    names_zero,
                    |cas| write(key, value, cas),
                    || Ok(self.get(key)?.is_some()),
                )
            }),
        }
    }

    /// ngx_wasm_module before 0.4.0 (Kong 3.4-3.7) gives a longer value a new node only when
    /// the *key* is longer than the old value (`ngx_wasm_shm_kv_set_locked`, fixed in 0.4.0 by
    /// c0e09edd); otherwise it copies the value into the old node, past its allocation, and
    /// corrupts the shm zone. So on Kong such a write first empties the value in place (no
    /// growth), then writes it: a node whose value is shorter than its key is always given a
    /// new node for a longer value, and keeps its version (no delete, so versions only go up and
    /// a writer holding an old one never matches again). A reader in between sees an empty
    /// value, which every caller reads as no state; a writer in between turns the second write
    /// into a conflict, and the caller reads again. Envoy, and Kong for a value that does not
    /// grow past the old one or that sits under a longer key, get one ordinary write.
    fn replace(&self, key: &str, value: &[u8], current: &Entry) -> Result<Write, StoreError> {
        let grows_in_place = value.len() > current.value.len() && key.len() <= current.value.len();
        if !(grows_in_place && super::is_kong()) {
            return self.set(key, value, Some(current.cas));
        }
        self.empty_then_write(key, value, current.cas)
    }
}

impl HostStore {
    /// [`SharedStore::replace`]'s Kong path: rare (a value that outgrows its node), kept out of
    /// line so the common write stays small.
    #[cold]
    #[inline(never)]
    fn empty_then_write(&self, key: &str, value: &[u8], cas: Cas) -> Result<Write, StoreError> {
        if self.set(key, &[], Some(cas))? == Write::Conflict {
            return Ok(Write::Conflict);
        }
        match self.get(key)? {
            Some(emptied) if emptied.value.is_empty() => self.set(key, value, Some(emptied.cas)),
            _ => Ok(Write::Conflict),
        }
    }
}
