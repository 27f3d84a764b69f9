//! Where a limit keeps its per-key state in shared data, with a bounded key space.
//!
//! Envoy never removes a shared-data key, so one key per client would grow without end. Each
//! limit instead owns `slots` keys, `palisade-rate-limit/<limit>/<n>`, created empty when the
//! plugin is configured. A request's key hashes to a fingerprint; the fingerprint picks a home
//! slot and the next [`PROBES`] - 1 slots may hold it too. A slot's value is the fingerprint and
//! the key's TAT (16 bytes); a slot whose TAT is in the past is idle and may be taken over by
//! another key, so memory stays at `slots` values per limit whatever the traffic.
//!
//! Keys are created before traffic because Envoy's shared data has no insert-if-absent: two
//! workers creating the same key at once would both succeed, and one admission would be lost.
//! Kong refuses such an insert (and may evict keys under memory pressure): a slot that vanished
//! reads as fresh and is re-created with "must not exist", which is exact.

use palisade_kit::store::{Cas, SharedStore, StoreError, Write};

use crate::gcra::{Gcra, Nanos};

/// Slots looked at for one key: its home slot and the ones after it.
pub const PROBES: u32 = 4;

/// One limit's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    prefix: String,
    slots: u32,
}

/// The slot a key lives in (or will), as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub key: String,
    /// The version read; `None` when the slot does not exist (a Kong eviction).
    pub cas: Option<Cas>,
    /// The key's TAT, when the slot already holds this key.
    pub tat: Option<Nanos>,
}

/// Where a key can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    Slot(Slot),
    /// Every slot the key may use holds another key that is still limited.
    Full,
}

fn decode(value: &[u8]) -> Option<(u64, Nanos)> {
    let (fingerprint, tat) = value.split_first_chunk::<8>()?;
    let tat: &[u8; 8] = tat.try_into().ok()?;
    Some((u64::from_le_bytes(*fingerprint), u64::from_le_bytes(*tat)))
}

pub fn encode(fingerprint: u64, tat: Nanos) -> [u8; 16] {
    let mut value = [0u8; 16];
    let (head, tail) = value.split_at_mut(8);
    head.copy_from_slice(&fingerprint.to_le_bytes());
    tail.copy_from_slice(&tat.to_le_bytes());
    value
}

impl SlotTable {
    pub fn new(limit: &str, slots: u32) -> Self {
        Self {
            prefix: format!("palisade-rate-limit/{limit}/"),
            slots: slots.max(1),
        }
    }

