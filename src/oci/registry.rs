//! Pushing images with the OCI distribution API (distribution-spec `spec.md`, "Push"): each
//! blob the registry lacks goes up as one monolithic upload (`POST /v2/<name>/blobs/uploads/`,
//! then `PUT <location>?digest=`), then the manifest is `PUT` under its tag.
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: `Bearer` gets a token from
//! the realm for the challenged scope (with basic credentials when given), `Basic` sends them
//! directly. Credentials never go over plain HTTP to a host that is not loopback.

use std::time::Duration;

use base64::Engine as _;
use ureq::http;

use super::{Blob, Digest, Image};

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{method} {url}: {reason}")]
    Transport {
        method: String,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        method: String,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Protocol(String),
    #[error("--ca-file: {0}")]
    Tls(String),
    #[error(
        "{reference} already names {existing}, not this build's {ours}: a node that cached \
         the old image under this tag would keep running it. Bump the version, or pass \
         --overwrite (and pin by digest, docs/deploying.md)"
    )]
    TagTaken {
        reference: String,
        existing: String,
        ours: String,
    },
}

/// Username and password (or identity token) for a registry.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

/// Where to push: `host[:port]` and an optional namespace (`127.0.0.1:5000/palisade`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub namespace: Option<String>,
}

impl Target {
    /// Parses `host[:port][/namespace...]`, with or without an `oci://` prefix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text
            .strip_prefix("oci://")
            .unwrap_or(text)
            .trim_end_matches('/');
        let (host, namespace) = match text.split_once('/') {
            Some((host, namespace)) => (host, Some(namespace.to_owned())),
            None => (text, None),
        };
        if host.is_empty() || text.contains("://") {
            return Err(format!(
                "{text:?} is not a registry (host[:port][/namespace])"
            ));
        }
        if let Some(namespace) = &namespace {
            let valid = namespace.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
            if !valid {
                return Err(format!(
                    "{namespace:?} is not a repository namespace (lowercase letters, digits, . _ - and /)"
                ));
            }
        }
        Ok(Self {
            host: host.to_owned(),
            namespace,
        })
    }

    /// The repository of an image named `name` under this target.
    pub fn repository(&self, name: &str) -> String {
        match &self.namespace {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name.to_owned(),
        }
    }

    /// `host/repository` as an image reference without tag.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{}", self.host, self.repository(name))
    }

    /// Is the host loopback (`localhost`, `127.0.0.0/8`, `[::1]`)?
    pub fn is_loopback(&self) -> bool {
        is_loopback_authority(&self.host)
    }
}

/// Is `host[:port]` loopback (`localhost`, `127.0.0.0/8`, `[::1]`)?
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Is `url` plain HTTP to a loopback host? (`http://127.0.0.1:5001/token`; a userinfo part
/// does not count as the host.)
fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    is_loopback_authority(host)
}

/// The HTTP client: no redirects (credentials must not follow one to another host), statuses
/// read as answers.
fn agent(tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .max_redirects(0)
        .tls_config(tls)
        .build()
        .into()
}

/// A client for one registry.
pub struct Registry {
    base: String,
    loopback: bool,
    credentials: Option<Credentials>,
    agent: ureq::Agent,
    /// The `Authorization` value that last worked (a bearer token is scoped per repository, so
    /// a challenge on another repository fetches a new one).
    authorization: Option<String>,
}

struct Response {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Registry {
    pub fn new(target: &Target, plain_http: bool, credentials: Option<Credentials>) -> Self {
        let scheme = if plain_http { "http" } else { "https" };
        Self {
            base: format!("{scheme}://{}", target.host),
            loopback: target.is_loopback(),
            credentials,
            agent: agent(ureq::tls::TlsConfig::default()),
            authorization: None,
        }
    }

    /// Trusts only the certificate authorities in `pem` (a registry with a private CA), as
    /// curl's `--cacert` does, instead of the bundled public roots.
    pub fn trusting(mut self, pem: &[u8]) -> Result<Self, PushError> {
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(err) => return Err(PushError::Tls(format!("not a PEM file: {err}"))),
            }
        }
        if certs.is_empty() {
            return Err(PushError::Tls(
                "the CA file holds no certificate".to_owned(),
            ));
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
            .build();
        self.agent = agent(tls);
        Ok(self)
    }

