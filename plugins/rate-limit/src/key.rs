//! Turning a request into a limit's key: the parts an operator listed, read lazily from the
//! request (each host value at most once), joined unambiguously, and hashed to a fingerprint.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use palisade_kit::store::{update, SharedStore, Step, UpdateError};

use crate::config::{ClientIpConfig, KeyPart};

/// What the engine may read from a request. The adapter answers from the host, tests from a
/// struct; each is asked at most once per request ([`RequestParts`] caches).
pub trait RequestView {
    /// A request header's (first) value.
    fn header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// The connection's peer address (Envoy: `ip:port`, Kong: the address alone).
    fn source_address(&mut self) -> Option<Vec<u8>>;
    /// The route's name (Envoy `xds.route_name`, Kong `kong.route_name`).
    fn route_name(&mut self) -> Option<Vec<u8>>;
}

/// A request's values, read on first use and kept for the rest of the request. Header names
/// are borrowed (`'n`: the configuration's, or literals), so caching a value allocates only the
/// value the host hands over.
pub struct RequestParts<'v, 'n, V: RequestView> {
    view: &'v mut V,
    client: ClientIpConfig,
    /// Set up on the first read: a request whose limits read nothing (constant keys, no
    /// routes) has nothing here to drop either.
    read: Option<Read<'n>>,
}

/// The values read so far.
#[derive(Default)]
struct Read<'n> {
    headers: Vec<(&'n str, Option<Vec<u8>>)>,
    client_ip: Option<Option<String>>,
    route: Option<Option<Vec<u8>>>,
    /// The normalised path once asked; `Some(None)` when it is the path as sent.
    normalized_path: Option<Option<Vec<u8>>>,
}

impl<'v, 'n, V: RequestView> RequestParts<'v, 'n, V> {
    pub fn new(view: &'v mut V, client: ClientIpConfig) -> Self {
        Self {
            view,
            client,
            read: None,
        }
    }

    pub fn header(&mut self, name: &'n str) -> Option<&[u8]> {
        let read = self.read.get_or_insert_with(Read::default);
        let index = match read.headers.iter().position(|(n, _)| *n == name) {
            Some(index) => index,
            None => {
                let value = self.view.header(name);
                read.headers.push((name, value));
                read.headers.len() - 1
            }
        };
        read.headers
            .get(index)
            .and_then(|(_, value)| value.as_deref())
    }

    /// The path without its query, as sent.
    fn bare_path(&mut self) -> Option<&[u8]> {
        let path = self.header(":path")?;
        Some(match path.iter().position(|b| *b == b'?') {
            Some(cut) => path.get(..cut).unwrap_or(path),
            None => path,
        })
    }

    /// The path without its query, normalised as the servers behind resolve it
    /// ([`palisade_kit::path::normalize`]): `/login;x=1`, `//login` and `/a/../login` are all
    /// `/login`, so neither a route's limits nor a path key's budget is dodged by spelling.
    pub fn path(&mut self) -> Option<&[u8]> {
        let asked = self
            .read
            .as_ref()
            .is_some_and(|r| r.normalized_path.is_some());
        if !asked {
            let normalized = self
                .bare_path()
                .and_then(|bare| match palisade_kit::path::normalize(bare) {
                    std::borrow::Cow::Owned(normalized) => Some(normalized),
                    std::borrow::Cow::Borrowed(_) => None,
                });
            self.read.get_or_insert_with(Read::default).normalized_path = Some(normalized);
        }
        let changed = self
            .read
            .as_ref()
            .is_some_and(|r| matches!(r.normalized_path, Some(Some(_))));
        if changed {
            self.read
                .as_ref()
                .and_then(|r| r.normalized_path.as_ref())
                .and_then(|p| p.as_deref())
        } else {
            self.bare_path()
        }
    }

    pub fn method(&mut self) -> Option<&[u8]> {
        self.header(":method")
    }

