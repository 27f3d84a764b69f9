//! The Envoy build of a plugin: the same module without the exports of stream callbacks the
//! plugin does nothing in.
//!
//! Envoy (proxy-wasm-cpp-host, `src/context.cc`) calls a stream callback only when the module
//! exports it, and every call across the Wasm boundary costs about as much as a small filter's
//! whole work (~2,300 instructions of Envoy's per call, `just bench --instructions`). The
//! proxy-wasm Rust SDK exports all of them, so an SDK plugin pays for `on_log`, `on_done` and
//! the body callbacks even when it ignores them.
//!
//! Kong must never get this build: ngx_wasm_module calls every stream callback without checking
//! that the module exports it (`ngx_wavm_instance_call_funcref` dereferences the missing export,
//! Kong/ngx_wasm_module `src/wasm/vm/ngx_wavm.c`), so a missing one crashes the nginx worker.
//! Kong gets the module as cargo builds it.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::plugins::ALL;

/// The stream callbacks Envoy treats as optional and a plugin may leave out. `proxy_on_delete`
/// is not among them: the SDK frees the stream's context there.
pub const OPTIONAL_CALLBACKS: [&str; 7] = [
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_log",
    "proxy_on_done",
];

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("not a Wasm module (no \\0asm header)")]
    NotWasm,
    #[error("malformed Wasm module: {0}")]
    Malformed(&'static str),
    #[error("{0} is not a stream callback Envoy treats as optional")]
    NotOptional(String),
    #[error("the module does not export {0}")]
    NotExported(String),
}

/// Writes every plugin's Envoy build, from the modules in `wasm_dir`, into `into` (created if
/// missing) and returns `into`. Each file is written aside and renamed into place, so processes
/// writing the same directory at once never let Envoy read half a module.
pub fn write_envoy_builds(wasm_dir: &Path, into: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(into).map_err(|err| format!("{}: {err}", into.display()))?;
    for plugin in &ALL {
        let module =
            crate::package::read_envoy_module(wasm_dir, plugin).map_err(|err| err.to_string())?;
        let target = into.join(plugin.wasm_file);
        let staging = into.join(format!(
            "{}.{}.staging",
            plugin.wasm_file,
            std::process::id()
        ));
        std::fs::write(&staging, module)
            .and_then(|()| std::fs::rename(&staging, &target))
            .map_err(|err| format!("{}: {err}", target.display()))?;
    }
    Ok(into.to_owned())
}

/// `module` without the function exports named in `unused`, every other byte as it was. Each
/// name must be one of [`OPTIONAL_CALLBACKS`] and exported by the module.
pub fn without_callbacks(module: &[u8], unused: &[&str]) -> Result<Vec<u8>, ModuleError> {
    if let Some(name) = unused.iter().find(|n| !OPTIONAL_CALLBACKS.contains(n)) {
        return Err(ModuleError::NotOptional((*name).to_owned()));
    }
    if module.get(..4) != Some(b"\0asm".as_slice()) {
        return Err(ModuleError::NotWasm);
    }
    let header = module
        .get(..8)
        .ok_or(ModuleError::Malformed("short header"))?;
    let mut out = header.to_vec();
    let mut dropped: Vec<&str> = Vec::new();
    let mut at = 8;
    while at < module.len() {
        let id = *module.get(at).ok_or(ModuleError::Malformed("section id"))?;
        let (size, body_at) = read_u32(module, at + 1)?;
        let end = body_at
            .checked_add(size as usize)
            .filter(|end| *end <= module.len())
            .ok_or(ModuleError::Malformed("section past the end"))?;
        let body = module
            .get(body_at..end)
            .ok_or(ModuleError::Malformed("section body"))?;
        const EXPORT_SECTION: u8 = 7;
        if id == EXPORT_SECTION {
            let kept = exports_without(body, unused, &mut dropped)?;
            out.push(id);
            write_u32(&mut out, u32::try_from(kept.len()).unwrap_or(u32::MAX));
            out.extend_from_slice(&kept);
        } else {
            out.extend_from_slice(module.get(at..end).unwrap_or_default());
        }
        at = end;
    }
    if let Some(name) = unused.iter().find(|n| !dropped.contains(n)) {
        return Err(ModuleError::NotExported((*name).to_owned()));
    }
    Ok(out)
}

