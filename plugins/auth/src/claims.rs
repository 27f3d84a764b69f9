//! Registered-claim checks (RFC 7519 §4.1) on a verified token, and claim values rendered for
//! upstream headers.

use serde_json::Value;

use crate::jwt::Claims;
use crate::rejection::{Rejection, TimeClaim};

/// The time rules of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRules {
    pub leeway_secs: u64,
    pub require_exp: bool,
}

/// A NumericDate claim: absent, or a JSON number (RFC 7519 §2 allows fractions).
fn numeric_date(claims: &Claims, claim: TimeClaim) -> Result<Option<f64>, Rejection> {
    match claims.get(claim.name()) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or(Rejection::BadClaim(claim.name())),
        Some(_) => Err(Rejection::BadClaim(claim.name())),
    }
}

/// A token's `exp`, `nbf` and `iat`, read once: the worker's memo checks a repeated token
/// against them without looking into its claims again.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenTimes {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
}

impl TokenTimes {
    /// The time claims, each absent or a finite JSON number.
    pub fn of(claims: &Claims) -> Result<TokenTimes, Rejection> {
        Ok(TokenTimes {
            exp: numeric_date(claims, TimeClaim::Exp)?,
            nbf: numeric_date(claims, TimeClaim::Nbf)?,
            iat: numeric_date(claims, TimeClaim::Iat)?,
        })
    }

    /// Checks them against `now` (seconds since the epoch) with the leeway, the way Envoy's
    /// `jwt_authn` does (`now > exp + leeway` is expired, `now + leeway < nbf` is not yet
    /// valid), plus an `iat` in the future. Returns `exp`, which bounds any caching.
    pub fn check(self, now: u64, rules: TimeRules) -> Result<Option<u64>, Rejection> {
        let now = now as f64;
        let leeway = rules.leeway_secs as f64;
        match self.exp {
            Some(exp) if now > exp + leeway => return Err(Rejection::Expired),
            None if rules.require_exp => return Err(Rejection::MissingExp),
            _ => {}
        }
        if self.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(Rejection::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > now + leeway) {
            return Err(Rejection::IssuedInFuture);
        }
        // The caching bound: the expiry plus the leeway the check allowed, whole seconds down.
        Ok(self.exp.map(|exp| (exp + leeway).max(0.0).floor() as u64))
    }
}

/// The token's `iss`.
pub fn issuer(claims: &Claims) -> Result<&str, Rejection> {
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss),
        None => Err(Rejection::MissingIssuer),
        Some(_) => Err(Rejection::BadClaim("iss")),
    }
}

/// `aud` (a string or a list of strings) must name one of `audiences`; no audiences
/// configured means `aud` is not checked.
pub fn check_audience(claims: &Claims, audiences: &[String]) -> Result<(), Rejection> {
    if audiences.is_empty() {
        return Ok(());
    }
    let accepted = |aud: &str| audiences.iter().any(|a| a == aud);
    match claims.get("aud") {
        Some(Value::String(aud)) if accepted(aud) => Ok(()),
        Some(Value::Array(list)) => {
            if !list.iter().all(Value::is_string) {
                return Err(Rejection::BadClaim("aud"));
            }
            if list.iter().filter_map(Value::as_str).any(accepted) {
                Ok(())
            } else {
                Err(Rejection::AudienceNotAllowed)
            }
        }
        Some(Value::String(_)) | None => Err(Rejection::AudienceNotAllowed),
        Some(_) => Err(Rejection::BadClaim("aud")),
    }
}

/// The value at a dotted path (`realm_access.roles`); a key containing dots is found whole
/// first.
pub fn lookup<'c>(claims: &'c Claims, path: &str) -> Option<&'c Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A claim as a header value, as `jwt_authn`'s `claim_to_headers` writes it: strings as they
/// are, numbers and booleans as JSON text, lists of those joined by `,`. Objects, nulls and
/// values that are not safe in a header (control characters) give `None`: the header is not
/// set.
pub fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => parts.push(s.clone()),
                    Value::Number(n) => parts.push(n.to_string()),
                    Value::Bool(b) => parts.push(b.to_string()),
                    _ => return None,
                }
            }
            parts.join(",")
        }
        Value::Null | Value::Object(_) => return None,
    };
    is_header_safe(&text).then_some(text)
}

