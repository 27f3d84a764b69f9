//! Shared data (`proxy_get_shared_data` / `proxy_set_shared_data`): one store for every VM of a
//! host, with each profile's real compare-and-swap rule (see [`CasRule`]).

use std::collections::BTreeMap;

use super::abi::status;
use super::profile::CasRule;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Vec<u8>,
    cas: u32,
}

#[derive(Debug)]
pub(crate) struct SharedData {
    rule: CasRule,
    entries: BTreeMap<Vec<u8>, Entry>,
    /// Envoy's one version counter for every key (cpp-host `SharedData::nextCas`).
    next_cas: u32,
}

impl SharedData {
    pub(crate) fn new(rule: CasRule) -> Self {
        Self {
            rule,
            entries: BTreeMap::new(),
            next_cas: 1,
        }
    }

    /// The value and its cas, or `None` (NotFound in both hosts).
    pub(crate) fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.entries
            .get(key)
            .map(|entry| (entry.value.clone(), entry.cas))
    }

    /// The length of the value a write with `cas` would replace: `None` when that write would
    /// not replace one (no key, or a cas that does not match).
    pub(crate) fn replaced_len(&self, key: &[u8], cas: u32) -> Option<usize> {
        let entry = self.entries.get(key)?;
        let matches = match self.rule {
            CasRule::Envoy => cas == 0 || cas == entry.cas,
            CasRule::Kong => cas == entry.cas,
        };
        matches.then_some(entry.value.len())
    }

    /// A `proxy_set_shared_data`; `value: None` is a NULL value pointer. Returns the status.
    pub(crate) fn set(&mut self, key: &[u8], value: Option<&[u8]>, cas: u32) -> u32 {
        match self.rule {
            CasRule::Envoy => {
                // cpp-host shared_data.cc: a cas is checked only when non-zero and the key
                // exists; a NULL pointer with size 0 reads as an empty value.
                if let Some(entry) = self.entries.get(key) {
                    if cas != 0 && cas != entry.cas {
                        return status::CAS_MISMATCH;
                    }
                }
                let cas = self.next_envoy_cas();
                self.entries.insert(
                    key.to_vec(),
                    Entry {
                        value: value.unwrap_or_default().to_vec(),
                        cas,
                    },
                );
                status::OK
            }
            CasRule::Kong => {
                // ngx_wa_shm_kv.c:279: `if (cas != (n == NULL ? 0 : n->cas))` -> not written,
                // which the host function reports as CasMismatch (ngx_proxy_wasm_host.c:1402).
                let stored = self.entries.get(key).map_or(0, |entry| entry.cas);
                if cas != stored {
                    return status::CAS_MISMATCH;
                }
                match value {
                    None => {
                        self.entries.remove(key);
                    }
                    Some(value) => {
                        self.entries.insert(
                            key.to_vec(),
                            Entry {
                                value: value.to_vec(),
                                cas: stored.wrapping_add(1),
                            },
                        );
                    }
                }
                status::OK
            }
        }
    }

    /// Sets an entry's version as if it had been written that many times (Kong's wraps).
    pub(crate) fn age(&mut self, key: &[u8], cas: u32) -> bool {
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.cas = cas;
                true
            }
            None => false,
        }
    }

    /// A write from the test itself: whatever the cas rule, it lands.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) {
        let cas = match self.rule {
            CasRule::Envoy => 0,
            CasRule::Kong => self.entries.get(key).map_or(0, |entry| entry.cas),
        };
        self.set(key, Some(value), cas);
    }

    /// Every key held, in byte order.
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        self.entries.keys().cloned().collect()
    }

    /// A write that another worker's beat: that worker's write lands instead (an existing key
    /// keeps its value at a new version; an absent key is inserted empty, which every Palisade
    /// reader takes as no state), and this one gets CasMismatch. So a host never reports a
    /// conflict on a key that then does not exist, which Envoy never does.
    pub(crate) fn lose_write(&mut self, key: &[u8]) -> u32 {
        let cas = match (self.rule, self.entries.get(key)) {
            (CasRule::Envoy, _) => self.next_envoy_cas(),
            (CasRule::Kong, Some(entry)) => entry.cas.wrapping_add(1),
            (CasRule::Kong, None) => 1,
        };
        self.entries
            .entry(key.to_vec())
            .and_modify(|entry| entry.cas = cas)
            .or_insert(Entry {
                value: Vec::new(),
                cas,
            });
        status::CAS_MISMATCH
    }

    /// Drops a key, as Kong's shm zone does when it evicts under memory pressure (`slru`).
    /// Returns whether it was there.
    pub(crate) fn evict(&mut self, key: &[u8]) -> bool {
        self.entries.remove(key).is_some()
    }

    fn next_envoy_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        cas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_cas_zero_overwrites_and_stale_cas_conflicts() {
        let mut data = SharedData::new(CasRule::Envoy);
        assert_eq!(data.set(b"k", Some(b"a"), 0), status::OK);
        let (_, first) = data.get(b"k").unwrap();
        assert_eq!(data.set(b"k", Some(b"b"), 0), status::OK);
        assert_eq!(data.set(b"k", Some(b"c"), first), status::CAS_MISMATCH);
        assert_eq!(data.set(b"missing", Some(b"x"), 99), status::OK);
        assert_eq!(data.get(b"k").unwrap().0, b"b");
    }

    #[test]
    fn a_lost_write_is_another_workers_write() {
        for rule in [CasRule::Envoy, CasRule::Kong] {
            let mut data = SharedData::new(rule);
            assert_eq!(data.set(b"k", Some(b"a"), 0), status::OK);
            let (_, before) = data.get(b"k").unwrap();
            assert_eq!(data.lose_write(b"k"), status::CAS_MISMATCH);
            let (value, after) = data.get(b"k").unwrap();
            assert_eq!(value, b"a", "{rule:?}: the value stays");
            assert_ne!(after, before, "{rule:?}: a new version");
            assert_eq!(data.set(b"k", Some(b"b"), before), status::CAS_MISMATCH);
            assert_eq!(data.lose_write(b"new"), status::CAS_MISMATCH);
            assert_eq!(
                data.get(b"new").map(|(v, _)| v),
                Some(Vec::new()),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn kong_cas_must_equal_the_stored_one() {
        let mut data = SharedData::new(CasRule::Kong);
        assert_eq!(data.set(b"k", Some(b"a"), 0), status::OK);
        assert_eq!(data.get(b"k"), Some((b"a".to_vec(), 1)));
        assert_eq!(data.set(b"k", Some(b"b"), 0), status::CAS_MISMATCH);
        assert_eq!(data.set(b"k", Some(b"b"), 1), status::OK);
        assert_eq!(data.set(b"missing", Some(b"x"), 3), status::CAS_MISMATCH);
        assert_eq!(data.set(b"k", None, 2), status::OK);
        assert_eq!(data.get(b"k"), None);
    }
}
