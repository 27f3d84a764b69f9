//! A reproducible `tar.gz` of a few regular files: ustar headers with zero mtime, uid and gid,
//! mode 0644, files in the order given, and gzip without a timestamp or file name. The same
//! files always give the same bytes, so the compat image's layer digest is stable.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};

const BLOCK: usize = 512;

/// Why an archive could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("file name {0:?} is longer than the 100 bytes a plain ustar header holds")]
    NameTooLong(String),
    #[error("{0} is too large for a ustar header")]
    TooLarge(String),
    #[error("gzip: {0}")]
    Gzip(#[from] std::io::Error),
}

/// The uncompressed tar of `files` (name, contents).
pub fn tar(files: &[(&str, &[u8])]) -> Result<Vec<u8>, TarError> {
    let mut out = Vec::new();
    for (name, contents) in files {
        out.extend_from_slice(&header(name, contents.len())?);
        out.extend_from_slice(contents);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }
    // Two zero blocks end the archive.
    out.resize(out.len() + 2 * BLOCK, 0);
    Ok(out)
}

/// Gzip of `bytes`, with no modification time or name in the header.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>, TarError> {
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

fn header(name: &str, size: usize) -> Result<[u8; BLOCK], TarError> {
    let mut header = [0u8; BLOCK];
    if name.len() > 100 {
        return Err(TarError::NameTooLong(name.to_owned()));
    }
    // Octal in 11 digits: up to 8 GiB.
    if size >= 1 << 33 {
        return Err(TarError::TooLarge(name.to_owned()));
    }
    put(&mut header, 0, name.as_bytes());
    put(&mut header, 100, b"0000644\0"); // mode
    put(&mut header, 108, b"0000000\0"); // uid
    put(&mut header, 116, b"0000000\0"); // gid
    put(&mut header, 124, format!("{size:011o}\0").as_bytes());
    put(&mut header, 136, b"00000000000\0"); // mtime: the epoch
    put(&mut header, 148, b"        "); // checksum counts as spaces while summing
    put(&mut header, 156, b"0"); // regular file
    put(&mut header, 257, b"ustar\0");
    put(&mut header, 263, b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    put(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    Ok(header)
}

fn put(header: &mut [u8; BLOCK], at: usize, bytes: &[u8]) {
    if let Some(slot) = header.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn same_files_same_bytes() {
        let files: &[(&str, &[u8])] = &[("plugin.wasm", b"\0asm\x01\0\0\0")];
        let a = gzip(&tar(files).unwrap()).unwrap();
        let b = gzip(&tar(files).unwrap()).unwrap();
        assert_eq!(a, b);
        // gzip header: magic, deflate, no flags, mtime 0.
        assert_eq!(&a[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn layout_is_blocks_of_512() {
        let archive = tar(&[("a", b"hello"), ("b", &[7u8; 600])]).unwrap();
        // a: header + 1 block, b: header + 2 blocks, then 2 end blocks.
        assert_eq!(archive.len(), 512 * (2 + 3 + 2));
        assert_eq!(&archive[512..517], b"hello");
        assert_eq!(&archive[1024..1025], b"b");
        assert_eq!(&archive[1024 + 124..1024 + 135], b"00000001130"); // 600 in octal
    }

    #[test]
    fn refuses_long_names() {
        let name = "x".repeat(101);
        assert!(matches!(
            tar(&[(name.as_str(), b"")]),
            Err(TarError::NameTooLong(n)) if n == name
        ));
    }

    #[test]
    fn system_tar_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("layer.tar.gz");
        let wasm = b"\0asm\x01\0\0\0 and some more bytes".to_vec();
        let config = br#"{"type":"envoy_proxy"}"#.to_vec();
        std::fs::write(
            &archive,
            gzip(&tar(&[("plugin.wasm", &wasm), ("runtime-config.json", &config)]).unwrap())
                .unwrap(),
        )
        .unwrap();
        let out = Command::new("tar")
            .args(["-xzf", "layer.tar.gz"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(dir.path().join("plugin.wasm")).unwrap(), wasm);
        assert_eq!(
            std::fs::read(dir.path().join("runtime-config.json")).unwrap(),
            config
        );
    }
}