/// The export section's body without the function exports in `unused` (noted in `dropped`).
fn exports_without<'a>(
    body: &[u8],
    unused: &[&'a str],
    dropped: &mut Vec<&'a str>,
) -> Result<Vec<u8>, ModuleError> {
    let (count, mut at) = read_u32(body, 0)?;
    let mut kept = Vec::with_capacity(body.len());
    let mut kept_count = 0u32;
    for _ in 0..count {
        let start = at;
        let (name_len, name_at) = read_u32(body, at)?;
        let name_end = name_at
            .checked_add(name_len as usize)
            .ok_or(ModuleError::Malformed("export name"))?;
        let name = body
            .get(name_at..name_end)
            .ok_or(ModuleError::Malformed("export name"))?;
        let kind = *body
            .get(name_end)
            .ok_or(ModuleError::Malformed("export kind"))?;
        let (_index, end) = read_u32(body, name_end + 1)?;
        const FUNCTION: u8 = 0;
        let drop = (kind == FUNCTION)
            .then(|| unused.iter().find(|n| n.as_bytes() == name))
            .flatten();
        match drop {
            Some(name) => dropped.push(name),
            None => {
                kept.extend_from_slice(body.get(start..end).unwrap_or_default());
                kept_count += 1;
            }
        }
        at = end;
    }
    if at != body.len() {
        return Err(ModuleError::Malformed("export section length"));
    }
    let mut section = Vec::with_capacity(kept.len() + 5);
    write_u32(&mut section, kept_count);
    section.extend_from_slice(&kept);
    Ok(section)
}

/// An unsigned LEB128 `u32` at `at`: the value and where the next field starts.
fn read_u32(bytes: &[u8], at: usize) -> Result<(u32, usize), ModuleError> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let byte = *bytes
            .get(at + i)
            .ok_or(ModuleError::Malformed("truncated LEB128"))?;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, at + i + 1));
        }
    }
    Err(ModuleError::Malformed("LEB128 longer than 5 bytes"))
}

fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module exporting `memory`, three functions and a global between two custom sections.
    fn module() -> Vec<u8> {
        let mut exports = Vec::new();
        let entries: [(&str, u8, u32); 5] = [
            ("memory", 2, 0),
            ("proxy_on_log", 0, 0),
            ("proxy_on_done", 0, 1),
            ("proxy_on_request_headers", 0, 2),
            ("proxy_on_response_body", 3, 0),
        ];
        write_u32(&mut exports, entries.len() as u32);
        for (name, kind, index) in entries {
            write_u32(&mut exports, name.len() as u32);
            exports.extend_from_slice(name.as_bytes());
            exports.push(kind);
            write_u32(&mut exports, index);
        }
        let mut out = b"\0asm\x01\0\0\0".to_vec();
        // A custom section before and after, carried over byte for byte.
        let custom = |out: &mut Vec<u8>, text: &[u8]| {
            out.push(0);
            write_u32(out, text.len() as u32 + 1);
            out.push(text.len() as u8);
            out.extend_from_slice(text);
        };
        custom(&mut out, b"before");
        out.push(7);
        write_u32(&mut out, exports.len() as u32);
        out.extend_from_slice(&exports);
        custom(&mut out, &[b'x'; 200]);
        out
    }

    fn export_names(module: &[u8]) -> Vec<String> {
        let mut at = 8;
        while at < module.len() {
            let (size, body) = read_u32(module, at + 1).unwrap();
            if module[at] == 7 {
                let section = &module[body..body + size as usize];
                let (count, mut i) = read_u32(section, 0).unwrap();
                let mut names = Vec::new();
                for _ in 0..count {
                    let (len, name_at) = read_u32(section, i).unwrap();
                    let end = name_at + len as usize;
                    names.push(String::from_utf8(section[name_at..end].to_vec()).unwrap());
                    i = read_u32(section, end + 1).unwrap().1;
                }
                return names;
            }
            at = body + size as usize;
        }
        Vec::new()
    }

    #[test]
    fn drops_only_the_named_function_exports() {
        let original = module();
        let envoy = without_callbacks(&original, &["proxy_on_log", "proxy_on_done"]).unwrap();
        assert_eq!(
            export_names(&envoy),
            [
                "memory",
                "proxy_on_request_headers",
                "proxy_on_response_body"
            ]
        );
        // Every other section is unchanged: the custom sections close both ends.
        assert!(envoy.starts_with(&original[..8 + 9]));
        assert!(envoy.ends_with(&original[original.len() - 204..]));
    }

    #[test]
    fn nothing_to_drop_is_the_same_module() {
        let original = module();
        assert_eq!(without_callbacks(&original, &[]).unwrap(), original);
    }

    #[test]
    fn refuses_names_it_would_not_drop() {
        let original = module();
        assert_eq!(
            without_callbacks(&original, &["proxy_on_delete"]),
            Err(ModuleError::NotOptional("proxy_on_delete".into()))
        );
        assert_eq!(
            without_callbacks(&original, &["proxy_on_request_body"]),
            Err(ModuleError::NotExported("proxy_on_request_body".into()))
        );
        // Only a function export is a callback: the global of the same name stays.
        assert_eq!(
            without_callbacks(&original, &["proxy_on_response_body"]),
            Err(ModuleError::NotExported("proxy_on_response_body".into()))
        );
    }

    #[test]
    fn refuses_what_is_not_a_module() {
        assert_eq!(without_callbacks(b"MZ", &[]), Err(ModuleError::NotWasm));
        let mut truncated = module();
        truncated.truncate(30);
        assert!(matches!(
            without_callbacks(&truncated, &[]),
            Err(ModuleError::Malformed(_))
        ));
    }
}
