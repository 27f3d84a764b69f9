//! The two image variants of the Wasm image specification Istio's agent pulls
//! (solo-io/wasm `spec/spec.md` and `spec/spec-compat.md`; istio `pkg/wasm/imagefetcher.go`):
//!
//! - **oci**: config `application/vnd.module.wasm.config.v1+json` and exactly two layers, that
//!   same runtime config and the raw module as `application/vnd.module.wasm.content.layer.v1+wasm`.
//!   Istio's fetcher insists on two layers (`extractOCIArtifactImage`: "number of layers must be
//!   2"), which is what `wasme` pushed: an image with only the module layer is refused.
//!   The module layer's digest is the `.wasm` file's SHA-256.
//! - **compat**: a plain OCI image (`wasip1`/`wasm` platform) with one `tar+gzip` layer holding
//!   `plugin.wasm` and `runtime-config.json`, and the `module.wasm.image/variant: compat`
//!   annotation: what registries and tools that refuse custom media types accept.

use std::collections::BTreeMap;

use serde_json::json;

use super::tar_gz::{self, TarError};
use super::{annotation, Blob, Digest, Image};
use super::{OCI_IMAGE_CONFIG, OCI_LAYER_TAR_GZIP, WASM_CONFIG, WASM_CONTENT_LAYER};

/// The proxy-wasm ABI the plugins export (`proxy_abi_version_0_2_1`).
pub const ABI_VERSION: &str = "proxy_abi_version_0_2_1";

/// Which variant of the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Oci,
    Compat,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Oci, Variant::Compat];

    /// The tag of this variant for a version: `0.1.0` (oci) and `0.1.0-compat`.
    pub fn tag(self, version: &str) -> String {
        match self {
            Variant::Oci => version.to_owned(),
            Variant::Compat => format!("{version}-compat"),
        }
    }
}

/// What goes into a plugin's image besides the module.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// `palisade-auth`: the image title and the Envoy root id.
    pub name: String,
    pub description: String,
    pub version: String,
    /// Git revision the images were built from.
    pub revision: String,
    pub source: String,
    pub licenses: String,
    /// Digest of the plugin's config JSON Schema.
    pub config_schema_digest: Digest,
}

/// Builds one variant's image of `module`.
pub fn build(variant: Variant, module: &[u8], meta: &ImageMeta) -> Result<Image, TarError> {
    let runtime_config = Blob::json(
        WASM_CONFIG,
        &json!({
            "type": "envoy_proxy",
            "abiVersions": [ABI_VERSION],
            "config": { "root_ids": [meta.name] },
        }),
    );
    let mut annotations = BTreeMap::from([
        (annotation::TITLE.to_owned(), meta.name.clone()),
        (annotation::DESCRIPTION.to_owned(), meta.description.clone()),
        (annotation::VERSION.to_owned(), meta.version.clone()),
        (annotation::REVISION.to_owned(), meta.revision.clone()),
        (annotation::SOURCE.to_owned(), meta.source.clone()),
        (annotation::LICENSES.to_owned(), meta.licenses.clone()),
        (
            annotation::CONFIG_SCHEMA_DIGEST.to_owned(),
            meta.config_schema_digest.to_string(),
        ),
    ]);
    match variant {
        Variant::Oci => {
            let module = Blob::new(WASM_CONTENT_LAYER, module.to_vec());
            Ok(Image::new(
                runtime_config.clone(),
                vec![
                    (runtime_config, titled("runtime-config.json")),
                    (module, titled("plugin.wasm")),
                ],
                annotations,
            ))
        }
        Variant::Compat => {
            let (layer, config) = files_layer(&[
                ("plugin.wasm", module),
                ("runtime-config.json", &runtime_config.bytes),
            ])?;
            annotations.insert(annotation::WASM_VARIANT.to_owned(), "compat".to_owned());
            Ok(Image::new(
                config,
                vec![(layer, BTreeMap::new())],
                annotations,
            ))
        }
    }
}

