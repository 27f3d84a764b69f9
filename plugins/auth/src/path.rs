//! The request path rules match on, normalised the way Envoy's HTTP connection manager does it
//! (`normalize_path`, `merge_slashes`, `path_with_escaped_slashes_action`), so that
//! `/public/../admin`, `/%61dmin` and `//admin` cannot slip past a rule written for `/admin`.
//!
//! Normalisation runs on the raw `:path` bytes: the query and fragment are split off first (the
//! query is kept, untouched, for the request to forward), every byte is checked, percent-encoding
//! is validated, then escaped slashes are handled, unreserved characters decoded, dot segments
//! removed (RFC 3986 §5.2.4) and slashes merged. The result is always ASCII.

use palisade_kit::config::Problems;
use schemars::JsonSchema;
use serde::Deserialize;

/// How the request path is normalised before rules match it. The defaults are the safe ones for
/// authorization: Envoy's own defaults leave all of this off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathNormalizationConfig {
    /// RFC 3986 normalisation, as Envoy's `normalize_path`: `.` and `..` segments removed,
    /// percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, other escapes
    /// written with upper-case hex, and `\` read as `/` (Envoy's canonicaliser does so too).
    /// Default: on.
    pub normalize: bool,
    /// Merge runs of `/` into one, as Envoy's `merge_slashes`. Default: on.
    pub merge_slashes: bool,
    /// What to do with `%2F`, `%2f`, `%5C` and `%5c`, as Envoy's
    /// `path_with_escaped_slashes_action`. Default: `reject_request`.
    pub escaped_slashes: EscapedSlashesAction,
    /// How rules read path parameters (`/a;jsessionid=x/b`, `/..;/admin`), which Tomcat, Jetty
    /// and Spring strip from each segment before mapping the path and Envoy leaves alone.
    /// Default: `strip`.
    pub path_parameters: PathParameters,
}

/// How rules read a segment's `;` parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// Rules match each segment without its parameters, as Java servlet containers map it
    /// (`/admin;x=1/users` is `/admin/users`). The request goes on with them. A `.` or `..`
    /// segment with parameters (`..;x`) is refused with 400: servlet containers read it as a
    /// dot segment, Envoy, Kong and most other upstreams as a name, so no reading of it is safe.
    Strip,
    /// `;` is an ordinary byte, as for Envoy's route matching; a `.` or `..` segment with
    /// parameters is refused with 400, as under `strip`.
    Keep,
    /// Any `;` in the path is refused with 400.
    Reject,
}

impl Default for PathNormalizationConfig {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: true,
            escaped_slashes: EscapedSlashesAction::RejectRequest,
            path_parameters: PathParameters::Strip,
        }
    }
}

/// Envoy's `path_with_escaped_slashes_action` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesAction {
    /// Leave them encoded: `/a%2Fb` is one segment for the rules. Only safe when the upstream
    /// does not decode them either.
    KeepUnchanged,
    /// Refuse the request with 400.
    RejectRequest,
    /// Decode them, then answer with a redirect to the normalised path.
    UnescapeAndRedirect,
    /// Decode them and forward the request with the normalised path.
    UnescapeAndForward,
}

impl PathNormalizationConfig {
    /// Records combinations that would let a rule be bypassed.
    pub fn validate(&self, problems: &mut Problems) {
        let unescapes = matches!(
            self.escaped_slashes,
            EscapedSlashesAction::UnescapeAndRedirect | EscapedSlashesAction::UnescapeAndForward
        );
        if unescapes && !self.normalize {
            problems.push_at(
                "escaped_slashes",
                "unescaping slashes needs `normalize: true`: otherwise `%2F..%2F` reaches the \
                 rules as `/../`",
            );
        }
    }

    /// The normaliser for this configuration.
    pub fn compile(&self) -> PathNormalizer {
        PathNormalizer { config: *self }
    }
}

/// Why a path was refused: always a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejection {
    #[error("path is not in origin form")]
    NotOriginForm,
    #[error("path has a byte that must be percent-encoded")]
    UnencodedByte,
    #[error("path has an invalid percent-encoding")]
    InvalidPercentEncoding,
    #[error("path has an encoded NUL")]
    EncodedNul,
    #[error("path has an encoded slash")]
    EscapedSlash,
    #[error("path has parameters")]
    Parameters,
    #[error("path has a dot segment with parameters")]
    DotSegmentParameters,
}

