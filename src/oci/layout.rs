//! OCI image layouts on disk (image-spec `image-layout.md`): `oci-layout`, `index.json` naming
//! each tagged manifest, and every blob under `blobs/sha256/<hex>`. `skopeo`, `crane`, `oras` and
//! `podman` read them as `oci:<dir>:<tag>`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{annotation, Blob, Digest, Image, Index, Manifest, OCI_INDEX, OCI_MANIFEST};

/// Why a layout could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `images` (tag, image) as the layout at `dir`, replacing any `index.json` there.
pub fn write(dir: &Path, images: &[(String, Image)]) -> Result<(), LayoutError> {
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let marker = dir.join("oci-layout");
    fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&marker))?;
    let mut manifests = Vec::new();
    for (tag, image) in images {
        for blob in std::iter::once(&image.manifest).chain(image.blobs()) {
            let path = blobs.join(blob.digest.hex());
            fs::write(&path, &blob.bytes).map_err(io(&path))?;
        }
        manifests.push(image.manifest.descriptor(BTreeMap::from([(
            annotation::REF_NAME.to_owned(),
            tag.clone(),
        )])));
    }
    let index = Blob::json(
        OCI_INDEX,
        &Index {
            schema_version: 2,
            media_type: OCI_INDEX.to_owned(),
            manifests,
        },
    );
    let path = dir.join("index.json");
    fs::write(&path, &index.bytes).map_err(io(&path))
}

/// Reads every tagged image of the layout at `dir`, checking each blob against its digest.
pub fn read(dir: &Path) -> Result<Vec<(String, Image)>, LayoutError> {
    let path = dir.join("index.json");
    let text = fs::read(&path).map_err(io(&path))?;
    let index: Index = serde_json::from_slice(&text).map_err(|err| LayoutError::Invalid {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    let mut images = Vec::new();
    for descriptor in &index.manifests {
        let Some(tag) = descriptor.annotations.get(annotation::REF_NAME) else {
            continue;
        };
        if descriptor.media_type != OCI_MANIFEST {
            continue;
        }
        let manifest = read_blob(dir, &descriptor.media_type, &descriptor.digest)?;
        let parsed: Manifest =
            serde_json::from_slice(&manifest.bytes).map_err(|err| LayoutError::Invalid {
                path: blob_path(dir, &descriptor.digest),
                reason: err.to_string(),
            })?;
        let config = read_blob(dir, &parsed.config.media_type, &parsed.config.digest)?;
        let layers = parsed
            .layers
            .iter()
            .map(|layer| read_blob(dir, &layer.media_type, &layer.digest))
            .collect::<Result<_, _>>()?;
        images.push((
            tag.clone(),
            Image {
                manifest,
                config,
                layers,
            },
        ));
    }
    Ok(images)
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

fn read_blob(dir: &Path, media_type: &str, digest: &Digest) -> Result<Blob, LayoutError> {
    let path = blob_path(dir, digest);
    let bytes = fs::read(&path).map_err(io(&path))?;
    let blob = Blob::new(media_type, bytes);
    if &blob.digest != digest {
        return Err(LayoutError::Invalid {
            path,
            reason: format!("content has digest {}", blob.digest),
        });
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::super::wasm_image::{build, ImageMeta, Variant};
    use super::*;

    fn images() -> Vec<(String, Image)> {
        let meta = ImageMeta {
            name: "palisade-audit".into(),
            description: "d".into(),
            version: "1.2.3".into(),
            revision: "r".into(),
            source: "s".into(),
            licenses: "Apache-2.0".into(),
            config_schema_digest: Digest::of(b"schema"),
        };
        Variant::ALL
            .iter()
            .map(|&v| (v.tag("1.2.3"), build(v, b"\0asm\x01\0\0\0", &meta).unwrap()))
            .collect()
    }

    #[test]
    fn writes_and_reads_back_every_tag() {
        let dir = tempfile::tempdir().unwrap();
        let images = images();
        write(dir.path(), &images).unwrap();
        assert_eq!(read(dir.path()).unwrap(), images);
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][1]["annotations"][annotation::REF_NAME],
            "1.2.3-compat"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
    }

    #[test]
    fn a_tampered_blob_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let images = images();
        write(dir.path(), &images).unwrap();
        let layer = &images[0].1.layers[1];
        let path = blob_path(dir.path(), &layer.digest);
        fs::write(&path, b"\0asm\x01\0\0\x01").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: content has digest sha256:", path.display())),
            "{err}"
        );
    }
}
