//! Which host property names the request's route. Envoy answers `xds.route_name`; Kong 3.9+
//! `kong.route_name`. Asking for a property the host lacks costs a host call, and Kong logs an
//! error line for each: so a VM asks only its own host's property, and a Kong older than 3.9
//! (known from `kong.version`, read once) is never asked.

use std::cell::Cell;

const ENVOY: [&str; 2] = ["xds", "route_name"];
const KONG: [&str; 2] = ["kong", "route_name"];
const KONG_VERSION: [&str; 2] = ["kong", "version"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Known {
    #[default]
    Unknown,
    Envoy,
    Kong,
    /// Kong before 3.9, which has no route name to read.
    KongWithout,
}

/// The route name property of this VM's host, learned from its first request.
#[derive(Debug, Default)]
pub struct RouteName(Cell<Known>);

impl RouteName {
    /// The route's name, asking `lookup` (a property read) for this host's property: Envoy's,
    /// or Kong's when `on_kong` (asked once) says so. A route without a name answers NotFound
    /// for that request only.
    pub fn read(
        &self,
        on_kong: impl FnOnce() -> bool,
        mut lookup: impl FnMut(&[&str]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let known = match self.0.get() {
            Known::Unknown if on_kong() => {
                // `kong.version` exists from 3.6; before that no `kong.*` property does.
                let known = if lookup(&KONG_VERSION).is_some_and(|v| has_route_name(&v)) {
                    Known::Kong
                } else {
                    Known::KongWithout
                };
                self.0.set(known);
                known
            }
            Known::Unknown => {
                self.0.set(Known::Envoy);
                Known::Envoy
            }
            known => known,
        };
        match known {
            Known::Envoy => lookup(&ENVOY),
            Known::Kong => lookup(&KONG),
            Known::KongWithout | Known::Unknown => None,
        }
    }
}

/// Whether a Kong `version` ("3.9.1", "3.10.0.2-enterprise") has `kong.route_name` and
/// `kong.service_name` (3.9+).
pub fn has_route_name(version: &[u8]) -> bool {
    kong_version_at_least(version, 3, 9)
}

/// Whether a Kong `version` ("3.9.1", "3.10.0.2-enterprise") is `major.minor` or later; a
/// version that does not read as one is not.
pub fn kong_version_at_least(version: &[u8], major: u32, minor: u32) -> bool {
    let mut parts = version.split(|&b| b == b'.').map(|part| {
        let digits = part.iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(part.get(..digits).unwrap_or_default())
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
    });
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(have_major), Some(have_minor)) => (have_major, have_minor) >= (major, minor),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// A host that answers `answers` (property path joined with '.'; `kong.version` is 3.10)
    /// and records every ask.
    fn host<'a>(
        answers: &'a [&'a str],
        asked: &'a mut Vec<String>,
    ) -> impl FnMut(&[&str]) -> Option<Vec<u8>> + 'a {
        move |path| {
            let path = path.join(".");
            let value = if path == "kong.version" {
                b"3.10.0".to_vec()
            } else {
                b"orders".to_vec()
            };
            let answer = answers.contains(&path.as_str()).then_some(value);
            asked.push(path);
            answer
        }
    }

    #[test]
    fn each_host_is_asked_only_its_own_property() {
        for (kong, answers, first, then) in [
            (
                false,
                &["xds.route_name"][..],
                &["xds.route_name"][..],
                &["xds.route_name"][..],
            ),
            (
                true,
                &["kong.version", "kong.route_name"][..],
                &["kong.version", "kong.route_name"][..],
                &["kong.route_name"][..],
            ),
        ] {
            let route = RouteName::default();
            for asked_now in [first, then] {
                let mut asked = Vec::new();
                assert_eq!(
                    route.read(|| kong, host(answers, &mut asked)),
                    Some(b"orders".to_vec())
                );
                assert_eq!(asked, asked_now);
            }
        }
    }

    #[test]
    fn a_kong_before_3_9_is_never_asked_for_the_route() {
        for version in [&b"3.8.1"[..], b"3.4.2.0", b"garbage"] {
            let route = RouteName::default();
            for _ in 0..2 {
                let mut asked = Vec::new();
                let read = route.read(
                    || true,
                    |path| {
                        asked.push(path.join("."));
                        (path == KONG_VERSION).then(|| version.to_vec())
                    },
                );
                assert_eq!(read, None);
                assert!(!asked.iter().any(|p| p == "kong.route_name"), "{asked:?}");
            }
        }
        // Kong 3.4/3.5 have no `kong.*` properties at all: asked once, then nothing.
        let route = RouteName::default();
        let mut asked = Vec::new();
        assert_eq!(route.read(|| true, host(&[], &mut asked)), None);
        assert_eq!(asked, ["kong.version"]);
        let mut asked = Vec::new();
        assert_eq!(route.read(|| true, host(&[], &mut asked)), None);
        assert!(asked.is_empty());
    }

    #[test]
    fn versions_with_route_names() {
        for (version, has) in [
            (&b"3.9.0"[..], true),
            (b"3.10.0.2-enterprise", true),
            (b"4.0", true),
            (b"3.8.1", false),
            (b"3", false),
            (b"", false),
        ] {
            assert_eq!(has_route_name(version), has, "{version:?}");
        }
        assert!(kong_version_at_least(b"3.7.1", 3, 7));
        assert!(kong_version_at_least(b"3.10.0", 3, 7));
        assert!(!kong_version_at_least(b"3.6.1", 3, 7));
        assert!(!kong_version_at_least(b"2.8.4", 3, 7));
        assert!(kong_version_at_least(b"4.0", 3, 7));
    }

    #[test]
    fn a_route_without_a_name_is_asked_again() {
        for (kong, answers) in [(false, &[][..]), (true, &["kong.version"][..])] {
            let route = RouteName::default();
            for _ in 0..2 {
                let mut asked = Vec::new();
                assert_eq!(route.read(|| kong, host(answers, &mut asked)), None);
                assert!(
                    asked.iter().any(|p| p.ends_with("route_name")),
                    "{kong}: {asked:?}"
                );
            }
        }
    }
}
