//! OCI images of the plugins, without Docker: the two variants of Istio's Wasm image
//! specification built byte for byte ([`wasm_image`]), written as an OCI image layout
//! ([`layout`]) and pushed with the OCI distribution API ([`registry`]).
//!
//! The JSON documents are written with `serde_json` from structs whose field order is fixed, so
//! the same module and metadata always give the same digests.

pub mod layout;
pub mod registry;
pub mod tar_gz;
pub mod wasm_image;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Manifest of an OCI image (both variants: Istio reads either through go-containerregistry).
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The index at the top of an OCI image layout.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Config of a runnable OCI image (the compat variant's).
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A gzip-compressed tar layer (the compat variant's only layer).
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The Wasm runtime config of the OCI variant (solo-io/wasm spec, which Istio implements).
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The raw Wasm module layer of the OCI variant. Not the CNCF `application/wasm` type that
/// generic OCI Wasm tools default to: Istio's agent looks for exactly this one.
pub const WASM_CONTENT_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

/// Standard annotation keys (OCI image spec, annotations.md).
pub mod annotation {
    pub const TITLE: &str = "org.opencontainers.image.title";
    pub const VERSION: &str = "org.opencontainers.image.version";
    pub const REVISION: &str = "org.opencontainers.image.revision";
    pub const SOURCE: &str = "org.opencontainers.image.source";
    pub const LICENSES: &str = "org.opencontainers.image.licenses";
    pub const DESCRIPTION: &str = "org.opencontainers.image.description";
    /// The tag of a manifest inside an OCI image layout's `index.json`.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// Required on compat images with an OCI tar+gzip layer (solo-io/wasm spec-compat.md).
    pub const WASM_VARIANT: &str = "module.wasm.image/variant";
    /// `sha256:<hex>` of the plugin's configuration JSON Schema (as `palisade schema` prints
    /// it, compact): tells which config shape an image accepts without running it.
    pub const CONFIG_SCHEMA_DIGEST: &str = "io.github.palisade-proxy.config-schema.digest";
}

/// A `sha256:<hex>` content digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            hex: hex(&Sha256::digest(bytes)),
        }
    }

    /// Parses `sha256:<64 lowercase hex digits>`.
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self {
            hex: hex.to_owned(),
        })
    }

    /// The 64 hex digits alone (Istio's `sha256` field, blob file names).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not a sha256 digest: {text:?}")))
    }
}

/// Lowercase hex; sha2's output no longer formats with `{:x}` in newer releases.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        for nibble in [byte >> 4, byte & 0x0f] {
            if let Some(&digit) = DIGITS.get(usize::from(nibble)) {
                out.push(char::from(digit));
            }
        }
    }
    out
}

/// Content with its media type: a layer, a config or a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: Digest::of(&bytes),
            bytes,
        }
    }

    /// A JSON document, serialised compactly (the bytes are what the digest covers).
    pub fn json<T: Serialize>(media_type: &str, value: &T) -> Self {
        // Serialising these plain structs and maps cannot fail.
        Self::new(media_type, serde_json::to_vec(value).unwrap_or_default())
    }

    /// The descriptor pointing at this blob.
    pub fn descriptor(&self, annotations: BTreeMap<String, String>) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            annotations,
        }
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index (the `index.json` of a layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// One image: its manifest and every blob the manifest names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// Builds the manifest over `config` and `layers` (in order), each layer with its
    /// descriptor annotations.
    pub fn new(
        config: Blob,
        layers: Vec<(Blob, BTreeMap<String, String>)>,
        annotations: BTreeMap<String, String>,
    ) -> Self {
        let manifest = Manifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.to_owned(),
            config: config.descriptor(BTreeMap::new()),
            layers: layers
                .iter()
                .map(|(blob, annotations)| blob.descriptor(annotations.clone()))
                .collect(),
            annotations,
        };
        Self {
            manifest: Blob::json(OCI_MANIFEST, &manifest),
            config,
            layers: layers.into_iter().map(|(blob, _)| blob).collect(),
        }
    }

    /// The image's digest: the manifest's (what `@sha256:` references and Istio's `sha256`
    /// field name).
    pub fn digest(&self) -> &Digest {
        &self.manifest.digest
    }

    /// Every blob the manifest references, config first, each once.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut blobs: Vec<&Blob> = Vec::with_capacity(1 + self.layers.len());
        for blob in std::iter::once(&self.config).chain(&self.layers) {
            if !blobs.iter().any(|seen| seen.digest == blob.digest) {
                blobs.push(blob);
            }
        }
        blobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_input() {
        // sha256("abc") from FIPS 180-2.
        let digest = Digest::of(b"abc");
        assert_eq!(
            digest.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Digest::parse(&digest.to_string()), Some(digest));
    }

    #[test]
    fn digest_parse_refuses_other_forms() {
        assert_eq!(Digest::parse("sha512:00"), None);
        assert_eq!(Digest::parse("sha256:ABC"), None);
        assert_eq!(Digest::parse(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(Digest::parse(&"a".repeat(64)), None);
    }

    #[test]
    fn image_lists_a_blob_used_twice_once() {
        let config = Blob::new(WASM_CONFIG, b"{}".to_vec());
        let wasm = Blob::new(WASM_CONTENT_LAYER, b"\0asm".to_vec());
        let image = Image::new(
            config.clone(),
            vec![
                (config.clone(), BTreeMap::new()),
                (wasm.clone(), BTreeMap::new()),
            ],
            BTreeMap::new(),
        );
        let digests: Vec<_> = image.blobs().iter().map(|b| b.digest.clone()).collect();
        assert_eq!(digests, vec![config.digest, wasm.digest]);
    }
}
