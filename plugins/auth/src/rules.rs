//! Authorization rules: an ordered list, first match wins, and a default for requests no rule
//! matches (deny unless explicitly set to anonymous access).
//!
//! A rule matches on host, normalised path ([`crate::path`]), method and the mTLS peer's SPIFFE
//! principal, like Istio's AuthorizationPolicy. Its action allows anonymous access, denies, or
//! requires a credential (named JWT providers, API keys, token introspection) plus claims and
//! scopes. Matching is host-free: the engine gathers [`RequestFacts`], asks [`Rules::decide`],
//! authenticates what the [`Requirement`] accepts, then calls [`Requirement::authorize`] with the
//! verified claims.

use std::collections::{BTreeMap, HashSet};

use palisade_kit::authority;
use palisade_kit::config::Problems;
use regex_lite::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::api_keys::is_scope_token;

/// Ordered authorization rules.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Checked in order; the first rule that matches decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What happens to a request no rule matches: `deny` (default, 403) or `allow_anonymous`.
    #[serde(default)]
    pub no_match: NoMatchAction,
}

/// The action for requests no rule matches. Only these two: requiring credentials for
/// everything else is a rule with no conditions at the end of the list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoMatchAction {
    #[default]
    Deny,
    AllowAnonymous,
}

/// One rule. Every condition given must hold; a condition left out matches everything; within
/// one condition, any listed value may match.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name in logs and metrics; default `rules[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Hosts: `api.example.com`, `*.example.com` (any subdomain, not the domain itself) or `*`.
    /// Compared without the request's port, case-insensitively.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Paths, matched against the normalised path (without query).
    #[serde(default)]
    pub paths: Vec<PathMatchConfig>,
    /// Methods, upper case as sent (`GET`, `POST`); compared exactly.
    #[serde(default)]
    pub methods: Vec<String>,
    /// mTLS peer principals as Istio writes them (`cluster.local/ns/default/sa/frontend`, with
    /// or without `spiffe://`), exact or with one `*` at the start or end; `*` alone means any
    /// authenticated peer. A rule with principals never matches a request without a verified
    /// peer certificate.
    #[serde(default)]
    pub principals: Vec<String>,
    /// What to do with a matching request.
    pub action: ActionConfig,
}

/// One path condition: exactly one of `exact`, `prefix`, `path_separated_prefix`, `regex`
/// (Envoy's route-match names).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathMatchConfig {
    /// The whole path.
    #[serde(default)]
    pub exact: Option<String>,
    /// A string prefix: `/api` matches `/api`, `/api/x` and `/apix`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// A segment-aware prefix: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub path_separated_prefix: Option<String>,
    /// A regular expression the whole path must match (`regex-lite` syntax).
    #[serde(default)]
    pub regex: Option<String>,
    /// Compare ignoring ASCII case. Default: paths are case-sensitive.
    #[serde(default)]
    pub ignore_case: bool,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionConfig {
    /// Let the request through without credentials.
    AllowAnonymous,
    /// Refuse it with 403.
    Deny,
    /// Require one of the accepted credentials, then check claims and scopes.
    Require(RequirementConfig),
}

/// The credentials a rule accepts and what they must grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequirementConfig {
    /// Names of JWT providers whose tokens are accepted.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Accept API keys.
    #[serde(default)]
    pub api_keys: bool,
    /// Accept opaque tokens checked by OAuth2 token introspection.
    #[serde(default)]
    pub introspection: bool,
    /// Claims that must have one of the listed values. A claim holding an array matches when
    /// any element does (Istio's `request.auth.claims`). A name starting with `/` is a JSON
    /// pointer into nested claims (`/realm_access/roles`).
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
    /// Scopes that must all be granted: from the `scope` claim (space-separated) or `scp`
    /// (array, or space-separated string).
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl RulesConfig {
    /// Records every problem, with its field path. Cross-checks against other parts of the
    /// configuration (provider names exist) are the caller's: see
    /// [`RulesConfig::provider_references`].
    pub fn validate(&self, problems: &mut Problems) {
        let mut names = HashSet::new();
        problems.field("rules", |p| {
            for (i, rule) in self.rules.iter().enumerate() {
                p.index(i, |p| {
                    if let Some(name) = &rule.name {
                        if name.trim().is_empty() {
                            p.push_at("name", "must not be empty when given");
                        } else if !names.insert(name.as_str()) {
                            p.push_at("name", format!("duplicate rule name {name:?}"));
                        }
                    }
                    rule.validate(p);
                });
            }
        });
    }

    /// Every provider name a rule requires, with the field path naming it, for the caller to
    /// check against the configured providers.
    pub fn provider_references(&self) -> impl Iterator<Item = (String, &str)> {
        self.rules.iter().enumerate().flat_map(|(i, rule)| {
            let providers: &[String] = match &rule.action {
                ActionConfig::Require(requirement) => &requirement.providers,
                _ => &[],
            };
            providers.iter().enumerate().map(move |(j, name)| {
                (
                    format!("rules[{i}].action.require.providers[{j}]"),
                    name.as_str(),
                )
            })
        })
    }

    /// The compiled rules. Call after [`validate`](Self::validate) found nothing; a condition
    /// that does not compile is reported again here.
    pub fn compile(&self) -> Result<Rules, RulesError> {
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| rule.compile(index))
            .collect::<Result<_, _>>()?;
        Ok(Rules {
            rules,
            no_match: self.no_match,
        })
    }
}

