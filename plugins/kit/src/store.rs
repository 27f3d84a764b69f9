//! Cross-worker state: one trait over proxy-wasm shared data, with compare-and-swap.
//!
//! Envoy runs one Wasm VM per worker; the only state they share is the host's key-value store.
//! Every read returns a [`Cas`] token and every write names the token it is based on, so two
//! workers updating one key never lose an update silently: the second gets [`Write::Conflict`]
//! and reads again ([`update`] does that loop).
//!
//! Hosts differ on a write that names no token (an insert after a read found nothing): Envoy
//! overwrites whatever is there, Kong's ngx_wasm_module refuses if the key exists. So callers
//! insert only after a read found the key absent, and this module never writes blind. On Envoy
//! two workers inserting the same new key at once can still both succeed (last one wins): that
//! race exists once per key lifetime, and callers that must be exact keep keys alive (an empty
//! value is a tombstone, read back with a token) instead of recreating them.
//!
//! Every key starts with [`NAMESPACE`]. Kong's ngx_wasm_module keeps a key `<zone>/<rest>` in the
//! shm_kv zone named `<zone>` when one is defined, else in the default zone `*`, and traps when
//! neither exists (`ngx_wa_shm_kv_resolve_key`). Kong 3.4–3.6 cannot define `*` from kong.conf,
//! only named zones, so one zone `palisade` holds every plugin's state on every Kong release
//! (`nginx_wasm_shm_kv_palisade`; `nginx_wasm_shm_palisade` on 3.4 and 3.5). Envoy scopes shared
//! data by `vm_id` and reads the prefix as part of the key.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::num::NonZeroU32;

/// The first segment of every shared-data key: the name of Kong's shm_kv zone for Palisade.
pub const NAMESPACE: &str = "palisade/";

/// The version a read saw; a write naming it succeeds only if nobody wrote since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cas(pub NonZeroU32);

/// A value read from the store, with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub cas: Cas,
}

/// What happened to a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Write {
    Stored,
    /// Someone wrote the key since the read the write was based on (or, for an insert, the key
    /// exists on a host that refuses blind overwrites). Read again and retry.
    Conflict,
}

/// The store could not do what was asked, for a reason retrying will not fix at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("shared data is full")]
    Full,
    #[error("the host refused the shared-data call with status {0}")]
    Host(u32),
}

/// A key-value store shared by every worker's VM.
pub trait SharedStore {
    /// The value under `key` and its version, or `None` if the key was never written.
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Writes `value` if the key is still at `expected` (from the last `get`); `None` means the
    /// `get` found no key.
    fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError>;

    /// Writes `value` over `current`, this key's entry as the last `get` returned it: what
    /// `set(key, value, Some(current.cas))` does, except where a host cannot grow a value in
    /// place (Kong before 3.8; the host store takes the safe path on every Kong). [`update`]
    /// writes through here; a direct `set` over an existing value is for fixed-size values only
    /// (a rate-limit slot, a verified-token entry).
    fn replace(&self, key: &str, value: &[u8], current: &Entry) -> Result<Write, StoreError> {
        self.set(key, value, Some(current.cas))
    }
}

impl<S: SharedStore + ?Sized> SharedStore for &S {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
        (**self).set(key, value, expected)
    }
    fn replace(&self, key: &str, value: &[u8], current: &Entry) -> Result<Write, StoreError> {
        (**self).replace(key, value, current)
    }
}

impl<S: SharedStore + ?Sized> SharedStore for std::rc::Rc<S> {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
        (**self).set(key, value, expected)
    }
    fn replace(&self, key: &str, value: &[u8], current: &Entry) -> Result<Write, StoreError> {
        (**self).replace(key, value, current)
    }
}

/// What an [`update`] step decided.
pub enum Step<T> {
    /// Write these bytes, then return the value (if the write wins).
    Write(Vec<u8>, T),
    /// Nothing to write; return the value.
    Keep(T),
}

/// Why an [`update`] gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("gave up after {0} conflicting writes")]
    Contended(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Read-modify-write with retry: `step` sees the current value (if any) and decides; on a
/// conflict the store is read again and `step` runs again, at most `attempts` times.
pub fn update<T>(
    store: &impl SharedStore,
    key: &str,
    attempts: u32,
    mut step: impl FnMut(Option<&[u8]>) -> Step<T>,
) -> Result<T, UpdateError> {
    for _ in 0..attempts {
        let current = store.get(key)?;
        match step(current.as_ref().map(|entry| entry.value.as_slice())) {
            Step::Keep(result) => return Ok(result),
            Step::Write(value, result) => {
                let written = match &current {
                    Some(entry) => store.replace(key, &value, entry)?,
                    None => store.set(key, &value, None)?,
                };
                match written {
                    Write::Stored => return Ok(result),
                    Write::Conflict => continue,
                }
            }
        }
    }
    Err(UpdateError::Contended(attempts))
}

/// How a host treats a write that names no version on a key that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlindWrite {
    /// Envoy: the write overwrites.
    Overwrites,
    /// Kong's ngx_wasm_module: the write is refused.
    Refused,
}

/// An in-memory store with the hosts' CAS semantics, for unit tests. Share one between several
/// engines (through `Rc` or references) to stand for several workers.
#[derive(Debug)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, NonZeroU32)>>,
    next_cas: Cell<u32>,
    blind_write: BlindWrite,
    capacity_bytes: usize,
}

impl MemoryStore {
    /// A store that behaves like Envoy's and never fills up.
    pub fn new() -> Self {
        Self::with(BlindWrite::Overwrites, usize::MAX)
    }