    pub fn route(&mut self) -> Option<&[u8]> {
        let read = self.read.get_or_insert_with(Read::default);
        read.route
            .get_or_insert_with(|| self.view.route_name().filter(|r| !r.is_empty()))
            .as_deref()
    }

    pub fn client_ip(&mut self) -> Option<&str> {
        if self
            .read
            .as_ref()
            .is_none_or(|read| read.client_ip.is_none())
        {
            let source = self.view.source_address();
            let xff = if self.client.trusted_hops > 0 {
                self.header("x-forwarded-for").map(<[u8]>::to_vec)
            } else {
                None
            };
            let ip = client_ip(self.client.trusted_hops, source.as_deref(), xff.as_deref());
            self.read.get_or_insert_with(Read::default).client_ip =
                Some(ip.map(|ip| client_key(ip, self.client.ipv6_prefix_len)));
        }
        self.read
            .as_ref()
            .and_then(|read| read.client_ip.as_ref())
            .and_then(|ip| ip.as_deref())
    }

    /// The value of one key part, or `None` when the request has none.
    pub fn part<'a>(&'a mut self, part: &'n KeyPart) -> Option<&'a [u8]> {
        match part {
            KeyPart::Consumer => self
                .header(palisade_kit::identity::CONSUMER)
                .filter(|v| !v.is_empty()),
            KeyPart::ClientIp => self.client_ip().map(str::as_bytes),
            // One trailing slash is the same resource to most servers: one budget.
            KeyPart::Path => self.path().map(|path| match path {
                [rest @ .., b'/'] if !rest.is_empty() => rest,
                path => path,
            }),
            KeyPart::Method => self.method(),
            KeyPart::Route => self.route(),
            KeyPart::Header(name) => self.header(name),
            KeyPart::Constant(value) => Some(value.as_bytes()),
        }
    }
}

/// A peer address as hosts give it: `ip`, `ip:port`, `[v6]:port`.
fn parse_address(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?.trim();
    let ip = text
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| text.parse::<IpAddr>())
        .ok()?;
    // `::ffff:10.0.0.1` and `10.0.0.1` are one client.
    Some(ip.to_canonical())
}

/// The client part of a key: an IPv4 address whole, an IPv6 address cut to its first
/// `ipv6_prefix_len` bits (`2001:db8:1:2::/64`), or whole at 128.
pub fn client_key(ip: IpAddr, ipv6_prefix_len: u8) -> String {
    match ip {
        IpAddr::V6(address) if ipv6_prefix_len < 128 => {
            let kept = u32::from(ipv6_prefix_len);
            let mask = u128::MAX.checked_shl(128 - kept).unwrap_or(0);
            let network = Ipv6Addr::from(u128::from(address) & mask);
            format!("{network}/{ipv6_prefix_len}")
        }
        ip => ip.to_string(),
    }
}

/// The client's address: with no trusted hops the connection's; with N, the N-th
/// `x-forwarded-for` entry from the right (the one the outermost trusted proxy appended).
/// Entries left of it are the client's own claims and never count. A header with fewer entries
/// than trusted hops means a trusted proxy did not append: the connection's address is used.
pub fn client_ip(trusted_hops: u32, source: Option<&[u8]>, xff: Option<&[u8]>) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return source.and_then(parse_address);
    }
    let hops = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
    let entries: Vec<&[u8]> = xff
        .map(|v| v.split(|b| *b == b',').map(<[u8]>::trim_ascii).collect())
        .unwrap_or_default();
    match entries.len().checked_sub(hops) {
        Some(index) => entries.get(index).and_then(|e| parse_address(e)),
        None => source.and_then(parse_address),
    }
}