/// A rule that cannot be compiled (only when [`RulesConfig::validate`] was skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules[{index}]: {reason}")]
pub struct RulesError {
    pub index: usize,
    pub reason: String,
}

impl RuleConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.field("hosts", |p| {
            for (i, host) in self.hosts.iter().enumerate() {
                if let Err(reason) = HostPattern::parse(host) {
                    p.index(i, |p| p.push(reason));
                }
            }
        });
        problems.field("paths", |p| {
            for (i, path) in self.paths.iter().enumerate() {
                if let Err((field, reason)) = PathMatch::compile(path) {
                    p.index(i, |p| match field {
                        Some(field) => p.push_at(field, reason),
                        None => p.push(reason),
                    });
                }
            }
        });
        problems.field("methods", |p| {
            for (i, method) in self.methods.iter().enumerate() {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    p.index(i, |p| {
                        p.push(format!(
                            "{method:?} is not an upper-case method (methods are case-sensitive)"
                        ))
                    });
                }
            }
        });
        problems.field("principals", |p| {
            for (i, principal) in self.principals.iter().enumerate() {
                if let Err(reason) = PrincipalPattern::parse(principal) {
                    p.index(i, |p| p.push(reason));
                }
            }
        });
        if let ActionConfig::Require(requirement) = &self.action {
            problems.field("action", |p| {
                p.field("require", |p| requirement.validate(p))
            });
        }
    }

    fn compile(&self, index: usize) -> Result<Rule, RulesError> {
        let fail = |reason: String| RulesError { index, reason };
        let hosts = self
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<_, _>>()
            .map_err(|r| fail(r.to_owned()))?;
        let paths = self
            .paths
            .iter()
            .map(PathMatch::compile)
            .collect::<Result<_, _>>()
            .map_err(|(_, r)| fail(r))?;
        let principals = self
            .principals
            .iter()
            .map(|p| PrincipalPattern::parse(p))
            .collect::<Result<_, _>>()
            .map_err(|r| fail(r.to_owned()))?;
        let action = match &self.action {
            ActionConfig::AllowAnonymous => Action::AllowAnonymous,
            ActionConfig::Deny => Action::Deny,
            ActionConfig::Require(requirement) => Action::Require(requirement.compile()),
        };
        Ok(Rule {
            index,
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("rules[{index}]")),
            hosts,
            paths,
            methods: self.methods.clone(),
            principals,
            action,
        })
    }
}

impl RequirementConfig {
    fn validate(&self, problems: &mut Problems) {
        if self.providers.is_empty() && !self.api_keys && !self.introspection {
            problems.push(
                "must accept at least one credential: `providers`, `api_keys` or `introspection`",
            );
        }
        problems.field("providers", |p| {
            let mut seen = HashSet::new();
            for (i, name) in self.providers.iter().enumerate() {
                if name.trim().is_empty() {
                    p.index(i, |p| p.push("must not be empty"));
                } else if !seen.insert(name.as_str()) {
                    p.index(i, |p| p.push(format!("provider {name:?} is listed twice")));
                }
            }
        });
        problems.field("claims", |p| {
            for (name, values) in &self.claims {
                p.key(name, |p| {
                    if name.is_empty() {
                        p.push("claim name must not be empty");
                    }
                    if values.is_empty() {
                        p.push("must list at least one accepted value");
                    }
                });
            }
        });
        problems.field("scopes", |p| {
            for (i, scope) in self.scopes.iter().enumerate() {
                if !is_scope_token(scope) {
                    p.index(i, |p| {
                        p.push("must be a non-empty scope without spaces or quotes")
                    });
                }
            }
        });
    }

    fn compile(&self) -> Requirement {
        Requirement {
            providers: self.providers.clone(),
            api_keys: self.api_keys,
            introspection: self.introspection,
            claims: self
                .claims
                .iter()
                .map(|(name, values)| ClaimRequirement {
                    name: name.clone(),
                    values: values.clone(),
                })
                .collect(),
            scopes: self.scopes.clone(),
        }
    }
}

/// A host condition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostPattern {
    fn parse(text: &str) -> Result<Self, &'static str> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let host = text.trim_end_matches('.').to_ascii_lowercase();
        let (domain, wildcard) = match host.strip_prefix("*.") {
            Some(domain) => (domain, true),
            None => (host.as_str(), false),
        };
        let is_ipv6 = domain.starts_with('[') && domain.ends_with(']') && !wildcard;
        let valid = !domain.is_empty()
            && (is_ipv6
                || domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid {
            return Err("must be a host name, `*.domain` or `*`, without a port");
        }
        Ok(if wildcard {
            Self::Suffix(format!(".{domain}"))
        } else {
            Self::Exact(domain.to_owned())
        })
    }

    /// `host` is lower case, without port or trailing dot.
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => host == exact,
            Self::Suffix(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }
}

