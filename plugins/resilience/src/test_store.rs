//! A [`SharedStore`] for unit tests that counts its reads: a shared-data read is a host call
//! that hands a value to the plugin, the costliest kind in Envoy.

use std::cell::Cell;

use palisade_kit::store::{Cas, Entry, MemoryStore, SharedStore, StoreError, Write};

#[derive(Default)]
pub struct CountingStore {
    pub inner: MemoryStore,
    pub reads: Cell<u32>,
}

impl SharedStore for CountingStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(key)
    }
    fn set(&self, key: &str, value: &[u8], expected: Option<Cas>) -> Result<Write, StoreError> {
        self.inner.set(key, value, expected)
    }
}