/// One gzipped tar layer holding `files`, and the image config that names it: the Docker-style
/// shape Istio's compat variant and Kong's filters image both use.
pub fn files_layer(files: &[(&str, &[u8])]) -> Result<(Blob, Blob), TarError> {
    let tar = tar_gz::tar(files)?;
    let layer = Blob::new(OCI_LAYER_TAR_GZIP, tar_gz::gzip(&tar)?);
    let config = Blob::json(
        OCI_IMAGE_CONFIG,
        &json!({
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(&tar).to_string()] },
        }),
    );
    Ok((layer, config))
}

fn titled(title: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(annotation::TITLE.to_owned(), title.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::super::Manifest;
    use super::*;

    fn meta() -> ImageMeta {
        ImageMeta {
            name: "palisade-auth".into(),
            description: "test".into(),
            version: "0.1.0".into(),
            revision: "abc123".into(),
            source: "https://example.com/palisade".into(),
            licenses: "Apache-2.0".into(),
            config_schema_digest: Digest::of(b"{}"),
        }
    }

    const MODULE: &[u8] = b"\0asm\x01\0\0\0module";

    fn manifest(image: &Image) -> Manifest {
        serde_json::from_slice(&image.manifest.bytes).unwrap()
    }

    #[test]
    fn oci_variant_has_the_wasm_config_and_two_layers() {
        let image = build(Variant::Oci, MODULE, &meta()).unwrap();
        let manifest = manifest(&image);
        assert_eq!(manifest.media_type, super::super::OCI_MANIFEST);
        assert_eq!(manifest.config.media_type, WASM_CONFIG);
        let types: Vec<_> = manifest
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        assert_eq!(types, [WASM_CONFIG, WASM_CONTENT_LAYER]);
        assert_eq!(manifest.layers[1].digest, Digest::of(MODULE));
        assert_eq!(manifest.layers[1].size, MODULE.len() as u64);
        assert_eq!(manifest.layers[0].digest, manifest.config.digest);
        assert_eq!(manifest.annotations[annotation::REVISION], "abc123");
        assert_eq!(manifest.annotations[annotation::VERSION], "0.1.0");
        assert_eq!(
            manifest.annotations[annotation::CONFIG_SCHEMA_DIGEST],
            Digest::of(b"{}").to_string()
        );
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(config["config"]["root_ids"][0], "palisade-auth");
        assert_eq!(image.blobs().len(), 2);
    }

    #[test]
    fn compat_variant_is_a_plain_image_with_one_gzip_layer() {
        let image = build(Variant::Compat, MODULE, &meta()).unwrap();
        let manifest = manifest(&image);
        assert_eq!(manifest.config.media_type, OCI_IMAGE_CONFIG);
        assert_eq!(manifest.layers.len(), 1);
        assert_eq!(manifest.layers[0].media_type, OCI_LAYER_TAR_GZIP);
        assert_eq!(manifest.annotations[annotation::WASM_VARIANT], "compat");
        let config: serde_json::Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(config["os"], "wasip1");
        assert_eq!(config["architecture"], "wasm");
        let mut gz = flate2::read::GzDecoder::new(image.layers[0].bytes.as_slice());
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut gz, &mut tar).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            Digest::of(&tar).to_string()
        );
        assert_eq!(&tar[..11], b"plugin.wasm");
        assert_eq!(&tar[512..512 + MODULE.len()], MODULE);
    }

    #[test]
    fn same_inputs_same_digests_and_the_revision_is_covered() {
        for variant in Variant::ALL {
            let a = build(variant, MODULE, &meta()).unwrap();
            let b = build(variant, MODULE, &meta()).unwrap();
            assert_eq!(a, b);
            let mut other = meta();
            other.revision = "def456".into();
            let c = build(variant, MODULE, &other).unwrap();
            assert_ne!(a.digest(), c.digest());
        }
    }

    #[test]
    fn tags() {
        assert_eq!(Variant::Oci.tag("0.1.0"), "0.1.0");
        assert_eq!(Variant::Compat.tag("0.1.0"), "0.1.0-compat");
    }
}
