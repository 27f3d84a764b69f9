//! Cross-worker state: one trait over proxy-wasm shared data, with compare-and-swap.
//!
//! Envoy runs one Wasm VM per worker; the only state they share is the host's key-value store.
//! Every read returns a [`Cas`] token and every write names the token it is based on, so two
//! workers updating one key never lose an update silently: the second gets [`Write::Conflict`]
//! and reads again ([`update`] does that loop).
//!
//! Hosts differ on a write that names no token: Envoy overwrites whatever is there, Kong's
//! ngx_wasm_module refuses if the key exists. A write with `expected: None` is therefore an
//! insert that never overwrites, on both hosts ([`insert`]): two workers inserting the same new
//! key at once get one [`Write::Stored`] and one [`Write::Conflict`], and the loser reads again.
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

/// The version an insert names on a host that has not yet shown it wants 0 ([`insert`]). Envoy
/// hands out versions from one counter for every key, starting at 1 and skipping 0, so an
/// existing key holds this one only if its last write drew it, once per 2^32 - 1 writes.
pub const INSERT_VERSION: u32 = u32::MAX;

/// Writes a key only if it does not exist, over a host's raw `proxy_set_shared_data`
/// (`write(version)`), whichever host it is:
///
/// - Envoy inserts an absent key whatever version the write names, and checks a non-zero one
///   against an existing key: a write naming [`INSERT_VERSION`] is an insert-if-absent. (One
///   naming 0 would overwrite.)
/// - Kong takes a write of an absent key only if it names 0, and refuses 0 for an existing key:
///   its insert-if-absent names 0.
///
/// So the first insert names [`INSERT_VERSION`]. When that is refused and `exists()` finds no
/// key, the host is one that wants 0 (Envoy never refuses an absent key, nor removes one): the
/// write is made again with 0, and `names_zero` remembers it for every later insert of the VM.
pub fn insert(
    names_zero: &Cell<bool>,
    mut write: impl FnMut(u32) -> Result<Write, StoreError>,
    exists: impl FnOnce() -> Result<bool, StoreError>,
) -> Result<Write, StoreError> {
    if names_zero.get() {
        return write(0);
    }
    match write(INSERT_VERSION)? {
        Write::Stored => Ok(Write::Stored),
        Write::Conflict if exists()? => Ok(Write::Conflict),
        Write::Conflict => {
            names_zero.set(true);
            write(0)
        }
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

/// How a host's raw write treats versions: what a write naming version 0 does to a key that
/// exists, and (the other side of it) what it takes to insert an absent key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlindWrite {
    /// Envoy: a write naming 0 overwrites; an absent key is inserted whatever version is named.
    Overwrites,
    /// Kong's ngx_wasm_module: a write naming 0 is refused; an absent key is inserted only by a
    /// write naming 0.
    Refused,
}

/// An in-memory store with the hosts' raw CAS semantics under the same [`insert`] the host
/// store uses, for unit tests. Share one between several engines (through `Rc` or references)
/// to stand for several workers.
#[derive(Debug)]
pub struct MemoryStore {
    entries: RefCell<HashMap<String, (Vec<u8>, NonZeroU32)>>,
    next_cas: Cell<u32>,
    blind_write: BlindWrite,
    capacity_bytes: usize,
    inserts_name_zero: Cell<bool>,
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
            inserts_name_zero: Cell::new(false),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.borrow().is_empty()
    }

    /// Drops `key`, as Kong's shm zone evicts one under memory pressure (Envoy never removes a
    /// key). Whether it was there.
    pub fn evict(&self, key: &str) -> bool {
        self.entries.borrow_mut().remove(key).is_some()
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
        match expected {
            Some(Cas(cas)) => self.raw_set(key, value, cas.get()),
            None => insert(
                &self.inserts_name_zero,
                |cas| self.raw_set(key, value, cas),
                || Ok(self.entries.borrow().contains_key(key)),
            ),
        }
    }
}

