//! Remote JWKS: a provider's keys fetched with an HTTP call-out, cached across workers in shared
//! data, refreshed on an interval and early (rate-limited) for an unknown `kid`, kept while the
//! IdP is down up to a staleness bound, then refused. Host-free: the adapter makes the call-outs
//! and hands the answers here; every store access goes through [`SharedStore`] with CAS.
//!
//! One shared record per provider holds the last good JWKS document, when it was fetched, its
//! digest, and the fetch coordination: the refresh lease (so one worker refreshes, not all), the
//! time before which a failed fetch is not retried, and the last early refresh. Each worker
//! keeps the keys parsed from the document it last saw, keyed by the digest, so a document is
//! parsed once per worker per version, never per request.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use palisade_kit::config::Problems;
use palisade_kit::duration::ConfigDuration;
use palisade_kit::scheme::Scheme;
use palisade_kit::store::{update, SharedStore, Step, UpdateError};
use schemars::JsonSchema;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::introspection::validate_endpoint;
use crate::jwks::{JwksError, KeySet};

/// After a failed fetch, no worker fetches again (on its timer or for a request) before this.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Where a provider's JWKS is fetched from, and how it is kept.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksConfig {
    /// The JWKS server's upstream: an Envoy cluster name, one that originates TLS (Istio:
    /// `outbound|80||idp.example.com` with a ServiceEntry and DestinationRule, docs/auth.md),
    /// or `host:port` on Kong.
    pub upstream: String,
    /// The `:authority` (Host, and TLS SNI on Kong) the server expects.
    pub authority: String,
    /// The JWKS document's path, e.g. `/.well-known/jwks.json`.
    pub path: String,
    /// `https` (default) or `http`. On Kong this turns TLS on; in Envoy the cluster decides.
    #[serde(default)]
    pub scheme: Scheme,
    /// Longest wait for the server. Default 5s, 1ms to 60s.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// How long fetched keys are fresh; a timer refreshes them after that. Default 10m (Envoy
    /// `jwt_authn`'s `cache_duration` default), 1s to 24h.
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval: ConfigDuration,
    /// How long past `refresh_interval` the last good keys are still used while the server
    /// cannot be fetched; after that the provider's tokens are refused (503) until a fetch
    /// succeeds. Default 1h, at most 7 days; `0s` refuses as soon as a refresh is missed.
    #[serde(default = "default_max_stale")]
    pub max_stale: ConfigDuration,
    /// Least time between two early refreshes caused by a token whose `kid` no cached key
    /// carries (key rotation). Default 30s, 1s to 1h.
    #[serde(default = "default_unknown_kid_refresh_interval")]
    pub unknown_kid_refresh_interval: ConfigDuration,
    /// Largest JWKS document accepted, in bytes. Default 64 KiB, 256 B to 1 MiB.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u32,
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(5)
}
fn default_refresh_interval() -> ConfigDuration {
    ConfigDuration::from_secs(600)
}
fn default_max_stale() -> ConfigDuration {
    ConfigDuration::from_secs(3600)
}
fn default_unknown_kid_refresh_interval() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}
fn default_max_response_bytes() -> u32 {
    64 * 1024
}

impl RemoteJwksConfig {
    pub fn validate(&self, problems: &mut Problems) {
        validate_endpoint(&self.upstream, &self.authority, &self.path, problems);
        let within = |value: &ConfigDuration, min: Duration, max: Duration| {
            (min..=max).contains(&value.get())
        };
        if !within(
            &self.timeout,
            Duration::from_millis(1),
            Duration::from_secs(60),
        ) {
            problems.push_at("timeout", "must be between 1ms and 60s");
        }
        if !within(
            &self.refresh_interval,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        ) {
            problems.push_at("refresh_interval", "must be between 1s and 24h");
        }
        if self.max_stale.get() > Duration::from_secs(7 * 86_400) {
            problems.push_at("max_stale", "must be at most 168h");
        }
        if !within(
            &self.unknown_kid_refresh_interval,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        ) {
            problems.push_at("unknown_kid_refresh_interval", "must be between 1s and 1h");
        }
        if !(256..=1024 * 1024).contains(&self.max_response_bytes) {
            problems.push_at("max_response_bytes", "must be between 256 and 1048576");
        }
    }