impl PathRejection {
    /// The HTTP status to answer with.
    pub const fn status(self) -> u16 {
        400
    }

    /// A stable short reason for logs, metrics and the JSON error body.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::NotOriginForm => "path_not_origin_form",
            Self::UnencodedByte => "path_unencoded_byte",
            Self::InvalidPercentEncoding => "path_invalid_percent_encoding",
            Self::EncodedNul => "path_encoded_nul",
            Self::EscapedSlash => "path_escaped_slash",
            Self::Parameters => "path_parameters",
            Self::DotSegmentParameters => "path_dot_segment_parameters",
        }
    }
}

/// What the adapter must do with the request's `:path` after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathDisposition {
    /// The path was already normal: nothing to change.
    Unchanged,
    /// Set `:path` to [`NormalizedPath::request_path`] before forwarding, so the upstream sees
    /// the path the rules judged (what Envoy's `normalize_path` does).
    Rewrite,
    /// Answer with a redirect (307, `Location:` [`NormalizedPath::request_path`]): escaped
    /// slashes were decoded under `unescape_and_redirect`.
    Redirect,
}

/// A normalised request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath<'a> {
    /// The normalised path to forward: ASCII, starting with `/` (or exactly `*`), without query
    /// or fragment.
    pub path: String,
    /// The path rules match on when it differs from `path`: without path parameters
    /// ([`PathParameters::Strip`]).
    pub stripped: Option<String>,
    /// The raw query after `?` (without the fragment), untouched.
    pub query: Option<&'a [u8]>,
    pub disposition: PathDisposition,
}

impl NormalizedPath<'_> {
    /// The path rules match on.
    pub fn rule_path(&self) -> &str {
        self.stripped.as_deref().unwrap_or(&self.path)
    }

    /// The `:path` to forward or redirect to: the normalised path and the original query.
    pub fn request_path(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.path.len() + self.query.map_or(0, |q| q.len() + 1));
        out.extend_from_slice(self.path.as_bytes());
        if let Some(query) = self.query {
            out.push(b'?');
            out.extend_from_slice(query);
        }
        out
    }
}

/// Normalises request paths for one configuration.
#[derive(Debug, Clone)]
pub struct PathNormalizer {
    config: PathNormalizationConfig,
}

