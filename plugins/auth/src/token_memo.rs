//! The worker's memo in front of the verified-token cache: the exact token bytes this worker
//! has seen verified, with what decoding them gave. A repeat of the token skips the base64 and
//! JSON decoding and the SHA-256 and shared-data read the shared cache costs (86% of a warm
//! request's instructions), and goes straight to the checks that depend on the request or the
//! clock: provider accepted here, token location, `exp`/`nbf`/`iat` at `now`, rules.
//!
//! An entry counts only while its provider's key set is the one that verified it (a remote
//! JWKS whose document changed, rotation included, makes every entry a miss; a refresh to the
//! same document keeps them) and never past the token's `exp`; tokens without
//! `exp` are never remembered. It is a fixed number of direct-mapped slots per worker, so its
//! memory is bounded by slots times `max_token_bytes`; a collision only costs a miss.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use palisade_kit::header_pairs::Edit;
use serde_json::Value;

use crate::claims::TokenTimes;
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
    /// Its `exp`, `nbf` and `iat`, checked again on every repeat.
    pub times: TokenTimes,
    /// The identity headers it gives the request (provider, subject, consumer, claims).
    pub identity: Rc<[Edit<'static>]>,
    /// `exp` plus leeway (seconds): the entry's end. Tokens without `exp` are never
    /// remembered.
    pub expires: Option<u64>,
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
        if entry.verified.expires.is_none_or(|end| now > end) || !same_bytes(&entry.token, token) {
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
        (slot_hash(token) % len as u64) as usize
    }
}

/// Picks a slot from the token's length and its last 64 bytes, the end of its signature:
/// a few dozen instructions where hashing the whole token took thousands. Not for security:
/// a hit compares every byte, and only verified tokens are ever stored, so tokens made to
/// share a slot can at most cost misses.
fn slot_hash(token: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let tail = token.get(token.len().saturating_sub(64)..).unwrap_or(token);
    let (words, rest) = tail.as_chunks::<8>();
    let mut last = [0u8; 8];
    for (b, r) in last.iter_mut().zip(rest) {
        *b = *r;
    }
    words
        .iter()
        .chain([&last])
        .fold(token.len() as u64, |hash, word| {
            (hash.rotate_left(5) ^ u64::from_le_bytes(*word)).wrapping_mul(K)
        })
}

/// `a == b`, eight bytes at a time (the byte-wise `memcmp` wasm32 gets is several times
/// slower on a 1 KB token).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let ((a_words, a_rest), (b_words, b_rest)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    a.len() == b.len()
        && a_words
            .iter()
            .zip(b_words)
            .all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && a_rest == b_rest
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
            times: TokenTimes::default(),
            identity: Rc::new([]),
            expires: Some(expires),
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
    fn tokens_are_compared_byte_for_byte() {
        let token: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert!(same_bytes(&token, &token.clone()));
        for at in [0, 7, 8, 500, 991, 992, 999] {
            let mut other = token.clone();
            other[at] ^= 1;
            assert!(!same_bytes(&token, &other), "byte {at}");
            // The same slot, byte for byte elsewhere: still a miss.
            let memo = TokenMemo::new(1).unwrap();
            memo.remember(&token, None, verified(10));
            assert!(memo.get(&other, 1, |_| None).is_none(), "byte {at}");
            assert!(memo.get(&token, 1, |_| None).is_some());
        }
        assert!(!same_bytes(&token, &token[..999]));
        assert!(!same_bytes(b"abc", b"abd"));
    }

    #[test]
    fn the_slot_follows_the_length_and_the_signature_end() {
        let base = slot_hash(b"0123456789abcdefXYZ");
        assert_ne!(base, slot_hash(b"0123456789abcdefXYz"));
        assert_ne!(base, slot_hash(b"1123456789abcdefXYZ"));
        assert_ne!(slot_hash(b"ab"), slot_hash(b"ab\0"));
    }
}