    /// Pushes `image` to `repository` under `tag`; returns the manifest digest the registry
    /// reports (checked against ours). A tag that already names other content is left alone
    /// unless `overwrite`: pushing the same image again is fine.
    pub fn push(
        &mut self,
        repository: &str,
        tag: &str,
        image: &Image,
        overwrite: bool,
    ) -> Result<Digest, PushError> {
        if !overwrite {
            self.check_tag(repository, tag, image)?;
        }
        for blob in image.blobs() {
            if !self.has_blob(repository, &blob.digest)? {
                self.upload(repository, blob)?;
            }
        }
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base);
        let response = self.send(
            "PUT",
            &url,
            &[("content-type", image.manifest.media_type.as_str())],
            Some(&image.manifest.bytes),
        )?;
        expect(&response, "PUT", &url, &[201])?;
        match header(&response, "docker-content-digest") {
            Some(reported) if reported != image.digest().to_string() => {
                Err(PushError::Protocol(format!(
                    "{url}: the registry stored the manifest as {reported}, not {}",
                    image.digest()
                )))
            }
            _ => Ok(image.digest().clone()),
        }
    }

    /// Refuses a `tag` that already names content other than `image` (the same image again is
    /// fine). Checked for every image before any is pushed, so a taken tag stops a push
    /// before it half-happens.
    pub fn check_tag(
        &mut self,
        repository: &str,
        tag: &str,
        image: &Image,
    ) -> Result<(), PushError> {
        match self.tag_digest(repository, tag)? {
            Some(existing) if existing != image.digest().to_string() => Err(PushError::TagTaken {
                reference: format!("{repository}:{tag}"),
                existing,
                ours: image.digest().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The digest of the manifest `tag` names now, or `None` when the tag does not exist.
    /// Every manifest kind is accepted: a registry answers 404 for a tag whose manifest is of a
    /// type the request does not accept (Distribution: "OCI index found, but accept header
    /// does not support OCI indexes"), which would read as a free tag.
    fn tag_digest(&mut self, repository: &str, tag: &str) -> Result<Option<String>, PushError> {
        const ANY_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json, \
            application/vnd.oci.image.index.v1+json, \
            application/vnd.docker.distribution.manifest.v2+json, \
            application/vnd.docker.distribution.manifest.list.v2+json";
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base);
        let accept = [("accept", ANY_MANIFEST)];
        let response = self.send("HEAD", &url, &accept, None)?;
        match response.status {
            200 => match header(&response, "docker-content-digest") {
                Some(digest) => Ok(Some(digest)),
                // No digest header: the manifest's own bytes say it.
                None => {
                    let response = self.send("GET", &url, &accept, None)?;
                    expect(&response, "GET", &url, &[200])?;
                    Ok(Some(Digest::of(&response.body).to_string()))
                }
            },
            404 => Ok(None),
            _ => expect(&response, "HEAD", &url, &[]).map(|()| None),
        }
    }

    fn has_blob(&mut self, repository: &str, digest: &Digest) -> Result<bool, PushError> {
        let url = format!("{}/v2/{repository}/blobs/{digest}", self.base);
        let response = self.send("HEAD", &url, &[], None)?;
        match response.status {
            200 => Ok(true),
            // A registry that keeps blobs in object storage redirects to them (Distribution with
            // S3 answers 307): the blob exists.
            301..=303 | 307 | 308 => Ok(true),
            404 => Ok(false),
            _ => expect(&response, "HEAD", &url, &[]).map(|()| false),
        }
    }

    fn upload(&mut self, repository: &str, blob: &Blob) -> Result<(), PushError> {
        let url = format!("{}/v2/{repository}/blobs/uploads/", self.base);
        let response = self.send("POST", &url, &[], Some(&[]))?;
        expect(&response, "POST", &url, &[202])?;
        let location = header(&response, "location").ok_or_else(|| {
            PushError::Protocol(format!("POST {url}: 202 without a Location header"))
        })?;
        let (location, same_origin) = resolve_location(&self.base, &location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={}", blob.digest);
        let headers = [("content-type", "application/octet-stream")];
        // The registry's credentials go to the registry only: an upload URL elsewhere (object
        // storage, another host, plain HTTP) carries its own authority, if any, in the URL.
        let response = if same_origin {
            self.send("PUT", &put, &headers, Some(&blob.bytes))?
        } else {
            self.raw("PUT", &put, &headers, Some(&blob.bytes), None)?
        };
        expect(&response, "PUT", &put, &[201])
    }

    /// One request, answering an authentication challenge once if the registry sends one.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, PushError> {
        let response = self.raw(method, url, headers, body, self.authorization.clone())?;
        if response.status != 401 {
            return Ok(response);
        }
        let challenge = header(&response, "www-authenticate").ok_or_else(|| {
            PushError::Auth(format!(
                "{method} {url}: 401 without a WWW-Authenticate challenge"
            ))
        })?;
        let authorization = self.answer(&challenge)?;
        self.authorization = Some(authorization);
        self.raw(method, url, headers, body, self.authorization.clone())
    }

    fn raw(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        authorization: Option<String>,
    ) -> Result<Response, PushError> {
        let transport = |reason: String| PushError::Transport {
            method: method.to_owned(),
            url: url.to_owned(),
            reason,
        };
        let mut request = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let result = match body {
            Some(bytes) => request
                .body(bytes.to_vec())
                .map(|request| self.agent.run(request)),
            None => request.body(()).map(|request| self.agent.run(request)),
        };
        let mut response = result
            .map_err(|err| transport(err.to_string()))?
            .map_err(|err| transport(err.to_string()))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .read_to_vec()
                .map_err(|err| transport(err.to_string()))?
        };
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// The `Authorization` header value answering `challenge`.
    fn answer(&self, challenge: &str) -> Result<String, PushError> {
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| PushError::Auth(format!("cannot read the challenge {challenge:?}")))?;
        let basic = self.basic()?;
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                PushError::Auth("the registry asks for a username and password".to_owned())
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(PushError::Auth(format!(
                "unsupported authentication scheme {scheme:?}"
            )));
        }
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| PushError::Auth("bearer challenge without a realm".to_owned()))?;
        // Credentials go to a token realm in clear only on loopback, whatever the registry's
        // own host: a loopback registry (a port-forward) may name a remote token service.
        let allowed = realm.starts_with("https://") || is_loopback_http(&realm);
        if !allowed && (basic.is_some() || !realm.starts_with("http://")) {
            return Err(PushError::Auth(format!(
                "refusing the token realm {realm:?}: not HTTPS"
            )));
        }
        let mut query: Vec<String> = Vec::new();
        for (key, value) in &params {
            if key == "service" || key == "scope" {
                query.push(format!("{key}={}", percent_encode(value)));
            }
        }
        let url = if query.is_empty() {
            realm
        } else {
            let separator = if realm.contains('?') { '&' } else { '?' };
            format!("{realm}{separator}{}", query.join("&"))
        };
        let response = self.raw("GET", &url, &[], None, basic)?;
        expect(&response, "GET", &url, &[200])?;
        let token: serde_json::Value = serde_json::from_slice(&response.body)
            .map_err(|err| PushError::Auth(format!("GET {url}: not a token response: {err}")))?;
        let token = token["token"]
            .as_str()
            .or_else(|| token["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PushError::Auth(format!("GET {url}: the response has no token")))?;
        Ok(format!("Bearer {token}"))
    }

    /// `Basic <base64>` for the credentials, refused over plain HTTP to a remote host.
    fn basic(&self) -> Result<Option<String>, PushError> {
        let Some(credentials) = &self.credentials else {
            return Ok(None);
        };
        if self.base.starts_with("http://") && !self.loopback {
            return Err(PushError::Auth(
                "refusing to send credentials over plain HTTP to a host that is not loopback"
                    .to_owned(),
            ));
        }
        let pair = format!("{}:{}", credentials.username, credentials.password);
        Ok(Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )))
    }
}

