//! The verified-token cache: which exact tokens' signatures a provider's keys have already
//! verified, shared by every worker through shared data, so each distinct token costs its
//! signature math once per proxy rather than once per worker or per request.
//!
//! Only the signature is cached. The token is still decoded and every claim (`exp`, `nbf`,
//! `iat`, `aud`, rules) is checked on every request; an entry is never used past the token's
//! `exp` (leeway included), and tokens without `exp` are never cached. An entry names the key
//! that verified the signature ([`KeyId`]) and counts only while the provider's current set
//! still offers that key for the token: a key removed from the JWKS (rotated out, or
//! compromised) stops vouching for the tokens it verified. The cache is a fixed
//! number of slots (`verified_token_cache_entries`): the slot is chosen by the token's SHA-256
//! and an entry holds the whole digest, so a slot shared by two tokens only costs a miss. Shared
//! data therefore never holds more than that many keys for it (Envoy never evicts shared data),
//! and never a token.

use palisade_kit::store::{SharedStore, Write};
use sha2::{Digest, Sha256};

use crate::jwks::KeyId;

/// The SHA-256 of a token (its signing input and signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    pub fn of(signing_input: &[u8], signature: &[u8]) -> TokenDigest {
        let mut hash = Sha256::new();
        hash.update(signing_input);
        hash.update(b".");
        hash.update(signature);
        TokenDigest(hash.finalize().into())
    }
}

/// Names a provider in an entry: a token verified by one provider's keys never counts for
/// another, nor for a provider of the same name whose issuer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderTag(pub [u8; 8]);

impl ProviderTag {
    pub fn of(name: &str, issuer: &str) -> ProviderTag {
        let mut hash = Sha256::new();
        hash.update(name.len().to_le_bytes());
        hash.update(name.as_bytes());
        hash.update(issuer.as_bytes());
        ProviderTag(short_hash(hash))
    }
}

/// The first 8 bytes of a SHA-256: enough to tell apart the few versions, keys and providers
/// one proxy holds.
pub(crate) fn short_hash(hash: Sha256) -> [u8; 8] {
    let full = hash.finalize();
    let mut short = [0u8; 8];
    for (s, b) in short.iter_mut().zip(full.iter()) {
        *s = *b;
    }
    short
}

/// The cache's shape: how many slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedCache {
    slots: u32,
}

/// Token digest, provider tag, verifying key, expiry.
const ENTRY: usize = 32 + 8 + 8 + 8;

impl VerifiedCache {
    /// `None` when `slots` is 0 (off).
    pub fn new(slots: u32) -> Option<VerifiedCache> {
        (slots > 0).then_some(VerifiedCache { slots })
    }

    fn key(&self, token: &TokenDigest) -> String {
        let [a, b, c, d, ..] = token.0;
        let slot = u32::from_le_bytes([a, b, c, d]) % self.slots;
        format!("{}auth/vt/{slot}", palisade_kit::store::NAMESPACE)
    }

    /// The key of `provider` that verified this token's signature before, if one did and `now`
    /// (seconds) is still within the token's expiry as recorded then.
    pub fn known(
        &self,
        store: &impl SharedStore,
        provider: ProviderTag,
        token: &TokenDigest,
        now: u64,
    ) -> Option<KeyId> {
        let entry = store.get(&self.key(token)).ok()??;
        let value = entry.value.as_slice();
        let digest = value.get(..32)?;
        let tag = value.get(32..40)?;
        let key: [u8; 8] = value.get(40..48)?.try_into().ok()?;
        let expires = u64::from_le_bytes(value.get(48..ENTRY)?.try_into().ok()?);
        (digest == token.0 && tag == provider.0 && now <= expires).then_some(KeyId(key))
    }

    /// Records that `provider`'s key `verifier` verified this token, good until `expires`
    /// (seconds, leeway included). Best effort: a write that loses a race is dropped.
    pub fn remember(
        &self,
        store: &impl SharedStore,
        provider: ProviderTag,
        token: &TokenDigest,
        verifier: KeyId,
        expires: u64,
    ) {
        let key = self.key(token);
        // Kong refuses a write without the CAS of a read when the key exists.
        let Ok(current) = store.get(&key) else {
            return;
        };
        let mut value = Vec::with_capacity(ENTRY);
        value.extend_from_slice(&token.0);
        value.extend_from_slice(&provider.0);
        value.extend_from_slice(&verifier.0);
        value.extend_from_slice(&expires.to_le_bytes());
        match store.set(&key, &value, current.map(|entry| entry.cas)) {
            // Not written: the next worker to see the token verifies it again (the kit logs
            // nothing per request; plugins count store failures where they matter).
            Ok(Write::Stored | Write::Conflict) | Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use palisade_kit::store::{BlindWrite, MemoryStore};

    use super::*;

    #[test]
    fn a_remembered_token_is_known_until_it_expires_for_its_provider_only() {
        const KEY: KeyId = KeyId([7; 8]);
        for blind_write in [BlindWrite::Overwrites, BlindWrite::Refused] {
            let store = MemoryStore::with(blind_write, usize::MAX);
            let cache = VerifiedCache::new(16).unwrap();
            let idp = ProviderTag::of("idp", "https://idp");
            let other = ProviderTag::of("idp", "https://other");
            let token = TokenDigest::of(b"h.p", b"sig");
            assert_eq!(cache.known(&store, idp, &token, 100), None);
            cache.remember(&store, idp, &token, KEY, 200);
            assert_eq!(cache.known(&store, idp, &token, 200), Some(KEY));
            assert_eq!(cache.known(&store, idp, &token, 201), None, "past exp");
            assert_eq!(
                cache.known(&store, other, &token, 100),
                None,
                "another provider"
            );
            let forged = TokenDigest::of(b"h.p", b"sig2");
            assert_eq!(
                cache.known(&store, idp, &forged, 100),
                None,
                "another signature"
            );
            // Rewriting a slot works on both hosts (CAS of the read).
            cache.remember(&store, idp, &token, KeyId([8; 8]), 300);
            assert_eq!(
                cache.known(&store, idp, &token, 250),
                Some(KeyId([8; 8])),
                "{blind_write:?}"
            );
        }
    }

    #[test]
    fn the_cache_never_holds_more_keys_than_slots() {
        let store = MemoryStore::new();
        let cache = VerifiedCache::new(8).unwrap();
        let idp = ProviderTag::of("idp", "i");
        for i in 0..500u32 {
            cache.remember(
                &store,
                idp,
                &TokenDigest::of(&i.to_le_bytes(), b"s"),
                KeyId([0; 8]),
                10,
            );
        }
        assert!(store.len() <= 8, "{}", store.len());
        assert!(VerifiedCache::new(0).is_none());
    }
}
