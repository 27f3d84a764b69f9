//! `InflightLimit`: requests in flight per scope, counted across workers in the shared store.
//! It sheds requests over the limit, and grants retries within the retry budget. Every slot
//! taken is given back when its stream ends, however it ends.
//!
//! A VM that traps never sees its streams end, so a single shared count would keep the slots
//! of a crashed VM for good. The stored value is therefore a table of per-VM shares: each VM
//! ([`Owner`], a random id drawn at start) writes its own share as the absolute number of
//! slots it holds (it knows that number exactly), stamped with the time of the write. A VM
//! holding slots renews its stamp from its timer ([`InflightLimit::renew`]); the total sums
//! only shares renewed within the lease, and every write drops the others. While every VM is
//! alive the cap is exact (one compare-and-swap over the whole table); a crashed VM's slots
//! count until its share is a lease old, then free for good.

use std::cell::RefCell;
use std::collections::BTreeMap;

use palisade_kit::store::{update, SharedStore, Step, UpdateError};

use crate::config::{ConcurrencyConfig, RetryConfig};

const CAS_ATTEMPTS: u32 = 8;
/// First byte of a stored table (a value without it, such as the single count an earlier
/// version wrote, reads as an empty table).
const TABLE_VERSION: u8 = 2;
const SHARE_LEN: usize = 8 + 8 + 4 + 4;
/// Shares kept at most (one per live VM: Envoy's workers, Kong's nginx workers). Past that the
/// least recently renewed share of another VM gives way.
pub const MAX_SHARES: usize = 256;
/// Share slots a stored table holds at least (empty ones are zeros: owner 0, never renewed,
/// so never live).
const PADDED_SHARES: usize = 8;

/// Requests in flight, and of those the ones granted retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inflight {
    pub active: u32,
    pub retrying: u32,
}

impl Inflight {
    fn is_empty(self) -> bool {
        self.active == 0 && self.retrying == 0
    }

    fn plus(self, other: Inflight) -> Inflight {
        Inflight {
            active: self.active.saturating_add(other.active),
            retrying: self.retrying.saturating_add(other.retrying),
        }
    }
}

/// One VM's share of a scope, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub owner: u64,
    /// When the owner last wrote or renewed it (Unix ms).
    pub renewed_ms: u64,
    pub counts: Inflight,
}

/// The stored value of one scope: every VM's share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table(pub Vec<Share>);