    /// Compiled for `provider` (its name keys the shared record, with the JWKS location, so a
    /// configuration that moves the JWKS never reads keys fetched from the old place).
    pub fn compile(&self, provider: &str) -> RemoteJwks {
        let mut hash = Sha256::new();
        for part in [
            provider,
            self.upstream.as_str(),
            self.authority.as_str(),
            self.path.as_str(),
        ] {
            hash.update(part.len().to_le_bytes());
            hash.update(part.as_bytes());
        }
        let source = crate::verified::short_hash(hash);
        let id: String = source.iter().map(|b| format!("{b:02x}")).collect();
        RemoteJwks {
            provider: provider.to_owned(),
            key: format!("{}auth/jwks/{id}", palisade_kit::store::NAMESPACE),
            source,
            upstream: self.upstream.clone(),
            authority: self.authority.clone(),
            path: self.path.clone(),
            scheme: self.scheme.as_str(),
            timeout: self.timeout.get(),
            refresh_ms: millis(self.refresh_interval.get()),
            max_stale_ms: millis(self.max_stale.get()),
            kid_refresh_ms: millis(self.unknown_kid_refresh_interval.get()),
            max_response_bytes: usize::try_from(self.max_response_bytes).unwrap_or(usize::MAX),
            local: RefCell::new(None),
            expired_logged: Cell::new(false),
            store_failing: Cell::new(false),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The shared record of one provider's remote JWKS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// When the document was fetched (Unix ms); 0: never.
    pub fetched_ms: u64,
    /// A worker holds the timer refresh until then.
    pub lease_until_ms: u64,
    /// After a failed fetch, nobody fetches before then.
    pub retry_after_ms: u64,
    /// The last early refresh for an unknown `kid`.
    pub last_early_ms: u64,
    /// The first 8 bytes of the document's SHA-256: the version workers parse once.
    pub digest: [u8; 8],
    /// The last good JWKS document (empty: none yet).
    pub document: Vec<u8>,
}

const MAGIC: &[u8; 2] = b"J2";
const HEADER: usize = 2 + 8 + 4 * 8 + 8;

impl Record {
    /// The record as stored for the JWKS `source` ([`RemoteJwks`]'s).
    pub fn encode(&self, source: &[u8; 8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.document.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(source);
        for value in [
            self.fetched_ms,
            self.lease_until_ms,
            self.retry_after_ms,
            self.last_early_ms,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.document);
        out
    }

    /// `None` for bytes this version did not write for `source` (another plugin build,
    /// another key's value, corruption): the caller starts afresh and overwrites them through
    /// CAS.
    pub fn decode(bytes: &[u8], source: &[u8; 8]) -> Option<Record> {
        let rest = bytes.strip_prefix(MAGIC)?.strip_prefix(source)?;
        let (numbers, rest) = rest.split_at_checked(32)?;
        let (digest, document) = rest.split_at_checked(8)?;
        let mut values = numbers
            .chunks_exact(8)
            .map(|chunk| chunk.try_into().map(u64::from_le_bytes));
        let mut next = || values.next()?.ok();
        Some(Record {
            fetched_ms: next()?,
            lease_until_ms: next()?,
            retry_after_ms: next()?,
            last_early_ms: next()?,
            digest: digest.try_into().ok()?,
            document: document.to_vec(),
        })
    }
}

fn digest(document: &[u8]) -> [u8; 8] {
    crate::verified::short_hash(Sha256::new_with_prefix(document))
}

/// What made a worker want to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The root timer: the keys are due for refresh (one worker, under the lease).
    Interval,
    /// A request found no usable keys (cold start, or keys past `max_stale`).
    Cold,
    /// A request's token names a `kid` no cached key carries.
    UnknownKid,
}

/// Why a fetch gave no new keys. The last good keys stay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("JWKS server unreachable or timed out")]
    Unreachable,
    #[error("JWKS server answered with status {0}")]
    Status(u16),
    #[error("JWKS document of {size} bytes exceeds {max}")]
    TooLarge { size: usize, max: usize },
    #[error("JWKS document refused: {0}")]
    Refused(JwksError),
    #[error("JWKS document holds no usable signature key")]
    NoUsableKeys,
}

/// A good fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    pub keys: usize,
    pub skipped: usize,
    /// The document differs from the one this worker had.
    pub changed: bool,
    /// Whether the shared record now holds this answer (else only this worker has its keys:
    /// the store failed, or a document asked for later is there).
    pub shared: bool,
}