/// A compiled path condition.
#[derive(Debug, Clone)]
enum PathMatch {
    Exact { value: String, ignore_case: bool },
    Prefix { value: String, ignore_case: bool },
    SeparatedPrefix { value: String, ignore_case: bool },
    Regex(Regex),
}

impl PathMatch {
    fn compile(config: &PathMatchConfig) -> Result<Self, (Option<&'static str>, String)> {
        let ignore_case = config.ignore_case;
        let given = [
            config.exact.is_some(),
            config.prefix.is_some(),
            config.path_separated_prefix.is_some(),
            config.regex.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err((
                None,
                "must give exactly one of `exact`, `prefix`, `path_separated_prefix`, `regex`"
                    .to_owned(),
            ));
        }
        let must_be_path = |field: &'static str, value: &str| {
            if value.starts_with('/') {
                Ok(())
            } else {
                Err((Some(field), "must start with `/`".to_owned()))
            }
        };
        if let Some(value) = &config.exact {
            must_be_path("exact", value)?;
            return Ok(Self::Exact {
                value: value.clone(),
                ignore_case,
            });
        }
        if let Some(value) = &config.prefix {
            must_be_path("prefix", value)?;
            return Ok(Self::Prefix {
                value: value.clone(),
                ignore_case,
            });
        }
        if let Some(value) = &config.path_separated_prefix {
            must_be_path("path_separated_prefix", value)?;
            if value.len() > 1 && value.ends_with('/') {
                return Err((
                    Some("path_separated_prefix"),
                    "must not end with `/` (it matches the path and everything below it)"
                        .to_owned(),
                ));
            }
            if value.contains(['?', '#']) {
                return Err((
                    Some("path_separated_prefix"),
                    "must not contain `?` or `#`".to_owned(),
                ));
            }
            return Ok(Self::SeparatedPrefix {
                value: value.clone(),
                ignore_case,
            });
        }
        let pattern = config.regex.as_deref().unwrap_or_default();
        // Anchored: the whole path must match, as Envoy's `safe_regex` route match.
        RegexBuilder::new(&format!("^(?:{pattern})$"))
            .case_insensitive(ignore_case)
            .build()
            .map(Self::Regex)
            .map_err(|err| (Some("regex"), format!("invalid regular expression: {err}")))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact { value, ignore_case } => eq(path, value, *ignore_case),
            Self::Prefix { value, ignore_case } => starts_with(path, value, *ignore_case),
            Self::SeparatedPrefix { value, ignore_case } => {
                if value == "/" {
                    return path.starts_with('/');
                }
                starts_with(path, value, *ignore_case)
                    && matches!(path.as_bytes().get(value.len()), None | Some(b'/'))
            }
            Self::Regex(regex) => regex.is_match(path),
        }
    }
}

fn eq(a: &str, b: &str, ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

fn starts_with(path: &str, prefix: &str, ignore_case: bool) -> bool {
    path.get(..prefix.len())
        .is_some_and(|head| eq(head, prefix, ignore_case))
}

/// A principal condition, on the SPIFFE id without its `spiffe://` scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PrincipalPattern {
    /// `*`: any verified peer.
    Any,
    Exact(String),
    /// `ns/default/*`-style: the principal starts with this.
    Prefix(String),
    /// `*/sa/frontend`-style: the principal ends with this.
    Suffix(String),
}

impl PrincipalPattern {
    fn parse(text: &str) -> Result<Self, &'static str> {
        let text = strip_spiffe(text);
        if text == "*" {
            return Ok(Self::Any);
        }
        let stars = text.matches('*').count();
        let bad = text.is_empty()
            || stars > 1
            || (stars == 1 && !(text.starts_with('*') || text.ends_with('*')))
            || !text.bytes().all(|b| b.is_ascii_graphic());
        if bad {
            return Err(
                "must be a SPIFFE principal (`trust-domain/ns/<ns>/sa/<sa>`), \
                        exact or with one `*` at the start or end",
            );
        }
        Ok(if let Some(rest) = text.strip_prefix('*') {
            Self::Suffix(rest.to_owned())
        } else if let Some(rest) = text.strip_suffix('*') {
            Self::Prefix(rest.to_owned())
        } else {
            Self::Exact(text.to_owned())
        })
    }

    fn matches(&self, principal: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => principal == exact,
            Self::Prefix(prefix) => principal.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => principal.ends_with(suffix.as_str()),
        }
    }
}

fn strip_spiffe(text: &str) -> &str {
    match text.get(..9) {
        Some(scheme) if scheme.eq_ignore_ascii_case("spiffe://") => text.get(9..).unwrap_or(""),
        _ => text,
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Position in the configured list.
    pub index: usize,
    /// The configured name, or `rules[<index>]`.
    pub name: String,
    hosts: Vec<HostPattern>,
    paths: Vec<PathMatch>,
    methods: Vec<String>,
    principals: Vec<PrincipalPattern>,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    AllowAnonymous,
    Deny,
    Require(Requirement),
}

impl Rule {
    fn matches(
        &self,
        request: &RequestFacts<'_>,
        host: Option<&str>,
        principal: Option<&str>,
    ) -> bool {
        (self.hosts.is_empty()
            || host.is_some_and(|host| self.hosts.iter().any(|p| p.matches(host))))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(request.path)))
            && (self.methods.is_empty()
                || self.methods.iter().any(|m| m.as_bytes() == request.method))
            && (self.principals.is_empty()
                || principal
                    .is_some_and(|principal| self.principals.iter().any(|p| p.matches(principal))))
    }
}

