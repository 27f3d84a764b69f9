//! The few messages of `envoy.service.ratelimit.v3` the global mode exchanges, in both wire
//! forms: protobuf (the gRPC `ShouldRateLimit` call) and the JSON lyft/ratelimit serves on
//! `POST /json` (protojson: camelCase names, enums by name, durations as `"1.5s"`).
//!
//! Hand-written rather than generated (prost) to keep the `.wasm` small: three request fields
//! to write, a handful of response fields to read. Decoding never panics and never trusts a
//! length: any bytes give a response or an error, and unknown fields are skipped as protobuf
//! requires.

use std::time::Duration;

/// `RateLimitRequest`: one call for every global limit that applies to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitRequest<'a> {
    pub domain: &'a str,
    /// One descriptor per limit, each an ordered list of `(key, value)` entries.
    pub descriptors: &'a [crate::key::Descriptor],
    pub hits_addend: u32,
}

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Code {
    #[default]
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_number(n: u64) -> Self {
        match n {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }

    fn from_name(name: &str) -> Self {
        match name {
            "OK" => Code::Ok,
            "OVER_LIMIT" => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// `RateLimitResponse.RateLimit`: the limit the service applied to one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentLimit {
    pub requests_per_unit: u32,
    /// The unit's length: SECOND to YEAR (`None` for UNKNOWN or a unit this code does not know).
    pub unit: Option<Duration>,
}

/// `RateLimitResponse.DescriptorStatus`, one per descriptor sent, in the same order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Code,
    pub current_limit: Option<CurrentLimit>,
    pub limit_remaining: u32,
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse`, the fields a limiter needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitResponse {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
    /// `response_headers_to_add`: for the client's response (lyft/ratelimit's
    /// `RateLimit-Limit`/`-Remaining`/`-Reset` when enabled, Limitador's rate-limit headers).
    pub response_headers: Vec<HeaderToAdd>,
    /// `request_headers_to_add`: for the request sent upstream, when it is let through.
    pub request_headers: Vec<HeaderToAdd>,
}

/// One `config.core.v3.HeaderValue` the service asked to add: a lower-case field name and a
/// value that is a valid field value. Entries that are not (an empty or invalid name, a value
/// with CR, LF or another control character, or longer than [`MAX_HEADER_VALUE`]) are dropped
/// when the answer is read, so nothing the service says can split or smuggle a header.
pub type HeaderToAdd = (String, String);

/// Most headers read from each of an answer's two header lists.
pub const MAX_HEADERS: usize = 32;
/// Longest header value read from an answer.
pub const MAX_HEADER_VALUE: usize = 4096;

/// The header `key: value` as it may be added, or `None` if it may not.
fn header_to_add(key: &str, value: &str) -> Option<HeaderToAdd> {
    let name = key.to_ascii_lowercase();
    let valid = palisade_kit::config::is_header_name(&name)
        && value.len() <= MAX_HEADER_VALUE
        && palisade_kit::config::is_header_value(value);
    valid.then(|| (name, value.to_owned()))
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("malformed protobuf varint")]
    Varint,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u8),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unexpected JSON shape: {0}")]
    Shape(&'static str),
}

/// `RateLimitResponse.RateLimit.Unit` as a length of time (MONTH is 30 days, YEAR 365).
fn unit_from_number(n: u64) -> Option<Duration> {
    const DAY: u64 = 86_400;
    let secs = match n {
        1 => 1,
        2 => 60,
        3 => 3_600,
        4 => DAY,
        5 => 30 * DAY,
        6 => 365 * DAY,
        7 => 7 * DAY,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

fn unit_from_name(name: &str) -> Option<Duration> {
    let n = match name {
        "SECOND" => 1,
        "MINUTE" => 2,
        "HOUR" => 3,
        "DAY" => 4,
        "MONTH" => 5,
        "YEAR" => 6,
        "WEEK" => 7,
        _ => return None,
    };
    unit_from_number(n)
}

// ---------------------------------------------------------------- protobuf encoding

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl RateLimitRequest<'_> {
    /// The protobuf encoding, as the gRPC call carries it (without gRPC's 5-byte frame: the
    /// host adds it).
    pub fn to_protobuf(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        if !self.domain.is_empty() {
            put_bytes(&mut out, 1, self.domain.as_bytes());
        }
        let mut descriptor = Vec::new();
        let mut entry = Vec::new();
        for entries in self.descriptors {
            descriptor.clear();
            for (key, value) in entries {
                entry.clear();
                put_bytes(&mut entry, 1, key.as_bytes());
                put_bytes(&mut entry, 2, value.as_bytes());
                put_bytes(&mut descriptor, 1, &entry);
            }
            put_bytes(&mut out, 2, &descriptor);
        }
        if self.hits_addend != 0 {
            put_tag(&mut out, 3, 0);
            put_varint(&mut out, u64::from(self.hits_addend));
        }
        out
    }

    /// The JSON lyft/ratelimit's `POST /json` reads (protojson).
    pub fn to_json(&self) -> Vec<u8> {
        let descriptors: Vec<serde_json::Value> = self
            .descriptors
            .iter()
            .map(|entries| {
                let entries: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|(key, value)| serde_json::json!({"key": key, "value": value}))
                    .collect();
                serde_json::json!({ "entries": entries })
            })
            .collect();
        serde_json::json!({
            "domain": self.domain,
            "descriptors": descriptors,
            "hitsAddend": self.hits_addend,
        })
        .to_string()
        .into_bytes()
    }
}

// ---------------------------------------------------------------- protobuf decoding

/// A cursor over protobuf bytes; every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skipped,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut n: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self.bytes.split_first().ok_or(DecodeError::Truncated)?;
            self.bytes = rest;
            if i == 9 && byte > 1 {
                return Err(DecodeError::Varint);
            }
            n |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(DecodeError::Varint)
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated)?;
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    /// The next field: its number and value (fixed-width values are skipped).
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match (tag & 7) as u8 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Skipped
            }
            2 => {
                let len = self.varint()?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Skipped
            }
            wire => return Err(DecodeError::WireType(wire)),
        };
        Ok(Some((tag >> 3, value)))
    }
}

fn decode_current_limit(bytes: &[u8]) -> Result<CurrentLimit, DecodeError> {
    let mut limit = CurrentLimit {
        requests_per_unit: 0,
        unit: None,
    };
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(n)) => limit.requests_per_unit = n as u32,
            (2, Value::Varint(n)) => limit.unit = unit_from_number(n),
            _ => {}
        }
    }
    Ok(limit)
}

fn decode_duration(bytes: &[u8]) -> Result<Duration, DecodeError> {
    let (mut secs, mut nanos) = (0i64, 0i64);
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(n)) => secs = n as i64,
            (2, Value::Varint(n)) => nanos = i64::from(n as i32),
            _ => {}
        }
    }
    Ok(duration(secs, nanos))
}

/// A negative duration counts as zero.
fn duration(secs: i64, nanos: i64) -> Duration {
    let secs = u64::try_from(secs).unwrap_or(0);
    let nanos = u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
    Duration::new(secs, nanos)
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut status = DescriptorStatus::default();
    let mut r = Reader::new(bytes);
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Varint(n)) => status.code = Code::from_number(n),
            (2, Value::Bytes(b)) => status.current_limit = Some(decode_current_limit(b)?),
            (3, Value::Varint(n)) => status.limit_remaining = n as u32,
            (4, Value::Bytes(b)) => status.duration_until_reset = Some(decode_duration(b)?),
            _ => {}
        }
    }
    Ok(status)
}

/// `config.core.v3.HeaderValue`: `key` (1), `value` (2), or `raw_value` (3) when `value` is
/// empty.
fn decode_header(bytes: &[u8]) -> Result<Option<HeaderToAdd>, DecodeError> {
    let (mut key, mut value, mut raw): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
    let mut r = Reader::new(bytes);
    while let Some((field, item)) = r.field()? {
        match (field, item) {
            (1, Value::Bytes(b)) => key = b,
            (2, Value::Bytes(b)) => value = b,
            (3, Value::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let value = if value.is_empty() { raw } else { value };
    Ok(
        match (std::str::from_utf8(key), std::str::from_utf8(value)) {
            (Ok(key), Ok(value)) => header_to_add(key, value),
            _ => None,
        },
    )
}

/// Most descriptor statuses read from one answer: more than any request sends.
pub const MAX_STATUSES: usize = 64;

impl RateLimitResponse {
    /// Reads the protobuf answer of `ShouldRateLimit`.
    pub fn from_protobuf(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut response = Self::default();
        let mut r = Reader::new(bytes);
        while let Some((field, value)) = r.field()? {
            match (field, value) {
                (1, Value::Varint(n)) => response.overall_code = Code::from_number(n),
                (2, Value::Bytes(b)) if response.statuses.len() < MAX_STATUSES => {
                    response.statuses.push(decode_status(b)?);
                }
                (3, Value::Bytes(b)) if response.response_headers.len() < MAX_HEADERS => {
                    response.response_headers.extend(decode_header(b)?);
                }
                (4, Value::Bytes(b)) if response.request_headers.len() < MAX_HEADERS => {
                    response.request_headers.extend(decode_header(b)?);
                }
                _ => {}
            }
        }
        Ok(response)
    }

    /// Reads lyft/ratelimit's `/json` answer (protojson; snake_case names and enum numbers,
    /// which protojson also accepts, are read too).
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|err| DecodeError::Json(err.to_string()))?;
        let object = value
            .as_object()
            .ok_or(DecodeError::Shape("not an object"))?;
        let mut response = Self {
            overall_code: json_code(field(object, "overallCode", "overall_code")),
            response_headers: json_headers(
                object,
                "responseHeadersToAdd",
                "response_headers_to_add",
            )?,
            request_headers: json_headers(object, "requestHeadersToAdd", "request_headers_to_add")?,
            ..Self::default()
        };
        if let Some(statuses) = field(object, "statuses", "statuses") {
            let statuses = statuses
                .as_array()
                .ok_or(DecodeError::Shape("statuses is not a list"))?;
            for status in statuses.iter().take(MAX_STATUSES) {
                let status = status
                    .as_object()
                    .ok_or(DecodeError::Shape("a status is not an object"))?;
                response.statuses.push(DescriptorStatus {
                    code: json_code(field(status, "code", "code")),
                    current_limit: field(status, "currentLimit", "current_limit")
                        .and_then(serde_json::Value::as_object)
                        .map(|limit| CurrentLimit {
                            requests_per_unit: field(limit, "requestsPerUnit", "requests_per_unit")
                                .and_then(json_u32)
                                .unwrap_or(0),
                            unit: field(limit, "unit", "unit").and_then(|unit| match unit {
                                serde_json::Value::String(name) => unit_from_name(name),
                                other => other.as_u64().and_then(unit_from_number),
                            }),
                        }),
                    limit_remaining: field(status, "limitRemaining", "limit_remaining")
                        .and_then(json_u32)
                        .unwrap_or(0),
                    duration_until_reset: field(
                        status,
                        "durationUntilReset",
                        "duration_until_reset",
                    )
                    .and_then(serde_json::Value::as_str)
                    .and_then(parse_json_duration),
                });
            }
        }
        Ok(response)
    }
}

fn field<'v>(
    object: &'v serde_json::Map<String, serde_json::Value>,
    camel: &str,
    snake: &str,
) -> Option<&'v serde_json::Value> {
    object.get(camel).or_else(|| object.get(snake))
}

/// A list of protojson `HeaderValue`s (`{"key": ..., "value": ...}`); `rawValue` (base64) is
/// not read: lyft/ratelimit and Limitador send `value`.
fn json_headers(
    object: &serde_json::Map<String, serde_json::Value>,
    camel: &str,
    snake: &str,
) -> Result<Vec<HeaderToAdd>, DecodeError> {
    let Some(list) = field(object, camel, snake) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or(DecodeError::Shape("a header list is not a list"))?;
    Ok(list
        .iter()
        .take(MAX_HEADERS)
        .filter_map(|header| {
            let header = header.as_object()?;
            let key = header.get("key")?.as_str()?;
            let value = header.get("value")?.as_str()?;
            header_to_add(key, value)
        })
        .collect())
}

fn json_code(value: Option<&serde_json::Value>) -> Code {
    match value {
        Some(serde_json::Value::String(name)) => Code::from_name(name),
        Some(other) => other.as_u64().map_or(Code::Unknown, Code::from_number),
        None => Code::Unknown,
    }
}

/// A uint32 as protojson writes it (a number) or a string of digits.
fn json_u32(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::String(s) => s.parse().ok(),
        other => other.as_u64().and_then(|n| u32::try_from(n).ok()),
    }
}

/// protojson's `google.protobuf.Duration`: `"59s"`, `"1.500s"`, `"-1s"` (negative: zero).
fn parse_json_duration(text: &str) -> Option<Duration> {
    let number = text.strip_suffix('s')?;
    if number.starts_with('-') {
        return Some(Duration::ZERO);
    }
    let (secs, frac) = number.split_once('.').unwrap_or((number, ""));
    if secs.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_request_encodes_as_protoc_does() {
        let descriptors = vec![entries(&[("limit", "a"), ("x-tenant", "t1")])];
        let request = RateLimitRequest {
            domain: "edge",
            descriptors: &descriptors,
            hits_addend: 1,
        };
        // protoc --encode=envoy.service.ratelimit.v3.RateLimitRequest of
        // domain: "edge" descriptors { entries { key: "limit" value: "a" }
        // entries { key: "x-tenant" value: "t1" } } hits_addend: 1
        let expected: &[u8] = b"\x0a\x04edge\
            \x12\x1c\x0a\x0a\x0a\x05limit\x12\x01a\x0a\x0e\x0a\x08x-tenant\x12\x02t1\
            \x18\x01";
        assert_eq!(request.to_protobuf(), expected);
    }

    #[test]
    fn the_request_encodes_as_lyft_json() {
        let descriptors = vec![
            entries(&[("generic_key", "all")]),
            entries(&[("path", "/")]),
        ];
        let request = RateLimitRequest {
            domain: "edge",
            descriptors: &descriptors,
            hits_addend: 1,
        };
        assert_eq!(
            String::from_utf8(request.to_json()).unwrap(),
            r#"{"descriptors":[{"entries":[{"key":"generic_key","value":"all"}]},{"entries":[{"key":"path","value":"/"}]}],"domain":"edge","hitsAddend":1}"#
        );
    }

    /// An over-limit answer as lyft/ratelimit encodes it, with fields this code skips.
    fn over_limit_bytes() -> Vec<u8> {
        let mut limit = Vec::new();
        put_bytes(&mut limit, 3, b"per-minute"); // name, skipped
        put_tag(&mut limit, 1, 0);
        put_varint(&mut limit, 10);
        put_tag(&mut limit, 2, 0);
        put_varint(&mut limit, 2); // MINUTE
        let mut reset = Vec::new();
        put_tag(&mut reset, 1, 0);
        put_varint(&mut reset, 42);
        put_tag(&mut reset, 2, 0);
        put_varint(&mut reset, 500_000_000);
        let mut status = Vec::new();
        put_tag(&mut status, 1, 0);
        put_varint(&mut status, 2);
        put_bytes(&mut status, 2, &limit);
        put_tag(&mut status, 3, 0);
        put_varint(&mut status, 0);
        put_bytes(&mut status, 4, &reset);
        let mut ok = Vec::new();
        put_tag(&mut ok, 1, 0);
        put_varint(&mut ok, 1);
        put_tag(&mut ok, 3, 0);
        put_varint(&mut ok, 7);
        let mut out = Vec::new();
        put_tag(&mut out, 1, 0);
        put_varint(&mut out, 2);
        put_bytes(&mut out, 2, &status);
        put_bytes(&mut out, 2, &ok);
        put_bytes(&mut out, 3, b"\x0a\x01x"); // response_headers_to_add: `x`, empty
        put_tag(&mut out, 9, 1); // a fixed64 field from the future
        out.extend_from_slice(&[0; 8]);
        out
    }

    #[test]
    fn an_over_limit_answer_decodes_and_unknown_fields_are_skipped() {
        let response = RateLimitResponse::from_protobuf(&over_limit_bytes()).unwrap();
        assert_eq!(response.overall_code, Code::OverLimit);
        assert_eq!(
            response.statuses,
            [
                DescriptorStatus {
                    code: Code::OverLimit,
                    current_limit: Some(CurrentLimit {
                        requests_per_unit: 10,
                        unit: Some(Duration::from_secs(60)),
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(Duration::new(42, 500_000_000)),
                },
                DescriptorStatus {
                    code: Code::Ok,
                    current_limit: None,
                    limit_remaining: 7,
                    duration_until_reset: None,
                },
            ]
        );
    }

    fn header_value(key: &[u8], value: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_bytes(&mut out, 1, key);
        if !value.is_empty() {
            put_bytes(&mut out, 2, value);
        }
        if !raw.is_empty() {
            put_bytes(&mut out, 3, raw);
        }
        out
    }

    #[test]
    fn headers_to_add_decode_and_unsafe_ones_are_dropped() {
        let mut out = Vec::new();
        put_tag(&mut out, 1, 0);
        put_varint(&mut out, 1);
        for (key, value, raw) in [
            (&b"RateLimit-Remaining"[..], &b"7"[..], &b""[..]),
            (b"x-raw", b"", b"raw value"),
            (b"x-split", b"a\r\nset-cookie: s=1", b""),
            (b"bad name", b"v", b""),
            (b"", b"v", b""),
            (b"x-not-utf8", b"\xff", b""),
        ] {
            put_bytes(&mut out, 3, &header_value(key, value, raw));
        }
        put_bytes(&mut out, 4, &header_value(b"X-Tier", b"gold", b""));
        let response = RateLimitResponse::from_protobuf(&out).unwrap();
        assert_eq!(
            response.response_headers,
            [
                ("ratelimit-remaining".to_owned(), "7".to_owned()),
                ("x-raw".to_owned(), "raw value".to_owned()),
            ]
        );
        assert_eq!(
            response.request_headers,
            [("x-tier".to_owned(), "gold".to_owned())]
        );

        // At most MAX_HEADERS per list, and no value longer than MAX_HEADER_VALUE.
        let mut many = Vec::new();
        for _ in 0..MAX_HEADERS + 5 {
            put_bytes(&mut many, 3, &header_value(b"x-n", b"1", b""));
        }
        put_bytes(
            &mut many,
            4,
            &header_value(b"x-long", &[b'a'; MAX_HEADER_VALUE + 1], b""),
        );
        let response = RateLimitResponse::from_protobuf(&many).unwrap();
        assert_eq!(response.response_headers.len(), MAX_HEADERS);
        assert!(response.request_headers.is_empty());
    }

    #[test]
    fn json_headers_to_add_decode() {
        let body = br#"{"overallCode":"OK",
            "responseHeadersToAdd":[{"key":"RateLimit-Limit","value":"10"},
                                    {"key":"x-bad","value":"a\nb"},{"value":"no key"}],
            "request_headers_to_add":[{"key":"x-tier","value":"gold"}]}"#;
        let response = RateLimitResponse::from_json(body).unwrap();
        assert_eq!(
            response.response_headers,
            [("ratelimit-limit".to_owned(), "10".to_owned())]
        );
        assert_eq!(
            response.request_headers,
            [("x-tier".to_owned(), "gold".to_owned())]
        );
        assert_eq!(
            RateLimitResponse::from_json(br#"{"responseHeadersToAdd":{}}"#),
            Err(DecodeError::Shape("a header list is not a list"))
        );
    }

    #[test]
    fn an_empty_answer_is_unknown() {
        assert_eq!(
            RateLimitResponse::from_protobuf(b"").unwrap(),
            RateLimitResponse::default()
        );
    }

    #[test]
    fn every_truncation_of_an_answer_is_an_error_or_a_prefix() {
        let bytes = over_limit_bytes();
        // Where each top-level field ends: a cut there is a shorter valid message.
        let mut boundaries = vec![0];
        let mut reader = Reader::new(&bytes);
        while reader.field().unwrap().is_some() {
            boundaries.push(bytes.len() - reader.bytes.len());
        }
        assert_eq!(boundaries, [0, 2, 36, 42, 47, 56]);
        for cut in 0..bytes.len() {
            let decoded = RateLimitResponse::from_protobuf(&bytes[..cut]);
            if boundaries.contains(&cut) {
                assert!(decoded.is_ok(), "{cut}: {decoded:?}");
            } else {
                assert!(decoded.is_err(), "{cut}: {decoded:?}");
            }
        }
        assert_eq!(
            RateLimitResponse::from_protobuf(&bytes[..3]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            RateLimitResponse::from_protobuf(b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f"),
            Err(DecodeError::Varint)
        );
        assert_eq!(
            RateLimitResponse::from_protobuf(b"\x0b"),
            Err(DecodeError::WireType(3))
        );
        // A length far beyond the message.
        assert_eq!(
            RateLimitResponse::from_protobuf(b"\x12\xff\xff\xff\xff\x0f"),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn lyft_json_answers_decode() {
        let body = br#"{"overallCode":"OVER_LIMIT","statuses":[
            {"code":"OVER_LIMIT","currentLimit":{"requestsPerUnit":3,"unit":"HOUR"},
             "durationUntilReset":"3599.250s"},
            {"code":"OK","currentLimit":{"requests_per_unit":"5","unit":1},"limitRemaining":4,
             "durationUntilReset":"1s"}]}"#;
        let response = RateLimitResponse::from_json(body).unwrap();
        assert_eq!(response.overall_code, Code::OverLimit);
        assert_eq!(
            response.statuses,
            [
                DescriptorStatus {
                    code: Code::OverLimit,
                    current_limit: Some(CurrentLimit {
                        requests_per_unit: 3,
                        unit: Some(Duration::from_secs(3600)),
                    }),
                    limit_remaining: 0,
                    duration_until_reset: Some(Duration::new(3599, 250_000_000)),
                },
                DescriptorStatus {
                    code: Code::Ok,
                    current_limit: Some(CurrentLimit {
                        requests_per_unit: 5,
                        unit: Some(Duration::from_secs(1)),
                    }),
                    limit_remaining: 4,
                    duration_until_reset: Some(Duration::from_secs(1)),
                },
            ]
        );
        assert_eq!(
            RateLimitResponse::from_json(br#"{"overallCode":"OK"}"#)
                .unwrap()
                .overall_code,
            Code::Ok
        );
    }

    #[test]
    fn bad_json_answers_are_errors() {
        assert!(matches!(
            RateLimitResponse::from_json(b"Bad Request\n"),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(
            RateLimitResponse::from_json(b"[]"),
            Err(DecodeError::Shape("not an object"))
        );
        assert_eq!(
            RateLimitResponse::from_json(br#"{"statuses":{}}"#),
            Err(DecodeError::Shape("statuses is not a list"))
        );
    }

    #[test]
    fn json_durations() {
        assert_eq!(parse_json_duration("59s"), Some(Duration::from_secs(59)));
        assert_eq!(
            parse_json_duration("0.000001s"),
            Some(Duration::from_micros(1))
        );
        assert_eq!(parse_json_duration("-3s"), Some(Duration::ZERO));
        assert_eq!(parse_json_duration("3"), None);
        assert_eq!(parse_json_duration(".5s"), None);
        assert_eq!(parse_json_duration("1.0000000001s"), None);
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = RateLimitResponse::from_protobuf(&bytes);
                let _ = RateLimitResponse::from_json(&bytes);
            }

            #[test]
            fn statuses_survive_encoding(code in 0u64..3, remaining in any::<u32>(), secs in 0i64..1_000_000, per_unit in any::<u32>(), unit in 1u64..8) {
                let mut limit = Vec::new();
                put_tag(&mut limit, 1, 0);
                put_varint(&mut limit, u64::from(per_unit));
                put_tag(&mut limit, 2, 0);
                put_varint(&mut limit, unit);
                let mut reset = Vec::new();
                put_tag(&mut reset, 1, 0);
                put_varint(&mut reset, secs as u64);
                let mut status = Vec::new();
                put_tag(&mut status, 1, 0);
                put_varint(&mut status, code);
                put_bytes(&mut status, 2, &limit);
                put_tag(&mut status, 3, 0);
                put_varint(&mut status, u64::from(remaining));
                put_bytes(&mut status, 4, &reset);
                let mut out = Vec::new();
                put_bytes(&mut out, 2, &status);
                let response = RateLimitResponse::from_protobuf(&out).unwrap();
                let s = response.statuses[0];
                prop_assert_eq!(s.code, Code::from_number(code));
                prop_assert_eq!(s.limit_remaining, remaining);
                prop_assert_eq!(s.duration_until_reset, Some(Duration::from_secs(secs as u64)));
                prop_assert_eq!(s.current_limit.map(|l| l.requests_per_unit), Some(per_unit));
                prop_assert_eq!(s.current_limit.and_then(|l| l.unit), unit_from_number(unit));
            }
        }
    }
}
