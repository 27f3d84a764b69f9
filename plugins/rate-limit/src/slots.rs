//! Where a limit keeps its per-key state in shared data, with a bounded key space.
//!
//! Envoy never removes a shared-data key, so one key per client would grow without end. Each
//! limit instead owns `slots` keys, `palisade/rate-limit/<limit>/<n>`, created empty when the
//! plugin is configured. A request's key hashes to a fingerprint; the fingerprint picks a home
//! slot and the next [`PROBES`] - 1 slots may hold it too. A slot's value is the fingerprint and
//! the key's TAT (16 bytes); a slot whose TAT is in the past is idle and may be taken over by
//! another key, so memory stays at `slots` values per limit whatever the traffic.
//!
//! Keys are created before traffic, so a request only ever rewrites a slot it read. Kong may
//! evict keys under memory pressure: a slot that vanished is free and re-created with the kit's
//! insert-if-absent, which is exact (two workers re-creating it get one write and one conflict);
//! the probe goes on past it, since the key may sit in a later slot.

use std::borrow::Cow;

use palisade_kit::store::{update, Cas, SharedStore, Step, StoreError, UpdateError, Write};

use crate::gcra::{Gcra, Nanos};

/// Slots looked at for one key: its home slot and the ones after it.
pub const PROBES: u32 = 4;

/// One limit's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    prefix: String,
    slots: u32,
    /// Keys built once, `(index, key)`: the probe sequence of a limit's constant key, the only
    /// slots such a limit reads and writes.
    prebuilt: Vec<(u32, String)>,
    /// How far ahead of the clock a held TAT can be ([`Gcra::horizon`]); one further ahead is
    /// idle (written before the clock stepped back).
    horizon: Nanos,
}

/// The slot a key lives in (or will), as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot<'t> {
    pub key: Cow<'t, str>,
    /// The version read; `None` when the slot does not exist (a Kong eviction).
    pub cas: Option<Cas>,
    /// The key's TAT, when the slot already holds this key.
    pub tat: Option<Nanos>,
}

/// Where a key can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located<'t> {
    Slot(Slot<'t>),
    /// Every slot the key may use holds another key that is still limited.
    Full,
}

fn decode(value: &[u8]) -> Option<(u64, Nanos)> {
    let (fingerprint, tat) = value.split_first_chunk::<8>()?;
    let tat: &[u8; 8] = tat.try_into().ok()?;
    Some((u64::from_le_bytes(*fingerprint), u64::from_le_bytes(*tat)))
}

/// Takes one admission back from `fingerprint`'s TAT in slot `key`: moves it one `interval`
/// earlier. Nothing when the slot went to another key meanwhile (its TAT ran idle).
pub fn give_back(
    store: &impl SharedStore,
    key: &str,
    fingerprint: u64,
    interval: Nanos,
    attempts: u32,
) -> Result<(), UpdateError> {
    update(store, key, attempts, |current| {
        match current.and_then(decode) {
            Some((held, tat)) if held == fingerprint => Step::Write(
                encode(fingerprint, tat.saturating_sub(interval)).to_vec(),
                (),
            ),
            _ => Step::Keep(()),
        }
    })
}

/// The fingerprint's 8 little-endian bytes, then the TAT's.
pub fn encode(fingerprint: u64, tat: Nanos) -> [u8; 16] {
    (u128::from(tat) << 64 | u128::from(fingerprint)).to_le_bytes()
}

impl SlotTable {
    pub fn new(limit: &str, slots: u32) -> Self {
        Self {
            prefix: format!("{}rate-limit/{limit}/", palisade_kit::store::NAMESPACE),
            slots: slots.max(1),
            prebuilt: Vec::new(),
            horizon: Nanos::MAX,
        }
    }

    /// The limit's [`Gcra::horizon`].
    pub fn with_horizon(mut self, horizon: Nanos) -> Self {
        self.horizon = horizon;
        self
    }

    /// Builds the keys `fingerprint` may use once, for a limit whose key is always that one.
    pub fn with_prebuilt_keys(mut self, fingerprint: u64) -> Self {
        self.prebuilt = self
            .probes(fingerprint)
            .map(|index| (index, self.build_key(index)))
            .collect();
        self
    }

