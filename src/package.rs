//! `palisade package`: each built plugin as the two Istio Wasm image variants, in one OCI image
//! layout per plugin (`<out>/palisade-<name>/`, tags `<version>` and `<version>-compat`), and
//! one image of every filter for Kong (`<out>/palisade-filters/`): `<filter>.wasm` and
//! `<filter>.meta.json` at its root, to mount as Kong's `wasm_filters_path` (a Kubernetes image
//! volume) or copy from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::kong_schema;
use crate::oci::layout::{self, LayoutError};
use crate::oci::tar_gz::TarError;
use crate::oci::wasm_image::{self, ImageMeta, Variant};
use crate::oci::{annotation, Digest, Image};
use crate::plugins::{self, PluginInfo};
use crate::render::kong_filter_name;

/// The repository of the Kong filters image.
pub const KONG_FILTERS_IMAGE: &str = "palisade-filters";

/// The version stamped on images and used as their tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision `build.rs` stamped on this CLI.
pub const REVISION: &str = env!("PALISADE_GIT_REV");
/// Where the images say their source is.
pub const SOURCE: &str = env!("CARGO_PKG_REPOSITORY");
pub const LICENSES: &str = env!("CARGO_PKG_LICENSE");

/// Why packaging failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}; run `just build` first")]
    MissingModule {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a Wasm module (no \\0asm header)")]
    NotWasm(PathBuf),
    #[error(transparent)]
    Tar(#[from] TarError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{plugin}: config schema: {reason}")]
    Schema { plugin: String, reason: String },
    #[error("{plugin}: its Envoy build: {source}")]
    EnvoyBuild {
        plugin: &'static str,
        source: crate::envoy_module::ModuleError,
    },
}

/// One plugin's images.
#[derive(Debug, Clone)]
pub struct PluginImages {
    pub plugin: &'static PluginInfo,
    /// SHA-256 of the module in the images, the plugin's Envoy build (the OCI variant's module
    /// layer digest).
    pub module: Digest,
    pub oci: Image,
    pub compat: Image,
}

impl PluginImages {
    /// (tag, image) for each variant.
    pub fn tagged(&self) -> Vec<(String, Image)> {
        vec![
            (Variant::Oci.tag(VERSION), self.oci.clone()),
            (Variant::Compat.tag(VERSION), self.compat.clone()),
        ]
    }
}

/// `sha256:` of the plugin's config schema, compact JSON.
pub fn schema_digest(plugin: &PluginInfo) -> Digest {
    Digest::of(&serde_json::to_vec(&plugin.schema()).unwrap_or_default())
}

/// The built module of `plugin` under `wasm_dir`.
pub fn read_module(wasm_dir: &Path, plugin: &PluginInfo) -> Result<Vec<u8>, PackageError> {
    let path = wasm_dir.join(plugin.wasm_file);
    let bytes = std::fs::read(&path).map_err(|source| PackageError::MissingModule {
        path: path.clone(),
        source,
    })?;
    if !bytes.starts_with(b"\0asm") {
        return Err(PackageError::NotWasm(path));
    }
    Ok(bytes)
}

/// The module `plugin`'s images carry: its Envoy build ([`crate::envoy_module`]). The images
/// are for Envoy (Istio's `WasmPlugin`); Kong gets the modules as built, in the filters image.
pub fn read_envoy_module(
    wasm_dir: &Path,
    plugin: &'static PluginInfo,
) -> Result<Vec<u8>, PackageError> {
    envoy_build(plugin, &read_module(wasm_dir, plugin)?)
}

fn envoy_build(plugin: &'static PluginInfo, module: &[u8]) -> Result<Vec<u8>, PackageError> {
    plugin
        .envoy_build(module)
        .map_err(|source| PackageError::EnvoyBuild {
            plugin: plugin.name,
            source,
        })
}

/// Both images of `plugin` from its module bytes (for Envoy: [`read_envoy_module`]), stamped
/// with `revision`.
pub fn images(
    plugin: &'static PluginInfo,
    module: &[u8],
    revision: &str,
) -> Result<PluginImages, PackageError> {
    let meta = ImageMeta {
        name: plugin.full_name.to_owned(),
        description: format!(
            "Palisade {} proxy-wasm plugin for Envoy and Istio (Kong: the palisade-filters image)",
            plugin.name
        ),
        version: VERSION.to_owned(),
        revision: revision.to_owned(),
        source: SOURCE.to_owned(),
        licenses: LICENSES.to_owned(),
        config_schema_digest: schema_digest(plugin),
    };
    Ok(PluginImages {
        plugin,
        module: Digest::of(module),
        oci: wasm_image::build(Variant::Oci, module, &meta)?,
        compat: wasm_image::build(Variant::Compat, module, &meta)?,
    })
}

/// Images of every plugin built in `wasm_dir`, stamped with this CLI's revision.
pub fn all_images(wasm_dir: &Path) -> Result<Vec<PluginImages>, PackageError> {
    plugins::ALL
        .iter()
        .map(|plugin| images(plugin, &read_envoy_module(wasm_dir, plugin)?, REVISION))
        .collect()
}

/// The Kong filters image: one layer with `<filter>.wasm` and `<filter>.meta.json` of every
/// plugin, from the modules in `all`.
pub fn kong_filters_image(
    all: &[(&PluginInfo, &[u8])],
    revision: &str,
) -> Result<Image, PackageError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for (plugin, module) in all {
        let meta =
            kong_schema::filter_meta(&plugin.schema()).map_err(|reason| PackageError::Schema {
                plugin: plugin.name.to_owned(),
                reason,
            })?;
        let name = kong_filter_name(plugin);
        files.push((format!("{name}.wasm"), module.to_vec()));
        files.push((
            format!("{name}.meta.json"),
            serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        ));
    }
    let entries: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    let (layer, config) = wasm_image::files_layer(&entries)?;
    let annotations = BTreeMap::from([
        (annotation::TITLE.to_owned(), KONG_FILTERS_IMAGE.to_owned()),
        (
            annotation::DESCRIPTION.to_owned(),
            "Palisade proxy-wasm filters and their Kong .meta.json, for Kong's wasm_filters_path"
                .to_owned(),
        ),
        (annotation::VERSION.to_owned(), VERSION.to_owned()),
        (annotation::REVISION.to_owned(), revision.to_owned()),
        (annotation::SOURCE.to_owned(), SOURCE.to_owned()),
        (annotation::LICENSES.to_owned(), LICENSES.to_owned()),
    ]);
    Ok(Image::new(
        config,
        vec![(layer, BTreeMap::new())],
        annotations,
    ))
}