/// RFC 9110 field-value characters: visible ASCII, space, tab and obs-text; never CR, LF, NUL.
pub fn is_header_safe(text: &str) -> bool {
    text.bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    fn check_times(claims: &Claims, now: u64, rules: TimeRules) -> Result<Option<u64>, Rejection> {
        TokenTimes::of(claims)?.check(now, rules)
    }

    const RULES: TimeRules = TimeRules {
        leeway_secs: 60,
        require_exp: true,
    };

    #[test]
    fn time_claims_honour_the_leeway_at_its_edges() {
        let now = 1_000_000;
        let c = claims(r#"{"exp":1000000,"nbf":1000000,"iat":1000000}"#);
        assert_eq!(check_times(&c, now, RULES), Ok(Some(1_000_060)));
        // exp + leeway is still valid; one second later is not.
        assert!(check_times(&c, now + 60, RULES).is_ok());
        assert_eq!(check_times(&c, now + 61, RULES), Err(Rejection::Expired));
        let future = claims(r#"{"exp":2000000,"nbf":1000061}"#);
        assert_eq!(
            check_times(&future, now, RULES),
            Err(Rejection::NotYetValid)
        );
        let edge = claims(r#"{"exp":2000000,"nbf":1000060}"#);
        assert!(check_times(&edge, now, RULES).is_ok());
        let iat = claims(r#"{"exp":2000000,"iat":1000061}"#);
        assert_eq!(
            check_times(&iat, now, RULES),
            Err(Rejection::IssuedInFuture)
        );
    }

    #[test]
    fn exp_may_be_required_and_must_be_a_number() {
        let none = claims(r#"{"sub":"s"}"#);
        assert_eq!(check_times(&none, 1, RULES), Err(Rejection::MissingExp));
        let optional = TimeRules {
            require_exp: false,
            ..RULES
        };
        assert_eq!(check_times(&none, 1, optional), Ok(None));
        for bad in [
            r#"{"exp":"1"}"#,
            r#"{"nbf":true}"#,
            r#"{"exp":9,"iat":null}"#,
        ] {
            assert!(
                matches!(
                    check_times(&claims(bad), 1, RULES),
                    Err(Rejection::BadClaim(_))
                ),
                "{bad}"
            );
        }
        // Fractions are NumericDates too.
        assert_eq!(
            check_times(&claims(r#"{"exp":100.5}"#), 100, RULES),
            Ok(Some(160))
        );
    }

    #[test]
    fn audience_matches_a_string_or_a_list() {
        let want = vec!["api".to_owned(), "web".to_owned()];
        assert!(check_audience(&claims(r#"{"aud":"api"}"#), &want).is_ok());
        assert!(check_audience(&claims(r#"{"aud":["x","web"]}"#), &want).is_ok());
        assert_eq!(
            check_audience(&claims(r#"{"aud":["x"]}"#), &want),
            Err(Rejection::AudienceNotAllowed)
        );
        assert_eq!(
            check_audience(&claims(r#"{}"#), &want),
            Err(Rejection::AudienceNotAllowed)
        );
        assert_eq!(
            check_audience(&claims(r#"{"aud":7}"#), &want),
            Err(Rejection::BadClaim("aud"))
        );
        assert_eq!(
            check_audience(&claims(r#"{"aud":["api",7]}"#), &want),
            Err(Rejection::BadClaim("aud"))
        );
        assert!(check_audience(&claims(r#"{}"#), &[]).is_ok());
    }

    #[test]
    fn issuer_must_be_a_string() {
        assert_eq!(issuer(&claims(r#"{"iss":"i"}"#)), Ok("i"));
        assert_eq!(issuer(&claims(r#"{}"#)), Err(Rejection::MissingIssuer));
        assert_eq!(
            issuer(&claims(r#"{"iss":["i"]}"#)),
            Err(Rejection::BadClaim("iss"))
        );
    }

    #[test]
    fn claims_render_as_header_values() {
        let c = claims(
            r#"{"email":"a@b.c","n":7,"ok":true,"roles":["a","b"],"realm":{"roles":["x"]},
                "obj":{"a":1},"evil":"a\r\nx-palisade-subject: admin","a.b":"dotted"}"#,
        );
        let render = |path| lookup(&c, path).and_then(header_value);
        assert_eq!(render("email").as_deref(), Some("a@b.c"));
        assert_eq!(render("n").as_deref(), Some("7"));
        assert_eq!(render("ok").as_deref(), Some("true"));
        assert_eq!(render("roles").as_deref(), Some("a,b"));
        assert_eq!(render("realm.roles").as_deref(), Some("x"));
        assert_eq!(render("a.b").as_deref(), Some("dotted"));
        assert_eq!(render("obj"), None);
        assert_eq!(render("evil"), None);
        assert_eq!(render("missing"), None);
    }
}