impl PathNormalizer {
    /// Normalises a raw `:path` (bytes: never assumed to be UTF-8).
    pub fn normalize<'a>(&self, raw: &'a [u8]) -> Result<NormalizedPath<'a>, PathRejection> {
        let (path, query) = split_target(raw);
        if path == b"*" {
            // `OPTIONS *`: no path to normalise; only a rule for exactly `*` matches it.
            return Ok(NormalizedPath {
                path: "*".to_owned(),
                stripped: None,
                query,
                disposition: PathDisposition::Unchanged,
            });
        }
        if path.first() != Some(&b'/') {
            return Err(PathRejection::NotOriginForm);
        }
        let (decoded, unescaped_slash) = self.decode(path)?;
        let stripped = if decoded.contains(&b';') {
            if self.config.path_parameters == PathParameters::Reject {
                return Err(PathRejection::Parameters);
            }
            // `/admin/..;/public` is `/public` to Tomcat and under `/admin` to Envoy's router:
            // whichever the rules read, one side is bypassed.
            if decoded.split(|&b| b == b'/').any(|segment| {
                segment.contains(&b';') && matches!(without_parameters(segment), b"." | b"..")
            }) {
                return Err(PathRejection::DotSegmentParameters);
            }
            match self.config.path_parameters {
                PathParameters::Reject | PathParameters::Keep => None,
                PathParameters::Strip => {
                    let bare: Vec<u8> = decoded
                        .split(|&b| b == b'/')
                        .map(without_parameters)
                        .collect::<Vec<_>>()
                        .join(&b'/');
                    let bare = self.resolve(bare);
                    Some(String::from_utf8(bare).map_err(|_| PathRejection::UnencodedByte)?)
                }
            }
        } else {
            None
        };
        let merged = self.resolve(decoded);
        let redirect = unescaped_slash
            && self.config.escaped_slashes == EscapedSlashesAction::UnescapeAndRedirect;
        let mut merged = merged;
        if redirect {
            // The path becomes a Location: `//host/...` there is another site (a browser reads
            // `/%2Fevil.example` unescaped as a protocol-relative URL). One leading slash only.
            let extra = merged
                .iter()
                .take_while(|&&b| b == b'/')
                .count()
                .saturating_sub(1);
            merged.drain(..extra);
        }
        let disposition = if redirect {
            PathDisposition::Redirect
        } else if merged.as_slice() == path {
            PathDisposition::Unchanged
        } else {
            PathDisposition::Rewrite
        };
        // Every byte pushed is printable ASCII, so this cannot fail; refuse rather than panic.
        let path = String::from_utf8(merged).map_err(|_| PathRejection::UnencodedByte)?;
        Ok(NormalizedPath {
            path,
            stripped,
            query,
            disposition,
        })
    }

    /// Dot segments removed and slashes merged, as configured.
    fn resolve(&self, decoded: Vec<u8>) -> Vec<u8> {
        let resolved = if self.config.normalize {
            remove_dot_segments(&decoded)
        } else {
            decoded
        };
        if self.config.merge_slashes {
            merge_slashes(resolved)
        } else {
            resolved
        }
    }

    /// Checks every byte and resolves percent-encoding; returns the bytes and whether an escaped
    /// slash was decoded.
    fn decode(&self, path: &[u8]) -> Result<(Vec<u8>, bool), PathRejection> {
        let normalize = self.config.normalize;
        let mut out = Vec::with_capacity(path.len());
        let mut unescaped_slash = false;
        let mut rest = path;
        while let Some((&byte, tail)) = rest.split_first() {
            rest = tail;
            match byte {
                b'%' => {
                    let (value, tail) = percent_value(rest)?;
                    rest = tail;
                    match value {
                        0 => return Err(PathRejection::EncodedNul),
                        b'/' | b'\\' => match self.config.escaped_slashes {
                            EscapedSlashesAction::RejectRequest => {
                                return Err(PathRejection::EscapedSlash)
                            }
                            EscapedSlashesAction::KeepUnchanged => {
                                push_escape(&mut out, value, normalize, path_escape(path, rest))
                            }
                            EscapedSlashesAction::UnescapeAndRedirect
                            | EscapedSlashesAction::UnescapeAndForward => {
                                unescaped_slash = true;
                                out.push(if normalize { b'/' } else { value });
                            }
                        },
                        v if normalize && is_unreserved(v) => out.push(v),
                        v => push_escape(&mut out, v, normalize, path_escape(path, rest)),
                    }
                }
                b'\\' if normalize => out.push(b'/'),
                0x21..=0x7e => out.push(byte),
                _ => return Err(PathRejection::UnencodedByte),
            }
        }
        Ok((out, unescaped_slash))
    }
}

/// The three bytes of the escape just read (ending where `rest` begins), as written.
fn path_escape<'a>(path: &'a [u8], rest: &[u8]) -> &'a [u8] {
    let end = path.len() - rest.len();
    path.get(end.saturating_sub(3)..end).unwrap_or_default()
}

/// Writes an escape that stays encoded: upper-case hex when normalising (as Envoy's
/// canonicaliser does), as the client wrote it otherwise.
fn push_escape(out: &mut Vec<u8>, value: u8, normalize: bool, written: &[u8]) {
    if normalize {
        out.push(b'%');
        out.push(upper_hex(value >> 4));
        out.push(upper_hex(value & 0x0f));
    } else {
        out.extend_from_slice(written);
    }
}

fn upper_hex(nibble: u8) -> u8 {
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'A' + nibble - 10
    }
}

/// The byte a `%XX` encodes (after the `%`), and what follows it.
fn percent_value(rest: &[u8]) -> Result<(u8, &[u8]), PathRejection> {
    match rest {
        [hi, lo, tail @ ..] => match (hex_digit(*hi), hex_digit(*lo)) {
            (Some(hi), Some(lo)) => Ok(((hi << 4) | lo, tail)),
            _ => Err(PathRejection::InvalidPercentEncoding),
        },
        _ => Err(PathRejection::InvalidPercentEncoding),
    }
}