/// What the rules look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The client's Host, raw (`:authority` on Envoy, `host` on Kong); read with
    /// `kit::authority`, the port ignored.
    pub authority: Option<&'a [u8]>,
    /// The normalised path ([`crate::path::NormalizedPath::path`]).
    pub path: &'a str,
    /// `:method`, raw.
    pub method: &'a [u8],
    /// The verified mTLS peer's SPIFFE id (Envoy's `connection.uri_san_peer_certificate`, e.g.
    /// `spiffe://cluster.local/ns/default/sa/frontend`); `None` without mTLS (and on Kong,
    /// which exposes no peer certificate to Wasm).
    pub peer_principal: Option<&'a [u8]>,
}

/// The compiled rule list.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    no_match: NoMatchAction,
}

/// Which rule decided; `None` for the no-match default.
pub type MatchedRule<'r> = Option<&'r Rule>;

/// What the rules say about a request.
#[derive(Debug, Clone, Copy)]
pub enum RuleDecision<'r> {
    /// Let it through without credentials (identity headers are still stripped). A credential
    /// the request carries anyway is not checked.
    AllowAnonymous { rule: MatchedRule<'r> },
    /// Refuse it: [`Refusal::Denied`].
    Deny { rule: MatchedRule<'r> },
    /// Authenticate with a credential the requirement accepts, then
    /// [`Requirement::authorize`].
    Require {
        rule: &'r Rule,
        requirement: &'r Requirement,
    },
    /// The request's Host is not a host name with an optional port, and rules match on hosts:
    /// refuse it (400) rather than let it pass every rule that names a host.
    BadAuthority,
}

impl<'r> RuleDecision<'r> {
    /// The deciding rule's name, `no_match` for the default: for logs and metrics.
    pub fn rule_name(&self) -> &'r str {
        match self {
            Self::AllowAnonymous { rule } | Self::Deny { rule } => {
                rule.map_or("no_match", |r| r.name.as_str())
            }
            Self::Require { rule, .. } => rule.name.as_str(),
            Self::BadAuthority => "bad_authority",
        }
    }
}

impl Rules {
    /// The first matching rule's decision, or the no-match default.
    pub fn decide(&self, request: &RequestFacts<'_>) -> RuleDecision<'_> {
        // A Host no rule could read would pass by every rule that names hosts (a deny among
        // them) while the proxy still routes it, when it ignores what follows the host.
        let host = match request.authority.map(authority::parse) {
            Some(Some(authority)) => Some(authority.host),
            Some(None) if self.uses_hosts() => return RuleDecision::BadAuthority,
            Some(None) | None => None,
        };
        let principal = request
            .peer_principal
            .and_then(|p| std::str::from_utf8(p).ok())
            .map(strip_spiffe)
            .filter(|p| !p.is_empty());
        for rule in &self.rules {
            if rule.matches(request, host.as_deref(), principal) {
                return match &rule.action {
                    Action::AllowAnonymous => RuleDecision::AllowAnonymous { rule: Some(rule) },
                    Action::Deny => RuleDecision::Deny { rule: Some(rule) },
                    Action::Require(requirement) => RuleDecision::Require { rule, requirement },
                };
            }
        }
        match self.no_match {
            NoMatchAction::Deny => RuleDecision::Deny { rule: None },
            NoMatchAction::AllowAnonymous => RuleDecision::AllowAnonymous { rule: None },
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Does any rule match on the request's host?
    pub fn uses_hosts(&self) -> bool {
        self.rules.iter().any(|rule| !rule.hosts.is_empty())
    }

    /// Does any rule match on the mTLS peer principal? (Only then is it read from the host.)
    pub fn uses_principals(&self) -> bool {
        self.rules.iter().any(|rule| !rule.principals.is_empty())
    }
}

/// What a credential is, for [`Requirement::accepts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A JWT verified by this provider.
    Jwt {
        provider: &'a str,
    },
    ApiKey,
    Introspection,
}

/// A claim that must hold one of some values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClaimRequirement {
    name: String,
    values: Vec<String>,
}

impl ClaimRequirement {
    fn satisfied_by(&self, claims: &Value) -> bool {
        let claim = if self.name.starts_with('/') {
            claims.pointer(&self.name)
        } else {
            claims.get(&self.name)
        };
        let accepted = |value: &Value| {
            value
                .as_str()
                .is_some_and(|s| self.values.iter().any(|v| v == s))
        };
        match claim {
            Some(Value::Array(items)) => items.iter().any(accepted),
            Some(value) => accepted(value),
            None => false,
        }
    }
}

/// The credentials a rule accepts and what they must grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// JWT provider names accepted.
    pub providers: Vec<String>,
    pub api_keys: bool,
    pub introspection: bool,
    claims: Vec<ClaimRequirement>,
    scopes: Vec<String>,
}