    /// A store with a chosen blind-write rule and a capacity in bytes (keys plus values).
    pub fn with(blind_write: BlindWrite, capacity_bytes: usize) -> Self {
        Self {
            entries: RefCell::default(),
            next_cas: Cell::new(0),
            blind_write,
            capacity_bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    fn bump(&self) -> NonZeroU32 {
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        NonZeroU32::new(next).unwrap_or(NonZeroU32::MIN)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.entries.borrow().get(key).map(|(value, cas)| Entry {
            value: value.clone(),
            cas: Cas(*cas),
        }))
    }

    fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
        let mut entries = self.entries.borrow_mut();
        let existing = entries.get(key).map(|(old, cas)| (old.len(), *cas));
        match (existing, expected) {
            (Some((_, current)), Some(Cas(seen))) if current != seen => return Ok(Write::Conflict),
            (None, Some(_)) => return Ok(Write::Conflict),
            (Some(_), None) if self.blind_write == BlindWrite::Refused => {
                return Ok(Write::Conflict)
            }
            _ => {}
        }
        let used: usize = entries.iter().map(|(k, (v, _))| k.len() + v.len()).sum();
        let freed = existing.map_or(0, |(old_len, _)| key.len() + old_len);
        if used - freed + key.len() + value.len() > self.capacity_bytes {
            return Err(StoreError::Full);
        }
        let cas = self.bump();
        entries.insert(key.to_owned(), (value.to_vec(), cas));
        Ok(Write::Stored)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn a_write_based_on_a_stale_read_conflicts() {
        let store = MemoryStore::new();
        assert_eq!(store.set("k", b"1", None), Ok(Write::Stored));
        let first = store.get("k").unwrap().unwrap();
        let second = store.get("k").unwrap().unwrap();
        assert_eq!(store.set("k", b"2", Some(first.cas)), Ok(Write::Stored));
        assert_eq!(store.set("k", b"3", Some(second.cas)), Ok(Write::Conflict));
        assert_eq!(store.get("k").unwrap().unwrap().value, b"2");
    }

    #[test]
    fn blind_write_follows_the_host() {
        let envoy = MemoryStore::with(BlindWrite::Overwrites, usize::MAX);
        let kong = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        for store in [&envoy, &kong] {
            assert_eq!(store.set("k", b"1", None), Ok(Write::Stored));
        }
        assert_eq!(envoy.set("k", b"2", None), Ok(Write::Stored));
        assert_eq!(kong.set("k", b"2", None), Ok(Write::Conflict));
    }

    #[test]
    fn a_full_store_is_an_error_not_a_conflict() {
        let store = MemoryStore::with(BlindWrite::Overwrites, 8);
        assert_eq!(store.set("k", b"1234567", None), Ok(Write::Stored));
        let entry = store.get("k").unwrap().unwrap();
        assert_eq!(
            store.set("k", b"12345678", Some(entry.cas)),
            Err(StoreError::Full)
        );
        // Replacing with a value of the same size fits.
        assert_eq!(
            store.set("k", b"7654321", Some(entry.cas)),
            Ok(Write::Stored)
        );
    }

    /// Another worker's read-modify-write, as it would happen between our read and our write.
    fn bump_from_elsewhere(store: &MemoryStore, key: &str, to: u8) {
        let seen = store.get(key).unwrap().map(|e| e.cas);
        assert_eq!(store.set(key, &[to], seen), Ok(Write::Stored));
    }

    #[test]
    fn update_retries_until_its_write_wins() {
        let store = MemoryStore::new();
        assert_eq!(store.set("n", &[0], None), Ok(Write::Stored));
        let mut runs = 0;
        let result = update(&store, "n", 3, |current| {
            runs += 1;
            let n = current.map_or(0, |v| v[0]);
            if runs == 1 {
                bump_from_elsewhere(&store, "n", 10);
            }
            Step::Write(vec![n + 1], n + 1)
        });
        assert_eq!(result, Ok(11));
        assert_eq!(runs, 2);
        assert_eq!(store.get("n").unwrap().unwrap().value, vec![11]);
    }

    #[test]
    fn update_gives_up_under_endless_contention() {
        let store = MemoryStore::new();
        assert_eq!(store.set("n", &[0], None), Ok(Write::Stored));
        let result: Result<(), _> = update(&store, "n", 4, |_| {
            bump_from_elsewhere(&store, "n", 7);
            Step::Write(vec![1], ())
        });
        assert_eq!(result, Err(UpdateError::Contended(4)));
        assert_eq!(store.get("n").unwrap().unwrap().value, vec![7]);
    }

    #[test]
    fn concurrent_first_inserts_race_on_envoy_but_not_on_kong() {
        // Both workers read "absent", the other inserts, then we insert. Envoy lets the blind
        // write through (the documented once-per-key race); Kong refuses it and we retry on top.
        for (blind_write, expected) in [(BlindWrite::Overwrites, 1), (BlindWrite::Refused, 11)] {
            let store = MemoryStore::with(blind_write, usize::MAX);
            let mut runs = 0;
            let result = update(&store, "n", 3, |current| {
                runs += 1;
                if runs == 1 {
                    assert_eq!(store.set("n", &[10], None), Ok(Write::Stored));
                }
                let n = current.map_or(0, |v| v[0]);
                Step::Write(vec![n + 1], n + 1)
            });
            assert_eq!(result, Ok(expected), "{blind_write:?}");
        }
    }

    #[test]
    fn update_can_decide_not_to_write() {
        let store = MemoryStore::new();
        let result = update(&store, "n", 1, |current| Step::Keep(current.is_none()));
        assert_eq!(result, Ok(true));
        assert!(store.is_empty());
    }
}