/// One JWKS call-out, ready for the kit's `HttpCallout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksRequest<'a> {
    pub upstream: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: [(&'static str, &'a str); 2],
    pub timeout: Duration,
}

/// The keys this worker parsed, and from which version.
#[derive(Debug)]
struct Local {
    digest: [u8; 8],
    fetched_ms: u64,
    keys: Rc<KeySet>,
}

/// One provider's remote JWKS, compiled, with this worker's parsed keys.
#[derive(Debug)]
pub struct RemoteJwks {
    provider: String,
    key: String,
    /// Written into the record and checked on reading it: from Kong 3.8 a shared-data key is
    /// found by its CRC32 alone, so another key's value may come back under this one.
    source: [u8; 8],
    upstream: String,
    authority: String,
    path: String,
    scheme: &'static str,
    timeout: Duration,
    refresh_ms: u64,
    max_stale_ms: u64,
    kid_refresh_ms: u64,
    max_response_bytes: usize,
    local: RefCell<Option<Local>>,
    /// The "keys too stale" line is logged once per worker per outage.
    expired_logged: Cell<bool>,
    /// Shared data failed and it was logged: once per worker per outage, not on every tick.
    store_failing: Cell<bool>,
}

impl RemoteJwks {
    /// The shared-data key of this provider's record.
    pub fn store_key(&self) -> &str {
        &self.key
    }

    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    pub fn request(&self) -> JwksRequest<'_> {
        JwksRequest {
            upstream: &self.upstream,
            path: &self.path,
            authority: &self.authority,
            headers: [(":scheme", self.scheme), ("accept", "application/json")],
            timeout: self.timeout,
        }
    }

    fn usable(&self, fetched_ms: u64, now_ms: u64) -> bool {
        now_ms
            < fetched_ms
                .saturating_add(self.refresh_ms)
                .saturating_add(self.max_stale_ms)
    }

    /// This worker's keys when they are still usable at `now_ms`, without touching the store.
    pub fn cached(&self, now_ms: u64) -> Option<Rc<KeySet>> {
        let local = self.local.borrow();
        let local = local.as_ref()?;
        self.usable(local.fetched_ms, now_ms)
            .then(|| Rc::clone(&local.keys))
    }

    /// The keys for a request at `now_ms`: this worker's when usable, else whatever another
    /// worker stored; `None` when there are no usable keys (logged once per outage).
    pub fn keys(&self, store: &impl SharedStore, now_ms: u64) -> Option<Rc<KeySet>> {
        if let Some(keys) = self.cached(now_ms) {
            return Some(keys);
        }
        self.sync(store);
        let keys = self.cached(now_ms);
        if keys.is_some() {
            self.expired_logged.set(false);
        } else if self.local.borrow().is_some() && !self.expired_logged.replace(true) {
            log::error!(
                "[palisade-auth] keys of provider {:?} are older than refresh_interval + max_stale: \
                 its tokens are refused until a JWKS fetch succeeds",
                self.provider
            );
        }
        keys
    }

    /// Is this worker's copy due for a refresh (none yet, or older than `refresh_interval`)?
    /// A copy stamped in the future (the clock stepped back) is due too, or refreshes would
    /// stop until the clock caught up.
    pub fn due(&self, now_ms: u64) -> bool {
        self.local.borrow().as_ref().is_none_or(|local| {
            now_ms >= local.fetched_ms.saturating_add(self.refresh_ms) || now_ms < local.fetched_ms
        })
    }

    /// Takes in what the shared record holds (another worker's fetch). Parses the document
    /// only when its digest differs from this worker's. Returns whether the keys changed.
    pub fn sync(&self, store: &impl SharedStore) -> bool {
        let record = match store.get(&self.key) {
            Ok(entry) => entry.and_then(|entry| Record::decode(&entry.value, &self.source)),
            Err(err) => {
                self.store_failed("could not read the shared JWKS record", &err);
                None
            }
        };
        let Some(record) = record.filter(|r| !r.document.is_empty()) else {
            return false;
        };
        // A record newer than this worker's keys is another worker's write landing: shared data
        // works again (an older one may predate the failure).
        if self
            .local
            .borrow()
            .as_ref()
            .is_none_or(|local| record.fetched_ms > local.fetched_ms)
        {
            self.store_recovered();
        }
        self.adopt(&record.document, record.digest, record.fetched_ms)
    }

    /// Makes `document` (fetched at `fetched_ms`) this worker's keys; parses only a new
    /// version. Returns whether the keys changed.
    fn adopt(&self, document: &[u8], version: [u8; 8], fetched_ms: u64) -> bool {
        let mut local = self.local.borrow_mut();
        if let Some(current) = local.as_mut().filter(|l| l.digest == version) {
            current.fetched_ms = current.fetched_ms.max(fetched_ms);
            return false;
        }
        if local
            .as_ref()
            .is_some_and(|current| current.fetched_ms > fetched_ms)
        {
            // Ours is newer than the record (its write lost a race): keep ours.
            return false;
        }
        match KeySet::parse(document) {
            Ok((keys, _)) if !keys.is_empty() => {
                *local = Some(Local {
                    digest: version,
                    fetched_ms,
                    keys: Rc::new(keys),
                });
                self.expired_logged.set(false);
                true
            }
            // Only good documents are ever stored; a bad one here is not ours to use.
            _ => false,
        }
    }

    /// May this worker fetch now, for `trigger`? Claims the lease (timer refresh) or the early
    /// refresh slot (unknown `kid`) through CAS, so one worker fetches, not all.
    pub fn claim(&self, store: &impl SharedStore, now_ms: u64, trigger: Trigger) -> bool {
        let lease_ms = millis(self.timeout).saturating_add(1000);
        // (may fetch, wrote the record)
        let result = update(store, &self.key, 4, |current| {
            let mut record = current
                .and_then(|bytes| Record::decode(bytes, &self.source))
                .unwrap_or_default();
            if now_ms < record.retry_after_ms {
                return Step::Keep((false, false));
            }
            let has = !record.document.is_empty();
            match trigger {
                Trigger::Cold => {
                    if has && self.usable(record.fetched_ms, now_ms) {
                        // Another worker fetched meanwhile: no call needed (the caller syncs).
                        return Step::Keep((false, false));
                    }
                    // Requests without keys may each fetch (as Envoy's jwt_authn does without
                    // `async_fetch`): they cannot wait on another worker's call. The lease
                    // keeps the timers from fetching too meanwhile; one already running needs
                    // no write (a write per cold request is what would contend).
                    if now_ms < record.lease_until_ms {
                        return Step::Keep((true, false));
                    }
                    record.lease_until_ms = now_ms.saturating_add(lease_ms);
                    Step::Write(record.encode(&self.source), (true, true))
                }
                Trigger::Interval => {
                    let fresh = has
                        && now_ms < record.fetched_ms.saturating_add(self.refresh_ms)
                        && now_ms >= record.fetched_ms;
                    if fresh || now_ms < record.lease_until_ms {
                        return Step::Keep((false, false));
                    }
                    record.lease_until_ms = now_ms.saturating_add(lease_ms);
                    Step::Write(record.encode(&self.source), (true, true))
                }
                Trigger::UnknownKid => {
                    if record.last_early_ms != 0
                        && now_ms < record.last_early_ms.saturating_add(self.kid_refresh_ms)
                    {
                        return Step::Keep((false, false));
                    }
                    record.last_early_ms = now_ms;
                    Step::Write(record.encode(&self.source), (true, true))
                }
            }
        });
        match result {
            Ok((granted, wrote)) => {
                if wrote {
                    self.store_recovered();
                }
                granted
            }
            // Other workers keep writing the record: for an early refresh or the timer, one of
            // them has the claim. A request without keys fetches anyway (it cannot wait on
            // theirs), or it would be refused with nothing tried.
            Err(UpdateError::Contended(_)) => trigger == Trigger::Cold,
            Err(UpdateError::Store(err)) => {
                // No coordination possible: fetch anyway for a request that needs keys, never
                // for the timer (which would make every worker fetch).
                self.store_failed("could not claim the shared JWKS record", &err);
                trigger != Trigger::Interval
            }
        }
    }

    /// Logs a shared-data failure once per worker until the store answers again.
    #[cold]
    fn store_failed(&self, what: &str, err: &dyn std::fmt::Display) {
        if !self.store_failing.replace(true) {
            log::warn!(
                "[palisade-auth] provider {:?}: {what}: {err} (workers fetch and keep keys on \
                 their own until shared data answers)",
                self.provider
            );
        }
    }

    /// A write of the shared record went through, this worker's or another's.
    fn store_recovered(&self) {
        if self.store_failing.replace(false) {
            log::info!(
                "[palisade-auth] provider {:?}: the shared JWKS record answers again",
                self.provider
            );
        }
    }

    /// [`Self::fetched_at`] for a call answered as soon as it was made.
    #[cfg(test)]
    pub fn fetched(
        &self,
        store: &impl SharedStore,
        now_ms: u64,
        status: Option<u16>,
        body: &[u8],
        body_size: usize,
    ) -> Result<Fetched, FetchError> {
        self.fetched_at(store, now_ms, now_ms, status, body, body_size)
    }

    /// Takes the answer, at `now_ms`, to a call made at `called_ms`: `status` (`None` when the
    /// call failed), the body read (at most `max_response_bytes + 1`), and the size the host
    /// announced. A good document becomes this worker's keys and the shared record's, stamped
    /// with when it was asked for, unless a document asked for later is there already: a slow
    /// answer to an earlier call must not bring back keys the IdP has since removed. A bad one
    /// changes no keys, and holds every worker off fetching for [`RETRY_AFTER_FAILURE`].
    pub fn fetched_at(
        &self,
        store: &impl SharedStore,
        called_ms: u64,
        now_ms: u64,
        status: Option<u16>,
        body: &[u8],
        body_size: usize,
    ) -> Result<Fetched, FetchError> {
        // A stamp later than now was made before the clock stepped back: not newer.
        let newer = |stamp: u64| stamp > called_ms && stamp <= now_ms;
        let version = digest(body);
        // The same document again (the usual refresh): its keys are this worker's already.
        // Parsing it anew would re-prepare every EC key (~9M fuel each) and empty the token
        // memo, which is keyed by the key set.
        let parsed = match self.check_answer(status, body, body_size) {
            Ok(()) => {
                let mut local = self.local.borrow_mut();
                match local.as_mut() {
                    Some(current) if current.digest == version => {
                        // A stamp in the future came before a clock step: this one replaces it.
                        current.fetched_ms = if current.fetched_ms > now_ms {
                            called_ms
                        } else {
                            current.fetched_ms.max(called_ms)
                        };
                        Ok(None)
                    }
                    Some(current) if newer(current.fetched_ms) => {
                        return Ok(Fetched {
                            keys: current.keys.len(),
                            skipped: 0,
                            changed: false,
                            shared: false,
                        });
                    }
                    _ => Self::parse(body).map(Some),
                }
            }
            Err(error) => Err(error),
        };
        let (keys, skipped) = match parsed {
            Ok(Some(parsed)) => parsed,
            Ok(None) => (KeySet::default(), 0),
            Err(error) => {
                let retry = now_ms.saturating_add(millis(RETRY_AFTER_FAILURE));
                let _ = update(store, &self.key, 4, |current| {
                    let mut record = current
                        .and_then(|bytes| Record::decode(bytes, &self.source))
                        .unwrap_or_default();
                    record.lease_until_ms = 0;
                    record.retry_after_ms = record.retry_after_ms.max(retry);
                    Step::Write(record.encode(&self.source), ())
                });
                return Err(error);
            }
        };
        // The shared record first: if a document asked for later is there, it is the one to
        // use, and this answer is dropped (the worker takes the record's instead).
        let shared = update(store, &self.key, 4, |current| {
            let mut record = current
                .and_then(|bytes| Record::decode(bytes, &self.source))
                .unwrap_or_default();
            if newer(record.fetched_ms) {
                return Step::Keep(false);
            }
            record.fetched_ms = called_ms;
            record.digest = version;
            record.document = body.to_vec();
            record.lease_until_ms = 0;
            record.retry_after_ms = 0;
            Step::Write(record.encode(&self.source), true)
        });
        match &shared {
            Ok(true) => self.store_recovered(),
            Ok(false) => {}
            Err(err) => self.store_failed("JWKS fetched but not shared with other workers", err),
        }
        let superseded = matches!(shared, Ok(false));
        let changed = if superseded {
            self.sync(store)
        } else {
            let changed = self
                .local
                .borrow()
                .as_ref()
                .is_none_or(|l| l.digest != version);
            if changed {
                *self.local.borrow_mut() = Some(Local {
                    digest: version,
                    fetched_ms: called_ms,
                    keys: Rc::new(keys),
                });
            }
            changed
        };
        self.expired_logged.set(false);
        let count = self.local.borrow().as_ref().map_or(0, |l| l.keys.len());
        Ok(Fetched {
            keys: count,
            // What this answer's document skipped says nothing of the record's.
            skipped: if superseded { 0 } else { skipped },
            changed,
            shared: !superseded && shared.is_ok(),
        })
    }

    /// The answer's status and size; the document itself is [`Self::parse`]d.
    fn check_answer(
        &self,
        status: Option<u16>,
        body: &[u8],
        body_size: usize,
    ) -> Result<(), FetchError> {
        let status = status.ok_or(FetchError::Unreachable)?;
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let size = body_size.max(body.len());
        if size > self.max_response_bytes {
            return Err(FetchError::TooLarge {
                size,
                max: self.max_response_bytes,
            });
        }
        Ok(())
    }

    fn parse(body: &[u8]) -> Result<(KeySet, usize), FetchError> {
        let (keys, skipped) = KeySet::parse(body).map_err(FetchError::Refused)?;
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys);
        }
        Ok((keys, skipped.len()))
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Interval => "refresh",
            Trigger::Cold => "no usable keys",
            Trigger::UnknownKid => "unknown kid",
        })
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use palisade_kit::store::{BlindWrite, MemoryStore};

    use super::*;

    const JWKS: &[u8] = include_bytes!("../testdata/jwks.json");
    const T0: u64 = 1_800_000_000_000;

    fn remote(extra: &str) -> RemoteJwks {
        let config: RemoteJwksConfig = serde_json::from_str(&format!(
            r#"{{"upstream":"idp:443","authority":"idp.example","path":"/jwks"{extra}}}"#
        ))
        .unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        config.compile("idp")
    }

    #[test]
    fn defaults_follow_envoy() {
        let config: RemoteJwksConfig =
            serde_json::from_str(r#"{"upstream":"u","authority":"a","path":"/j"}"#).unwrap();
        assert_eq!(config.refresh_interval.get(), Duration::from_secs(600));
        assert_eq!(config.timeout.get(), Duration::from_secs(5));
        assert_eq!(config.max_stale.get(), Duration::from_secs(3600));
        assert_eq!(
            config.unknown_kid_refresh_interval.get(),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let config: RemoteJwksConfig = serde_json::from_str(
            r#"{"upstream":"a b","authority":"x/y","path":"jwks","timeout":"0s",
                "refresh_interval":"25h","max_stale":"200h","unknown_kid_refresh_interval":"0s",
                "max_response_bytes":10}"#,
        )
        .unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        let got: Vec<String> = problems
            .into_result()
            .unwrap_err()
            .problems
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "upstream: must be an Envoy cluster name or a Kong `host:port`, without spaces",
                "authority: must be a host name, optionally with `:port`",
                "path: must start with `/` and be plain visible ASCII",
                "timeout: must be between 1ms and 60s",
                "refresh_interval: must be between 1s and 24h",
                "max_stale: must be at most 168h",
                "unknown_kid_refresh_interval: must be between 1s and 1h",
                "max_response_bytes: must be between 256 and 1048576",
            ]
        );
    }

    #[test]
    fn the_record_round_trips_and_refuses_foreign_bytes() {
        let record = Record {
            fetched_ms: 1,
            lease_until_ms: 2,
            retry_after_ms: 3,
            last_early_ms: 4,
            digest: [5; 8],
            document: b"{}".to_vec(),
        };
        let source = [9; 8];
        assert_eq!(
            Record::decode(&record.encode(&source), &source),
            Some(record.clone())
        );
        // Another JWKS's record (a CRC32 twin on Kong 3.8+) is no record of this one.
        assert_eq!(Record::decode(&record.encode(&[8; 8]), &source), None);
        assert_eq!(Record::decode(b"J2short", &source), None);
        assert_eq!(Record::decode(b"xx", &source), None);
    }

    #[test]
    fn one_fetch_serves_every_worker_and_is_parsed_once_per_version() {
        for blind_write in [BlindWrite::Overwrites, BlindWrite::Refused] {
            let store = MemoryStore::with(blind_write, usize::MAX);
            let (a, b) = (remote(""), remote(""));
            assert!(a.keys(&store, T0).is_none());
            assert!(a.claim(&store, T0, Trigger::Cold));
            let fetched = a.fetched(&store, T0, Some(200), JWKS, JWKS.len()).unwrap();
            assert_eq!(
                (fetched.keys, fetched.changed, fetched.shared),
                (5, true, true)
            );
            // Worker b reads the record and parses it; a second read parses nothing.
            assert_eq!(b.keys(&store, T0 + 1).map(|k| k.len()), Some(5));
            let first = b.cached(T0 + 1).unwrap();
            assert!(!b.sync(&store));
            assert!(Rc::ptr_eq(&first, &b.cached(T0 + 2).unwrap()));
            // Nobody needs a cold fetch any more.
            assert!(!b.claim(&store, T0 + 2, Trigger::Cold));
            // A refresh answering the same document keeps the keys as they are: not parsed
            // (EC tables re-prepared) nor replaced (the token memo keyed by them kept).
            let held = a.cached(T0).unwrap();
            let again = a
                .fetched(&store, T0 + 60_000, Some(200), JWKS, JWKS.len())
                .unwrap();
            assert_eq!(
                (again.keys, again.skipped, again.changed, again.shared),
                (5, 0, false, true)
            );
            assert!(Rc::ptr_eq(&held, &a.cached(T0 + 60_000).unwrap()));
        }
    }

    #[test]
    fn the_timer_lease_lets_one_worker_refresh() {
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let (a, b) = (remote(""), remote(""));
        a.fetched(&store, T0, Some(200), JWKS, JWKS.len()).unwrap();
        b.sync(&store);
        let due = T0 + 600_000;
        assert!(!a.due(due - 1) && a.due(due) && b.due(due));
        assert!(a.claim(&store, due, Trigger::Interval));
        assert!(!b.claim(&store, due, Trigger::Interval));
        // The lease runs out (timeout + 1s) if its holder never answers.
        assert!(b.claim(&store, due + 6_000, Trigger::Interval));
    }

    #[test]
    fn early_refreshes_for_unknown_kids_are_rate_limited() {
        let store = MemoryStore::new();
        let a = remote(r#","unknown_kid_refresh_interval":"10s""#);
        a.fetched(&store, T0, Some(200), JWKS, JWKS.len()).unwrap();
        assert!(a.claim(&store, T0 + 1, Trigger::UnknownKid));
        for later in [2, 5_000, 10_000] {
            assert!(!a.claim(&store, T0 + later, Trigger::UnknownKid), "{later}");
        }
        assert!(a.claim(&store, T0 + 10_001, Trigger::UnknownKid));
    }

    #[test]
    fn bad_documents_keep_the_last_good_keys_and_hold_off_retries() {
        let store = MemoryStore::new();
        let a = remote(r#","max_response_bytes":4096"#);
        a.fetched(&store, T0, Some(200), JWKS, JWKS.len()).unwrap();
        let huge = vec![b' '; 5000];
        let cases: [(Option<u16>, &[u8], FetchError); 5] = [
            (None, b"", FetchError::Unreachable),
            (Some(500), b"", FetchError::Status(500)),
            (
                Some(200),
                &huge,
                FetchError::TooLarge {
                    size: 5000,
                    max: 4096,
                },
            ),
            (
                Some(200),
                b"<html>",
                FetchError::Refused(JwksError::NotJwks(
                    "expected value at line 1 column 1".into(),
                )),
            ),
            (Some(200), br#"{"keys":[]}"#, FetchError::NoUsableKeys),
        ];
        for (i, (status, body, error)) in cases.into_iter().enumerate() {
            let now = T0 + 700_000 + i as u64 * 10_000;
            assert_eq!(a.fetched(&store, now, status, body, body.len()), Err(error));
            assert_eq!(a.cached(now).map(|k| k.len()), Some(5));
            // Nobody fetches again for 5s.
            assert!(!a.claim(&store, now + 4_999, Trigger::Cold));
            assert!(!a.claim(&store, now + 4_999, Trigger::UnknownKid));
        }
    }

    #[test]
    fn keys_past_max_stale_are_refused() {
        let store = MemoryStore::new();
        let a = remote(r#","refresh_interval":"1m","max_stale":"2m""#);
        a.fetched(&store, T0, Some(200), JWKS, JWKS.len()).unwrap();
        assert!(a.keys(&store, T0 + 179_999).is_some());
        assert!(a.keys(&store, T0 + 180_000).is_none());
        // A later good fetch brings them back.
        a.fetched(&store, T0 + 200_000, Some(200), JWKS, JWKS.len())
            .unwrap();
        assert!(a.keys(&store, T0 + 200_001).is_some());
    }

    #[test]
    fn a_corrupt_record_is_replaced_not_trusted() {
        let store = MemoryStore::with(BlindWrite::Refused, usize::MAX);
        let a = remote("");
        assert_eq!(
            store.set(a.store_key(), b"garbage", None),
            Ok(palisade_kit::store::Write::Stored)
        );
        assert!(a.keys(&store, T0).is_none());
        a.fetched(&store, T0, Some(200), JWKS, JWKS.len()).unwrap();
        let b = remote("");
        assert_eq!(b.keys(&store, T0).map(|k| k.len()), Some(5));
    }

    #[test]
    fn a_late_answer_to_an_earlier_call_never_replaces_a_newer_document() {
        // The IdP rotates: the new document drops the first key of the old one.
        let mut doc: serde_json::Value = serde_json::from_slice(JWKS).unwrap();
        doc["keys"].as_array_mut().unwrap().remove(0);
        let rotated = serde_json::to_vec(&doc).unwrap();
        let store = MemoryStore::new();
        let (a, b) = (remote(""), remote(""));
        a.fetched(&store, T0, Some(200), JWKS, JWKS.len()).unwrap();
        b.sync(&store);
        let due = T0 + 600_000;
        // a's timer calls at `due` and is answered the old document, handled 2 s later; b
        // calls 500 ms after a (a token with the new kid) and is answered at once.
        assert!(a.claim(&store, due, Trigger::Interval));
        assert!(b.claim(&store, due + 500, Trigger::UnknownKid));
        let f = b
            .fetched_at(
                &store,
                due + 500,
                due + 1_000,
                Some(200),
                &rotated,
                rotated.len(),
            )
            .unwrap();
        assert!(f.changed && f.shared);
        // a's late answer is another document still (3 keys): a takes the record's instead.
        doc["keys"].as_array_mut().unwrap().remove(0);
        let between = serde_json::to_vec(&doc).unwrap();
        let late = a
            .fetched_at(&store, due, due + 2_000, Some(200), &between, between.len())
            .unwrap();
        assert!(late.changed && !late.shared);
        assert_eq!(late.keys, 4);
        // Neither the record nor a worker goes back to older keys.
        assert!(!b.sync(&store));
        assert_eq!(b.cached(due + 2_001).unwrap().len(), 4);
        assert!(!a.sync(&store));
        assert_eq!(a.cached(due + 2_001).unwrap().len(), 4);
        // A late answer that is a's own document changes nothing either.
        let same = a
            .fetched_at(&store, due, due + 2_500, Some(200), &rotated, rotated.len())
            .unwrap();
        assert!(!same.changed && !same.shared);
        // A stamp in the future (the clock stepped back) is not newer: the answer is taken.
        let back = T0 - 3_600_000;
        assert!(a.due(back));
        let again = a
            .fetched_at(&store, back, back + 10, Some(200), JWKS, JWKS.len())
            .unwrap();
        assert!(again.changed && again.shared, "{again:?}");
        let c = remote("");
        assert!(c.sync(&store));
        assert_eq!(c.cached(back + 20).unwrap().len(), 5);
    }
}
