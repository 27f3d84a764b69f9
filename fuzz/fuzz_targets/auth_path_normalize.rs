//! Path normalisation on hostile bytes: never panics; what it accepts is ASCII, starts with `/`
//! (or is `*`), has no dot segments, and normalises to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_auth::path::{
    EscapedSlashesAction, PathDisposition, PathNormalizationConfig, PathParameters,
};

fuzz_target!(|data: &[u8]| {
    let Some((&switches, raw)) = data.split_first() else {
        return;
    };
    let config = PathNormalizationConfig {
        normalize: switches & 1 != 0,
        merge_slashes: switches & 2 != 0,
        escaped_slashes: match (switches >> 2) & 3 {
            0 => EscapedSlashesAction::KeepUnchanged,
            1 => EscapedSlashesAction::RejectRequest,
            2 => EscapedSlashesAction::UnescapeAndRedirect,
            _ => EscapedSlashesAction::UnescapeAndForward,
        },
        path_parameters: match (switches >> 4) & 3 {
            0 => PathParameters::Keep,
            1 => PathParameters::Reject,
            _ => PathParameters::Strip,
        },
    };
    let normalizer = config.compile();
    let Ok(once) = normalizer.normalize(raw) else {
        return;
    };
    assert!(once.path.is_ascii());
    assert!(once.path.starts_with('/') || once.path == "*");
    assert!(once.rule_path().is_ascii());
    if config.normalize {
        assert!(
            once.path.split('/').all(|s| s != "." && s != ".."),
            "{:?}",
            once.path
        );
        // What rules match has no dot segment either, with or without its parameters.
        assert!(
            once.rule_path().split('/').all(|s| {
                let bare = s.split(';').next().unwrap_or_default();
                bare != "." && bare != ".."
            }),
            "{:?}",
            once.rule_path()
        );
        let twice = normalizer
            .normalize(once.path.as_bytes())
            .expect("a normalised path is accepted");
        assert_eq!(twice.path, once.path);
        assert_eq!(twice.disposition, PathDisposition::Unchanged);
    }
});
