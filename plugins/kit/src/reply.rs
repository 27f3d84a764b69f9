//! The one error reply every Palisade plugin sends: the same JSON body and content type whatever
//! refused the request, so clients and log pipelines parse one shape.

use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/json";

/// The response header through which a plugin that refuses a request names itself and why:
/// `x-palisade-denied-by: palisade-auth; reason="token expired"`. palisade-audit reads it into
/// the event and removes it before the response leaves the proxy.
pub const DENIED_BY: &str = "x-palisade-denied-by";

/// palisade-resilience's reason for refusing a request while its circuit is open: what makes
/// palisade-audit call a 503 a `circuit_open` security event (not load shedding, not a fault).
pub const CIRCUIT_OPEN: &str = "upstream circuit open";

/// The [`DENIED_BY`] value naming `plugin` and its `reason`, quoted (control characters become
/// spaces).
pub fn denied_by(plugin: &str, reason: &str) -> String {
    let mut value = format!("{plugin}; reason=\"");
    for c in reason.chars() {
        match c {
            '"' | '\\' => {
                value.push('\\');
                value.push(c);
            }
            c if c.is_control() => value.push(' '),
            c => value.push(c),
        }
    }
    value.push('"');
    value
}

/// The response code details of a refusal, `palisade-auth{missing_token}`: how Envoy records
/// who refused and why (its access log's `%RESPONSE_CODE_DETAILS%`, palisade-audit's event),
/// in its own style: no whitespace (Envoy asks callers to replace it with `_`).
pub fn denial_details(plugin: &str, reason: &str) -> String {
    let mut details = String::with_capacity(plugin.len() + reason.len() + 2);
    details.push_str(plugin);
    details.push('{');
    details.extend(reason.chars().map(|c| {
        if c.is_whitespace() || c.is_control() {
            '_'
        } else {
            c
        }
    }));
    details.push('}');
    details
}

/// Reads [`denial_details`] back: the plugin and the reason (underscores read as spaces). Only a
/// Palisade plugin's details qualify.
pub fn parse_denial_details(details: &str) -> Option<(String, String)> {
    let (plugin, rest) = details.split_once('{')?;
    let reason = rest.strip_suffix('}')?;
    if !plugin.starts_with("palisade-") || plugin.contains(char::is_whitespace) {
        return None;
    }
    Some((plugin.to_owned(), reason.replace('_', " ")))
}

/// Reads a [`DENIED_BY`] value: the plugin and the reason.
pub fn parse_denied_by(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?;
    let (plugin, rest) = value.split_once(';').unwrap_or((value, ""));
    let plugin = plugin.trim();
    if plugin.is_empty() {
        return None;
    }
    let quoted = rest.trim().strip_prefix("reason=").unwrap_or("");
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(quoted);
    let mut reason = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        reason.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    Some((plugin.to_owned(), reason))
}

/// `{"error": ..., "status": ..., "request_id": ...}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody<'a> {
    /// A short, stable description of why (never a token, a header value or a secret).
    pub error: &'a str,
    pub status: u16,
    /// The request's `x-request-id`, when it has one, so a client can quote it.
    pub request_id: Option<&'a str>,
}

impl ErrorBody<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and a number into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A local reply: status, extra headers, and the JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub status: u16,
    pub error: String,
    pub headers: Vec<(String, String)>,
}

impl ErrorReply {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(&self, request_id: Option<&str>) -> Vec<u8> {
        ErrorBody {
            error: &self.error,
            status: self.status,
            request_id,
        }
        .to_json()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn body_shape_is_fixed() {
        let reply = ErrorReply::new(429, "rate limit exceeded").with_header("retry-after", "3");
        assert_eq!(
            String::from_utf8(reply.body(Some("abc-123"))).unwrap(),
            r#"{"error":"rate limit exceeded","status":429,"request_id":"abc-123"}"#
        );
        assert_eq!(
            String::from_utf8(reply.body(None)).unwrap(),
            r#"{"error":"rate limit exceeded","status":429,"request_id":null}"#
        );
        assert_eq!(reply.headers, vec![("retry-after".into(), "3".into())]);
    }

    #[test]
    fn denial_header_round_trips() {
        let value = denied_by("palisade-auth", "bad \"token\"\n");
        assert_eq!(value, r#"palisade-auth; reason="bad \"token\" ""#);
        assert_eq!(
            parse_denied_by(value.as_bytes()),
            Some(("palisade-auth".into(), "bad \"token\" ".into()))
        );
        assert_eq!(
            parse_denied_by(b"palisade-rate-limit"),
            Some(("palisade-rate-limit".into(), String::new()))
        );
        assert_eq!(parse_denied_by(b" ; reason=\"x\""), None);
    }

    #[test]
    fn denial_details_round_trip_without_whitespace() {
        let details = denial_details("palisade-auth", "token is not valid yet (nbf)\n");
        assert_eq!(details, "palisade-auth{token_is_not_valid_yet_(nbf)_}");
        assert_eq!(
            parse_denial_details(&details),
            Some((
                "palisade-auth".into(),
                "token is not valid yet (nbf) ".into()
            ))
        );
        assert_eq!(
            parse_denial_details(&denial_details("palisade-resilience", CIRCUIT_OPEN)),
            Some(("palisade-resilience".into(), CIRCUIT_OPEN.into()))
        );
        // Envoy's own details, and anything not shaped like ours, name no plugin.
        for other in [
            "via_upstream",
            "palisade_local_reply",
            "rbac_access_denied_matched_policy[none]",
            "ext_authz{denied}",
            "palisade-auth{unclosed",
            "",
        ] {
            assert_eq!(parse_denial_details(other), None, "{other}");
        }
    }

    #[test]
    fn hostile_text_is_escaped() {
        let reply = ErrorReply::new(400, "bad \"header\"\n");
        let body: serde_json::Value = serde_json::from_slice(&reply.body(Some("\u{0}"))).unwrap();
        assert_eq!(body["error"], "bad \"header\"\n");
        assert_eq!(body["request_id"], "\u{0}");
    }
}
