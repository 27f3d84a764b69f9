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
//!
//! A key is found in the first slot of its probe sequence that holds it, so it must never be
//! placed twice. Two workers placing a new key both write with compare-and-swap, but they may
//! write different slots: one reads slot `q` held by a key that is still limited and takes a
//! later slot `p`, the other reads `q` after that key went idle (by time alone, no write) and
//! takes `q`. So a key placed past such slots is *sealed* ([`SlotTable::seal`]): each of them is
//! rewritten with the value it holds, at the version read, which fails any placement there based
//! on an older read (its worker reads again and finds the key at `p`); a slot found holding the
//! key instead is the copy every later lookup finds, and the admission moves there. The copy
//! left at `p` is marked [`MOVED`]: a lookup that meets it may have read an earlier slot before
//! the key was placed there, so it reads the slots again. What a third worker can still slip in
//! between the two copies, until the seal is done, is in docs/rate-limit.md.

use std::borrow::Cow;

use palisade_kit::store::{update, Cas, SharedStore, Step, StoreError, UpdateError, Write};

use crate::gcra::{Gcra, Nanos, Verdict};

/// Slots looked at for one key: its home slot and the ones after it.
pub const PROBES: u32 = 4;

/// The TAT of a copy of a key whose admissions moved to an earlier copy ([`SlotTable::seal`]).
/// No admission stores it (the clock is past 0), and give-backs stop above it: to any other
/// key the slot is idle, and to its own key it says that an earlier copy exists.
pub const MOVED: Nanos = 0;

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

/// A slot a lookup went past: held by another key that was still limited, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    index: u32,
    cas: Cas,
    /// What it held (written back as it is to seal the slot).
    held: u64,
    tat: Nanos,
}

/// The slots a lookup went past before a free one, in probe order: at most every probe but
/// the free one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassedSlots([Option<Passed>; PROBES as usize - 1]);

impl PassedSlots {
    /// Adds one; past the last probe but one the key has no free slot left, so there is none.
    fn push(&mut self, passed: Passed) {
        if let Some(empty) = self.0.iter_mut().find(|p| p.is_none()) {
            *empty = Some(passed);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Passed> {
        self.0.iter().flatten()
    }

    /// For [`Slot::passed`]: `None` when there are none.
    fn boxed(self) -> Option<Box<Self>> {
        match self.0 {
            [None, ..] => None,
            _ => Some(self.into_box()),
        }
    }

    /// Out of line: only a new key placed past its home slot gets here.
    #[cold]
    #[inline(never)]
    fn into_box(self) -> Box<Self> {
        Box::new(self)
    }
}

/// The slot a key lives in (or will), as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot<'t> {
    pub key: Cow<'t, str>,
    /// The version read; `None` when the slot does not exist (a Kong eviction).
    pub cas: Option<Cas>,
    /// The key's TAT, when the slot already holds this key.
    pub tat: Option<Nanos>,
    /// For a free slot: the slots before it, in probe order, held by other keys that were still
    /// limited. A key placed past them is sealed ([`SlotTable::seal`]). `None` when the key was
    /// found, or the free slot is the first one looked at; boxed, so that a slot stays small to
    /// pass around, and only a new key placed past its home slot allocates.
    pub passed: Option<Box<PassedSlots>>,
}

/// Where a key can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located<'t> {
    Slot(Slot<'t>),
    /// Every slot the key may use holds another key that is still limited.
    Full,
}

/// A key's placement once sealed: where its admission now is, and the verdict that stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved<'t> {
    pub key: Cow<'t, str>,
    pub verdict: Verdict,
}

pub(crate) fn decode(value: &[u8]) -> Option<(u64, Nanos)> {
    let (fingerprint, tat) = value.split_first_chunk::<8>()?;
    let tat: &[u8; 8] = tat.try_into().ok()?;
    Some((u64::from_le_bytes(*fingerprint), u64::from_le_bytes(*tat)))
}

/// A value no slot writes: another key's entry that Kong 3.8+ (which finds keys by their CRC32
/// alone) hands over for this slot's key. Never a free slot: writing it would destroy that
/// entry (another plugin's cache, the fingerprint key), and its owner would write it back.
fn is_foreign(value: &[u8]) -> bool {
    !value.is_empty() && decode(value).is_none()
}