impl Table {
    /// The table as stored over `previous` (the bytes it replaces): padded with empty shares
    /// to [`PADDED_SHARES`] or more, and never fewer than `previous` held, so the stored value
    /// keeps its length as workers come and go. A value that grows costs Kong 3.4-3.7 two more
    /// host calls (the kit's `SharedStore::replace`); this one grows only past 8 workers.
    pub fn encode_over(&self, previous: Option<&[u8]>) -> Vec<u8> {
        let before = previous.map_or(0, |bytes| bytes.len().saturating_sub(1) / SHARE_LEN);
        let slots = self
            .0
            .len()
            .next_power_of_two()
            .max(PADDED_SHARES)
            .max(before)
            .min(MAX_SHARES);
        let mut out = self.encode();
        out.resize(1 + slots.max(self.0.len()) * SHARE_LEN, 0);
        out
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.0.len() * SHARE_LEN);
        out.push(TABLE_VERSION);
        for share in &self.0 {
            out.extend_from_slice(&share.owner.to_le_bytes());
            out.extend_from_slice(&share.renewed_ms.to_le_bytes());
            out.extend_from_slice(&share.counts.active.to_le_bytes());
            out.extend_from_slice(&share.counts.retrying.to_le_bytes());
        }
        out
    }

    /// Bytes this version did not write read as an empty table: every live VM writes its
    /// share back with its next request or renewal.
    pub fn decode(bytes: &[u8]) -> Self {
        let Some((&TABLE_VERSION, mut rest)) = bytes.split_first() else {
            return Self::default();
        };
        if rest.len() % SHARE_LEN != 0 {
            return Self::default();
        }
        let mut shares = Vec::with_capacity(rest.len() / SHARE_LEN);
        while let Some((owner, tail)) = rest.split_first_chunk::<8>() {
            let Some((renewed, tail)) = tail.split_first_chunk::<8>() else {
                break;
            };
            let Some((active, tail)) = tail.split_first_chunk::<4>() else {
                break;
            };
            let Some((retrying, tail)) = tail.split_first_chunk::<4>() else {
                break;
            };
            let counts = Inflight {
                active: u32::from_le_bytes(*active),
                retrying: u32::from_le_bytes(*retrying),
            };
            // An empty share is padding ([`Self::encode_over`]): no VM writes one.
            if !counts.is_empty() {
                shares.push(Share {
                    owner: u64::from_le_bytes(*owner),
                    renewed_ms: u64::from_le_bytes(*renewed),
                    counts,
                });
            }
            rest = tail;
        }
        Self(shares)
    }

    /// The sum of the live shares of VMs other than `owner`.
    pub fn others(&self, owner: u64, now_ms: u64, lease_ms: u64) -> Inflight {
        self.0
            .iter()
            .filter(|s| s.owner != owner && live(s, now_ms, lease_ms))
            .fold(Inflight::default(), |sum, s| sum.plus(s.counts))
    }

    /// Drops expired and empty shares, and `owner`'s, then puts `owner`'s back with `counts`
    /// (unless empty), stamped `now_ms`.
    fn rewrite(&mut self, owner: u64, counts: Inflight, now_ms: u64, lease_ms: u64) {
        self.0
            .retain(|s| s.owner != owner && live(s, now_ms, lease_ms) && !s.counts.is_empty());
        if counts.is_empty() {
            return;
        }
        if self.0.len() >= MAX_SHARES {
            self.0.sort_by_key(|s| std::cmp::Reverse(s.renewed_ms));
            self.0.truncate(MAX_SHARES - 1);
        }
        self.0.push(Share {
            owner,
            renewed_ms: now_ms,
            counts,
        });
    }
}

/// Whether a share still counts: renewed within the lease (a stamp from the future, another
/// worker's clock a little ahead, counts).
fn live(share: &Share, now_ms: u64, lease_ms: u64) -> bool {
    share.renewed_ms.saturating_add(lease_ms) > now_ms
}

