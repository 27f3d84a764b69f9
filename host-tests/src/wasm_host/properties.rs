//! `proxy_get_property` / `proxy_set_property`: what a property path answers, from (in order)
//! values the plugin set, the request's scripted properties, the stream itself (`request.*`,
//! `response.*`), the host's scripted properties, then profile defaults.

use super::headers::{Headers, PropertyValue};
use super::profile::{Profile, PropertyAccess};
use super::stream::StreamData;
use super::vm::VmState;

/// The answer to a property read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(Vec<u8>),
    NotFound,
    /// Kong: not supported; NotFound, logged and recorded.
    Unsupported(String),
    /// Kong: a dotted property outside a request.
    OutsideRequest,
}

/// The ABI encodes a path as its segments separated by NUL; the host works with dots.
pub(crate) fn path_of(encoded: &[u8]) -> String {
    encoded
        .split(|&b| b == 0)
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

fn encode(profile: Profile, value: &PropertyValue) -> Vec<u8> {
    match value {
        PropertyValue::Bytes(bytes) => bytes.clone(),
        PropertyValue::Int(n) => profile.encode_int(*n),
        PropertyValue::Bool(b) => profile.encode_bool(*b),
    }
}

pub(crate) fn get(state: &VmState, path: &str) -> Lookup {
    let profile = state.profile;
    let stream = state.streams.get(&state.active_context);
    match profile.property_access(path, stream.is_some()) {
        PropertyAccess::Allowed => {}
        PropertyAccess::Unsupported(log) => return Lookup::Unsupported(log),
        PropertyAccess::OutsideRequest => return Lookup::OutsideRequest,
    }
    let scripted = match stream {
        Some(stream) => stream
            .properties_set
            .get(path)
            .cloned()
            .or_else(|| {
                stream
                    .request
                    .properties
                    .get(path)
                    .map(|v| encode(profile, v))
            })
            .or_else(|| from_stream(profile, stream, path)),
        None => state.root_properties.get(path).cloned(),
    };
    let world = state.world.borrow();
    let found = scripted
        .or_else(|| world.properties.get(path).map(|v| encode(profile, v)))
        .or_else(|| default(state, stream.is_some(), path));
    found.map_or(Lookup::NotFound, Lookup::Found)
}

fn header(headers: &Headers, name: &str) -> Option<Vec<u8>> {
    headers.joined(name.as_bytes())
}

/// `request.*` and `response.*` read from the stream's live maps.
fn from_stream(profile: Profile, stream: &StreamData, path: &str) -> Option<Vec<u8>> {
    let request = stream
        .request_headers
        .as_ref()
        .unwrap_or(&stream.request.headers);
    let full_path = header(request, ":path");
    let split = |part: usize| {
        full_path.as_ref().map(|p| {
            let mut halves = p.splitn(2, |&b| b == b'?');
            let path = halves.next().unwrap_or_default().to_vec();
            let query = halves.next().unwrap_or_default().to_vec();
            if part == 0 {
                path
            } else {
                query
            }
        })
    };
    if let Some(name) = path.strip_prefix("request.headers.") {
        return header(request, name);
    }
    if let Some(name) = path.strip_prefix("response.headers.") {
        return stream
            .response_headers
            .as_ref()
            .and_then(|headers| header(headers, name));
    }
    if profile.is_kong() {
        // ngx_wasm_module: `request.path` is `$request_uri` (the target as sent, whatever a
        // filter wrote), `request.url_path` `$uri` (the decoded `r->uri`), `request.query`
        // `$args`.
        match path {
            "request.path" => return stream.request.headers.first(b":path"),
            "request.url_path" => return split(0),
            "request.query" => return Some(stream.kong_args.clone()),
            _ => {}
        }
    }
    match path {
        "request.path" => full_path,
        "request.url_path" => split(0),
        "request.query" => split(1),
        "request.host" => header(request, ":authority"),
        "request.scheme" => header(request, ":scheme"),
        "request.method" => header(request, ":method"),
        "request.id" => header(request, "x-request-id"),
        "request.useragent" => header(request, "user-agent"),
        "request.referer" => header(request, "referer"),
        "request.protocol" => Some(b"HTTP/1.1".to_vec()),
        "request.size" => header(request, "content-length")
            .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
            .map(|n| profile.encode_int(n)),
        "response.code" => stream
            .response_headers
            .as_ref()
            .and_then(|headers| header(headers, ":status"))
            .and_then(|v| String::from_utf8(v).ok()?.parse::<i64>().ok())
            .map(|n| profile.encode_int(n)),
        _ => None,
    }
}

/// What a host answers when nothing was scripted: the plugin's identity, a client on a private
/// address (Envoy gives `address:port`, Kong the address alone), and Kong's host name.
fn default(state: &VmState, in_request: bool, path: &str) -> Option<Vec<u8>> {
    let profile = state.profile;
    let value = match path {
        "plugin_name" => state.plugin.name.as_bytes().to_vec(),
        "plugin_root_id" => state.plugin.root_id.as_bytes().to_vec(),
        "plugin_vm_id" if !profile.is_kong() => state.plugin.vm_id.as_bytes().to_vec(),
        _ if !in_request => return None,
        "source.address" if profile.is_kong() => b"10.0.0.1".to_vec(),
        "source.address" => b"10.0.0.1:40000".to_vec(),
        "source.port" => profile.encode_int(40000),
        "destination.address" if !profile.is_kong() => b"10.0.0.2:8443".to_vec(),
        "destination.port" if !profile.is_kong() => profile.encode_int(8443),
        "connection.mtls" => profile.encode_bool(false),
        // Any nginx variable; `$hostname` always exists.
        "ngx.hostname" if profile.is_kong() => b"kong-node-1".to_vec(),
        // Kong's own version (kong/meta.lua), a `kong.*` getter from 3.6 (access is checked
        // before this).
        "kong.version" => match profile {
            Profile::Kong(version) => format!("{version}.0").into_bytes(),
            Profile::Envoy => return None,
        },
        _ => return None,
    };
    Some(value)
}

/// Where a `proxy_set_property` lands, or `Err(log)` when Kong refuses the path.
pub(crate) fn set(state: &mut VmState, path: &str, value: Vec<u8>) -> Result<(), String> {
    if !state.profile.property_writable(path) {
        return Err(format!("cannot set read-only \"{path}\" property"));
    }
    let context = state.active_context;
    match state.streams.get_mut(&context) {
        Some(stream) => {
            stream.properties_set.insert(path.to_owned(), value);
        }
        None => {
            state.root_properties.insert(path.to_owned(), value);
        }
    }
    Ok(())
}