/// The key's live TAT in `value`: `None` when another key holds it, or it is a [`MOVED`] copy.
fn held_by(value: &[u8], fingerprint: u64) -> Option<Nanos> {
    decode(value).and_then(|(held, tat)| (held == fingerprint && tat != MOVED).then_some(tat))
}

/// The version of slot `key` and the key's live TAT there, read now; `None` when the slot no
/// longer holds the key. Out of line: the seal's rare path reads through it several times.
#[inline(never)]
fn read_held(
    store: &impl SharedStore,
    key: &str,
    fingerprint: u64,
) -> Result<Option<(Cas, Nanos)>, StoreError> {
    Ok(store
        .get(key)?
        .and_then(|entry| Some((entry.cas, held_by(&entry.value, fingerprint)?))))
}

/// What a seal writes where there is no value to write back (a slot evicted, or one that reads
/// as never used): never empty, which would end every probe there, and idle for every key
/// (marked [`MOVED`] for a fingerprint that is not ours, which at worst costs that key one more
/// read of its slots).
fn vacant(fingerprint: u64) -> [u8; 16] {
    encode(!fingerprint, MOVED)
}

/// Takes one admission back from `fingerprint`'s TAT in slot `key`: moves it one `interval`
/// earlier. Nothing when the slot went to another key meanwhile (its TAT ran idle), or the
/// admission moved to an earlier copy ([`MOVED`]: it is counted there, and stays).
pub fn give_back(
    store: &impl SharedStore,
    key: &str,
    fingerprint: u64,
    interval: Nanos,
    attempts: u32,
) -> Result<(), UpdateError> {
    update(store, key, attempts, |current| {
        match current.and_then(|value| held_by(value, fingerprint)) {
            // Never down to MOVED: that would read as a moved copy.
            Some(tat) => Step::Write(
                encode(fingerprint, tat.saturating_sub(interval).max(MOVED + 1)).to_vec(),
                (),
            ),
            None => Step::Keep(()),
        }
    })
}

/// The fingerprint's 8 little-endian bytes, then the TAT's.
pub fn encode(fingerprint: u64, tat: Nanos) -> [u8; 16] {
    (u128::from(tat) << 64 | u128::from(fingerprint)).to_le_bytes()
}

