//! `InflightLimit`: requests in flight per scope, counted across workers in the shared store.
//! It sheds requests over the limit, and grants retries within the retry budget. Every slot
//! taken is given back when its stream ends, however it ends.

use palisade_kit::store::{update, SharedStore, Step, UpdateError};

use crate::config::{ConcurrencyConfig, RetryConfig};

const CAS_ATTEMPTS: u32 = 8;

/// The stored counts of one scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inflight {
    pub active: u32,
    /// Of those, the requests granted retries.
    pub retrying: u32,
}

impl Inflight {
    pub fn encode(self) -> [u8; 8] {
        let mut out = [0u8; 8];
        let (active, retrying) = out.split_at_mut(4);
        active.copy_from_slice(&self.active.to_le_bytes());
        retrying.copy_from_slice(&self.retrying.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (active, retrying) = bytes.split_first_chunk::<4>()?;
        let retrying: &[u8; 4] = retrying.try_into().ok()?;
        Some(Self {
            active: u32::from_le_bytes(*active),
            retrying: u32::from_le_bytes(*retrying),
        })
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
        })
    }

    /// Takes a slot, unless the scope is full. A store that fails lets the request through
    /// with retries granted (shedding must never be caused by the shedder's own trouble).
    pub fn acquire(&self, store: &impl SharedStore, key: &str) -> Result<Acquired, UpdateError> {
        update(store, key, CAS_ATTEMPTS, |current| {
            let mut counts = current.and_then(Inflight::decode).unwrap_or_default();
            if self.max_requests.is_some_and(|max| counts.active >= max) {
                return Step::Keep(Acquired::Shed);
            }
            counts.active = counts.active.saturating_add(1);
            let retry_granted = match self.budget {
                None => true,
                Some((percent, min_concurrency)) => {
                    let allowed = (u64::from(counts.active) * percent / 100).max(min_concurrency);
                    u64::from(counts.retrying) < allowed
                }
            };
            if retry_granted {
                counts.retrying = counts.retrying.saturating_add(1);
            }
            Step::Write(
                counts.encode().to_vec(),
                Acquired::Slot(Slot { retry_granted }, counts.active),
            )
        })
    }

    /// Gives a slot back.
    pub fn release(
        &self,
        store: &impl SharedStore,
        key: &str,
        slot: Slot,
    ) -> Result<Inflight, UpdateError> {
        update(store, key, CAS_ATTEMPTS, |current| {
            let mut counts = current.and_then(Inflight::decode).unwrap_or_default();
            counts.active = counts.active.saturating_sub(1);
            if slot.retry_granted {
                counts.retrying = counts.retrying.saturating_sub(1);
            }
            Step::Write(counts.encode().to_vec(), counts)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_kit::config::load;
    use palisade_kit::store::MemoryStore;

    use crate::config::ResilienceConfig;

    const KEY: &str = "palisade-resilience/inflight/orders";

    fn limit(json: &str) -> Option<InflightLimit> {
        let config: ResilienceConfig = load(json.as_bytes()).unwrap();
        InflightLimit::new(&config.concurrency, &config.retry)
    }

    fn counts(store: &MemoryStore) -> Inflight {
        Inflight::decode(&store.get(KEY).unwrap().unwrap().value).unwrap()
    }

    #[test]
    fn nothing_is_counted_without_a_limit_or_a_budget() {
        assert!(limit(r#"{"retry":{"budget":null}}"#).is_none());
        assert!(limit(r#"{"retry":{"max_retries":0}}"#).is_none());
        assert!(limit("").is_none(), "nothing is counted by default");
        assert!(limit(r#"{"retry":{"budget":{}}}"#).is_some());
    }

    #[test]
    fn sheds_over_the_limit_and_every_release_gives_a_slot_back() {
        let limit = limit(r#"{"concurrency":{"max_requests":2},"retry":{"budget":null}}"#).unwrap();
        let store = MemoryStore::new();
        let a = limit.acquire(&store, KEY).unwrap();
        let b = limit.acquire(&store, KEY).unwrap();
        assert_eq!(limit.acquire(&store, KEY), Ok(Acquired::Shed));
        assert_eq!(counts(&store).active, 2);
        let Acquired::Slot(a, _) = a else { panic!() };
        limit.release(&store, KEY, a).unwrap();
        assert!(matches!(limit.acquire(&store, KEY), Ok(Acquired::Slot(..))));
        let Acquired::Slot(b, _) = b else { panic!() };
        limit.release(&store, KEY, b).unwrap();
        assert_eq!(counts(&store).active, 1);
    }

    #[test]
    fn the_retry_budget_grants_retries_to_a_share_of_active_requests() {
        let limit = limit(r#"{"retry":{"budget":{"percent":20,"min_concurrency":3}}}"#).unwrap();
        let store = MemoryStore::new();
        let granted: Vec<bool> = (0..20)
            .map(|_| match limit.acquire(&store, KEY).unwrap() {
                Acquired::Slot(slot, _) => slot.retry_granted,
                Acquired::Shed => panic!("no limit set"),
            })
            .collect();
        // The first three always; then while retrying < 20% of active.
        assert_eq!(granted.iter().filter(|g| **g).count(), 4);
        assert!(granted[..3].iter().all(|g| *g));
        assert_eq!(
            counts(&store),
            Inflight {
                active: 20,
                retrying: 4
            }
        );
        limit
            .release(
                &store,
                KEY,
                Slot {
                    retry_granted: true,
                },
            )
            .unwrap();
        assert_eq!(counts(&store).retrying, 3);
    }

    #[test]
    fn counts_never_go_below_zero() {
        let limit = limit(r#"{"retry":{"budget":{}}}"#).unwrap();
        let store = MemoryStore::new();
        assert_eq!(
            limit.release(
                &store,
                KEY,
                Slot {
                    retry_granted: true
                }
            ),
            Ok(Inflight::default())
        );
    }
}
