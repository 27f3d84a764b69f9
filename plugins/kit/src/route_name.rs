//! Which host property names the request's route. Envoy answers `xds.route_name`; Kong 3.9+
//! `kong.route_name`. Asking for a property the host lacks costs a host call, and Kong logs an
//! error line for each: so a VM asks only its own host's property, and on a Kong that lacks it
//! (3.4-3.8) stops asking after the first request.

use std::cell::Cell;

const ENVOY: [&str; 2] = ["xds", "route_name"];
const KONG: [&str; 2] = ["kong", "route_name"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Known {
    #[default]
    Unknown,
    Envoy,
    Kong,
    /// Kong before 3.9: no route name to read. Kong runs a filter chain only for a request
    /// its router matched, so a NotFound is the version's, not the request's.
    KongWithout,
}

/// The route name property of this VM's host, learned from its first request.
#[derive(Debug, Default)]
pub struct RouteName(Cell<Known>);

impl RouteName {
    /// The route's name, asking `lookup` (a property read) for this host's property: Envoy's,
    /// or Kong's when `on_kong` (asked once) says so. An Envoy route without a name answers
    /// NotFound for that request only, and is asked again for the next.
    pub fn read(
        &self,
        on_kong: impl FnOnce() -> bool,
        mut lookup: impl FnMut(&[&str]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        match self.0.get() {
            Known::Envoy => lookup(&ENVOY),
            Known::Kong => lookup(&KONG),
            Known::KongWithout => None,
            Known::Unknown if on_kong() => {
                let route = lookup(&KONG);
                self.0.set(if route.is_some() {
                    Known::Kong
                } else {
                    Known::KongWithout
                });
                route
            }
            Known::Unknown => {
                self.0.set(Known::Envoy);
                lookup(&ENVOY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// A host that answers `answers` (property path joined with '.') and records every ask.
    fn host<'a>(
        answers: &'a [&'a str],
        asked: &'a mut Vec<String>,
    ) -> impl FnMut(&[&str]) -> Option<Vec<u8>> + 'a {
        move |path| {
            let path = path.join(".");
            let answer = answers.contains(&path.as_str()).then(|| b"orders".to_vec());
            asked.push(path);
            answer
        }
    }

    #[test]
    fn each_host_is_asked_only_its_own_property() {
        for (kong, answers, asked_each_time) in [
            (false, &["xds.route_name"][..], &["xds.route_name"][..]),
            (true, &["kong.route_name"][..], &["kong.route_name"][..]),
        ] {
            let route = RouteName::default();
            for _ in 0..2 {
                let mut asked = Vec::new();
                assert_eq!(
                    route.read(|| kong, host(answers, &mut asked)),
                    Some(b"orders".to_vec())
                );
                assert_eq!(asked, asked_each_time);
            }
        }
    }

    #[test]
    fn a_kong_without_route_names_is_asked_once() {
        let route = RouteName::default();
        let mut asked = Vec::new();
        assert_eq!(route.read(|| true, host(&[], &mut asked)), None);
        assert_eq!(asked, ["kong.route_name"]);
        let mut asked = Vec::new();
        assert_eq!(route.read(|| true, host(&[], &mut asked)), None);
        assert!(asked.is_empty(), "{asked:?}");
    }

    #[test]
    fn an_envoy_route_without_a_name_is_asked_again() {
        let route = RouteName::default();
        for _ in 0..2 {
            let mut asked = Vec::new();
            assert_eq!(route.read(|| false, host(&[], &mut asked)), None);
            assert_eq!(asked, ["xds.route_name"]);
        }
    }
}