/// Adds `debt` (admissions made in another copy of the key) to a TAT as the GCRA would have,
/// from now at least; but no further than a budget all spent ([`Gcra::spent`]): a TAT past
/// that would read as a clock stepped back, which admits, and to other keys as idle.
fn owe(tat: Nanos, debt: Nanos, gcra: &Gcra, now: Nanos) -> Nanos {
    if debt == 0 {
        tat
    } else {
        tat.max(now)
            .saturating_add(debt)
            .min(gcra.spent(now).max(tat))
    }
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

    /// Every slot key starts with this: `palisade/rate-limit/<table>/`.
    #[cfg(test)]
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn key(&self, index: u32) -> Cow<'_, str> {
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

    /// Creates every slot that does not exist yet. Returns how many were created. A new
    /// table's slots are created empty: never used, so a lookup stops there. A slot missing
    /// from a table that has others was evicted (Kong): keys may sit in the slots after it,
    /// which an empty slot would hide (their budgets would start over), so it is created idle
    /// and not empty ([`vacant`]), and lookups read past it.
    pub fn prepare(&self, store: &impl SharedStore) -> Result<u32, StoreError> {
        let mut missing = Vec::new();
        for index in 0..self.slots {
            if store.get(&self.key(index))?.is_none() {
                missing.push(index);
            }
        }
        let evicted = missing.len() < self.slots as usize;
        let value: &[u8] = if evicted { &vacant(0) } else { &[] };
        let mut created = 0;
        for index in missing {
            if store.set(&self.key(index), value, None)? == Write::Stored {
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
        // A copy of the key marked moved means the key sits in an earlier slot, placed maybe
        // after this pass read that slot: one more pass reads them again, in which the mark is
        // only an idle slot (the earlier copy may have gone since). Read as the key's state,
        // the mark would take an admission where no lookup finds it.
        let mut moved_rereads = true;
        'pass: loop {
            let mut free: Option<Slot<'_>> = None;
            let mut passed = PassedSlots::default();
            for index in self.probes(fingerprint) {
                let key = self.key(index);
                let Some(entry) = store.get(&key)? else {
                    // Gone (Kong evicted it, or its version wrapped): free, but unlike a
                    // never-used slot it may have held a key placed before one further on,
                    // which must still be found there (else that key's budget would start over
                    // here).
                    if free.is_none() {
                        free = Some(Slot {
                            key,
                            cas: None,
                            tat: None,
                            passed: passed.boxed(),
                        });
                    }
                    continue;
                };
                let cas = Some(entry.cas);
                match decode(&entry.value) {
                    Some((held, MOVED)) if held == fingerprint && moved_rereads => {
                        moved_rereads = false;
                        continue 'pass;
                    }
                    Some((held, tat)) if held == fingerprint && tat != MOVED => {
                        return Ok(Located::Slot(Slot {
                            key,
                            cas,
                            tat: Some(tat),
                            passed: None,
                        }))
                    }
                    Some((_, tat)) if Gcra::is_idle(tat, now, self.horizon) => {
                        if free.is_none() {
                            free = Some(Slot {
                                key,
                                cas,
                                tat: None,
                                passed: passed.boxed(),
                            });
                        }
                    }
                    Some((held, tat)) => {
                        // Only those before the free slot matter: the key is placed there.
                        if free.is_none() {
                            passed.push(Passed {
                                index,
                                cas: entry.cas,
                                held,
                                tat,
                            });
                        }
                    }
                    None if is_foreign(&entry.value) => {}
                    // Never used (created empty): nothing of ours lies further on.
                    None => {
                        return Ok(Located::Slot(free.unwrap_or_else(|| Slot {
                            key,
                            cas,
                            tat: None,
                            passed: passed.boxed(),
                        })))
                    }
                }
            }
            return Ok(free.map_or(Located::Full, Located::Slot));
        }
    }

    /// Seals a new placement of `fingerprint` in `placed`, just written with TAT `placed_tat`
    /// past the slots `placed.passed` (see the module comment). Each passed slot, in probe
    /// order, is rewritten with what it holds at the version read (read again on a conflict; a
    /// vanished or never-used one gets an idle value no key owns, by insert-if-absent for a
    /// vanished one): once that write lands, no placement there based on an earlier read can,
    /// and a later read goes on to find the key. A passed slot found holding the key is the
    /// copy every lookup finds: the admission moves there (`take_over`), `Some`, with the
    /// verdict that stands. `None`: the key stays in `placed`. `conflicts` counts the lost
    /// compare-and-swaps; at most `attempts` writes per slot.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        &self,
        store: &impl SharedStore,
        fingerprint: u64,
        placed: &Slot<'_>,
        placed_tat: Nanos,
        gcra: &Gcra,
        now: Nanos,
        attempts: u32,
        conflicts: &mut u32,
    ) -> Result<Option<Moved<'_>>, UpdateError> {
        for slot in placed.passed.iter().flat_map(|passed| passed.iter()) {
            let key = self.key(slot.index);
            // As read: absent, or its version and what it decodes to (`None`: never used).
            let mut current = Some((slot.cas, Some((slot.held, slot.tat))));
            let mut sealed = false;
            for attempt in 0..attempts {
                if attempt > 0 {
                    *conflicts += 1;
                    let entry = store.get(&key)?;
                    if entry.as_ref().is_some_and(|e| is_foreign(&e.value)) {
                        // Another entry's now: no key of ours goes there to seal against.
                        sealed = true;
                        break;
                    }
                    current = entry.map(|entry| (entry.cas, decode(&entry.value)));
                }
                let (value, expected) = match current {
                    None => (vacant(fingerprint), None),
                    Some((cas, Some((held, tat)))) if held == fingerprint && tat != MOVED => {
                        if let Some(verdict) = self.take_over(
                            store,
                            fingerprint,
                            &placed.key,
                            placed_tat,
                            (&key, cas, tat),
                            gcra,
                            now,
                            attempts,
                            conflicts,
                        )? {
                            return Ok(Some(Moved { key, verdict }));
                        }
                        // It no longer holds the key (evicted, or idle and taken): seal it
                        // like any other.
                        continue;
                    }
                    Some((cas, Some((held, tat)))) => (encode(held, tat), Some(cas)),
                    Some((cas, None)) => (vacant(fingerprint), Some(cas)),
                };
                if store.set(&key, &value, expected)? == Write::Stored {
                    sealed = true;
                    break;
                }
            }
            if !sealed {
                return Err(UpdateError::Contended(attempts));
            }
        }
        Ok(None)
    }

    /// Moves an admission written at `placed` to the earlier copy `(key, cas, tat)` of the key:
    /// decides it again against that copy (another worker's admission there may have spent the
    /// budget), adds what other workers admitted at `placed` since (they found the key there),
    /// then marks `placed` [`MOVED`] so that no one admits there again; what they admit before
    /// that mark is added too. The verdict that stands, or `None` when the copy no longer holds
    /// the key (nothing moved).
    #[allow(clippy::too_many_arguments)]
    fn take_over(
        &self,
        store: &impl SharedStore,
        fingerprint: u64,
        placed: &str,
        placed_tat: Nanos,
        (key, mut cas, mut tat): (&str, Cas, Nanos),
        gcra: &Gcra,
        now: Nanos,
        attempts: u32,
        conflicts: &mut u32,
    ) -> Result<Option<Verdict>, UpdateError> {
        // What others admitted at `placed` after our write: its TAT beyond ours.
        let at_placed = read_held(store, placed, fingerprint)?;
        let mut seen = at_placed.map_or(placed_tat, |(_, tat)| tat.max(placed_tat));
        let debt = seen.saturating_sub(placed_tat);
        let mut verdict = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                *conflicts += 1;
                match read_held(store, key, fingerprint)? {
                    Some(again) => (cas, tat) = again,
                    None => return Ok(None),
                }
            }
            // Decided with what others admitted at `placed` already counted in the copy.
            let owed = owe(tat, debt, gcra, now);
            let decided = gcra.check(Some(owed), now);
            let write = match decided {
                Verdict::Admit { tat, .. } => Some(tat),
                Verdict::Refuse { .. } => (debt > 0).then_some(owed),
            };
            let Some(write) = write else {
                verdict = Some(decided);
                break;
            };
            if store.set(key, &encode(fingerprint, write), Some(cas))? == Write::Stored {
                verdict = Some(decided);
                break;
            }
        }
        let Some(verdict) = verdict else {
            return Err(UpdateError::Contended(attempts));
        };
        // Retire `placed`; an admission made there meanwhile is added to the copy first.
        let Some((mut placed_cas, _)) = at_placed else {
            return Ok(Some(verdict));
        };
        for _ in 0..attempts {
            if store.set(placed, &encode(fingerprint, MOVED), Some(placed_cas))? == Write::Stored {
                return Ok(Some(verdict));
            }
            *conflicts += 1;
            let Some((again_cas, again)) = read_held(store, placed, fingerprint)? else {
                return Ok(Some(verdict));
            };
            let more = again.saturating_sub(seen);
            if more > 0 {
                update(store, key, attempts, |current| {
                    match current.and_then(|value| held_by(value, fingerprint)) {
                        Some(tat) => {
                            Step::Write(encode(fingerprint, owe(tat, more, gcra, now)).to_vec(), ())
                        }
                        None => Step::Keep(()),
                    }
                })?;
            }
            (placed_cas, seen) = (again_cas, again.max(seen));
        }
        Err(UpdateError::Contended(attempts))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::store::{BlindWrite, Entry, MemoryStore};
    use std::cell::{Cell, RefCell};
    use std::time::Duration;

    const NOW: Nanos = 1_000;

    /// Another worker's steps, run between two of ours.
    type Action<'a> = Box<dyn FnOnce() + 'a>;

    /// The shared store as one worker sees it, with other workers' steps scripted in between:
    /// each action runs just before this worker's `at`-th call (gets and sets alike, from 1).
    /// The calls are logged as `get <slot>`, `set <slot>`, and `set <slot> lost` for a write
    /// that lost its compare-and-swap.
    pub(crate) struct Scripted<'a> {
        inner: &'a MemoryStore,
        calls: Cell<u32>,
        script: RefCell<Vec<(u32, Action<'a>)>>,
        log: RefCell<Vec<String>>,
    }

    impl<'a> Scripted<'a> {
        pub(crate) fn new(inner: &'a MemoryStore) -> Self {
            Self {
                inner,
                calls: Cell::new(0),
                script: RefCell::default(),
                log: RefCell::default(),
            }
        }

        pub(crate) fn before(self, at: u32, action: impl FnOnce() + 'a) -> Self {
            self.script.borrow_mut().push((at, Box::new(action)));
            self
        }

        pub(crate) fn log(&self) -> Vec<String> {
            self.log.borrow().clone()
        }

        fn call(&self, op: &str, key: &str) {
            let at = self.calls.get() + 1;
            self.calls.set(at);
            let slot = key.rsplit('/').next().unwrap_or(key);
            self.log.borrow_mut().push(format!("{op} {slot}"));
            let due: Vec<_> = {
                let mut script = self.script.borrow_mut();
                let (due, later) = script.drain(..).partition(|(when, _)| *when == at);
                *script = later;
                due
            };
            for (_, action) in due {
                action();
            }
        }
    }

    impl SharedStore for Scripted<'_> {
        fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            self.call("get", key);
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
            self.call("set", key);
            let written = self.inner.set(key, value, expected);
            if written == Ok(Write::Conflict) {
                if let Some(last) = self.log.borrow_mut().last_mut() {
                    last.push_str(" lost");
                }
            }
            written
        }
    }

    fn passed(slot: &Slot<'_>) -> Vec<Passed> {
        slot.passed
            .iter()
            .flat_map(|passed| passed.iter().copied())
            .collect()
    }

    fn value(store: &MemoryStore, slot: u32) -> Option<(u64, Nanos)> {
        decode(
            &store
                .get(&format!("palisade/rate-limit/l/{slot}"))
                .unwrap()?
                .value,
        )
    }

    fn put(store: &MemoryStore, slot: u32, fingerprint: u64, tat: Nanos) {
        let key = format!("palisade/rate-limit/l/{slot}");
        let cas = store.get(&key).unwrap().map(|e| e.cas);
        assert_eq!(
            store.set(&key, &encode(fingerprint, tat), cas),
            Ok(Write::Stored)
        );
    }

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
    fn a_slot_evicted_before_a_reconfiguration_does_not_hide_the_keys_after_it() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 4).with_horizon(1_000_000);
        assert_eq!(table.prepare(&store), Ok(4));
        // Two keys with home slot 0: the second lands in slot 1.
        assert!(take(&store, &table, 0, NOW + 500).ends_with("/0"));
        assert!(take(&store, &table, 4, NOW + 500).ends_with("/1"));
        // Kong evicts slot 0; the next configuration re-creates it.
        assert!(store.evict(&table.key(0)));
        assert_eq!(table.prepare(&store), Ok(1));
        let Located::Slot(slot) = table.locate(&store, 4, NOW).unwrap() else {
            panic!("full")
        };
        assert_eq!(
            (slot.key.as_ref(), slot.tat),
            (table.key(1).as_ref(), Some(NOW + 500))
        );
        // The re-created slot is free for a new key.
        let Located::Slot(slot) = table.locate(&store, 8, NOW).unwrap() else {
            panic!("full")
        };
        assert_eq!((slot.key.as_ref(), slot.tat), (table.key(0).as_ref(), None));
        // A table with no slot at all is new: its slots are created empty.
        let fresh = MemoryStore::new();
        assert_eq!(table.prepare(&fresh), Ok(4));
        assert_eq!(fresh.get(&table.key(2)).unwrap().unwrap().value, b"");
    }

    /// Kong 3.8+ hands over another key's entry (the same CRC32) for a slot: it is skipped,
    /// never taken or written, and does not end the search either.
    #[test]
    fn another_entry_in_a_slot_is_neither_free_nor_the_end() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 4).with_horizon(1_000_000);
        table.prepare(&store).unwrap();
        let foreign =
            b"palisade-hk1\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10";
        let entry = store.get(&table.key(0)).unwrap().unwrap();
        assert_eq!(
            store.set(&table.key(0), foreign, Some(entry.cas)),
            Ok(Write::Stored)
        );
        // A key whose home is slot 0 goes to slot 1.
        assert!(take(&store, &table, 0, NOW + 500).ends_with("/1"));
        // ... and is found there, past the foreign entry, which stays as it was.
        let Located::Slot(slot) = table.locate(&store, 0, NOW).unwrap() else {
            panic!("full")
        };
        assert_eq!(
            (slot.key.as_ref(), slot.tat),
            (table.key(1).as_ref(), Some(NOW + 500))
        );
        assert_eq!(store.get(&table.key(0)).unwrap().unwrap().value, foreign);
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
    fn a_free_slot_past_limited_ones_lists_them_and_only_then() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        // Home slot 1 for 1, 9, 17 and 25.
        take(&store, &table, 1, NOW + 100);
        take(&store, &table, 9, NOW + 100);
        let Located::Slot(slot) = table.locate(&store, 17, NOW).unwrap() else {
            panic!("full")
        };
        assert_eq!(slot.key, "palisade/rate-limit/l/3");
        let cas = |slot| {
            store
                .get(&format!("palisade/rate-limit/l/{slot}"))
                .unwrap()
                .unwrap()
                .cas
        };
        assert_eq!(
            passed(&slot),
            [
                Passed {
                    index: 1,
                    cas: cas(1),
                    held: 1,
                    tat: NOW + 100
                },
                Passed {
                    index: 2,
                    cas: cas(2),
                    held: 9,
                    tat: NOW + 100
                },
            ]
        );
        // Found, or free at home: nothing to seal.
        let Located::Slot(found) = table.locate(&store, 9, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(found.passed, None);
        let Located::Slot(home) = table.locate(&store, 4, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(home.passed, None);
        // A slot gone idle before them is the free one: only what comes before it counts.
        store.put_idle("palisade/rate-limit/l/2", 9);
        let Located::Slot(slot) = table.locate(&store, 17, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&*slot.key, passed(&slot).len()),
            ("palisade/rate-limit/l/2", 1)
        );
    }

    #[test]
    fn a_moved_copy_makes_the_lookup_read_the_slots_again() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        // 13's home is slot 5, held by 21 (still limited) when it was placed in slot 6. Between
        // our reads of slots 5 and 6, another worker finds 13 placed in slot 5 too (21 went
        // idle) and moves it there.
        put(&store, 5, 21, NOW + 100);
        put(&store, 6, 13, NOW + 40);
        let scripted = Scripted::new(&store).before(2, || {
            put(&store, 5, 13, NOW + 80);
            put(&store, 6, 13, MOVED);
        });
        let Located::Slot(slot) = table.locate(&scripted, 13, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&*slot.key, slot.tat),
            ("palisade/rate-limit/l/5", Some(NOW + 80))
        );
        assert_eq!(scripted.log(), ["get 5", "get 6", "get 5"]);
    }

    #[test]
    fn a_moved_copy_with_no_copy_before_it_is_a_free_slot() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        put(&store, 5, 21, NOW + 100);
        put(&store, 6, 13, MOVED);
        let scripted = Scripted::new(&store);
        let Located::Slot(slot) = table.locate(&scripted, 13, NOW).unwrap() else {
            panic!()
        };
        // Read twice, then taken like any idle slot (past 21's, which it will seal).
        assert_eq!(
            (&*slot.key, slot.tat, passed(&slot).len()),
            ("palisade/rate-limit/l/6", None, 1)
        );
        assert_eq!(
            scripted.log(),
            ["get 5", "get 6", "get 5", "get 6", "get 7"]
        );
        // To another key it is an idle slot, read once.
        let scripted = Scripted::new(&store);
        let Located::Slot(slot) = table.locate(&scripted, 29, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(slot.key, "palisade/rate-limit/l/6");
        assert_eq!(scripted.log(), ["get 5", "get 6", "get 7"]);
    }

    #[test]
    fn a_give_back_leaves_a_moved_copy_alone_and_never_writes_one() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        put(&store, 5, 13, MOVED);
        let before = store.get("palisade/rate-limit/l/5").unwrap();
        give_back(&store, "palisade/rate-limit/l/5", 13, 10, 4).unwrap();
        assert_eq!(store.get("palisade/rate-limit/l/5").unwrap(), before);
        put(&store, 5, 13, 10);
        give_back(&store, "palisade/rate-limit/l/5", 13, 10, 4).unwrap();
        assert_eq!(value(&store, 5), Some((13, MOVED + 1)));
    }

    fn gcra() -> Gcra {
        // One every 100 ns, two at once.
        Gcra::new(1, Duration::from_nanos(100), 1)
    }

    /// Places 13 past 21 (slot 5, limited) in slot 6, as the limiter does; the slot and TAT.
    fn place_past_another(store: &MemoryStore, table: &SlotTable) -> (Slot<'static>, Nanos) {
        put(store, 5, 21, NOW + 100);
        let Located::Slot(slot) = table.locate(store, 13, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&*slot.key, passed(&slot).len()),
            ("palisade/rate-limit/l/6", 1)
        );
        let Verdict::Admit { tat, .. } = gcra().check(slot.tat, NOW) else {
            panic!()
        };
        assert_eq!(
            store.set(&slot.key, &encode(13, tat), slot.cas),
            Ok(Write::Stored)
        );
        let slot = Slot {
            key: Cow::Owned(slot.key.into_owned()),
            ..slot
        };
        (slot, tat)
    }

    #[test]
    fn a_seal_writes_a_passed_slot_back_as_it_is() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        let (slot, tat) = place_past_another(&store, &table);
        let before = store.get("palisade/rate-limit/l/5").unwrap().unwrap();
        let scripted = Scripted::new(&store);
        let mut conflicts = 0;
        let sealed = table.seal(&scripted, 13, &slot, tat, &gcra(), NOW, 8, &mut conflicts);
        assert_eq!(sealed, Ok(None));
        assert_eq!((scripted.log(), conflicts), (vec!["set 5".to_owned()], 0));
        let after = store.get("palisade/rate-limit/l/5").unwrap().unwrap();
        assert_eq!(after.value, before.value);
        assert_ne!(after.cas, before.cas);
    }

    #[test]
    fn a_passed_slot_written_meanwhile_is_sealed_at_its_new_version() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        let (slot, tat) = place_past_another(&store, &table);
        // 21 is admitted again before our seal.
        let scripted = Scripted::new(&store).before(1, || put(&store, 5, 21, NOW + 200));
        let mut conflicts = 0;
        let sealed = table.seal(&scripted, 13, &slot, tat, &gcra(), NOW, 8, &mut conflicts);
        assert_eq!(sealed, Ok(None));
        assert_eq!(scripted.log(), ["set 5 lost", "get 5", "set 5"]);
        assert_eq!(conflicts, 1);
        assert_eq!(value(&store, 5), Some((21, NOW + 200)));
        assert_eq!(value(&store, 6), Some((13, tat)));
    }

    #[test]
    fn a_passed_slot_made_empty_again_is_sealed_with_a_value_that_does_not_end_the_probe() {
        // Kong evicts slot 5 and the rest of the table, and a configuration applied meanwhile
        // creates it again, empty (as `prepare` does for a table with no slot left).
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        let (slot, tat) = place_past_another(&store, &table);
        let scripted = Scripted::new(&store).before(1, || {
            assert!(store.evict("palisade/rate-limit/l/5"));
            assert_eq!(
                store.set("palisade/rate-limit/l/5", &[], None),
                Ok(Write::Stored)
            );
        });
        let mut conflicts = 0;
        let sealed = table.seal(&scripted, 13, &slot, tat, &gcra(), NOW, 8, &mut conflicts);
        assert_eq!(sealed, Ok(None));
        assert_eq!(scripted.log(), ["set 5 lost", "get 5", "set 5"]);
        assert_eq!(value(&store, 5), Some((!13, MOVED)));
        // 13 is still found past it.
        let Located::Slot(found) = table.locate(&store, 13, NOW).unwrap() else {
            panic!()
        };
        assert_eq!(found.key, "palisade/rate-limit/l/6");
    }

    #[test]
    fn a_seal_that_meets_endless_writes_gives_up() {
        let store = MemoryStore::new();
        let table = SlotTable::new("l", 8);
        table.prepare(&store).unwrap();
        let (slot, tat) = place_past_another(&store, &table);
        let mut scripted = Scripted::new(&store);
        for at in 1..=8 {
            scripted = scripted.before(2 * at - 1, || put(&store, 5, 21, NOW + 100));
        }
        let mut conflicts = 0;
        let sealed = table.seal(&scripted, 13, &slot, tat, &gcra(), NOW, 4, &mut conflicts);
        assert_eq!(sealed, Err(UpdateError::Contended(4)));
        assert_eq!(conflicts, 3);
    }

    #[test]
    fn stored_values_round_trip_and_junk_reads_as_unused() {
        assert_eq!(decode(&encode(u64::MAX, 42)), Some((u64::MAX, 42)));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[1; 15]), None);
        assert_eq!(decode(&[1; 17]), None);
    }
}
