//! The worker's memo in front of the verified-token cache: the exact token bytes this worker
//! has seen verified, with what decoding them gave. A repeat of the token skips the base64 and
//! JSON decoding and the SHA-256 and shared-data read the shared cache costs (86% of a warm
//! request's instructions), and goes straight to the checks that depend on the request or the
//! clock: provider accepted here, token location, `exp`/`nbf`/`iat` at `now`, rules.
//!
//! An entry counts only while its provider's key set is the one that verified it (a JWKS
//! refresh or rotation empties it in effect) and never past the token's `exp`; tokens without
//! `exp` are never remembered. It is a fixed number of direct-mapped slots per worker, so its
//! memory is bounded by slots times `max_token_bytes`; a collision only costs a miss.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use serde_json::Value;

use crate::jwks::KeySet;

/// Most slots a worker keeps, whatever `verified_token_cache_entries` says: about 256 tokens
/// in use at once per worker covers a gateway's hot set, at no more than 2 MiB of 8 KiB tokens.
pub const MAX_SLOTS: usize = 256;

/// What verifying a token established, shared by the memo and the requests that hit it.
#[derive(Debug)]
pub struct Verified {
    /// Index of the provider whose keys verified it.
    pub provider: usize,
    /// The claims (a JSON object), trusted because the signature was.
    pub claims: Value,
    /// `exp` plus leeway (seconds): the entry's end.
    pub expires: u64,
    /// Has the token an `exp` at all? (Only those are remembered.)
    pub expiring: bool,
}

#[derive(Debug)]
struct Entry {
    token: Box<[u8]>,
    /// The key set that verified the token; `None` for an HMAC secret (fixed by the config
    /// the memo lives and dies with).
    keys: Option<Weak<KeySet>>,
    verified: Rc<Verified>,
}

#[derive(Debug)]
pub struct TokenMemo {
    slots: RefCell<Vec<Option<Entry>>>,
}

impl TokenMemo {
    /// `None` for 0 slots (the verified-token cache is off).
    pub fn new(entries: u32) -> Option<TokenMemo> {
        let slots = usize::try_from(entries).unwrap_or(MAX_SLOTS).min(MAX_SLOTS);
        (slots > 0).then(|| TokenMemo {
            slots: RefCell::new((0..slots).map(|_| None).collect()),
        })
    }

    /// The remembered verification of exactly `token`, if `now` (seconds) is not past its
    /// expiry and its provider's key set, as `current_keys` gives it for a provider index, is
    /// still the one that verified it (by identity).
    pub fn get(
        &self,
        token: &[u8],
        now: u64,
        current_keys: impl FnOnce(usize) -> Option<Rc<KeySet>>,
    ) -> Option<Rc<Verified>> {
        let slots = self.slots.borrow();
        let entry = slots.get(self.slot(token))?.as_ref()?;
        if now > entry.verified.expires || *entry.token != *token {
            return None;
        }
        let same_keys = match &entry.keys {
            None => true,
            Some(then) => then.upgrade().is_some_and(|then| {
                current_keys(entry.verified.provider).is_some_and(|now| Rc::ptr_eq(&then, &now))
            }),
        };
        same_keys.then(|| Rc::clone(&entry.verified))
    }

    /// Remembers a verified token, replacing whatever shared its slot.
    pub fn remember(&self, token: &[u8], keys: Option<&Rc<KeySet>>, verified: Rc<Verified>) {
        let slot = self.slot(token);
        if let Some(place) = self.slots.borrow_mut().get_mut(slot) {
            *place = Some(Entry {
                token: token.into(),
                keys: keys.map(Rc::downgrade),
                verified,
            });
        }
    }

    fn slot(&self, token: &[u8]) -> usize {
        let len = self.slots.borrow().len().max(1);
        // Not for security (a collision is a miss, the bytes are compared): a fast mix.
        (fx_hash(token) % len as u64) as usize
    }
}

/// FxHash over 8-byte words: a few instructions per word, where SHA-256 takes thousands per
/// 64-byte block.
fn fx_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut hash = bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in words.by_ref() {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(word);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(buf)).wrapping_mul(K);
    }
    let mut buf = [0u8; 8];
    for (b, r) in buf.iter_mut().zip(words.remainder()) {
        *b = *r;
    }
    (hash.rotate_left(5) ^ u64::from_le_bytes(buf)).wrapping_mul(K)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use serde_json::json;

    use super::*;
    use crate::test_tokens::JWKS;

    fn verified(expires: u64) -> Rc<Verified> {
        Rc::new(Verified {
            provider: 0,
            claims: json!({"sub": "alice"}),
            expires,
            expiring: true,
        })
    }

    fn key_set() -> Rc<KeySet> {
        Rc::new(KeySet::parse(JWKS.as_bytes()).unwrap().0)
    }

    #[test]
    fn a_remembered_token_is_found_until_its_expiry_with_the_same_keys_only() {
        let memo = TokenMemo::new(8).unwrap();
        let keys = key_set();
        memo.remember(b"token-a", Some(&keys), verified(100));
        assert!(memo
            .get(b"token-a", 100, |_| Some(Rc::clone(&keys)))
            .is_some());
        assert!(
            memo.get(b"token-a", 101, |_| Some(Rc::clone(&keys)))
                .is_none(),
            "past exp"
        );
        assert!(
            memo.get(b"token-b", 50, |_| Some(Rc::clone(&keys)))
                .is_none(),
            "another token"
        );
        assert!(
            memo.get(b"token-", 50, |_| Some(Rc::clone(&keys)))
                .is_none(),
            "a prefix"
        );
        // A refreshed key set (even with the same keys) is another set: verify again.
        assert!(memo.get(b"token-a", 50, |_| Some(key_set())).is_none());
        assert!(
            memo.get(b"token-a", 50, |_| None).is_none(),
            "keys unavailable now"
        );
        // Once the set that verified it is gone, nothing can match it again.
        drop(keys);
        let newer = key_set();
        assert!(memo
            .get(b"token-a", 50, |_| Some(Rc::clone(&newer)))
            .is_none());
    }

    #[test]
    fn hmac_tokens_are_remembered_without_keys() {
        // The secret comes with the configuration the memo is rebuilt with.
        let memo = TokenMemo::new(1).unwrap();
        memo.remember(b"hs", None, verified(10));
        assert!(memo.get(b"hs", 10, |_| None).is_some());
        assert!(memo.get(b"hs", 10, |_| Some(key_set())).is_some());
        assert!(memo.get(b"hs", 11, |_| None).is_none());
    }

    #[test]
    fn slots_are_bounded_and_a_collision_replaces() {
        assert!(TokenMemo::new(0).is_none());
        assert_eq!(
            TokenMemo::new(1_000_000).unwrap().slots.borrow().len(),
            MAX_SLOTS
        );
        let memo = TokenMemo::new(1).unwrap();
        memo.remember(b"first", None, verified(10));
        memo.remember(b"second", None, verified(10));
        assert!(memo.get(b"first", 1, |_| None).is_none());
        assert!(memo.get(b"second", 1, |_| None).is_some());
    }

    #[test]
    fn the_hash_reads_every_byte() {
        let base = fx_hash(b"0123456789abcdefXYZ");
        assert_ne!(base, fx_hash(b"0123456789abcdefXYz"));
        assert_ne!(base, fx_hash(b"1123456789abcdefXYZ"));
        assert_ne!(fx_hash(b"ab"), fx_hash(b"ab\0"));
    }
}
