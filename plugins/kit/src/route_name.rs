//! Which host property names the request's route. Envoy answers `xds.route_name`; Kong 3.9+
//! `kong.route_name`. Asking for a property the host lacks costs a host call, and Kong logs an
//! error for each: once one of them answers, only that one is asked again.

use std::cell::Cell;

const ENVOY: [&str; 2] = ["xds", "route_name"];
const KONG: [&str; 2] = ["kong", "route_name"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Known {
    #[default]
    Unknown,
    Envoy,
    Kong,
}

/// The route name property of this VM's host, learned from its first answer.
#[derive(Debug, Default)]
pub struct RouteName(Cell<Known>);

impl RouteName {
    /// The route's name, asking `lookup` (a property read) for the property that answered
    /// before, or for Envoy's then Kong's until one does.
    pub fn read(&self, mut lookup: impl FnMut(&[&str]) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
        match self.0.get() {
            Known::Envoy => lookup(&ENVOY),
            Known::Kong => lookup(&KONG),
            Known::Unknown => {
                if let Some(route) = lookup(&ENVOY) {
                    self.0.set(Known::Envoy);
                    Some(route)
                } else if let Some(route) = lookup(&KONG) {
                    self.0.set(Known::Kong);
                    Some(route)
                } else {
                    None
                }
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
    fn after_the_first_answer_only_that_property_is_asked() {
        for (answers, first, then) in [
            (
                &["xds.route_name"][..],
                &["xds.route_name"][..],
                &["xds.route_name"][..],
            ),
            (
                &["kong.route_name"][..],
                &["xds.route_name", "kong.route_name"][..],
                &["kong.route_name"][..],
            ),
        ] {
            let route = RouteName::default();
            let mut asked = Vec::new();
            assert_eq!(
                route.read(host(answers, &mut asked)),
                Some(b"orders".to_vec())
            );
            assert_eq!(asked, first);
            let mut asked = Vec::new();
            assert_eq!(
                route.read(host(answers, &mut asked)),
                Some(b"orders".to_vec())
            );
            assert_eq!(asked, then);
        }
    }

    #[test]
    fn a_host_that_answers_neither_is_asked_both_again() {
        let route = RouteName::default();
        for _ in 0..2 {
            let mut asked = Vec::new();
            assert_eq!(route.read(host(&[], &mut asked)), None);
            assert_eq!(asked, ["xds.route_name", "kong.route_name"]);
        }
    }
}
