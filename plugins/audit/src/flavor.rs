//! Which proxy runs the plugin, and how the queue depth gauge is reported on it. Host-free:
//! the adapter hands in what the host answered.

/// Which proxy answers property reads: Envoy encodes integers as 8 little-endian bytes, Kong
/// as text, so the first `response.code` tells them apart at no extra cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Unknown,
    Envoy,
    Kong,
}

impl Flavor {
    /// The flavor a finished stream shows: from its `response.code` when it has one, else (the
    /// client went away before any response) from `is_kong`, the host probe, which is only
    /// called then.
    pub fn learn(response_code: Option<&[u8]>, is_kong: impl FnOnce() -> bool) -> Flavor {
        match response_code {
            Some(code) if code.len() == 8 => Flavor::Envoy,
            Some(_) => Flavor::Kong,
            None if is_kong() => Flavor::Kong,
            None => Flavor::Envoy,
        }
    }
}

/// How to bring the `palisade_audit_queue_depth` gauge from `before` to `depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepthReport {
    /// Envoy keeps one gauge for every worker: each adds its change, so it reads the sum.
    Add(i64),
    /// ngx_wasm_module traps on incrementing a gauge: each worker records its own depth.
    Set(u64),
}

/// The report to make, if any: none when the depth did not change, and none while the flavor
/// is unknown. Setting Envoy's shared gauge would overwrite the other workers' sum, and adding
/// to Kong's traps: the change waits (its `before` kept) until the flavor is known.
pub fn depth_report(flavor: Flavor, before: u64, depth: u64) -> Option<DepthReport> {
    if depth == before {
        return None;
    }
    match flavor {
        Flavor::Unknown => None,
        Flavor::Envoy => Some(DepthReport::Add(
            i64::try_from(depth).unwrap_or(i64::MAX) - i64::try_from(before).unwrap_or(i64::MAX),
        )),
        Flavor::Kong => Some(DepthReport::Set(depth)),
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    const ENVOY_200: [u8; 8] = 200u64.to_le_bytes();

    #[test]
    fn the_response_code_tells_the_proxies_apart_without_a_probe() {
        let probe = || unreachable!("no probe while there is a response code");
        assert_eq!(Flavor::learn(Some(&ENVOY_200), probe), Flavor::Envoy);
        assert_eq!(Flavor::learn(Some(b"200"), probe), Flavor::Kong);
    }

    #[test]
    fn without_a_response_code_the_host_probe_decides() {
        assert_eq!(Flavor::learn(None, || false), Flavor::Envoy);
        assert_eq!(Flavor::learn(None, || true), Flavor::Kong);
    }

    #[test]
    fn envoy_adds_changes_and_kong_sets_its_depth() {
        assert_eq!(
            depth_report(Flavor::Envoy, 5, 3),
            Some(DepthReport::Add(-2))
        );
        assert_eq!(depth_report(Flavor::Kong, 5, 3), Some(DepthReport::Set(3)));
        assert_eq!(depth_report(Flavor::Envoy, 3, 3), None);
        assert_eq!(depth_report(Flavor::Kong, 3, 3), None);
    }

    #[test]
    fn an_unknown_flavor_never_sets_the_shared_gauge() {
        assert_eq!(depth_report(Flavor::Unknown, 0, 4), None);
    }

    #[test]
    fn a_first_stream_reset_before_its_response_still_adds_on_envoy() {
        // The worker's first finished stream has no `response.code`; Envoy has no `ngx.*`.
        let flavor = Flavor::learn(None, || false);
        assert_eq!(depth_report(flavor, 0, 1), Some(DepthReport::Add(1)));
    }
}