    fn build_key(&self, index: u32) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 10);
        key.push_str(&self.prefix);
        palisade_kit::decimal::push_u64(&mut key, u64::from(index));
        key
    }

    fn key(&self, index: u32) -> Cow<'_, str> {
        match self.prebuilt.iter().find(|(i, _)| *i == index) {
            Some((_, key)) => Cow::Borrowed(key),
            None => Cow::Owned(self.build_key(index)),
        }
    }

    /// The slots a key may live in, in the order they are looked at.
    fn probes(&self, fingerprint: u64) -> impl Iterator<Item = u32> {
        let slots = u64::from(self.slots);
        let home = fingerprint % slots;
        (0..PROBES.min(self.slots))
            .map(move |probe| u32::try_from((home + u64::from(probe)) % slots).unwrap_or(0))
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
    ) -> Result<Located<'_>, StoreError> {
        let mut free: Option<Slot<'_>> = None;
        for index in self.probes(fingerprint) {
            let key = self.key(index);
            let Some(entry) = store.get(&key)? else {
                // Gone (Kong evicted it, or its version wrapped): free, but unlike a never-used
                // slot it may have held a key placed before one further on, which must still
                // be found there (else that key's budget would start over here).
                if free.is_none() {
                    free = Some(Slot {
                        key,
                        cas: None,
                        tat: None,
                    });
                }
                continue;
            };
            let cas = Some(entry.cas);
            match decode(&entry.value) {
                Some((held, tat)) if held == fingerprint => {
                    return Ok(Located::Slot(Slot {
                        key,
                        cas,
                        tat: Some(tat),
                    }))
                }
                Some((_, tat)) if Gcra::is_idle(tat, now, self.horizon) => {
                    if free.is_none() {
                        free = Some(Slot {
                            key,
                            cas,
                            tat: None,
                        });
                    }
                }
                Some(_) => {}
                // Never used (created empty): nothing of ours lies further on.
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
        slot.key.into_owned()
    }

    #[test]
    fn a_slot_stamped_before_the_clock_stepped_back_is_free() {
        for (tat, expected_free) in [(NOW + 1_000, false), (NOW + 1_001, true)] {
            let store = MemoryStore::new();
            let table = SlotTable::new("l", 1).with_horizon(1_000);
            table.prepare(&store).unwrap();
            take(&store, &table, 3, tat);
            let located = table.locate(&store, 4, NOW).unwrap();
            assert_eq!(matches!(located, Located::Slot(_)), expected_free, "{tat}");
        }
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
        assert_eq!(key, "palisade/rate-limit/l/5");
        let Located::Slot(again) = table.locate(&store, 13, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(again.key, key);
        assert_eq!(again.tat, Some(NOW + 5));
    }

    #[test]
    fn prebuilt_keys_are_the_keys_built_per_request() {
        let store = MemoryStore::new();
        let built = SlotTable::new("l", 8);
        built.prepare(&store).unwrap();
        // 6 probes slots 6, 7, 0, 1.
        let prebuilt = SlotTable::new("l", 8).with_prebuilt_keys(6);
        assert_eq!(
            prebuilt
                .prebuilt
                .iter()
                .map(|(i, key)| (*i, key.as_str()))
                .collect::<Vec<_>>(),
            [
                (6, "palisade/rate-limit/l/6"),
                (7, "palisade/rate-limit/l/7"),
                (0, "palisade/rate-limit/l/0"),
                (1, "palisade/rate-limit/l/1"),
            ]
        );
        take(&store, &built, 14, NOW + 9);
        take(&store, &built, 22, NOW + 9);
        let Located::Slot(slot) = prebuilt.locate(&store, 6, NOW).unwrap() else {
            panic!()
        };
        assert!(matches!(slot.key, Cow::Borrowed("palisade/rate-limit/l/0")));
        assert_eq!(built.locate(&store, 6, NOW), Ok(Located::Slot(slot)));
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
                "palisade/rate-limit/l/1",
                "palisade/rate-limit/l/2",
                "palisade/rate-limit/l/3",
                "palisade/rate-limit/l/4"
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
            "palisade/rate-limit/l/2"
        );
        // Key 1 goes idle: its slot (before 9's) is free again.
        store.put_idle("palisade/rate-limit/l/1", 1);
        let Located::Slot(slot) = table.locate(&store, 17, NOW).unwrap() else {
            panic!()
        };
        assert_eq!((&*slot.key, slot.tat), ("palisade/rate-limit/l/1", None));
        // But a key already further on is found, not shadowed by the idle slot before it.
        let Located::Slot(slot) = table.locate(&store, 9, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(slot.key, "palisade/rate-limit/l/2");
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
    fn a_vanished_slot_before_a_key_does_not_hide_it() {
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let table = SlotTable::new("l", 8);
        // 13's home is slot 5 (held by a limited key when 13 came), so 13 sits in slot 6;
        // then Kong evicts slot 5.
        assert_eq!(
            store.set("palisade/rate-limit/l/6", &encode(13, NOW + 500), None),
            Ok(Write::Stored)
        );
        let Located::Slot(slot) = table.locate(&store, 13, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&*slot.key, slot.tat),
            ("palisade/rate-limit/l/6", Some(NOW + 500))
        );
        // A key found nowhere takes the first vanished slot.
        let Located::Slot(slot) = table.locate(&store, 21, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&*slot.key, slot.cas, slot.tat),
            ("palisade/rate-limit/l/5", None, None)
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