fn header(response: &Response, name: &str) -> Option<String> {
    response
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn expect(response: &Response, method: &str, url: &str, ok: &[u16]) -> Result<(), PushError> {
    if ok.contains(&response.status) {
        return Ok(());
    }
    let body = String::from_utf8_lossy(&response.body);
    Err(PushError::Status {
        method: method.to_owned(),
        url: url.to_owned(),
        status: response.status,
        body: body.chars().take(300).collect(),
    })
}

/// `Bearer realm="https://auth",service="registry",scope="repository:a:pull,push"` as the
/// scheme and its parameters (RFC 7235 auth-params; quoted values may hold commas).
pub fn parse_challenge(text: &str) -> Option<(String, Vec<(String, String)>)> {
    let text = text.trim();
    let (scheme, mut rest) = match text.split_once(' ') {
        Some((scheme, rest)) => (scheme, rest.trim_start()),
        None => (text, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, quoted.get(end?..)?)
        } else {
            match after.split_once(',') {
                Some((value, remainder)) => (value.trim().to_owned(), remainder),
                None => (after.trim().to_owned(), ""),
            }
        };
        params.push((key, value));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_owned(), params))
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An upload `Location` as a URL, and whether it is on the registry's own origin (`base`,
/// `scheme://host[:port]`). Relative locations are resolved against the registry.
fn resolve_location(base: &str, location: &str) -> (String, bool) {
    if location.starts_with("http://") || location.starts_with("https://") {
        let origin_end = location
            .find("://")
            .and_then(|at| location[at + 3..].find('/').map(|slash| at + 3 + slash))
            .unwrap_or(location.len());
        let same = location[..origin_end].eq_ignore_ascii_case(base);
        (location.to_owned(), same)
    } else if location.starts_with('/') {
        (format!("{base}{location}"), true)
    } else {
        (format!("{base}/{location}"), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_locations_resolve_and_only_the_registry_gets_credentials() {
        let base = "https://registry.example.com";
        assert_eq!(
            resolve_location(base, "/v2/a/blobs/uploads/1?x=y"),
            (
                "https://registry.example.com/v2/a/blobs/uploads/1?x=y".into(),
                true
            )
        );
        assert_eq!(
            resolve_location(base, "v2/a/blobs/uploads/1"),
            (
                "https://registry.example.com/v2/a/blobs/uploads/1".into(),
                true
            )
        );
        assert!(resolve_location(base, "https://registry.example.com/v2/a/u/1").1);
        assert!(resolve_location(base, "https://REGISTRY.example.com/v2/a/u/1").1);
        for elsewhere in [
            "https://storage.example.net/bucket/u/1?sig=s",
            "http://registry.example.com/v2/a/u/1",
            "https://registry.example.com:8443/v2/a/u/1",
            "https://registry.example.com.evil.example/v2",
            "https://registry.example.com",
        ] {
            let (url, same) = resolve_location(base, elsewhere);
            assert_eq!(url, elsewhere);
            assert_eq!(
                same,
                elsewhere == "https://registry.example.com",
                "{elsewhere}"
            );
        }
    }

    #[test]
    fn reads_a_bearer_challenge() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:palisade/palisade-auth:pull,push""#,
        )
        .unwrap();
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.example.com/token".into()),
                ("service".into(), "registry.example.com".into()),
                (
                    "scope".into(),
                    "repository:palisade/palisade-auth:pull,push".into()
                ),
            ]
        );
    }

    #[test]
    fn reads_a_basic_challenge_and_unquoted_values() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#).unwrap(),
            (
                "Basic".into(),
                vec![("realm".into(), "Registry Realm".into())]
            )
        );
        assert_eq!(
            parse_challenge("Bearer realm=https://a/t, service=r")
                .unwrap()
                .1,
            vec![
                ("realm".into(), "https://a/t".into()),
                ("service".into(), "r".into())
            ]
        );
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("oci://127.0.0.1:5000/team/palisade/").unwrap(),
            Target {
                host: "127.0.0.1:5000".into(),
                namespace: Some("team/palisade".into())
            }
        );
        let bare = Target::parse("registry.example.com").unwrap();
        assert_eq!(bare.namespace, None);
        assert_eq!(
            bare.image("palisade-auth"),
            "registry.example.com/palisade-auth"
        );
        assert!(!bare.is_loopback());
        assert!(Target::parse("localhost:5000").unwrap().is_loopback());
        assert!(Target::parse("[::1]:5000").unwrap().is_loopback());
        assert!(Target::parse("127.0.0.2:5000").unwrap().is_loopback());
        assert!(!Target::parse("127.evil.example:5000")
            .unwrap()
            .is_loopback());
        assert!(Target::parse("https://registry").is_err());
        assert!(Target::parse("registry/Team").is_err());
    }

    #[test]
    fn encodes_token_query_values() {
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn a_token_realm_in_clear_is_loopback_or_refused() {
        for realm in [
            "http://127.0.0.1:5001/token",
            "http://localhost/token?x=1",
            "http://[::1]:5001/token",
        ] {
            assert!(is_loopback_http(realm), "{realm}");
        }
        for realm in [
            "http://192.0.2.2:5598/token",
            "http://localhost.example.com/token",
            "http://127.0.0.1@evil.example/token",
            "https://127.0.0.1/token",
            "http://10.0.0.1",
        ] {
            assert!(!is_loopback_http(realm), "{realm}");
        }
        // A loopback registry (a port-forward) naming a remote token service in clear.
        let registry = Registry::new(
            &Target::parse("127.0.0.1:5000").unwrap(),
            true,
            Some(Credentials {
                username: "u".into(),
                password: "p".into(),
            }),
        );
        let refused = registry
            .answer(r#"Bearer realm="http://192.0.2.2:5598/token",service="r""#)
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            r#"refusing the token realm "http://192.0.2.2:5598/token": not HTTPS"#
        );
    }

    #[test]
    fn never_sends_credentials_in_clear_to_a_remote_host() {
        let credentials = Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        });
        let remote = Registry::new(
            &Target::parse("registry.example.com").unwrap(),
            true,
            credentials.clone(),
        );
        assert!(matches!(remote.basic(), Err(PushError::Auth(_))));
        let local = Registry::new(&Target::parse("127.0.0.1:5000").unwrap(), true, credentials);
        assert_eq!(local.basic().unwrap().unwrap(), "Basic dTpw");
    }
}
