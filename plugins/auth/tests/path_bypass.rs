//! Path tricks against palisade-auth's rules, through the crate's public API exactly as the
//! engine chains it: the raw `:path` is normalised ([`palisade_auth::path`]), then the rules
//! ([`palisade_auth::rules`]) decide on the normalised path.
//!
//! The policy under attack: `/admin` and everything under it needs a credential, everything
//! else is anonymous. A trick that an upstream would resolve to `/admin/...` must either be
//! judged as `/admin/...` or refused (400): never allowed anonymously. Cases where palisade,
//! like Envoy, deliberately does *not* equate two spellings (case, a trailing dot, `;`
//! parameters, overlong UTF-8) are pinned too, because SECURITY.md tells operators to handle
//! them: those are the places an upstream with other parsing rules could differ.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use palisade_auth::path::{
    PathDisposition, PathNormalizationConfig, PathNormalizer, PathRejection,
};
use palisade_auth::rules::{RequestFacts, RuleDecision, Rules, RulesConfig};
use palisade_kit::config::Problems;

fn normalizer(json: &str) -> PathNormalizer {
    let config: PathNormalizationConfig = serde_json::from_str(json).unwrap();
    let mut problems = Problems::default();
    config.validate(&mut problems);
    assert!(problems.is_empty(), "{json}");
    config.compile()
}

fn rules(ignore_case: bool) -> Rules {
    let config: RulesConfig = serde_json::from_value(serde_json::json!({
        "rules": [
            {"name": "admin",
             "paths": [{"path_separated_prefix": "/admin", "ignore_case": ignore_case}],
             "action": {"require": {"api_keys": true}}}
        ],
        "no_match": "allow_anonymous"
    }))
    .unwrap();
    let mut problems = Problems::default();
    config.validate(&mut problems);
    assert!(problems.is_empty());
    config.compile().unwrap()
}

/// What the chain makes of one raw path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The `admin` rule matched: a credential is required.
    Protected,
    /// No rule matched: allowed anonymously, judged as this path.
    Anonymous(String),
    /// Refused before any rule, with this reason (400).
    Refused(&'static str),
}

fn judge(normalizer: &PathNormalizer, rules: &Rules, raw: &str) -> Verdict {
    let normalized = match normalizer.normalize(raw.as_bytes()) {
        Ok(normalized) => normalized,
        Err(rejection) => {
            assert_eq!(rejection.status(), 400);
            return Verdict::Refused(rejection.reason());
        }
    };
    let facts = RequestFacts {
        authority: Some(b"api.example.com"),
        path: &normalized.path,
        method: b"GET",
        peer_principal: None,
    };
    match rules.decide(&facts) {
        RuleDecision::Require { rule, .. } => {
            assert_eq!(rule.name, "admin");
            Verdict::Protected
        }
        RuleDecision::AllowAnonymous { rule: None } => Verdict::Anonymous(normalized.path),
        other => panic!("{raw}: unexpected {other:?}"),
    }
}

