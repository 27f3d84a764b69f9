//! Metric names both hosts accept: for names built from what the host or the configuration
//! says (an upstream's name), bounded before they are defined.

use std::borrow::Cow;

/// The longest name defined as it is. Kong traps on a name longer than 256 bytes with its
/// `pw:<filter>:` prefix (`max_metric_name_length`, docs/kong-proxy-wasm.md), which a metric
/// named after an upstream (resilience's circuit gauges, on a long Kong service host) could
/// reach; 200 leaves room for any filter name this project ships.
pub const MAX_NAME: usize = 200;

/// `name`, or, when longer than [`MAX_NAME`], its first bytes, a dot and a hash of the whole
/// (decimal): still one metric per name, and never a trap.
pub fn bounded(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_NAME {
        return Cow::Borrowed(name);
    }
    // FNV-1a: stable across builds and hosts.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // A dot and at most 20 digits follow.
    let mut cut = MAX_NAME - 21;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut bounded = String::with_capacity(MAX_NAME);
    bounded.push_str(name.get(..cut).unwrap_or_default());
    bounded.push('.');
    crate::decimal::push_u64(&mut bounded, hash);
    Cow::Owned(bounded)
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_apart() {
        assert!(matches!(
            bounded("palisade_audit.events_sent"),
            Cow::Borrowed(_)
        ));
        let host = "x".repeat(300);
        let (long_a, long_b) = (
            format!("palisade_resilience.circuit.{host}a"),
            format!("palisade_resilience.circuit.{host}b"),
        );
        let (a, b) = (bounded(&long_a), bounded(&long_b));
        assert!(a.len() <= MAX_NAME && a.len() > MAX_NAME - 21, "{a}");
        assert_ne!(a, b);
        assert!(a.starts_with("palisade_resilience.circuit.xxx"));
        // Never cut inside a character.
        let wide_name = "é".repeat(150);
        let wide = bounded(&wide_name);
        assert!(wide.len() <= MAX_NAME);
        let exact = "y".repeat(MAX_NAME);
        assert_eq!(bounded(&exact), exact.as_str());
    }
}