/// The fingerprint of a limit's key for a request. The key is each part's value,
/// length-prefixed so that no two different part lists join to the same bytes; it is hashed as
/// the parts are read, never built. `Err` when a part has no value (see [`Missing`]).
pub fn fingerprint_of<'n, V: RequestView>(
    hash_key: &HashKey,
    parts: &'n [KeyPart],
    request: &mut RequestParts<'_, 'n, V>,
) -> Result<u64, Missing> {
    let mut key = KeyHasher::new(hash_key);
    let mut missing = false;
    for part in parts {
        match request.part(part) {
            Some(value) => key.present(value),
            None => {
                missing = true;
                key.absent();
            }
        }
    }
    if missing {
        Err(Missing(key.finish()))
    } else {
        Ok(key.finish())
    }
}

/// The fingerprint of a key made of constant parts only (known from the configuration alone),
/// or `None` when a part comes from the request.
pub fn constant_fingerprint(hash_key: &HashKey, parts: &[KeyPart]) -> Option<u64> {
    let mut key = KeyHasher::new(hash_key);
    for part in parts {
        let KeyPart::Constant(value) = part else {
            return None;
        };
        key.present(value.as_bytes());
    }
    Some(key.finish())
}

/// The descriptor entry key each part is sent under to a rate-limit service. Envoy's own
/// rate-limit actions name the client address `remote_address` and a constant `generic_key`;
/// a header is sent under its name.
pub fn descriptor_key(part: &KeyPart) -> &str {
    match part {
        KeyPart::Consumer => "consumer",
        KeyPart::ClientIp => "remote_address",
        KeyPart::Path => "path",
        KeyPart::Method => "method",
        KeyPart::Route => "route",
        KeyPart::Header(name) => name,
        KeyPart::Constant(_) => "generic_key",
    }
}

/// A descriptor: ordered `(key, value)` entries.
pub type Descriptor = Vec<(String, String)>;

/// A limit's descriptor for a rate-limit service: `("limit", name)`, then one entry per key
/// part (values as UTF-8, invalid bytes replaced; an absent part, which only a limit sharing
/// one budget among such requests gets this far with, as an empty value).
pub fn descriptor<'n, V: RequestView>(
    name: &str,
    parts: &'n [KeyPart],
    request: &mut RequestParts<'_, 'n, V>,
) -> Descriptor {
    let mut entries = Vec::with_capacity(parts.len() + 1);
    entries.push(("limit".to_owned(), name.to_owned()));
    for part in parts {
        let value = request
            .part(part)
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        entries.push((descriptor_key(part).to_owned(), value));
    }
    entries
}

/// A key with at least one part absent: the fingerprint of the key with those parts as
/// "absent" markers, for limits that share one budget among such requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing(pub u64);

/// The secret every fingerprint of a proxy is keyed with, one for all its workers (kept in
/// shared data, [`HashKey::load_or_create`]). Unkeyed, a client that chooses a key part (a
/// header) could compute which keys land in a victim's slots, or collide with the victim's
/// key outright and spend its budget; keyed with a secret it cannot.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct HashKey([u64; 2]);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(..)")
    }
}

/// Where the proxy's [`HashKey`] lives in shared data.
pub const HASH_KEY: &str = "palisade/rate-limit/hash-key";

/// What the stored [`HashKey`] starts with.
const HASH_KEY_TAG: &[u8] = b"palisade-hk1";