pub(crate) fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// A path segment without its `;` parameters.
fn without_parameters(segment: &[u8]) -> &[u8] {
    match segment.iter().position(|&b| b == b';') {
        Some(at) => segment.get(..at).unwrap_or_default(),
        None => segment,
    }
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Splits a request target into path and query; the fragment (which a client should never
/// send) is dropped.
fn split_target(raw: &[u8]) -> (&[u8], Option<&[u8]>) {
    let without_fragment = match raw.iter().position(|&b| b == b'#') {
        Some(at) => raw.get(..at).unwrap_or_default(),
        None => raw,
    };
    match without_fragment.iter().position(|&b| b == b'?') {
        Some(at) => (
            without_fragment.get(..at).unwrap_or_default(),
            without_fragment.get(at + 1..),
        ),
        None => (without_fragment, None),
    }
}

/// RFC 3986 §5.2.4 for a path starting with `/`: `.` segments vanish, `..` removes the segment
/// before it (never above the root), and a trailing `.` or `..` leaves a trailing slash.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let body = path.get(1..).unwrap_or_default();
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut parts = body.split(|&b| b == b'/').peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            b"." => {}
            b".." => {
                segments.pop();
            }
            other => {
                segments.push(other);
                continue;
            }
        }
        if last {
            segments.push(b"");
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in segments {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn merge_slashes(mut path: Vec<u8>) -> Vec<u8> {
    path.dedup_by(|a, b| *a == b'/' && *b == b'/');
    path
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn normalizer(json: &str) -> PathNormalizer {
        let config: PathNormalizationConfig = serde_json::from_str(json).unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        assert!(problems.is_empty());
        config.compile()
    }

    fn norm(raw: &str) -> Result<String, PathRejection> {
        normalizer("{}").normalize(raw.as_bytes()).map(|n| n.path)
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let config = PathNormalizationConfig::default();
        assert!(config.normalize);
        assert!(config.merge_slashes);
        assert_eq!(config.escaped_slashes, EscapedSlashesAction::RejectRequest);
        let parsed: PathNormalizationConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, config);
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/admin/../").unwrap(), "/");
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b/./c").unwrap(), "/a/b/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/../../admin").unwrap(), "/admin");
        assert_eq!(norm("/..").unwrap(), "/");
        assert_eq!(norm("/").unwrap(), "/");
    }

    #[test]
    fn encoded_dots_are_dots() {
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/.%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/a/%2e/b").unwrap(), "/a/b");
        // Double encoding is not a dot: it stays encoded, and matches nothing dot-like.
        assert_eq!(
            norm("/public/%252e%252e/admin").unwrap(),
            "/public/%252e%252e/admin"
        );
    }

    #[test]
    fn trailing_dots_in_a_segment_are_kept() {
        assert_eq!(norm("/admin.").unwrap(), "/admin.");
        assert_eq!(norm("/admin./x").unwrap(), "/admin./x");
        assert_eq!(norm("/a/...").unwrap(), "/a/...");
        assert_eq!(norm("/a/..b").unwrap(), "/a/..b");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        assert_eq!(norm("/%7Euser/%2d%5F").unwrap(), "/~user/-_");
        assert_eq!(norm("/a%20b%3a").unwrap(), "/a%20b%3A");
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(norm("//admin").unwrap(), "/admin");
        assert_eq!(norm("/a///b//").unwrap(), "/a/b/");
        let keep = normalizer(r#"{"merge_slashes":false}"#);
        assert_eq!(keep.normalize(b"//admin").unwrap().path, "//admin");
    }

    #[test]
    fn backslash_is_a_slash_when_normalising() {
        assert_eq!(norm("/public\\..\\admin").unwrap(), "/admin");
    }

    #[test]
    fn case_is_preserved() {
        assert_eq!(norm("/Admin/../ADMIN").unwrap(), "/ADMIN");
    }

    #[test]
    fn query_and_fragment_are_split_off() {
        let n = normalizer("{}");
        let out = n.normalize(b"/a/../b?x=/../y&z#frag").unwrap();
        assert_eq!(out.path, "/b");
        assert_eq!(out.query, Some(&b"x=/../y&z"[..]));
        assert_eq!(out.disposition, PathDisposition::Rewrite);
        assert_eq!(out.request_path(), b"/b?x=/../y&z");
        let out = n.normalize(b"/b#x?y").unwrap();
        assert_eq!(out.query, None);
        assert_eq!(out.request_path(), b"/b");
    }

    #[test]
    fn an_already_normal_path_is_unchanged() {
        let out = normalizer("{}").normalize(b"/api/v1/items?id=3").unwrap();
        assert_eq!(out.disposition, PathDisposition::Unchanged);
        assert_eq!(out.request_path(), b"/api/v1/items?id=3");
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("/a%00b"), Err(PathRejection::EncodedNul));
        assert_eq!(norm("/a%2"), Err(PathRejection::InvalidPercentEncoding));
        assert_eq!(norm("/a%zz"), Err(PathRejection::InvalidPercentEncoding));
        assert_eq!(norm("/a%"), Err(PathRejection::InvalidPercentEncoding));
        assert_eq!(norm("/a b"), Err(PathRejection::UnencodedByte));
        assert_eq!(norm("/a\tb"), Err(PathRejection::UnencodedByte));
        assert_eq!(
            normalizer("{}").normalize(b"/caf\xc3\xa9"),
            Err(PathRejection::UnencodedByte)
        );
        assert_eq!(norm("admin"), Err(PathRejection::NotOriginForm));
        assert_eq!(norm(""), Err(PathRejection::NotOriginForm));
        assert_eq!(norm("?x"), Err(PathRejection::NotOriginForm));
        assert_eq!(norm("/a%2Fb"), Err(PathRejection::EscapedSlash));
        assert_eq!(norm("/a%5cb"), Err(PathRejection::EscapedSlash));
        assert_eq!(PathRejection::EscapedSlash.status(), 400);
        assert_eq!(PathRejection::EscapedSlash.reason(), "path_escaped_slash");
        assert_eq!(
            PathRejection::EncodedNul.to_string(),
            "path has an encoded NUL"
        );
    }

    #[test]
    fn asterisk_form_is_kept() {
        let out = normalizer("{}").normalize(b"*").unwrap();
        assert_eq!(out.path, "*");
        assert_eq!(out.disposition, PathDisposition::Unchanged);
    }

    #[test]
    fn escaped_slashes_kept() {
        let n = normalizer(r#"{"escaped_slashes":"keep_unchanged"}"#);
        let out = n.normalize(b"/a%2fb/..%2F..").unwrap();
        // `%2F` is not a separator here: `..%2F..` is one ordinary segment.
        assert_eq!(out.path, "/a%2Fb/..%2F..");
        assert_eq!(out.disposition, PathDisposition::Rewrite);
    }

    #[test]
    fn escaped_slashes_unescaped_and_forwarded() {
        let n = normalizer(r#"{"escaped_slashes":"unescape_and_forward"}"#);
        let out = n.normalize(b"/public%2F..%2Fadmin?q").unwrap();
        assert_eq!(out.path, "/admin");
        assert_eq!(out.disposition, PathDisposition::Rewrite);
        assert_eq!(out.request_path(), b"/admin?q");
        assert_eq!(n.normalize(b"/a%5Cb").unwrap().path, "/a/b");
    }

    #[test]
    fn escaped_slashes_unescaped_and_redirected() {
        let n = normalizer(r#"{"escaped_slashes":"unescape_and_redirect"}"#);
        let out = n.normalize(b"/a%2Fb").unwrap();
        assert_eq!(out.path, "/a/b");
        assert_eq!(out.disposition, PathDisposition::Redirect);
        // Once redirected, the new path is normal.
        let location = out.request_path();
        let again = n.normalize(&location).unwrap();
        assert_eq!(again.disposition, PathDisposition::Unchanged);
    }

    #[test]
    fn a_redirect_never_names_another_host() {
        // Without merge_slashes, `/%2Fevil.example/x` would redirect to `//evil.example/x`,
        // which a browser reads as another site.
        let n = normalizer(r#"{"escaped_slashes":"unescape_and_redirect","merge_slashes":false}"#);
        for raw in [
            &b"/%2Fevil.example/x"[..],
            b"/%5Cevil.example/x",
            b"/%2F%2F/evil.example",
            b"//%2Fevil.example",
        ] {
            let out = n.normalize(raw).unwrap();
            assert_eq!(out.disposition, PathDisposition::Redirect, "{raw:?}");
            assert!(
                out.path.starts_with('/') && !out.path.starts_with("//"),
                "{}",
                out.path
            );
        }
        assert_eq!(
            n.normalize(b"/%2Fevil.example/x").unwrap().path,
            "/evil.example/x"
        );
        // A forwarded path keeps its slashes: it is never a Location.
        let n = normalizer(r#"{"escaped_slashes":"unescape_and_forward","merge_slashes":false}"#);
        assert_eq!(n.normalize(b"/%2Fa").unwrap().path, "//a");
    }

    #[test]
    fn normalisation_off_keeps_dots_and_escapes_as_written() {
        let n = normalizer(r#"{"normalize":false,"merge_slashes":false}"#);
        let out = n.normalize(b"/a/../%2e%2e/%61%3a\\").unwrap();
        assert_eq!(out.path, "/a/../%2e%2e/%61%3a\\");
        assert_eq!(out.disposition, PathDisposition::Unchanged);
        assert_eq!(n.normalize(b"/%00"), Err(PathRejection::EncodedNul));
    }

    #[test]
    fn unescaping_without_normalising_is_refused() {
        let config: PathNormalizationConfig =
            serde_json::from_str(r#"{"normalize":false,"escaped_slashes":"unescape_and_forward"}"#)
                .unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        let err = problems.into_result().unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].path, "escaped_slashes");
        assert!(err.problems[0]
            .reason
            .starts_with("unescaping slashes needs"));
    }

    #[test]
    fn misspelt_option_is_refused() {
        let err =
            serde_json::from_str::<PathNormalizationConfig>(r#"{"merge_slash":true}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown field `merge_slash`"),
            "{err}"
        );
        let err = serde_json::from_str::<PathNormalizationConfig>(r#"{"escaped_slashes":"keep"}"#)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("unknown variant `keep`"),
            "{err}"
        );
    }

    #[test]
    fn rules_read_paths_without_parameters_as_servlet_containers_map_them() {
        let n = normalizer("{}");
        for (raw, rule_path, forwarded) in [
            (
                "/admin;jsessionid=x/users",
                "/admin/users",
                "/admin;jsessionid=x/users",
            ),
            ("/;/admin", "/admin", "/;/admin"),
            ("/a;/b;", "/a/b", "/a;/b;"),
            ("/a%3Bb/c", "/a%3Bb/c", "/a%3Bb/c"),
        ] {
            let out = n.normalize(raw.as_bytes()).unwrap();
            assert_eq!(out.rule_path(), rule_path, "{raw}");
            assert_eq!(out.path, forwarded, "{raw}");
        }
        let plain = n.normalize(b"/orders").unwrap();
        assert_eq!(plain.stripped, None);
        assert_eq!(plain.rule_path(), "/orders");
        // A dot segment with parameters is `..` to a servlet container and a name to Envoy's
        // router: `/admin/..;/public/x` must pass neither a `/public` nor an `/admin` rule.
        for raw in [
            "/admin/..;/public/x",
            "/public/..;/admin",
            "/a/.;x/b",
            "/a/%2e%2e;/b",
        ] {
            assert_eq!(
                n.normalize(raw.as_bytes()),
                Err(PathRejection::DotSegmentParameters),
                "{raw}"
            );
        }
    }

    #[test]
    fn kept_parameters_refuse_dot_segments_and_reject_refuses_all() {
        let keep = normalizer(r#"{"path_parameters":"keep"}"#);
        let out = keep.normalize(b"/admin;jsessionid=x/users").unwrap();
        assert_eq!(out.rule_path(), "/admin;jsessionid=x/users");
        for raw in ["/public/..;/admin", "/a/.;x/b", "/a/%2e%2e;/b"] {
            assert_eq!(
                keep.normalize(raw.as_bytes()),
                Err(PathRejection::DotSegmentParameters),
                "{raw}"
            );
        }
        let reject = normalizer(r#"{"path_parameters":"reject"}"#);
        assert_eq!(reject.normalize(b"/a;b"), Err(PathRejection::Parameters));
        assert!(
            reject.normalize(b"/a%3Bb?x=;").is_ok(),
            "encoded, or in the query"
        );
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn configs() -> impl Strategy<Value = PathNormalizationConfig> {
            (
                any::<bool>(),
                prop_oneof![
                    Just(EscapedSlashesAction::KeepUnchanged),
                    Just(EscapedSlashesAction::RejectRequest),
                    Just(EscapedSlashesAction::UnescapeAndRedirect),
                    Just(EscapedSlashesAction::UnescapeAndForward),
                ],
                prop_oneof![
                    Just(PathParameters::Strip),
                    Just(PathParameters::Keep),
                    Just(PathParameters::Reject),
                ],
            )
                .prop_map(|(merge_slashes, escaped_slashes, path_parameters)| {
                    PathNormalizationConfig {
                        normalize: true,
                        merge_slashes,
                        escaped_slashes,
                        path_parameters,
                    }
                })
        }

        /// Paths built from the pieces that matter: separators, dots, escapes of both.
        fn paths() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(&b"/"[..]),
                Just(&b"."[..]),
                Just(&b".."[..]),
                Just(&b"%2e"[..]),
                Just(&b"%2E"[..]),
                Just(&b"%2f"[..]),
                Just(&b"%5C"[..]),
                Just(&b"\\"[..]),
                Just(&b"a"[..]),
                Just(&b"%41"[..]),
                Just(&b"%25"[..]),
                Just(&b"%3a"[..]),
                Just(&b"?"[..]),
                Just(&b"#"[..]),
                Just(&b";"[..]),
                Just(&b";x=1"[..]),
            ];
            proptest::collection::vec(piece, 0..24).prop_map(|pieces| {
                let mut path = b"/".to_vec();
                for piece in pieces {
                    path.extend_from_slice(piece);
                }
                path
            })
        }

        proptest! {
            #[test]
            fn normalising_is_idempotent_and_leaves_no_dot_segments(
                config in configs(),
                raw in paths(),
            ) {
                let normalizer = config.compile();
                // A refused path has nothing to check; proptest fails the test if too many
                // cases are refused, so it cannot pass on refusals alone.
                let normalized = normalizer.normalize(&raw);
                prop_assume!(normalized.is_ok());
                let once = normalized.unwrap();
                prop_assert!(once.path.starts_with('/'));
                prop_assert!(
                    once.path.split('/').all(|s| s != ".." && s != "."),
                    "{:?} -> {:?}", String::from_utf8_lossy(&raw), once.path
                );
                // What rules match has no dot segment either, parameters stripped or not, and
                // no parameter left when they are stripped.
                prop_assert!(
                    once.rule_path().split('/').all(|s| {
                        let bare = s.split(';').next().unwrap_or_default();
                        bare != ".." && bare != "."
                    }),
                    "{:?} -> {:?}", String::from_utf8_lossy(&raw), once.rule_path()
                );
                if config.path_parameters == PathParameters::Strip {
                    prop_assert!(!once.rule_path().contains(';'));
                }
                let twice = normalizer.normalize(once.path.as_bytes()).unwrap();
                prop_assert_eq!(&twice.path, &once.path);
                prop_assert_eq!(twice.disposition, PathDisposition::Unchanged);
            }

            #[test]
            fn any_bytes_are_refused_or_normalised_without_panicking(
                config in configs(),
                raw in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                // Any bytes: refusing them is a pass (no panic).
                if let Ok(out) = config.compile().normalize(&raw) {
                    prop_assert!(out.path.is_ascii());
                    prop_assert!(out.path.starts_with('/') || out.path == "*");
                }
            }

            #[test]
            fn any_printable_path_normalised_is_ascii_and_absolute(
                config in configs(),
                rest in "[ -~]{0,48}",
            ) {
                // Printable ASCII after a `/`: mostly accepted, so the checks run (a refusal is
                // rejected as a case, and too many rejections fail the test).
                let raw = format!("/{rest}");
                let normalized = config.compile().normalize(raw.as_bytes());
                prop_assume!(normalized.is_ok());
                let out = normalized.unwrap();
                prop_assert!(out.path.is_ascii());
                prop_assert!(out.path.starts_with('/'), "{:?} -> {:?}", raw, out.path);
            }
        }
    }
}