impl MemoryStore {
    /// A host's `proxy_set_shared_data` naming version `cas` (0: none).
    fn raw_set(&self, key: &str, value: &[u8], cas: u32) -> Result<Write, StoreError> {
        let mut entries = self.entries.borrow_mut();
        let existing = entries.get(key).map(|(old, cas)| (old.len(), *cas));
        let refused = match (self.blind_write, existing) {
            // cpp-host `SharedData::set`: a version is checked only when non-zero and the key
            // exists.
            (BlindWrite::Overwrites, Some((_, current))) => cas != 0 && cas != current.get(),
            (BlindWrite::Overwrites, None) => false,
            // ngx_wa_shm_kv.c: `cas != (n == NULL ? 0 : n->cas)` is not written.
            (BlindWrite::Refused, Some((_, current))) => cas != current.get(),
            (BlindWrite::Refused, None) => cas != 0,
        };
        if refused {
            return Ok(Write::Conflict);
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
    fn an_insert_never_overwrites_on_either_host() {
        for blind_write in [BlindWrite::Overwrites, BlindWrite::Refused] {
            let store = MemoryStore::with(blind_write, usize::MAX);
            for _ in 0..2 {
                assert_eq!(store.set("k", b"1", None), Ok(Write::Stored));
                assert_eq!(store.set("k", b"2", None), Ok(Write::Conflict));
                assert_eq!(store.get("k").unwrap().unwrap().value, b"1");
                store.entries.borrow_mut().clear();
            }
            // Only Kong's refusal of an absent key teaches the store to name 0.
            assert_eq!(
                store.inserts_name_zero.get(),
                blind_write == BlindWrite::Refused
            );
        }
    }

    /// One [`insert`] against a host that answers a write naming a version with
    /// `answer(version)` and, when asked, says whether the key `exists` (`None`: it must not be
    /// asked). What the insert returned, and the versions its writes named.
    fn insert_with(
        names_zero: &Cell<bool>,
        answer: impl Fn(u32) -> Write,
        exists: Option<bool>,
    ) -> (Result<Write, StoreError>, Vec<u32>) {
        let mut named = Vec::new();
        let written = insert(
            names_zero,
            |cas| {
                named.push(cas);
                Ok(answer(cas))
            },
            || Ok(exists.expect("exists() asked")),
        );
        (written, named)
    }

    #[test]
    fn insert_names_a_version_envoy_checks_and_zero_where_kong_wants_it() {
        let names_zero = Cell::new(false);
        // Envoy, key absent: the first write inserts.
        assert_eq!(
            insert_with(&names_zero, |_| Write::Stored, None),
            (Ok(Write::Stored), vec![INSERT_VERSION])
        );
        // Envoy, key present: refused, and it exists: a conflict, no write naming 0.
        assert_eq!(
            insert_with(&names_zero, |_| Write::Conflict, Some(true)),
            (Ok(Write::Conflict), vec![INSERT_VERSION])
        );
        assert!(!names_zero.get());
        // Kong, key absent: refused, yet absent: written again naming 0, remembered.
        let kong_absent = |cas| {
            if cas == 0 {
                Write::Stored
            } else {
                Write::Conflict
            }
        };
        assert_eq!(
            insert_with(&names_zero, kong_absent, Some(false)),
            (Ok(Write::Stored), vec![INSERT_VERSION, 0])
        );
        assert!(names_zero.get());
        assert_eq!(
            insert_with(&names_zero, |_| Write::Conflict, None),
            (Ok(Write::Conflict), vec![0])
        );
        // A store error is passed on, not read as a conflict.
        let failed = insert(
            &Cell::new(false),
            |_| Err(StoreError::Full),
            || unreachable!(),
        );
        assert_eq!(failed, Err(StoreError::Full));
    }

    #[test]
    fn an_evicted_key_takes_an_insert_and_refuses_a_write_based_on_an_old_read() {
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        assert_eq!(store.set("k", b"1", None), Ok(Write::Stored));
        let before = store.get("k").unwrap().unwrap();
        assert!(store.evict("k"));
        assert!(!store.evict("k"));
        assert_eq!(store.get("k"), Ok(None));
        assert_eq!(store.set("k", b"2", Some(before.cas)), Ok(Write::Conflict));
        assert_eq!(store.set("k", b"3", None), Ok(Write::Stored));
        assert_eq!(store.get("k").unwrap().unwrap().value, b"3");
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
    fn concurrent_first_inserts_lose_no_update_on_either_host() {
        // Both workers read "absent", the other inserts, then we insert: refused on both hosts
        // (Envoy would have overwritten a write naming 0), so we read again and count on top.
        for (blind_write, expected) in [(BlindWrite::Overwrites, 11), (BlindWrite::Refused, 11)] {
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