impl HashKey {
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let (k0, k1) = bytes.split_at(8);
        let word = |half: &[u8]| {
            let mut word = [0u8; 8];
            word.copy_from_slice(half);
            u64::from_le_bytes(word)
        };
        HashKey([word(k0), word(k1)])
    }

    /// As stored: [`HASH_KEY_TAG`] and the 16 bytes. The tag makes it 28 bytes, a length no
    /// slot has, so a slot that Kong 3.8+ aliases to this key (by CRC32) reads it as another's
    /// entry and never overwrites it, and a slot's value is never loaded as the key.
    fn to_stored(self) -> Vec<u8> {
        let mut bytes = HASH_KEY_TAG.to_vec();
        bytes.extend_from_slice(&self.0[0].to_le_bytes());
        bytes.extend_from_slice(&self.0[1].to_le_bytes());
        bytes
    }

    fn from_stored(value: &[u8]) -> Option<HashKey> {
        let key = value.strip_prefix(HASH_KEY_TAG)?;
        <[u8; 16]>::try_from(key).ok().map(HashKey::from_bytes)
    }

    /// The key every worker uses: the one in shared data, or `fresh` stored there first. The
    /// insert never overwrites (the kit's `store::insert`), so workers starting together agree
    /// on the one that landed; the key survives reconfiguration with the slots it keys.
    pub fn load_or_create(
        store: &impl SharedStore,
        fresh: impl FnOnce() -> [u8; 16],
    ) -> Result<HashKey, UpdateError> {
        let fresh = HashKey::from_bytes(fresh());
        update(store, HASH_KEY, 4, |current| {
            match current.and_then(HashKey::from_stored) {
                Some(stored) => Step::Keep(stored),
                // Absent, or not a key (an earlier version's bare 16 bytes): ours goes in.
                None => Step::Write(fresh.to_stored(), fresh),
            }
        })
    }
}

/// A 64-bit fingerprint of a key, fed in pieces: SipHash-1-3 (the hash Rust's `HashMap` uses
/// against flooding) keyed with the proxy's [`HashKey`]. Slots in shared data outlive a plugin
/// reload, and the key with them, so a key keeps its fingerprint across reconfiguration.
pub type KeyHasher = SipHasher<1, 3>;

/// SipHash-c-d (Aumasson and Bernstein), fed byte by byte: keys are tens of bytes.
#[derive(Debug, Clone, Copy)]
pub struct SipHasher<const C: usize, const D: usize> {
    v: [u64; 4],
    tail: u64,
    length: u64,
}

impl<const C: usize, const D: usize> SipHasher<C, D> {
    pub fn new(key: &HashKey) -> Self {
        let [k0, k1] = key.0;
        Self {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            length: 0,
        }
    }

    fn rounds(&mut self, n: usize) {
        let [v0, v1, v2, v3] = &mut self.v;
        for _ in 0..n {
            *v0 = v0.wrapping_add(*v1);
            *v1 = v1.rotate_left(13) ^ *v0;
            *v0 = v0.rotate_left(32);
            *v2 = v2.wrapping_add(*v3);
            *v3 = v3.rotate_left(16) ^ *v2;
            *v0 = v0.wrapping_add(*v3);
            *v3 = v3.rotate_left(21) ^ *v0;
            *v2 = v2.wrapping_add(*v1);
            *v1 = v1.rotate_left(17) ^ *v2;
            *v2 = v2.rotate_left(32);
        }
    }

    fn compress(&mut self, word: u64) {
        self.v[3] ^= word;
        self.rounds(C);
        self.v[0] ^= word;
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.tail |= u64::from(*byte) << (8 * (self.length % 8));
            self.length = self.length.wrapping_add(1);
            if self.length.is_multiple_of(8) {
                let word = std::mem::take(&mut self.tail);
                self.compress(word);
            }
        }
    }

    /// A part with a value: a marker, the value's length, the value (so that no two different
    /// part lists hash the same bytes).
    pub fn present(&mut self, value: &[u8]) {
        self.write(&[1]);
        self.write(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
        self.write(value);
    }

    /// A part the request has no value for.
    pub fn absent(&mut self) {
        self.write(&[0]);
    }

    pub fn finish(mut self) -> u64 {
        let last = (self.length << 56) | self.tail;
        self.compress(last);
        self.v[2] ^= 0xff;
        self.rounds(D);
        let [v0, v1, v2, v3] = self.v;
        v0 ^ v1 ^ v2 ^ v3
    }
}