/// What `package` wrote.
#[derive(Debug, Clone)]
pub struct Packaged {
    pub plugins: Vec<PluginImages>,
    pub kong_filters: Image,
}

/// Writes every plugin's layout and the Kong filters layout under `out`.
pub fn package(wasm_dir: &Path, out: &Path) -> Result<Packaged, PackageError> {
    let modules = plugins::ALL
        .iter()
        .map(|plugin| Ok((plugin, read_module(wasm_dir, plugin)?)))
        .collect::<Result<Vec<_>, PackageError>>()?;
    let mut all = Vec::new();
    for (plugin, module) in &modules {
        let images = images(plugin, &envoy_build(plugin, module)?, REVISION)?;
        layout::write(&out.join(plugin.full_name), &images.tagged())?;
        all.push(images);
    }
    let borrowed: Vec<(&PluginInfo, &[u8])> = modules
        .iter()
        .map(|(plugin, module)| (*plugin, module.as_slice()))
        .collect();
    let kong_filters = kong_filters_image(&borrowed, REVISION)?;
    layout::write(
        &out.join(KONG_FILTERS_IMAGE),
        &[(VERSION.to_owned(), kong_filters.clone())],
    )?;
    Ok(Packaged {
        plugins: all,
        kong_filters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_says_to_build() {
        let dir = tempfile::tempdir().unwrap();
        let err = all_images(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: ",
                dir.path().join("palisade_header_security.wasm").display()
            )),
            "{err}"
        );
        assert!(err.ends_with("; run `just build` first"), "{err}");
    }

    #[test]
    fn refuses_a_file_that_is_not_wasm() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = plugins::find("auth").unwrap();
        std::fs::write(dir.path().join(plugin.wasm_file), b"MZ not wasm").unwrap();
        assert!(matches!(
            read_module(dir.path(), plugin),
            Err(PackageError::NotWasm(path)) if path == dir.path().join("palisade_auth.wasm")
        ));
    }

    #[test]
    fn kong_filters_image_holds_each_module_and_meta_by_filter_name() {
        let auth = plugins::find("auth").unwrap();
        let audit = plugins::find("audit").unwrap();
        let image = kong_filters_image(
            &[
                (auth, b"\0asm auth".as_slice()),
                (audit, b"\0asm audit".as_slice()),
            ],
            "r",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("layer.tgz"), &image.layers[0].bytes).unwrap();
        let out = std::process::Command::new("tar")
            .args(["-xzf", "layer.tgz"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            std::fs::read(dir.path().join("palisade_auth.wasm")).unwrap(),
            b"\0asm auth"
        );
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("palisade_audit.meta.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["config_schema"]["$schema"], crate::kong_schema::DRAFT4);
    }

    #[test]
    fn schema_digest_changes_with_the_schema() {
        let auth = plugins::find("auth").unwrap();
        let audit = plugins::find("audit").unwrap();
        assert_eq!(schema_digest(auth), schema_digest(auth));
        assert_ne!(schema_digest(auth), schema_digest(audit));
    }
}
