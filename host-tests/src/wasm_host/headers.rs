//! Header maps as the host keeps them (raw bytes, order kept, names lower-cased as Envoy and
//! HTTP/2 have them), and the request and response a test sends through a plugin.

use std::collections::BTreeMap;
use std::fmt;

use palisade_kit::header_pairs::Pairs;

/// An ordered header map. Values are bytes: a non-UTF-8 value is a value like any other.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Pairs);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs(pairs: Pairs) -> Self {
        Self(pairs)
    }

    /// Adds a value (names are lower-cased).
    pub fn with(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.add(name.as_bytes(), value.as_ref());
        self
    }

    pub fn pairs(&self) -> &Pairs {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&[u8]> {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// The first value of `name` as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.all(name).into_iter().next()
    }

    /// The first value of `name` as text (`None` when absent or not UTF-8).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name).is_some()
    }

    /// Every name, in order (repeated names repeat).
    pub fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    /// Without any value of `name`.
    pub fn without(&self, name: &str) -> Self {
        let mut copy = self.clone();
        copy.remove(name.as_bytes());
        copy
    }

    /// Without the pseudo-headers (`:path`, `:status`...).
    pub fn without_pseudo(&self) -> Self {
        Self(
            self.0
                .iter()
                .filter(|(n, _)| !n.starts_with(b":"))
                .cloned()
                .collect(),
        )
    }

    // The mutations the ABI offers. Envoy keys are lower case (`LowerCaseString`).

    pub(crate) fn add(&mut self, name: &[u8], value: &[u8]) {
        self.0.push((name.to_ascii_lowercase(), value.to_vec()));
    }

    pub(crate) fn replace(&mut self, name: &[u8], value: &[u8]) {
        match self
            .0
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                if let Some(pair) = self.0.get_mut(first) {
                    pair.1 = value.to_vec();
                }
                let mut index = 0;
                self.0.retain(|(n, _)| {
                    let keep = index <= first || !n.eq_ignore_ascii_case(name);
                    index += 1;
                    keep
                });
            }
            None => self.add(name, value),
        }
    }

    pub(crate) fn remove(&mut self, name: &[u8]) -> bool {
        let before = self.0.len();
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.0.len() != before
    }

    /// The first value of `name`.
    pub(crate) fn first(&self, name: &[u8]) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// Envoy's `getAllOfHeaderAsString`: repeated values joined with `,`.
    pub(crate) fn joined(&self, name: &[u8]) -> Option<Vec<u8>> {
        let values: Vec<&[u8]> = self
            .0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .collect();
        (!values.is_empty()).then(|| values.join(&b","[..]))
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

/// A property value a test scripts; encoded per profile when the plugin reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropertyValue {
    Bytes(Vec<u8>),
    Int(i64),
    Bool(bool),
}

impl From<&str> for PropertyValue {
    fn from(value: &str) -> Self {
        Self::Bytes(value.as_bytes().to_vec())
    }
}

impl From<String> for PropertyValue {
    fn from(value: String) -> Self {
        Self::Bytes(value.into_bytes())
    }
}

impl From<&[u8]> for PropertyValue {
    fn from(value: &[u8]) -> Self {
        Self::Bytes(value.to_vec())
    }
}

impl From<i64> for PropertyValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<bool> for PropertyValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

/// A downstream request: pseudo-headers, headers, and the properties the host answers for it.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) headers: Headers,
    pub(crate) properties: BTreeMap<String, PropertyValue>,
}

impl Request {
    /// `method path` to `example.com` over https.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            headers: Headers::new()
                .with(":authority", "example.com")
                .with(":path", path)
                .with(":method", method)
                .with(":scheme", "https"),
            properties: BTreeMap::new(),
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(name.as_bytes(), value.as_ref());
        self
    }

    /// Replaces `:authority` (the Host).
    pub fn authority(mut self, authority: &str) -> Self {
        self.headers.replace(b":authority", authority.as_bytes());
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        self.headers.replace(b":scheme", scheme.as_bytes());
        self
    }

    /// A property for this request only, by its dotted path (`source.address`,
    /// `connection.uri_san_peer_certificate`, `kong.route_name`...).
    pub fn property(mut self, path: &str, value: impl Into<PropertyValue>) -> Self {
        self.properties.insert(path.to_owned(), value.into());
        self
    }

    /// The peer's TLS identity: mTLS on, with this URI SAN and subject.
    pub fn tls_peer(self, uri_san: &str, subject: &str) -> Self {
        self.property("connection.mtls", true)
            .property("connection.uri_san_peer_certificate", uri_san)
            .property("connection.subject_peer_certificate", subject)
    }

    /// The headers as sent, pseudo-headers included.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl Default for Request {
    fn default() -> Self {
        Self::get("/")
    }
}

/// An upstream response.
#[derive(Debug, Clone)]
pub struct Response {
    pub(crate) headers: Headers,
}

impl Response {
    pub fn status(status: u16) -> Self {
        Self {
            headers: Headers::new().with(":status", status.to_string()),
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(name.as_bytes(), value.as_ref());
        self
    }

    /// The headers as sent, `:status` included.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
}