/// The fingerprint of a whole key.
pub fn fingerprint(hash_key: &HashKey, key: &[u8]) -> u64 {
    let mut hasher = KeyHasher::new(hash_key);
    hasher.write(key);
    hasher.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use palisade_kit::store::{BlindWrite, MemoryStore, Write};

    const KEY: HashKey = HashKey([0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908]);

    #[test]
    fn siphash_matches_its_reference() {
        // The paper's example: SipHash-2-4, key 00..0f, message 00..0e.
        let mut sip = SipHasher::<2, 4>::new(&KEY);
        sip.write(&(0u8..15).collect::<Vec<_>>());
        assert_eq!(sip.finish(), 0xa129_ca61_49be_45e5);
        // Fed in pieces, the same.
        let mut pieces = SipHasher::<2, 4>::new(&KEY);
        for chunk in (0u8..15).collect::<Vec<_>>().chunks(4) {
            pieces.write(chunk);
        }
        assert_eq!(pieces.finish(), 0xa129_ca61_49be_45e5);
        // SipHash-1-3 as Rust's `DefaultHasher` computes it (key 0, bytes written raw).
        #[allow(deprecated)]
        let std_13 = {
            use std::hash::Hasher;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(b"palisade");
            h.finish()
        };
        assert_eq!(fingerprint(&HashKey::default(), b"palisade"), std_13);
    }

    #[test]
    fn a_fingerprint_depends_on_the_proxys_key() {
        let other = HashKey([1, 2]);
        assert_ne!(fingerprint(&KEY, b"acme"), fingerprint(&other, b"acme"));
        assert_eq!(format!("{KEY:?}"), "HashKey(..)");
    }

    #[test]
    fn every_worker_loads_the_key_the_first_one_stored() {
        for blind_write in [BlindWrite::Overwrites, BlindWrite::Refused] {
            let store = MemoryStore::with(blind_write, usize::MAX);
            let first = HashKey::load_or_create(&store, || [7; 16]).unwrap();
            assert_eq!(first, HashKey::from_bytes([7; 16]));
            // A later worker's fresh key is not used, nor stored.
            assert_eq!(HashKey::load_or_create(&store, || [9; 16]), Ok(first));
            assert_eq!(
                store.get(HASH_KEY).unwrap().unwrap().value,
                [&b"palisade-hk1"[..], &[7; 16]].concat()
            );
            // A value that is not a key (junk, an earlier version's bare 16 bytes, a slot's
            // value) is replaced once.
            for junk in [&b"junk"[..], &[5; 16]] {
                let entry = store.get(HASH_KEY).unwrap().unwrap();
                assert_eq!(
                    store.set(HASH_KEY, junk, Some(entry.cas)),
                    Ok(Write::Stored)
                );
                let replaced = HashKey::load_or_create(&store, || [3; 16]).unwrap();
                assert_eq!(replaced, HashKey::from_bytes([3; 16]));
                assert_eq!(HashKey::load_or_create(&store, || [4; 16]), Ok(replaced));
            }
        }
    }

    /// A request for unit tests: headers (with `:path` and `:method`), an address, a route.
    #[derive(Debug, Default, Clone)]
    pub struct FakeRequest {
        pub headers: Vec<(String, Vec<u8>)>,
        pub source: Option<String>,
        pub route: Option<String>,
        pub reads: usize,
    }

    impl FakeRequest {
        pub fn new(method: &str, path: &str) -> Self {
            Self {
                headers: vec![
                    (":method".into(), method.into()),
                    (":path".into(), path.into()),
                ],
                source: Some("10.0.0.1:40000".into()),
                ..Self::default()
            }
        }

        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.into(), value.into()));
            self
        }
    }

    impl RequestView for FakeRequest {
        fn header(&mut self, name: &str) -> Option<Vec<u8>> {
            self.reads += 1;
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }
        fn source_address(&mut self) -> Option<Vec<u8>> {
            self.reads += 1;
            self.source.clone().map(String::into_bytes)
        }
        fn route_name(&mut self) -> Option<Vec<u8>> {
            self.reads += 1;
            self.route.clone().map(String::into_bytes)
        }
    }

    fn ip(hops: u32, source: &str, xff: Option<&str>) -> Option<String> {
        client_ip(hops, Some(source.as_bytes()), xff.map(str::as_bytes)).map(|ip| ip.to_string())
    }

    #[test]
    fn the_connection_address_loses_its_port() {
        assert_eq!(ip(0, "10.0.0.1:40000", None).as_deref(), Some("10.0.0.1"));
        assert_eq!(ip(0, "10.0.0.1", None).as_deref(), Some("10.0.0.1"));
        assert_eq!(
            ip(0, "[2001:db8::1]:443", None).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(ip(0, "::ffff:10.0.0.9", None).as_deref(), Some("10.0.0.9"));
        assert_eq!(ip(0, "not-an-address", None), None);
        // With no trusted hops the header is not even considered.
        assert_eq!(
            ip(0, "10.0.0.1:1", Some("1.2.3.4")).as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn spoofed_entries_left_of_the_trusted_hops_are_ignored() {
        // The client sent "6.6.6.6"; the one trusted proxy appended the real peer.
        let xff = Some("6.6.6.6, 203.0.113.7");
        assert_eq!(ip(1, "10.0.0.1:1", xff).as_deref(), Some("203.0.113.7"));
        // Two trusted proxies: the second-from-right is what the outer one saw.
        let xff = Some("6.6.6.6,7.7.7.7, 203.0.113.7 ,10.1.1.1");
        assert_eq!(ip(2, "10.0.0.1:1", xff).as_deref(), Some("203.0.113.7"));
        // However many entries the client prepends, the answer does not move.
        let long = format!("{}203.0.113.7, 10.1.1.1", "1.1.1.1, ".repeat(50));
        assert_eq!(
            ip(2, "10.0.0.1:1", Some(&long)).as_deref(),
            Some("203.0.113.7")
        );
    }

    #[test]
    fn too_few_entries_fall_back_to_the_connection_and_garbage_is_missing() {
        assert_eq!(
            ip(2, "10.0.0.1:1", Some("203.0.113.7")).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(ip(1, "10.0.0.1:1", None).as_deref(), Some("10.0.0.1"));
        assert_eq!(ip(1, "10.0.0.1:1", Some("1.1.1.1, unknown")), None);
        assert_eq!(
            ip(1, "10.0.0.1:1", Some("1.1.1.1, 198.51.100.2:8080")).as_deref(),
            Some("198.51.100.2")
        );
    }

    #[test]
    fn an_ipv6_client_is_its_prefix_and_an_ipv4_client_its_address() {
        let v6 = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(client_key(v6("203.0.113.7"), 64), "203.0.113.7");
        assert_eq!(
            client_key(v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            client_key(v6("2001:db8:1:2:ffff::1"), 56),
            "2001:db8:1::/56"
        );
        assert_eq!(client_key(v6("2001:db8::1"), 128), "2001:db8::1");
        assert_eq!(client_key(v6("ffff::1"), 1), "8000::/1");
        // One client rotating addresses inside its /64 keeps one key; its neighbour does not.
        let key_of = |source: &str, prefix: u8| {
            let mut fake = FakeRequest::new("GET", "/");
            fake.source = Some(source.into());
            let config = ClientIpConfig {
                ipv6_prefix_len: prefix,
                ..ClientIpConfig::default()
            };
            fingerprint_of(
                &KEY,
                &[KeyPart::ClientIp],
                &mut RequestParts::new(&mut fake, config),
            )
        };
        assert_eq!(
            key_of("[2001:db8:1:2::1]:1", 64),
            key_of("[2001:db8:1:2:9::7]:2", 64)
        );
        assert_ne!(
            key_of("[2001:db8:1:2::1]:1", 64),
            key_of("[2001:db8:1:3::1]:1", 64)
        );
        assert_ne!(
            key_of("[2001:db8:1:2::1]:1", 128),
            key_of("[2001:db8:1:2:9::7]:2", 128)
        );
    }

    #[test]
    fn each_host_value_is_read_once_per_request() {
        let mut fake = FakeRequest::new("GET", "/a?b=c").header("x-tenant", "acme");
        let tenant = KeyPart::Header("x-tenant".into());
        let mut parts = RequestParts::new(&mut fake, ClientIpConfig::default());
        for _ in 0..3 {
            assert_eq!(parts.path(), Some(&b"/a"[..]));
            assert_eq!(parts.part(&tenant), Some(&b"acme"[..]));
            assert_eq!(parts.client_ip(), Some("10.0.0.1"));
            assert_eq!(parts.route(), None);
            assert_eq!(parts.header("x-absent"), None);
        }
        assert_eq!(fake.reads, 5);
    }

    #[test]
    fn keys_are_unambiguous_and_missing_parts_are_marked() {
        let key = |fake: &mut FakeRequest, parts: &[KeyPart]| {
            fingerprint_of(
                &KEY,
                parts,
                &mut RequestParts::new(fake, ClientIpConfig::default()),
            )
        };
        let two = [KeyPart::Header("a".into()), KeyPart::Header("b".into())];
        let mut x = FakeRequest::new("GET", "/")
            .header("a", "xy")
            .header("b", "z");
        let mut y = FakeRequest::new("GET", "/")
            .header("a", "x")
            .header("b", "yz");
        assert_ne!(key(&mut x, &two), key(&mut y, &two));
        let mut no_b = FakeRequest::new("GET", "/").header("a", "x");
        let mut empty_b = FakeRequest::new("GET", "/")
            .header("a", "x")
            .header("b", "");
        assert!(key(&mut no_b, &two).is_err());
        assert_ne!(
            key(&mut empty_b, &two).ok(),
            key(&mut no_b, &two).err().map(|m| m.0)
        );
        // An empty consumer header is no consumer.
        let mut anonymous = FakeRequest::new("GET", "/").header("x-palisade-consumer", "");
        assert!(key(&mut anonymous, &[KeyPart::Consumer]).is_err());
    }

    #[test]
    fn a_key_hashes_as_its_length_prefixed_bytes() {
        // A key is the bytes it streams: no part list is another's in disguise.
        let parts = [
            KeyPart::Method,
            KeyPart::Header("x-absent".into()),
            KeyPart::Constant("all".into()),
        ];
        let mut request = FakeRequest::new("GET", "/");
        let streamed = fingerprint_of(
            &KEY,
            &parts,
            &mut RequestParts::new(&mut request, ClientIpConfig::default()),
        );
        let bytes = [&[1, 3, 0, 0, 0][..], b"GET", &[0], &[1, 3, 0, 0, 0], b"all"].concat();
        assert_eq!(streamed, Err(Missing(fingerprint(&KEY, &bytes))));

        let constant = [KeyPart::Constant("all".into())];
        assert_eq!(
            constant_fingerprint(&KEY, &constant),
            Some(fingerprint(&KEY, &[&[1, 3, 0, 0, 0][..], b"all"].concat()))
        );
        assert_eq!(
            constant_fingerprint(&KEY, &constant).ok_or(Missing(0)),
            fingerprint_of(
                &KEY,
                &constant,
                &mut RequestParts::new(&mut request, ClientIpConfig::default())
            )
        );
        assert_eq!(constant_fingerprint(&KEY, &parts), None);
    }

    #[test]
    fn fingerprints_spread_over_slots() {
        let mut buckets = [0u32; 16];
        for i in 0..16_000u32 {
            let slot = fingerprint(&KEY, format!("client-{i}").as_bytes()) % 16;
            buckets[slot as usize] += 1;
        }
        assert!(
            buckets.iter().all(|n| (800..1200).contains(n)),
            "{buckets:?}"
        );
        assert_ne!(fingerprint(&KEY, b"a"), fingerprint(&KEY, b"b"));
    }
}