impl Requirement {
    /// A requirement with no claims or scopes: what applies when no rules are configured.
    pub fn accepting(providers: Vec<String>, api_keys: bool, introspection: bool) -> Self {
        Self {
            providers,
            api_keys,
            introspection,
            claims: Vec::new(),
            scopes: Vec::new(),
        }
    }

    /// Does [`authorize`](Self::authorize) check anything?
    pub fn checks_identity(&self) -> bool {
        !self.claims.is_empty() || !self.scopes.is_empty()
    }

    /// Does this rule accept that credential?
    pub fn accepts(&self, credential: Credential<'_>) -> bool {
        match credential {
            Credential::Jwt { provider } => self.providers.iter().any(|p| p == provider),
            Credential::ApiKey => self.api_keys,
            Credential::Introspection => self.introspection,
        }
    }

    /// The scopes required, for `WWW-Authenticate: Bearer scope="..."`.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Checks an authenticated identity's claims (a JWT's payload, [`ApiKey::claims`](
    /// crate::api_keys::ApiKey::claims), an introspection answer): claims first, then scopes.
    pub fn authorize(&self, claims: &Value) -> Result<(), Refusal> {
        if let Some(failed) = self.claims.iter().find(|c| !c.satisfied_by(claims)) {
            return Err(Refusal::ClaimMismatch {
                claim: failed.name.clone(),
            });
        }
        let granted = granted_scopes(claims);
        let missing: Vec<String> = self
            .scopes
            .iter()
            .filter(|s| !granted.contains(&s.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Refusal::InsufficientScope { missing })
        }
    }
}

/// Scopes from `scope` (RFC 8693/9068: space-separated string) and `scp` (array, or a string,
/// as some IdPs send it).
fn granted_scopes(claims: &Value) -> Vec<&str> {
    let mut granted = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => granted.extend(s.split(' ').filter(|s| !s.is_empty())),
            Some(Value::Array(items)) => granted.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    granted
}