/// This VM: its id in the shared tables, and the slots its streams hold per scope key. One per
/// VM, shared by every configuration the VM runs (a reconfigured VM keeps its streams).
#[derive(Debug)]
pub struct Owner {
    id: u64,
    held: RefCell<BTreeMap<String, Held>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Held {
    counts: Inflight,
    /// When this VM last wrote its share (Unix ms).
    written_ms: u64,
    /// The stored share may not say `counts`: the last write of it failed. Renewal rewrites it,
    /// so a release that could not be written stops counting within a third of the lease
    /// (or when the share expires, a lease after `written_ms`, if the store stays down).
    stale: bool,
}

impl Owner {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            held: RefCell::default(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// What this VM's streams hold in a scope.
    pub fn held(&self, key: &str) -> Inflight {
        self.held
            .borrow()
            .get(key)
            .map(|held| held.counts)
            .unwrap_or_default()
    }

    /// An emptied scope keeps its entry (scopes are the operator's names, few): the next
    /// request in it allocates nothing. `written`: when the share was written, `None` if that
    /// write failed.
    fn set_held(&self, key: &str, counts: Inflight, written: Option<u64>) {
        let mut held = self.held.borrow_mut();
        match held.get_mut(key) {
            Some(entry) => {
                entry.counts = counts;
                entry.stale = written.is_none();
                entry.written_ms = written.unwrap_or(entry.written_ms);
            }
            None if counts.is_empty() && written.is_some() => {}
            None => {
                held.insert(
                    key.to_owned(),
                    Held {
                        counts,
                        written_ms: written.unwrap_or(0),
                        stale: written.is_none(),
                    },
                );
            }
        }
    }

    /// Whether the timer has a share to renew: a stream of this VM holds a slot, or a share's
    /// last write failed.
    pub fn needs_renewal(&self) -> bool {
        self.held
            .borrow()
            .values()
            .any(|held| held.stale || !held.counts.is_empty())
    }
}

/// A slot taken for one stream; give it back with [`InflightLimit::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub retry_granted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// A slot, and the requests in flight with it.
    Slot(Slot, u32),
    /// Over the limit: refuse the request.
    Shed,
}

#[derive(Debug, Clone)]
pub struct InflightLimit {
    max_requests: Option<u32>,
    /// (percent, minimum concurrency) of the retry budget.
    budget: Option<(u64, u64)>,
    lease_ms: u64,
}

impl InflightLimit {
    /// `None` when nothing needs counting (no limit, no budget).
    pub fn new(concurrency: &ConcurrencyConfig, retry: &RetryConfig) -> Option<Self> {
        let budget = retry
            .budget
            .as_ref()
            .filter(|_| retry.max_retries > 0)
            .map(|b| (u64::from(b.percent), u64::from(b.min_concurrency)));
        (concurrency.max_requests.is_some() || budget.is_some()).then_some(Self {
            max_requests: concurrency.max_requests,
            budget,
            lease_ms: u64::try_from(concurrency.lease.get().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// How long a VM's slots count without renewal.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Takes a slot, unless the scope is full. A store that fails lets the request through
    /// with retries granted (shedding must never be caused by the shedder's own trouble).
    pub fn acquire(
        &self,
        store: &impl SharedStore,
        key: &str,
        owner: &Owner,
        now_ms: u64,
    ) -> Result<Acquired, UpdateError> {
        let mine = owner.held(key);
        let acquired = update(store, key, CAS_ATTEMPTS, |current| {
            let mut table = current.map(Table::decode).unwrap_or_default();
            let others = table.others(owner.id, now_ms, self.lease_ms);
            let total = others.plus(mine);
            if self.max_requests.is_some_and(|max| total.active >= max) {
                return Step::Keep(Acquired::Shed);
            }
            let active = total.active.saturating_add(1);
            let retry_granted = match self.budget {
                None => true,
                Some((percent, min_concurrency)) => {
                    let allowed = (u64::from(active) * percent / 100).max(min_concurrency);
                    u64::from(total.retrying) < allowed
                }
            };
            let taken = Inflight {
                active: 1,
                retrying: u32::from(retry_granted),
            };
            table.rewrite(owner.id, mine.plus(taken), now_ms, self.lease_ms);
            Step::Write(
                table.encode_over(current),
                Acquired::Slot(Slot { retry_granted }, active),
            )
        })?;
        if let Acquired::Slot(slot, _) = acquired {
            let taken = Inflight {
                active: 1,
                retrying: u32::from(slot.retry_granted),
            };
            owner.set_held(key, mine.plus(taken), Some(now_ms));
        }
        Ok(acquired)
    }

    /// Gives a slot back. This VM's count drops at once; a failed write leaves the stored share
    /// high until the VM's next write or renewal (a third of the lease at most), which writes
    /// the exact count.
    pub fn release(
        &self,
        store: &impl SharedStore,
        key: &str,
        owner: &Owner,
        slot: Slot,
        now_ms: u64,
    ) -> Result<Inflight, UpdateError> {
        let held = owner.held(key);
        let mine = Inflight {
            active: held.active.saturating_sub(1),
            retrying: if slot.retry_granted {
                held.retrying.saturating_sub(1)
            } else {
                held.retrying
            },
        };
        let written = self.write_share(store, key, owner, mine, now_ms);
        owner.set_held(key, mine, written.is_ok().then_some(now_ms));
        written
    }

    /// Renews this VM's share of every scope it holds slots in, so they keep counting, and
    /// rewrites every share whose last write failed; returns the scopes whose write failed.
    /// Call well within the lease (the filter: every third).
    pub fn renew(&self, store: &impl SharedStore, owner: &Owner, now_ms: u64) -> Vec<String> {
        let due: Vec<(String, Inflight)> = owner
            .held
            .borrow_mut()
            .iter_mut()
            .filter_map(|(key, held)| {
                // A stale share with no slot that has expired meanwhile counts no more: done.
                if held.stale
                    && held.counts.is_empty()
                    && now_ms >= held.written_ms.saturating_add(self.lease_ms)
                {
                    held.stale = false;
                }
                (held.stale || !held.counts.is_empty()).then(|| (key.clone(), held.counts))
            })
            .collect();
        due.into_iter()
            .filter(|(key, counts)| {
                let written = self.write_share(store, key, owner, *counts, now_ms);
                owner.set_held(key, *counts, written.is_ok().then_some(now_ms));
                written.is_err()
            })
            .map(|(key, _)| key)
            .collect()
    }

    /// Writes `owner`'s share as `mine`; returns the scope's live total.
    fn write_share(
        &self,
        store: &impl SharedStore,
        key: &str,
        owner: &Owner,
        mine: Inflight,
        now_ms: u64,
    ) -> Result<Inflight, UpdateError> {
        update(store, key, CAS_ATTEMPTS, |current| {
            let mut table = current.map(Table::decode).unwrap_or_default();
            let total = table.others(owner.id, now_ms, self.lease_ms).plus(mine);
            // Nothing of ours to take out (pruned, expired, or evicted with the key): no write,
            // and an absent key is not created just to hold nothing.
            if mine.is_empty() && !table.0.iter().any(|share| share.owner == owner.id) {
                return Step::Keep(total);
            }
            table.rewrite(owner.id, mine, now_ms, self.lease_ms);
            Step::Write(table.encode_over(current), total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_kit::config::load;
    use palisade_kit::store::{MemoryStore, StoreError};

    use crate::config::ResilienceConfig;

    const KEY: &str = "palisade/resilience/inflight/orders";
    const LEASE: u64 = 30_000;

    fn limit(json: &str) -> Option<InflightLimit> {
        let config: ResilienceConfig = load(json.as_bytes()).unwrap();
        InflightLimit::new(&config.concurrency, &config.retry)
    }

    fn table(store: &MemoryStore) -> Table {
        Table::decode(&store.get(KEY).unwrap().unwrap().value)
    }

    /// The live total as a VM with no slots would see it.
    fn total(store: &MemoryStore, now: u64) -> Inflight {
        table(store).others(u64::MAX, now, LEASE)
    }

    fn slot(acquired: Acquired) -> Slot {
        match acquired {
            Acquired::Slot(slot, _) => slot,
            Acquired::Shed => panic!("shed"),
        }
    }

    #[test]
    fn nothing_is_counted_without_a_limit_or_a_budget() {
        assert!(limit(r#"{"retry":{"budget":null}}"#).is_none());
        assert!(limit(r#"{"retry":{"max_retries":0}}"#).is_none());
        assert!(limit("").is_none(), "nothing is counted by default");
        assert!(limit(r#"{"retry":{"budget":{}}}"#).is_some());
        assert_eq!(
            limit(r#"{"retry":{"budget":{}}}"#).unwrap().lease_ms(),
            LEASE
        );
    }

    /// A store whose writes fail while `failing` is set.
    #[derive(Default)]
    struct FlakyStore {
        inner: MemoryStore,
        failing: std::cell::Cell<bool>,
    }

    impl SharedStore for FlakyStore {
        fn get(&self, key: &str) -> Result<Option<palisade_kit::store::Entry>, StoreError> {
            self.inner.get(key)
        }
        fn set(
            &self,
            key: &str,
            value: &[u8],
            expected: Option<palisade_kit::store::Cas>,
        ) -> Result<palisade_kit::store::Write, StoreError> {
            if self.failing.get() {
                return Err(StoreError::Host(10));
            }
            self.inner.set(key, value, expected)
        }
    }

    #[test]
    fn a_release_that_could_not_be_written_is_written_at_the_next_renewal() {
        let limit = limit(r#"{"concurrency":{"max_requests":1},"retry":{"budget":null}}"#).unwrap();
        let store = FlakyStore::default();
        let (vm1, vm2) = (Owner::new(1), Owner::new(2));
        let a = slot(limit.acquire(&store, KEY, &vm1, 0).unwrap());
        store.failing.set(true);
        assert!(limit.release(&store, KEY, &vm1, a, 1).is_err());
        store.failing.set(false);
        assert_eq!(vm1.held(KEY).active, 0, "this VM's own count drops at once");
        assert_eq!(
            limit.acquire(&store, KEY, &vm2, 2),
            Ok(Acquired::Shed),
            "the stored share still counts"
        );
        assert!(vm1.needs_renewal(), "holding nothing, but stale");
        assert!(limit.renew(&store, &vm1, 3).is_empty());
        assert!(!vm1.needs_renewal());
        assert!(matches!(
            limit.acquire(&store, KEY, &vm2, 4),
            Ok(Acquired::Slot(..))
        ));
        // A renewal that fails too stays due.
        let stale = Owner::new(3);
        let held = slot(limit.acquire(&store, "other", &stale, 0).unwrap());
        store.failing.set(true);
        assert!(limit.release(&store, "other", &stale, held, 1).is_err());
        assert_eq!(limit.renew(&store, &stale, 2), ["other"]);
        assert!(stale.needs_renewal());
        store.failing.set(false);
        assert!(limit.renew(&store, &stale, 3).is_empty());
        assert!(!stale.needs_renewal());
        // A store down past the lease: the stale share has expired by itself, so renewal
        // stops trying (and stops reporting failures) then, and writes nothing after.
        let held = slot(limit.acquire(&store, "third", &stale, 10).unwrap());
        store.failing.set(true);
        assert!(limit.release(&store, "third", &stale, held, 11).is_err());
        let lease = limit.lease_ms();
        assert_eq!(limit.renew(&store, &stale, 10 + lease - 1), ["third"]);
        assert!(limit.renew(&store, &stale, 10 + lease).is_empty());
        assert!(!stale.needs_renewal());
        // Nothing of this VM's left in a key (Kong evicted it): the release writes nothing,
        // and does not create the key again just to hold nothing.
        store.failing.set(false);
        let held = slot(limit.acquire(&store, "evicted", &stale, 20).unwrap());
        assert!(store.inner.evict("evicted"));
        assert_eq!(
            limit.release(&store, "evicted", &stale, held, 21),
            Ok(Inflight::default())
        );
        assert_eq!(store.get("evicted").unwrap(), None);
    }

    #[test]
    fn sheds_over_the_limit_across_vms_and_every_release_gives_a_slot_back() {
        let limit = limit(r#"{"concurrency":{"max_requests":2},"retry":{"budget":null}}"#).unwrap();
        let store = MemoryStore::new();
        let (vm1, vm2) = (Owner::new(1), Owner::new(2));
        let a = slot(limit.acquire(&store, KEY, &vm1, 0).unwrap());
        let b = slot(limit.acquire(&store, KEY, &vm2, 0).unwrap());
        assert_eq!(limit.acquire(&store, KEY, &vm1, 0), Ok(Acquired::Shed));
        assert_eq!(limit.acquire(&store, KEY, &vm2, 0), Ok(Acquired::Shed));
        assert_eq!(total(&store, 0).active, 2);
        assert_eq!(vm1.held(KEY).active, 1);
        limit.release(&store, KEY, &vm1, a, 1).unwrap();
        assert!(!vm1.needs_renewal());
        assert_eq!(
            limit.acquire(&store, KEY, &vm2, 2),
            Ok(Acquired::Slot(
                Slot {
                    retry_granted: true
                },
                2
            ))
        );
        limit.release(&store, KEY, &vm2, b, 3).unwrap();
        assert_eq!(total(&store, 3).active, 1);
        assert_eq!(table(&store).0.len(), 1, "an empty share is dropped");
    }

    #[test]
    fn the_retry_budget_grants_retries_to_a_share_of_active_requests() {
        let limit = limit(r#"{"retry":{"budget":{"percent":20,"min_concurrency":3}}}"#).unwrap();
        let store = MemoryStore::new();
        let vms = [Owner::new(1), Owner::new(2)];
        let granted: Vec<bool> = (0..20)
            .map(|i| slot(limit.acquire(&store, KEY, &vms[i % 2], 0).unwrap()).retry_granted)
            .collect();
        // The first three always; then while retrying < 20% of active.
        assert_eq!(granted.iter().filter(|g| **g).count(), 4);
        assert!(granted[..3].iter().all(|g| *g));
        assert_eq!(
            total(&store, 0),
            Inflight {
                active: 20,
                retrying: 4
            }
        );
        let retrying = Slot {
            retry_granted: true,
        };
        limit.release(&store, KEY, &vms[0], retrying, 0).unwrap();
        assert_eq!(total(&store, 0).retrying, 3);
    }

    #[test]
    fn counts_never_go_below_zero() {
        let limit = limit(r#"{"retry":{"budget":{}}}"#).unwrap();
        let store = MemoryStore::new();
        let retrying = Slot {
            retry_granted: true,
        };
        assert_eq!(
            limit.release(&store, KEY, &Owner::new(1), retrying, 0),
            Ok(Inflight::default())
        );
    }

    #[test]
    fn a_crashed_vms_slots_count_until_its_lease_ends_then_free() {
        let limit = limit(r#"{"concurrency":{"max_requests":3},"retry":{"budget":null}}"#).unwrap();
        let store = MemoryStore::new();
        let (crashed, alive) = (Owner::new(7), Owner::new(8));
        for _ in 0..3 {
            slot(limit.acquire(&store, KEY, &crashed, 1_000).unwrap());
        }
        // The crashed VM never releases nor renews; the other keeps renewing its own.
        assert_eq!(
            limit.acquire(&store, KEY, &alive, 1_000),
            Ok(Acquired::Shed)
        );
        assert_eq!(
            limit.acquire(&store, KEY, &alive, 1_000 + LEASE - 1),
            Ok(Acquired::Shed),
            "exact up to the lease"
        );
        let taken = limit.acquire(&store, KEY, &alive, 1_000 + LEASE).unwrap();
        assert_eq!(
            taken,
            Acquired::Slot(
                Slot {
                    retry_granted: true
                },
                1
            )
        );
        assert_eq!(
            table(&store).0.iter().map(|s| s.owner).collect::<Vec<_>>(),
            [8],
            "the dead share is dropped on the next write"
        );
    }

    #[test]
    fn a_live_vm_that_renews_keeps_its_slots_past_the_lease() {
        let limit = limit(r#"{"concurrency":{"max_requests":1},"retry":{"budget":null}}"#).unwrap();
        let store = MemoryStore::new();
        let (long, other) = (Owner::new(1), Owner::new(2));
        let held = slot(limit.acquire(&store, KEY, &long, 0).unwrap());
        for t in (LEASE / 3..=4 * LEASE).step_by(usize::try_from(LEASE / 3).unwrap()) {
            assert!(limit.renew(&store, &long, t).is_empty());
            assert_eq!(limit.acquire(&store, KEY, &other, t), Ok(Acquired::Shed));
        }
        limit.release(&store, KEY, &long, held, 4 * LEASE).unwrap();
        assert!(matches!(
            limit.acquire(&store, KEY, &other, 4 * LEASE),
            Ok(Acquired::Slot(..))
        ));
        assert!(
            limit.renew(&store, &Owner::new(3), 0).is_empty(),
            "nothing to renew"
        );
    }

    #[test]
    fn an_evicted_or_foreign_value_is_rebuilt_from_each_vms_own_count() {
        let limit =
            limit(r#"{"concurrency":{"max_requests":10},"retry":{"budget":null}}"#).unwrap();
        let store = MemoryStore::new();
        let vm = Owner::new(1);
        for _ in 0..4 {
            slot(limit.acquire(&store, KEY, &vm, 0).unwrap());
        }
        // An earlier version's single count (8 bytes) or an eviction under Kong.
        let cas = store.get(KEY).unwrap().map(|entry| entry.cas);
        assert_eq!(
            store.set(KEY, &[9, 0, 0, 0, 9, 0, 0, 0], cas).unwrap(),
            palisade_kit::store::Write::Stored
        );
        assert_eq!(total(&store, 0), Inflight::default());
        assert!(limit.renew(&store, &vm, 1).is_empty());
        assert_eq!(total(&store, 1).active, 4, "the VM's exact count is back");
    }

    #[test]
    fn the_table_keeps_at_most_max_shares_dropping_the_stalest() {
        let limit = limit(r#"{"retry":{"budget":{}}}"#).unwrap();
        let store = MemoryStore::new();
        for id in 0..(MAX_SHARES as u64 + 10) {
            slot(limit.acquire(&store, KEY, &Owner::new(id), id).unwrap());
        }
        let shares = table(&store).0;
        assert_eq!(shares.len(), MAX_SHARES);
        assert!(
            shares.iter().all(|s| s.owner >= 10),
            "the stalest went first"
        );
    }

    #[test]
    fn a_table_round_trips_and_garbage_reads_as_empty() {
        let t = Table(vec![Share {
            owner: u64::MAX,
            renewed_ms: 42,
            counts: Inflight {
                active: 3,
                retrying: 1,
            },
        }]);
        assert_eq!(Table::decode(&t.encode()), t);
        assert_eq!(Table::decode(&[]), Table::default());
        assert_eq!(Table::decode(&[TABLE_VERSION, 1, 2]), Table::default());
        assert_eq!(Table::decode(&[TABLE_VERSION]), Table::default());
    }

    /// A stored table keeps its length as VMs come and go (a longer value costs Kong 3.4-3.7
    /// two more host calls): 8 share slots, doubling past them, never shrinking.
    #[test]
    fn a_stored_table_is_padded_and_never_shrinks() {
        let table = |n: u64| {
            Table(
                (1..=n)
                    .map(|owner| Share {
                        owner,
                        renewed_ms: 7,
                        counts: Inflight {
                            active: 1,
                            retrying: 0,
                        },
                    })
                    .collect(),
            )
        };
        let eight = 1 + 8 * SHARE_LEN;
        let mut stored: Option<Vec<u8>> = None;
        for n in [1, 3, 8, 2] {
            let bytes = table(n).encode_over(stored.as_deref());
            assert_eq!(bytes.len(), eight, "{n} shares");
            assert_eq!(Table::decode(&bytes), table(n), "padding reads as nothing");
            stored = Some(bytes);
        }
        let nine = table(9).encode_over(stored.as_deref());
        assert_eq!(nine.len(), 1 + 16 * SHARE_LEN);
        assert_eq!(table(1).encode_over(Some(&nine)).len(), nine.len());
        assert_eq!(table(1).encode_over(None).len(), eight);
    }
}

/// The per-VM table against a model: VMs take and give back slots, crash (a new VM takes
/// their place, as a reload does) and the clock moves with the live VMs' timers renewing.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod proptests {
    use super::*;
    use palisade_kit::store::MemoryStore;
    use proptest::prelude::*;

    const KEY: &str = "palisade/resilience/inflight/orders";
    const LEASE: u64 = 30_000;

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(usize),
        Release(usize, usize),
        Crash(usize),
        Advance(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let op = prop_oneof![
            5 => (0usize..3).prop_map(Op::Acquire),
            3 => (0usize..3, any::<usize>()).prop_map(|(vm, n)| Op::Release(vm, n)),
            1 => (0usize..3).prop_map(Op::Crash),
            2 => (0u64..2 * LEASE).prop_map(Op::Advance),
        ];
        proptest::collection::vec(op, 1..200)
    }

    struct Vm {
        owner: Owner,
        slots: Vec<Slot>,
        last_write: u64,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A request is admitted exactly when the live VMs' slots plus the slots of crashed
        /// VMs still within their lease are under the limit: never over the cap, and a crashed
        /// VM's slots free once its lease has run out, never before.
        #[test]
        fn the_cap_is_exact_and_crashed_slots_free_after_the_lease(
            max in 1u32..6,
            ops in ops(),
        ) {
            let limit = InflightLimit {
                max_requests: Some(max),
                budget: None,
                lease_ms: LEASE,
            };
            let store = MemoryStore::new();
            let mut next_id = 0u64;
            let mut new_vm = |now: u64| {
                next_id += 1;
                Vm { owner: Owner::new(next_id), slots: Vec::new(), last_write: now }
            };
            let mut now = 1_000_000u64;
            let mut vms: Vec<Vm> = (0..3).map(|_| new_vm(now)).collect();
            // Crashed VMs: (slots held, last write).
            let mut dead: Vec<(usize, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Acquire(i) => {
                        let counted: usize = vms.iter().map(|vm| vm.slots.len()).sum::<usize>()
                            + dead
                                .iter()
                                .filter(|(_, at)| at + LEASE > now)
                                .map(|(held, _)| held)
                                .sum::<usize>();
                        let got = limit
                            .acquire(&store, KEY, &vms[i].owner, now)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        match got {
                            Acquired::Slot(slot, active) => {
                                prop_assert!(counted < max as usize, "admitted with {counted} counted");
                                prop_assert_eq!(active as usize, counted + 1);
                                vms[i].slots.push(slot);
                                vms[i].last_write = now;
                            }
                            Acquired::Shed => {
                                prop_assert!(counted >= max as usize, "shed with only {counted} counted");
                            }
                        }
                    }
                    Op::Release(i, n) if !vms[i].slots.is_empty() => {
                        let at = n % vms[i].slots.len();
                        let slot = vms[i].slots.swap_remove(at);
                        limit
                            .release(&store, KEY, &vms[i].owner, slot, now)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        vms[i].last_write = now;
                    }
                    Op::Release(..) => {}
                    Op::Crash(i) => {
                        let crashed = std::mem::replace(&mut vms[i], new_vm(now));
                        if !crashed.slots.is_empty() {
                            dead.push((crashed.slots.len(), crashed.last_write));
                        }
                    }
                    Op::Advance(ms) => {
                        // The live VMs' timers renew every third of the lease on the way.
                        let target = now + ms;
                        while now < target {
                            now = (now + LEASE / 3).min(target);
                            for vm in &mut vms {
                                if vm.owner.needs_renewal() {
                                    prop_assert!(limit.renew(&store, &vm.owner, now).is_empty());
                                    vm.last_write = now;
                                }
                            }
                        }
                    }
                }
                // The table holds at most one share per VM with slots, dead ones included
                // until a write prunes them.
                let shares = store
                    .get(KEY)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .map_or(0, |entry| Table::decode(&entry.value).0.len());
                prop_assert!(shares <= vms.len() + dead.len());
            }
        }
    }
}