    fn key(&self, index: u32) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 10);
        key.push_str(&self.prefix);
        palisade_kit::decimal::push_u64(&mut key, u64::from(index));
        key
    }

    /// Creates every slot that does not exist yet, empty. Returns how many were created.
    pub fn prepare(&self, store: &impl SharedStore) -> Result<u32, StoreError> {
        let mut created = 0;
        for index in 0..self.slots {
            let key = self.key(index);
            if store.get(&key)?.is_none() && store.set(&key, &[], None)? == Write::Stored {
                created += 1;
            }
        }
        Ok(created)
    }

    /// Finds the slot holding `fingerprint`, or the first free one it may take. Keys are only
    /// ever placed in the first free slot of their probe sequence, so a never-used slot ends
    /// the search: the key cannot be after it.
    pub fn locate(
        &self,
        store: &impl SharedStore,
        fingerprint: u64,
        now: Nanos,
    ) -> Result<Located, StoreError> {
        let home = fingerprint % u64::from(self.slots);
        let mut free: Option<Slot> = None;
        for probe in 0..PROBES.min(self.slots) {
            let index = (home + u64::from(probe)) % u64::from(self.slots);
            let key = self.key(u32::try_from(index).unwrap_or(0));
            let entry = store.get(&key)?;
            let cas = entry.as_ref().map(|e| e.cas);
            match entry.as_ref().and_then(|e| decode(&e.value)) {
                Some((held, tat)) if held == fingerprint => {
                    return Ok(Located::Slot(Slot {
                        key,
                        cas,
                        tat: Some(tat),
                    }))
                }
                Some((_, tat)) if Gcra::is_idle(tat, now) => {
                    if free.is_none() {
                        free = Some(Slot {
                            key,
                            cas,
                            tat: None,
                        });
                    }
                }
                Some(_) => {}
                // Never used (empty, or gone): nothing of ours lies further on.
                None => {
                    return Ok(Located::Slot(free.unwrap_or(Slot {
                        key,
                        cas,
                        tat: None,
                    })))
                }
            }
        }
        Ok(free.map_or(Located::Full, Located::Slot))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::store::{BlindWrite, MemoryStore};

    const NOW: Nanos = 1_000;

    trait PutIdle {
        fn put_idle(&self, key: &str, fingerprint: u64);
    }

    impl PutIdle for MemoryStore {
        fn put_idle(&self, key: &str, fingerprint: u64) {
            let cas = self.get(key).unwrap().map(|e| e.cas);
            assert_eq!(
                self.set(key, &encode(fingerprint, NOW - 1), cas),
                Ok(Write::Stored)
            );
        }
    }

    fn take(store: &MemoryStore, table: &SlotTable, fingerprint: u64, tat: Nanos) -> String {
        let Located::Slot(slot) = table.locate(store, fingerprint, NOW).unwrap() else {
            panic!("full")
        };
        assert_eq!(
            store.set(&slot.key, &encode(fingerprint, tat), slot.cas),
            Ok(Write::Stored)
        );
        slot.key
    }

    #[test]
    fn prepare_creates_each_slot_once_and_keeps_existing_state() {
        for blind in [BlindWrite::Overwrites, BlindWrite::Refused] {
            let store = MemoryStore::with(blind, usize::MAX);
            let table = SlotTable::new("l", 8);
            assert_eq!(table.prepare(&store), Ok(8));
            let key = take(&store, &table, 3, NOW + 50);
            assert_eq!(table.prepare(&store), Ok(0));
            assert_eq!(store.len(), 8);
            assert_eq!(store.get(&key).unwrap().unwrap().value, encode(3, NOW + 50));
        }
    }

    #[test]
    fn a_key_finds_its_own_slot_again() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        let key = take(&store, &table, 13, NOW + 5);
        assert_eq!(key, "palisade-rate-limit/l/5");
        let Located::Slot(again) = table.locate(&store, 13, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(again.key, key);
        assert_eq!(again.tat, Some(NOW + 5));
    }

    #[test]
    fn colliding_keys_probe_on_and_a_full_neighbourhood_is_reported() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        // 1, 9, 17, 25 share home slot 1: they fill slots 1..=4.
        let keys: Vec<String> = [1u64, 9, 17, 25]
            .iter()
            .map(|fp| take(&store, &table, *fp, NOW + 100))
            .collect();
        assert_eq!(
            keys,
            [
                "palisade-rate-limit/l/1",
                "palisade-rate-limit/l/2",
                "palisade-rate-limit/l/3",
                "palisade-rate-limit/l/4"
            ]
        );
        assert_eq!(table.locate(&store, 33, NOW), Ok(Located::Full));
        // Each still finds its own.
        let Located::Slot(slot) = table.locate(&store, 25, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(slot.tat, Some(NOW + 100));
    }

    #[test]
    fn an_idle_slot_is_reused_and_the_first_free_one_wins() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        take(&store, &table, 1, NOW + 100);
        assert_eq!(
            take(&store, &table, 9, NOW + 100),
            "palisade-rate-limit/l/2"
        );
        // Key 1 goes idle: its slot (before 9's) is free again.
        store.put_idle("palisade-rate-limit/l/1", 1);
        let Located::Slot(slot) = table.locate(&store, 17, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(
            (slot.key.as_str(), slot.tat),
            ("palisade-rate-limit/l/1", None)
        );
        // But a key already further on is found, not shadowed by the idle slot before it.
        let Located::Slot(slot) = table.locate(&store, 9, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(slot.key, "palisade-rate-limit/l/2");
    }

    #[test]
    fn a_vanished_slot_reads_as_fresh_and_is_recreated_only_if_still_absent() {
        // Kong, whose shm evicted the slot: it is absent, so the write must insert.
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let table = SlotTable::new("l", 4);
        let Located::Slot(slot) = table.locate(&store, 2, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(slot.cas, None);
        assert_eq!(
            store.set(&slot.key, &encode(7, NOW), None),
            Ok(Write::Stored)
        );
        assert_eq!(
            store.set(&slot.key, &encode(2, NOW), slot.cas),
            Ok(Write::Conflict)
        );
    }

    #[test]
    fn stored_values_round_trip_and_junk_reads_as_unused() {
        assert_eq!(decode(&encode(u64::MAX, 42)), Some((u64::MAX, 42)));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[1; 15]), None);
        assert_eq!(decode(&[1; 17]), None);
    }
}