/// Why the rules refuse a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 401: the matched rule needs a credential and the request had none it accepts, or an
    /// invalid one. (The engine knows the precise credential error; this names the case.)
    #[error("no accepted credential")]
    Unauthenticated,
    /// 403: a deny rule matched, or no rule matched and the default is deny.
    #[error("access denied")]
    Denied,
    /// 403: a required claim is missing or has none of the accepted values.
    #[error("claim {claim:?} does not have an accepted value")]
    ClaimMismatch { claim: String },
    /// 403 `insufficient_scope` (RFC 6750 §3.1).
    #[error("insufficient scope")]
    InsufficientScope { missing: Vec<String> },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Denied | Self::ClaimMismatch { .. } | Self::InsufficientScope { .. } => 403,
        }
    }

    /// A stable short reason for logs, metrics and the JSON error body (claim values and
    /// tokens never appear in it).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Denied => "denied",
            Self::ClaimMismatch { .. } => "claim_mismatch",
            Self::InsufficientScope { .. } => "insufficient_scope",
        }
    }

    /// The RFC 6750 `WWW-Authenticate` value for bearer-token refusals that have one:
    /// `insufficient_scope` with the scopes the rule requires. (The 401 value, with its
    /// `invalid_token` description, is the engine's.)
    pub fn www_authenticate(&self, requirement: &Requirement) -> Option<String> {
        match self {
            Self::InsufficientScope { .. } => Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"{}\"",
                requirement.scopes.join(" ")
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use serde_json::json;

    fn rules(json: &str) -> Rules {
        let config: RulesConfig = serde_json::from_str(json).unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        assert!(problems.is_empty(), "{:?}", problems.into_result());
        config.compile().unwrap()
    }

    fn problems(json: &str) -> Vec<(String, String)> {
        let config: RulesConfig = serde_json::from_str(json).unwrap();
        let mut problems = Problems::default();
        config.validate(&mut problems);
        problems
            .into_result()
            .map_or_else(|e| e.problems, |()| Vec::new())
            .into_iter()
            .map(|p| (p.path, p.reason))
            .collect()
    }

    fn facts<'a>(host: &'a str, method: &'a str, path: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            authority: Some(host.as_bytes()),
            path,
            method: method.as_bytes(),
            peer_principal: None,
        }
    }

    /// "allow", "deny", "require", with the rule's name.
    fn outcome(rules: &Rules, request: &RequestFacts<'_>) -> (String, &'static str) {
        let decision = rules.decide(request);
        let kind = match decision {
            RuleDecision::AllowAnonymous { .. } => "allow",
            RuleDecision::Deny { .. } => "deny",
            RuleDecision::Require { .. } => "require",
            RuleDecision::BadAuthority => "bad_authority",
        };
        (decision.rule_name().to_owned(), kind)
    }

    #[test]
    fn no_rules_deny_by_default() {
        let r = rules("{}");
        assert_eq!(
            outcome(&r, &facts("a.com", "GET", "/")),
            ("no_match".to_owned(), "deny")
        );
        let r = rules(r#"{"no_match":"allow_anonymous"}"#);
        assert_eq!(
            outcome(&r, &facts("a.com", "GET", "/")),
            ("no_match".to_owned(), "allow")
        );
        let err = serde_json::from_str::<RulesConfig>(r#"{"no_match":"require"}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown variant `require`"),
            "{err}"
        );
    }

    #[test]
    fn first_match_wins() {
        let r = rules(
            r#"{"rules":[
                {"name":"health","paths":[{"exact":"/healthz"}],"action":"allow_anonymous"},
                {"paths":[{"path_separated_prefix":"/admin"}],"action":"deny"},
                {"name":"api","action":{"require":{"providers":["idp"]}}}
            ]}"#,
        );
        assert_eq!(
            outcome(&r, &facts("a", "GET", "/healthz")),
            ("health".to_owned(), "allow")
        );
        assert_eq!(
            outcome(&r, &facts("a", "GET", "/admin/x")),
            ("rules[1]".to_owned(), "deny")
        );
        assert_eq!(
            outcome(&r, &facts("a", "GET", "/healthz/x")),
            ("api".to_owned(), "require")
        );
        let RuleDecision::Require { rule, requirement } = r.decide(&facts("a", "GET", "/x")) else {
            panic!("expected require");
        };
        assert_eq!(rule.index, 2);
        assert!(requirement.accepts(Credential::Jwt { provider: "idp" }));
        assert!(!requirement.accepts(Credential::Jwt { provider: "other" }));
        assert!(!requirement.accepts(Credential::ApiKey));
        assert!(!requirement.accepts(Credential::Introspection));
    }

    #[test]
    fn hosts_ignore_port_case_and_trailing_dot() {
        let r = rules(
            r#"{"rules":[
                {"name":"api","hosts":["api.example.com"],"action":"allow_anonymous"},
                {"name":"sub","hosts":["*.Example.org"],"action":"allow_anonymous"},
                {"name":"v6","hosts":["[::1]"],"action":"allow_anonymous"}
            ]}"#,
        );
        for host in [
            "api.example.com",
            "API.Example.COM:8443",
            "api.example.com.",
        ] {
            assert_eq!(outcome(&r, &facts(host, "GET", "/")).0, "api", "{host}");
        }
        assert_eq!(outcome(&r, &facts("a.b.example.org", "GET", "/")).0, "sub");
        assert_eq!(outcome(&r, &facts("example.org", "GET", "/")).0, "no_match");
        assert_eq!(
            outcome(&r, &facts("evilexample.org", "GET", "/")).0,
            "no_match"
        );
        assert_eq!(outcome(&r, &facts("[::1]:80", "GET", "/")).0, "v6");
        for bad in [
            "api.example.com:x",
            "api.example.com:443:1",
            "api.example.com:+443",
            "evil.com@api.example.com",
        ] {
            assert_eq!(
                outcome(&r, &facts(bad, "GET", "/")),
                ("bad_authority".to_owned(), "bad_authority"),
                "{bad}"
            );
        }
        let no_host = RequestFacts {
            authority: None,
            ..facts("", "GET", "/")
        };
        assert_eq!(outcome(&r, &no_host).0, "no_match");
        // Without a rule on hosts, the Host is never read.
        let r = rules(r#"{"rules":[{"name":"all","action":"allow_anonymous"}]}"#);
        assert_eq!(outcome(&r, &facts("a.com:x", "GET", "/")).0, "all");
    }

    #[test]
    fn paths_exact_prefix_separated_and_regex() {
        let r = rules(
            r#"{"rules":[
                {"name":"exact","paths":[{"exact":"/login"}],"action":"allow_anonymous"},
                {"name":"seg","paths":[{"path_separated_prefix":"/admin"}],"action":"deny"},
                {"name":"prefix","paths":[{"prefix":"/pub"}],"action":"allow_anonymous"},
                {"name":"regex","paths":[{"regex":"/v[0-9]+/items"}],"action":"allow_anonymous"},
                {"name":"icase","paths":[{"exact":"/Docs","ignore_case":true}],"action":"allow_anonymous"}
            ]}"#,
        );
        let name = |path: &str| outcome(&r, &facts("h", "GET", path)).0;
        assert_eq!(name("/login"), "exact");
        assert_eq!(name("/login/"), "no_match");
        assert_eq!(name("/LOGIN"), "no_match");
        assert_eq!(name("/admin"), "seg");
        assert_eq!(name("/admin/"), "seg");
        assert_eq!(name("/admin/users"), "seg");
        assert_eq!(name("/administrator"), "no_match");
        assert_eq!(name("/Admin"), "no_match");
        assert_eq!(name("/public"), "prefix");
        assert_eq!(name("/pub"), "prefix");
        assert_eq!(name("/v2/items"), "regex");
        // Anchored: a regex matches the whole path only.
        assert_eq!(name("/x/v2/items"), "no_match");
        assert_eq!(name("/v2/items/1"), "no_match");
        assert_eq!(name("/docs"), "icase");
        assert_eq!(name("/DOCS"), "icase");
    }

    #[test]
    fn rules_see_the_normalised_path() {
        let r = rules(
            r#"{"rules":[{"paths":[{"path_separated_prefix":"/admin"}],"action":"deny"}],
                "no_match":"allow_anonymous"}"#,
        );
        let normalizer = crate::path::PathNormalizationConfig::default().compile();
        for raw in [
            "/public/../admin",
            "//admin",
            "/%61dmin/x",
            "/public/%2e%2e/admin",
        ] {
            let path = normalizer.normalize(raw.as_bytes()).unwrap().path;
            assert_eq!(
                outcome(&r, &facts("h", "GET", &path)),
                ("rules[0]".to_owned(), "deny"),
                "{raw}"
            );
        }
    }

    #[test]
    fn methods_are_case_sensitive() {
        let r = rules(r#"{"rules":[{"methods":["GET","HEAD"],"action":"allow_anonymous"}]}"#);
        assert_eq!(outcome(&r, &facts("h", "HEAD", "/")).1, "allow");
        assert_eq!(outcome(&r, &facts("h", "get", "/")).1, "deny");
        assert_eq!(outcome(&r, &facts("h", "POST", "/")).1, "deny");
    }

    #[test]
    fn principals_like_istio() {
        let r = rules(
            r#"{"rules":[
                {"name":"frontend","principals":["cluster.local/ns/default/sa/frontend"],"action":"allow_anonymous"},
                {"name":"spiffe","principals":["spiffe://cluster.local/ns/jobs/sa/cron"],"action":"allow_anonymous"},
                {"name":"prefix","principals":["cluster.local/ns/batch/*"],"action":"allow_anonymous"},
                {"name":"suffix","principals":["*/sa/admin"],"action":"allow_anonymous"},
                {"name":"any","principals":["*"],"action":{"require":{"api_keys":true}}}
            ]}"#,
        );
        let name = |principal: Option<&str>| {
            let request = RequestFacts {
                peer_principal: principal.map(str::as_bytes),
                ..facts("h", "GET", "/")
            };
            outcome(&r, &request).0
        };
        assert_eq!(
            name(Some("spiffe://cluster.local/ns/default/sa/frontend")),
            "frontend"
        );
        assert_eq!(
            name(Some("cluster.local/ns/default/sa/frontend")),
            "frontend"
        );
        assert_eq!(
            name(Some("spiffe://cluster.local/ns/jobs/sa/cron")),
            "spiffe"
        );
        assert_eq!(name(Some("spiffe://cluster.local/ns/batch/sa/x")), "prefix");
        assert_eq!(name(Some("spiffe://other.domain/ns/x/sa/admin")), "suffix");
        assert_eq!(
            name(Some("spiffe://cluster.local/ns/default/sa/backend")),
            "any"
        );
        // Without a verified peer, no principal rule matches: the default decides.
        assert_eq!(name(None), "no_match");
        assert_eq!(name(Some("")), "no_match");
    }

    #[test]
    fn all_conditions_must_hold() {
        let r = rules(
            r#"{"rules":[{"hosts":["a.com"],"methods":["POST"],"paths":[{"prefix":"/w"}],
                "action":"allow_anonymous"}]}"#,
        );
        assert_eq!(outcome(&r, &facts("a.com", "POST", "/w")).1, "allow");
        assert_eq!(outcome(&r, &facts("b.com", "POST", "/w")).1, "deny");
        assert_eq!(outcome(&r, &facts("a.com", "GET", "/w")).1, "deny");
        assert_eq!(outcome(&r, &facts("a.com", "POST", "/r")).1, "deny");
    }

    fn requirement(json: &str) -> Requirement {
        let r = rules(&format!(
            r#"{{"rules":[{{"action":{{"require":{json}}}}}]}}"#
        ));
        match r.decide(&facts("h", "GET", "/")) {
            RuleDecision::Require { requirement, .. } => requirement.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn claims_one_of_values_arrays_and_pointers() {
        let req = requirement(
            r#"{"providers":["idp"],"claims":{"groups":["admins","ops"],"/realm/tier":["gold"]}}"#,
        );
        assert_eq!(
            req.authorize(&json!({"groups":["dev","ops"],"realm":{"tier":"gold"}})),
            Ok(())
        );
        assert_eq!(
            req.authorize(&json!({"groups":"admins","realm":{"tier":"gold"}})),
            Ok(())
        );
        let refusal = req
            .authorize(&json!({"groups":["dev"],"realm":{"tier":"gold"}}))
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::ClaimMismatch {
                claim: "groups".to_owned()
            }
        );
        assert_eq!(refusal.status(), 403);
        assert_eq!(refusal.reason(), "claim_mismatch");
        assert_eq!(
            req.authorize(&json!({"groups":"ops","realm":{"tier":["silver"]}})),
            Err(Refusal::ClaimMismatch {
                claim: "/realm/tier".to_owned()
            })
        );
        // Non-string values never match a string.
        assert!(req
            .authorize(&json!({"groups":[1,true],"realm":{"tier":"gold"}}))
            .is_err());
        assert!(req.authorize(&json!({})).is_err());
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let req = requirement(r#"{"api_keys":true,"scopes":["read","write"]}"#);
        assert_eq!(
            req.authorize(&json!({"scope":"openid read  write"})),
            Ok(())
        );
        assert_eq!(req.authorize(&json!({"scp":["write","read"]})), Ok(()));
        assert_eq!(req.authorize(&json!({"scp":"read write"})), Ok(()));
        let refusal = req.authorize(&json!({"scope":"read"})).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::InsufficientScope {
                missing: vec!["write".to_owned()]
            }
        );
        assert_eq!(refusal.status(), 403);
        assert_eq!(refusal.reason(), "insufficient_scope");
        assert_eq!(
            refusal.www_authenticate(&req).as_deref(),
            Some(r#"Bearer error="insufficient_scope", scope="read write""#)
        );
        // `readwrite` is not `read`.
        assert!(req.authorize(&json!({"scope":"readwrite"})).is_err());
        assert!(req.authorize(&json!({"scope":["read","write"]})).is_ok());
        assert_eq!(Refusal::Unauthenticated.status(), 401);
        assert_eq!(Refusal::Denied.www_authenticate(&req), None);
    }

    #[test]
    fn api_key_identity_passes_rules_checks() {
        let req =
            requirement(r#"{"api_keys":true,"scopes":["read"],"claims":{"team":["payments"]}}"#);
        let keys_json = format!(
            r#"{{"keys":[{{"sha256":"{}","consumer":"alpha","scopes":["read"],"labels":{{"team":"payments"}}}}]}}"#,
            "43b55e4e8bedb56b2b27b73ae0cdbc9ff724dd55b1af0bd7e67d7e5c919c3d29"
        );
        let keys = serde_json::from_str::<crate::api_keys::ApiKeysConfig>(&keys_json)
            .unwrap()
            .compile();
        let headers: [(&[u8], &[u8]); 1] = [(b"x-api-key", b"alpha-key-1")];
        let crate::api_keys::ApiKeyOutcome::Valid(key) = keys.authenticate(&headers, None) else {
            panic!("key should be valid");
        };
        assert!(req.accepts(Credential::ApiKey));
        assert_eq!(req.authorize(&key.claims()), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let got = problems(
            r#"{"rules":[
                {"name":"a","hosts":["a.com:443","","*.ok.com"],"methods":["get"],
                 "paths":[{"exact":"x"},{"prefix":"/a","regex":"b"},{"regex":"("},{"path_separated_prefix":"/a/"}],
                 "principals":["ns/*/sa","spiffe://td/ns/x/sa/y"],
                 "action":{"require":{"claims":{"role":[]},"scopes":["a b"]}}},
                {"name":"a","action":{"require":{"providers":["idp","idp",""]}}}
            ]}"#,
        );
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].hosts[0]",
                "rules[0].hosts[1]",
                "rules[0].paths[0].exact",
                "rules[0].paths[1]",
                "rules[0].paths[2].regex",
                "rules[0].paths[3].path_separated_prefix",
                "rules[0].methods[0]",
                "rules[0].principals[0]",
                "rules[0].action.require",
                "rules[0].action.require.claims[\"role\"]",
                "rules[0].action.require.scopes[0]",
                "rules[1].name",
                "rules[1].action.require.providers[1]",
                "rules[1].action.require.providers[2]",
            ]
        );
        assert_eq!(
            got[6].1,
            "\"get\" is not an upper-case method (methods are case-sensitive)"
        );
        assert!(
            got[4].1.starts_with("invalid regular expression"),
            "{}",
            got[4].1
        );
        assert_eq!(
            got[8].1,
            "must accept at least one credential: `providers`, `api_keys` or `introspection`"
        );
        assert_eq!(got[11].1, "duplicate rule name \"a\"");
    }

    #[test]
    fn provider_references_name_their_paths() {
        let config: RulesConfig = serde_json::from_str(
            r#"{"rules":[{"action":"deny"},{"action":{"require":{"providers":["a","b"]}}}]}"#,
        )
        .unwrap();
        let refs: Vec<_> = config.provider_references().collect();
        assert_eq!(
            refs,
            [
                ("rules[1].action.require.providers[0]".to_owned(), "a"),
                ("rules[1].action.require.providers[1]".to_owned(), "b"),
            ]
        );
    }

    #[test]
    fn misspellings_are_refused() {
        for (json, expected) in [
            (
                r#"{"rules":[{"path":[],"action":"deny"}]}"#,
                "unknown field `path`",
            ),
            (
                r#"{"rules":[{"paths":[{"exact":"/","ignorecase":true}],"action":"deny"}]}"#,
                "unknown field `ignorecase`",
            ),
            (
                r#"{"rules":[{"action":{"require":{"provider":["a"]}}}]}"#,
                "unknown field `provider`",
            ),
            (
                r#"{"rules":[{"action":"allow"}]}"#,
                "unknown variant `allow`",
            ),
            (r#"{"rule":[]}"#, "unknown field `rule`"),
        ] {
            let err = serde_json::from_str::<RulesConfig>(json).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{json}: {err}");
        }
    }
}