fn table(
    normalization: &str,
    ignore_case: bool,
    raws: &[&'static str],
) -> Vec<(&'static str, Verdict)> {
    let normalizer = normalizer(normalization);
    let rules = rules(ignore_case);
    raws.iter()
        .map(|raw| (*raw, judge(&normalizer, &rules, raw)))
        .collect()
}

use Verdict::{Protected, Refused};

fn anonymous(path: &str) -> Verdict {
    Verdict::Anonymous(path.to_owned())
}

#[test]
fn dot_segment_tricks_are_judged_as_the_path_they_resolve_to() {
    let raws = [
        "/admin",
        "/admin/users",
        "/admin/../admin/users",
        "/public/../admin",
        "/public/../admin/users",
        "/public/./../admin",
        "/../../../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/%2e./admin",
        "/admin/./users",
        "/admin/%2e/users",
        "/admin/.",
        // Leaving /admin really is leaving it.
        "/admin/..",
        "/admin/../public",
    ];
    assert_eq!(
        table("{}", false, &raws),
        vec![
            ("/admin", Protected),
            ("/admin/users", Protected),
            ("/admin/../admin/users", Protected),
            ("/public/../admin", Protected),
            ("/public/../admin/users", Protected),
            ("/public/./../admin", Protected),
            ("/../../../admin", Protected),
            ("/public/%2e%2e/admin", Protected),
            ("/public/%2E%2E/admin", Protected),
            ("/public/.%2e/admin", Protected),
            ("/public/%2e./admin", Protected),
            ("/admin/./users", Protected),
            ("/admin/%2e/users", Protected),
            ("/admin/.", Protected),
            ("/admin/..", anonymous("/")),
            ("/admin/../public", anonymous("/public")),
        ]
    );
}

#[test]
fn slash_backslash_and_encoding_tricks_are_judged_as_the_path_they_resolve_to() {
    let raws = [
        "//admin",
        "///admin//users",
        "/public//..//admin",
        "/public\\..\\admin",
        "\\admin",
        "/%61dmin",
        "/%61%64%6D%69%6E/users",
        "/admin?x=/../public",
        "/public?x=/admin",
        "/admin#/../public",
    ];
    assert_eq!(
        table("{}", false, &raws),
        vec![
            ("//admin", Protected),
            ("///admin//users", Protected),
            // `..` removes the empty segment before it (RFC 3986, as Envoy's normalize_path
            // then merge_slashes): the path is `/public/admin`, and that is what goes upstream.
            ("/public//..//admin", anonymous("/public/admin")),
            ("/public\\..\\admin", Protected),
            // Not origin form as written: refused before `\` could be read as `/`.
            ("\\admin", Refused("path_not_origin_form")),
            ("/%61dmin", Protected),
            ("/%61%64%6D%69%6E/users", Protected),
            ("/admin?x=/../public", Protected),
            ("/public?x=/admin", anonymous("/public")),
            ("/admin#/../public", Protected),
        ]
    );
}

const ESCAPED_SLASHES: [&str; 6] = [
    "/admin%2Fusers",
    "/admin%2fusers",
    "/admin%5Cusers",
    "/admin%5cusers",
    "/public%2F..%2Fadmin",
    "/public%2f%2e%2e%2fadmin",
];

#[test]
fn escaped_slashes_are_refused_by_default() {
    assert_eq!(
        table("{}", false, &ESCAPED_SLASHES),
        ESCAPED_SLASHES
            .iter()
            .map(|raw| (*raw, Refused("path_escaped_slash")))
            .collect::<Vec<_>>()
    );
}

#[test]
fn escaped_slashes_unescaped_are_judged_as_slashes() {
    for action in ["unescape_and_forward", "unescape_and_redirect"] {
        let config = format!(r#"{{"escaped_slashes":"{action}"}}"#);
        assert_eq!(
            table(&config, false, &ESCAPED_SLASHES),
            ESCAPED_SLASHES
                .iter()
                .map(|raw| (*raw, Protected))
                .collect::<Vec<_>>(),
            "{action}"
        );
    }
    // Redirect: the client is sent to the path that was judged.
    let redirect = normalizer(r#"{"escaped_slashes":"unescape_and_redirect"}"#);
    let out = redirect.normalize(b"/public%2F..%2Fadmin?q=1").unwrap();
    assert_eq!(out.disposition, PathDisposition::Redirect);
    assert_eq!(out.request_path(), b"/admin?q=1");
    // Forward: the upstream gets the path that was judged.
    let forward = normalizer(r#"{"escaped_slashes":"unescape_and_forward"}"#);
    let out = forward.normalize(b"/admin%2Fusers").unwrap();
    assert_eq!(out.disposition, PathDisposition::Rewrite);
    assert_eq!(out.request_path(), b"/admin/users");
}

#[test]
fn escaped_slashes_kept_are_not_separators_for_the_rules() {
    // `keep_unchanged`: one segment `admin%2Fusers`, so `path_separated_prefix: /admin` does
    // not match. Safe only when no upstream decodes `%2F` (docs/auth-policy.md).
    assert_eq!(
        table(
            r#"{"escaped_slashes":"keep_unchanged"}"#,
            false,
            &ESCAPED_SLASHES
        ),
        vec![
            ("/admin%2Fusers", anonymous("/admin%2Fusers")),
            ("/admin%2fusers", anonymous("/admin%2Fusers")),
            ("/admin%5Cusers", anonymous("/admin%5Cusers")),
            ("/admin%5cusers", anonymous("/admin%5Cusers")),
            ("/public%2F..%2Fadmin", anonymous("/public%2F..%2Fadmin")),
            (
                "/public%2f%2e%2e%2fadmin",
                anonymous("/public%2F..%2Fadmin")
            ),
        ]
    );
}

#[test]
fn unescaping_without_normalising_is_refused_at_configuration() {
    let config: PathNormalizationConfig =
        serde_json::from_str(r#"{"normalize":false,"escaped_slashes":"unescape_and_forward"}"#)
            .unwrap();
    let mut problems = Problems::default();
    config.validate(&mut problems);
    assert!(
        !problems.is_empty(),
        "%2F..%2F would reach the rules as /../"
    );
}

#[test]
fn with_normalisation_off_the_rules_see_the_path_as_written() {
    // What Envoy's defaults do: every trick bypasses a prefix rule. Why palisade's defaults are
    // on, and why SECURITY.md asks for the same settings in the connection manager.
    let off = r#"{"normalize":false,"merge_slashes":false,"escaped_slashes":"keep_unchanged"}"#;
    let raws = [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "//admin",
        "/%61dmin",
        "/admin%2Fusers",
    ];
    assert_eq!(
        table(off, false, &raws),
        raws.iter()
            .map(|raw| (*raw, anonymous(raw)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn malformed_paths_are_refused_not_guessed() {
    let raws = [
        "/admin%00",
        "/admin%",
        "/admin%2",
        "/admin%zz/users",
        "/adm in",
        "/admin\t",
        "/admin\u{7f}",
        "/admin\u{e9}",
        "admin",
        "http://api.example.com/admin",
        "",
    ];
    assert_eq!(
        table("{}", false, &raws),
        vec![
            ("/admin%00", Refused("path_encoded_nul")),
            ("/admin%", Refused("path_invalid_percent_encoding")),
            ("/admin%2", Refused("path_invalid_percent_encoding")),
            ("/admin%zz/users", Refused("path_invalid_percent_encoding")),
            ("/adm in", Refused("path_unencoded_byte")),
            ("/admin\t", Refused("path_unencoded_byte")),
            ("/admin\u{7f}", Refused("path_unencoded_byte")),
            ("/admin\u{e9}", Refused("path_unencoded_byte")),
            ("admin", Refused("path_not_origin_form")),
            (
                "http://api.example.com/admin",
                Refused("path_not_origin_form")
            ),
            ("", Refused("path_not_origin_form")),
        ]
    );
    // Invalid UTF-8 bytes are refused too, never assumed to be text.
    let normalizer = normalizer("{}");
    assert_eq!(
        normalizer.normalize(b"/admin\xff\xfe").unwrap_err(),
        PathRejection::UnencodedByte
    );
}

#[test]
fn case_trailing_dots_parameters_and_overlong_utf8_are_different_paths() {
    // Paths are case-sensitive, as in Envoy's route matching; `/admin.` is not `/admin`
    // (Envoy agrees); `;` parameters and overlong UTF-8 stay part of the segment. An upstream
    // that folds case, strips trailing dots (IIS), honours `;` parameters (Tomcat) or decodes
    // overlong UTF-8 would see `/admin` in these: SECURITY.md says how to close each.
    let raws = [
        "/ADMIN",
        "/Admin/users",
        "/%41dmin",
        "/admin.",
        "/admin./users",
        "/admin;jsessionid=1",
        "/admin;/users",
        "/%C0%AE%C0%AE/admin",
    ];
    assert_eq!(
        table("{}", false, &raws),
        vec![
            ("/ADMIN", anonymous("/ADMIN")),
            ("/Admin/users", anonymous("/Admin/users")),
            ("/%41dmin", anonymous("/Admin")),
            ("/admin.", anonymous("/admin.")),
            ("/admin./users", anonymous("/admin./users")),
            ("/admin;jsessionid=1", anonymous("/admin;jsessionid=1")),
            ("/admin;/users", anonymous("/admin;/users")),
            ("/%C0%AE%C0%AE/admin", anonymous("/%C0%AE%C0%AE/admin")),
        ]
    );
    // `ignore_case` closes the case tricks for a case-insensitive upstream.
    assert_eq!(
        table("{}", true, &raws[..3]),
        vec![
            ("/ADMIN", Protected),
            ("/Admin/users", Protected),
            ("/%41dmin", Protected),
        ]
    );
}
