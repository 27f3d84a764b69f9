//! `FaultInjection`: aborts and delays a share of requests, for chaos tests. Off unless
//! configured.

use std::time::Duration;

use palisade_kit::header_pairs::get;

use crate::config::{FaultConfig, Percent};

#[derive(Debug, Clone)]
pub struct FaultInjection {
    abort: Option<(u16, u32)>,
    delay: Option<(Duration, u32)>,
    only_with_header: Option<String>,
    only_with_header_value: Option<String>,
}

/// The faults chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    pub abort: Option<u16>,
    pub delay: Option<Duration>,
}

impl FaultInjection {
    /// `None` when no fault is configured.
    pub fn new(config: &FaultConfig) -> Option<Self> {
        let abort = config.abort.as_ref().map(|a| (a.status, a.percent.0));
        let delay = config
            .delay
            .as_ref()
            .map(|d| (d.duration.get(), d.percent.0));
        (abort.is_some() || delay.is_some()).then(|| Self {
            abort,
            delay,
            only_with_header: config.only_with_header.clone(),
            only_with_header_value: config.only_with_header_value.clone(),
        })
    }

    /// The header that makes a request eligible, if one is configured.
    pub fn only_with_header(&self) -> Option<&str> {
        self.only_with_header.as_deref()
    }

    /// Picks this request's faults; `roll` gives a fresh uniform random number per draw.
    pub fn choose(&self, headers: &[(&[u8], &[u8])], mut roll: impl FnMut() -> u64) -> Faults {
        if let Some(name) = &self.only_with_header {
            let eligible = match (get(headers, name), &self.only_with_header_value) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(sent), Some(value)) => sent == value.as_bytes(),
            };
            if !eligible {
                return Faults::default();
            }
        }
        let mut hit = |percent: u32| roll() % u64::from(Percent::WHOLE) < u64::from(percent);
        Faults {
            delay: self.delay.and_then(|(d, p)| hit(p).then_some(d)),
            abort: self.abort.and_then(|(s, p)| hit(p).then_some(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_kit::config::load;
    use palisade_kit::random::Xoshiro256;

    use crate::config::ResilienceConfig;

    fn faults(json: &str) -> Option<FaultInjection> {
        let config: ResilienceConfig = load(json.as_bytes()).unwrap();
        FaultInjection::new(&config.fault)
    }

    #[test]
    fn off_by_default() {
        assert!(faults("").is_none());
    }

    #[test]
    fn the_configured_share_is_aborted_and_delayed() {
        let faults = faults(
            r#"{"fault":{"abort":{"status":503,"percent":25},"delay":{"duration":"2s","percent":50}}}"#,
        )
        .unwrap();
        let mut rng = Xoshiro256::from_seed([7; 32]);
        let (mut aborted, mut delayed) = (0, 0);
        for _ in 0..10_000 {
            let chosen = faults.choose(&[], || rng.next_u64());
            aborted += usize::from(chosen.abort == Some(503));
            delayed += usize::from(chosen.delay == Some(Duration::from_secs(2)));
        }
        assert!((2_300..2_700).contains(&aborted), "{aborted}");
        assert!((4_700..5_300).contains(&delayed), "{delayed}");
    }

    #[test]
    fn only_requests_with_the_header_are_eligible() {
        let faults = faults(
            r#"{"fault":{"abort":{"status":500,"percent":100},"only_with_header":"x-chaos"}}"#,
        )
        .unwrap();
        assert_eq!(faults.choose(&[], || 0), Faults::default());
        assert_eq!(faults.choose(&[(b"x-chaos", b"1")], || 0).abort, Some(500));
    }

    /// With a value, a client that only knows the header's name cannot pick faults.
    #[test]
    fn a_required_value_keeps_faults_to_whoever_knows_it() {
        let faults = faults(
            r#"{"fault":{"abort":{"status":500,"percent":100},"only_with_header":"x-chaos",
                "only_with_header_value":"k7-chaos-run"}}"#,
        )
        .unwrap();
        assert_eq!(
            faults.choose(&[(b"x-chaos", b"k7-chaos-run")], || 0).abort,
            Some(500)
        );
        for sent in [&b"1"[..], b"", b"k7-chaos-run ", b"K7-CHAOS-RUN"] {
            assert_eq!(
                faults.choose(&[(b"x-chaos", sent)], || 0),
                Faults::default()
            );
        }
    }

    #[test]
    fn a_value_needs_its_header_and_must_be_a_header_value() {
        for (doc, reason) in [
            (
                r#"{"fault":{"delay":{"duration":"1s","percent":1},"only_with_header_value":"k"}}"#,
                "fault.only_with_header_value: needs only_with_header",
            ),
            (
                r#"{"fault":{"delay":{"duration":"1s","percent":1},"only_with_header":"x-chaos","only_with_header_value":""}}"#,
                "fault.only_with_header_value: must be a non-empty header value",
            ),
        ] {
            let err = load::<ResilienceConfig>(doc.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), reason);
        }
    }
}
