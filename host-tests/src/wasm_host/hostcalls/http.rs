//! Header maps, bodies and buffers, local replies, continuing and closing streams.

use wasmtime::{Caller, Linker};

use super::{enter, trap};
use crate::wasm_host::abi::{buffer, map, status, stream as stream_type, LogLevel};
use crate::wasm_host::error::FailureKind;
use crate::wasm_host::headers::Headers;
use crate::wasm_host::logs::LogOrigin;
use crate::wasm_host::memory;
use crate::wasm_host::profile::Profile;
use crate::wasm_host::stream::LocalReply;
use crate::wasm_host::vm::{Callback, VmState};
use palisade_kit::header_pairs;

type Ret = wasmtime::Result<u32>;

pub(super) fn define(linker: &mut Linker<VmState>, profile: Profile) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        proxy_get_header_map_pairs,
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        proxy_set_header_map_pairs,
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        proxy_get_header_map_value,
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        proxy_add_header_map_value,
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        proxy_replace_header_map_value,
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        proxy_remove_header_map_value,
    )?;
    linker.func_wrap("env", "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap("env", "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    if profile.provides("proxy_get_header_map_size") {
        linker.func_wrap(
            "env",
            "proxy_get_header_map_size",
            proxy_get_header_map_size,
        )?;
    }
    if profile.provides("proxy_get_buffer_status") {
        linker.func_wrap("env", "proxy_get_buffer_status", proxy_get_buffer_status)?;
    }
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        proxy_send_local_response,
    )?;
    linker.func_wrap("env", "proxy_continue_stream", proxy_continue_stream)?;
    linker.func_wrap("env", "proxy_close_stream", proxy_close_stream)?;
    linker.func_wrap("env", "proxy_continue_request", proxy_continue_request)?;
    linker.func_wrap("env", "proxy_continue_response", proxy_continue_response)?;
    Ok(())
}

/// Why a map cannot be used.
enum MapError {
    Status(u32),
    /// Kong traps (header edits out of phase).
    Trap(String),
}

/// Runs `f` on the map `map_type` of the active context. `write` says whether `f` edits it, for
/// Kong's phase rules (≥ 3.6, commit 5553ae05).
fn with_map<R>(
    state: &mut VmState,
    map_type: u32,
    write: bool,
    f: impl FnOnce(&mut Headers) -> R,
) -> Result<R, MapError> {
    let profile = state.profile;
    let callback = state.callback;
    if write && state.world.borrow().refuse_header_writes {
        return Err(MapError::Status(status::INTERNAL_FAILURE));
    }
    if profile.is_kong()
        && matches!(
            map_type,
            map::REQUEST_TRAILERS | map::RESPONSE_TRAILERS | map::HTTP_CALL_RESPONSE_TRAILERS
        )
    {
        // ngx_wasm_module: "NYI - get_map bad map_type", BadArgument.
        state.log(
            LogOrigin::Host,
            LogLevel::Error,
            format!("NYI - get_map bad map_type: {map_type}"),
        );
        return Err(MapError::Status(status::BAD_ARGUMENT));
    }
    if matches!(
        map_type,
        map::HTTP_CALL_RESPONSE_HEADERS | map::HTTP_CALL_RESPONSE_TRAILERS
    ) {
        let response = state
            .call_response
            .as_mut()
            .ok_or(MapError::Status(status::BAD_ARGUMENT))?;
        let headers = if map_type == map::HTTP_CALL_RESPONSE_HEADERS {
            &mut response.headers
        } else {
            &mut response.trailers
        };
        return Ok(f(headers));
    }
    let context = state.active_context;
    let stream = state
        .streams
        .get_mut(&context)
        .ok_or(MapError::Status(status::BAD_ARGUMENT))?;
    if write && profile.enforces_header_phases() {
        let request_phase = matches!(
            callback,
            Some(Callback::RequestHeaders | Callback::RequestBody | Callback::RequestTrailers)
        ) || (callback == Some(Callback::HttpCallResponse)
            && stream.response_headers.is_none());
        let response_phase_over = !matches!(
            callback,
            Some(Callback::ResponseHeaders | Callback::HttpCallResponse)
        ) && stream.response_headers.is_some();
        if map_type == map::REQUEST_HEADERS && !request_phase {
            return Err(MapError::Trap(
                "can only set request headers before response is produced".to_owned(),
            ));
        }
        if map_type == map::RESPONSE_HEADERS && response_phase_over {
            return Err(MapError::Trap(
                "can only set response headers before \"on_response_body\"".to_owned(),
            ));
        }
    }
    let headers = match map_type {
        map::REQUEST_HEADERS => stream.request_headers.as_mut(),
        map::REQUEST_TRAILERS => stream.request_trailers.as_mut(),
        map::RESPONSE_HEADERS => stream.response_headers.as_mut(),
        map::RESPONSE_TRAILERS => stream.response_trailers.as_mut(),
        // gRPC metadata maps exist only for gRPC streams, which this host does not run.
        _ => None,
    }
    .ok_or(MapError::Status(status::BAD_ARGUMENT))?;
    Ok(f(headers))
}

/// Maps a `with_map` error to the call's result: a status, or a Kong trap failing the test.
fn map_error(caller: &mut Caller<'_, VmState>, name: &str, err: MapError) -> Ret {
    match err {
        MapError::Status(status) => Ok(status),
        MapError::Trap(why) => {
            let version = caller.data().profile.describe();
            Err(trap(
                caller,
                FailureKind::Trap,
                format!("{version} profile: {name} traps: \"{why}\" (ngx_proxy_wasm_host.c ≈660-705, Kong ≥ 3.6)"),
            ))
        }
    }
}

fn proxy_get_header_map_pairs(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_get_header_map_pairs")?;
    let cap = caller.data().profile.header_map_pairs_cap();
    let kong = caller.data().profile.is_kong();
    let mut cut = false;
    let encoded = with_map(caller.data_mut(), map_type, false, |headers| {
        cut = kong && headers.pairs().len() > cap;
        let pairs: Vec<(&[u8], &[u8])> = headers
            .pairs()
            .iter()
            .take(cap)
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        header_pairs::encode(&pairs)
    });
    // Kong sizes the buffer of a map it cuts from the first 100 ordinary headers and one
    // pseudo-header, but writes every pseudo-header first: past the buffer, into the guest's
    // memory, when the last headers are short (`ngx_proxy_wasm_pairs_size` vs `_marshal`,
    // every pin). A plugin must not ask for such a map at all (`host::whole_map_readable`).
    if cut {
        let version = caller.data().profile.describe();
        let message = format!("{version} profile: proxy_get_header_map_pairs of a map over {cap} pairs writes past the guest's buffer (ngx_proxy_wasm_pairs_size sizes what ngx_proxy_wasm_pairs_marshal does not write)");
        return Err(trap(&mut caller, FailureKind::HostCrash, message));
    }
    match encoded {
        Ok(bytes) => memory::return_bytes(&mut caller, &bytes, ret_ptr, ret_size),
        Err(err) => map_error(&mut caller, "proxy_get_header_map_pairs", err),
    }
}

fn proxy_set_header_map_pairs(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    ptr: u32,
    size: u32,
) -> Ret {
    enter(&mut caller, "proxy_set_header_map_pairs")?;
    let Some(bytes) = memory::read(&mut caller, ptr, size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let Some(pairs) = header_pairs::decode(&bytes) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let read_only = caller.data().profile.read_only_pseudo_headers(map_type);
    let result = with_map(caller.data_mut(), map_type, true, |headers| {
        let Some(read_only) = read_only else {
            let mut replaced = Headers::new();
            for (name, value) in &pairs {
                replaced = replaced.with(&String::from_utf8_lossy(name), value);
            }
            *headers = replaced;
            return None;
        };
        // ngx_wasm_module (every pin): clear the map's ordinary headers (pseudo-headers are
        // the request line and status, not in the list), then set each pair in order
        // (`ngx_proxy_wasm_maps_set_all`, SET mode: a repeated name keeps its last value). A
        // read-only pseudo-header returns NGX_ABORT, which stops the loop with every later
        // pair unset; the call still answers Ok.
        let mut replaced = Headers::from_pairs(
            headers
                .pairs()
                .iter()
                .filter(|(n, _)| n.starts_with(b":"))
                .cloned()
                .collect(),
        );
        for (name, value) in &pairs {
            if read_only.contains(&name.as_slice()) {
                *headers = replaced;
                return Some(format!(
                    "cannot set read-only \"{}\" header",
                    String::from_utf8_lossy(name)
                ));
            }
            replaced.replace(name, value);
        }
        *headers = replaced;
        None
    });
    match result {
        Ok(None) => Ok(status::OK),
        Ok(Some(read_only)) => {
            caller
                .data()
                .log(LogOrigin::Host, LogLevel::Error, read_only);
            Ok(status::OK)
        }
        Err(err) => map_error(&mut caller, "proxy_set_header_map_pairs", err),
    }
}

fn proxy_get_header_map_value(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    key_ptr: u32,
    key_size: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_get_header_map_value")?;
    let Some(key) = memory::read(&mut caller, key_ptr, key_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    // Both hosts return the first value of a repeated header: Envoy `entry[0]->value()`
    // (Context::getHeaderMapValue, with a TODO on it), ngx_wasm_module the first match
    // (ngx_wasm_get_list_elem, src/wasm/ngx_wasm_util.c:431). Only Envoy's `request.headers`
    // property joins them.
    let lookup = |headers: &mut Headers| headers.first(&key);
    match with_map(caller.data_mut(), map_type, false, lookup) {
        Ok(Some(value)) => memory::return_bytes(&mut caller, &value, ret_ptr, ret_size),
        Ok(None) => Ok(status::NOT_FOUND),
        Err(err) => map_error(&mut caller, "proxy_get_header_map_value", err),
    }
}

fn edit(
    mut caller: Caller<'_, VmState>,
    name: &'static str,
    map_type: u32,
    key: (u32, u32),
    value: Option<(u32, u32)>,
    apply: impl FnOnce(&mut Headers, &[u8], &[u8]),
) -> Ret {
    enter(&mut caller, name)?;
    let Some(key) = memory::read(&mut caller, key.0, key.1) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let value = match value {
        Some((ptr, size)) => match memory::read(&mut caller, ptr, size) {
            Some(value) => value,
            None => return Ok(status::INVALID_MEMORY_ACCESS),
        },
        None => Vec::new(),
    };
    if map_type == map::REQUEST_HEADERS && key == b":path" && value_given(name) {
        let profile = caller.data().profile;
        if profile.is_kong() {
            return set_kong_path(caller, name, profile, &value);
        }
    }
    match with_map(caller.data_mut(), map_type, true, |headers| {
        apply(headers, &key, &value)
    }) {
        Ok(()) => Ok(status::OK),
        Err(err) => map_error(&mut caller, name, err),
    }
}

fn value_given(name: &str) -> bool {
    name != "proxy_remove_header_map_value"
}

/// ngx_wasm_module's `:path` setter (`ngx_proxy_wasm_maps_set_path`): the value before a `?`
/// becomes `r->uri`; from Kong 3.9 the value after it replaces `r->args`, and a value without
/// one leaves `r->args` as it was; before 3.9 a value with a `?` traps.
fn set_kong_path(
    mut caller: Caller<'_, VmState>,
    name: &'static str,
    profile: Profile,
    value: &[u8],
) -> Ret {
    let (uri, args) = match value.iter().position(|&b| b == b'?') {
        Some(at) => (
            value.get(..at).unwrap_or_default(),
            Some(value.get(at + 1..).unwrap_or_default()),
        ),
        None => (value, None),
    };
    if args.is_some() && !profile.sets_path_query() {
        let version = profile.describe();
        return Err(trap(
            &mut caller,
            FailureKind::Trap,
            format!("{version} profile: {name}(\":path\") traps: \"NYI - cannot set request path with querystring\" (ngx_proxy_wasm_maps_set_path before ngx_wasm_module d6ac8f84, first in Kong 3.9)"),
        ));
    }
    let state = caller.data_mut();
    if state.world.borrow().refuse_header_writes {
        return Ok(status::INTERNAL_FAILURE);
    }
    let context = state.active_context;
    let Some(stream) = state.streams.get_mut(&context) else {
        return Ok(status::BAD_ARGUMENT);
    };
    if let Some(args) = args {
        stream.kong_args = args.to_vec();
    }
    let mut path = uri.to_vec();
    if !stream.kong_args.is_empty() {
        path.push(b'?');
        path.extend_from_slice(&stream.kong_args);
    }
    match stream.request_headers.as_mut() {
        Some(headers) => {
            headers.replace(b":path", &path);
            Ok(status::OK)
        }
        None => Ok(status::BAD_ARGUMENT),
    }
}

/// ngx_wasm_module sets these request headers through nginx's single field for each
/// (`ngx_http_wasm_set_builtin_header_handler` and its wrappers, `ngx_http_wasm_headers_request.c`,
/// every pin; the WebDAV ones are not in Kong's build): adding one while the field exists, or
/// after it was removed (the field stays, marked deleted), logs "cannot add new ... builtin
/// request header" and changes nothing, though the call answers Ok. Response fields depend on
/// how nginx's upstream module copied the response, and are not modelled.
fn kong_single_field(map_type: u32, name: &[u8]) -> bool {
    const REQUEST: [&str; 20] = [
        "accept-encoding",
        "authorization",
        "connection",
        "content-length",
        "content-type",
        "expect",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "keep-alive",
        "range",
        "referer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "via",
        "x-real-ip",
    ];
    map_type == map::REQUEST_HEADERS
        && REQUEST
            .iter()
            .any(|field| field.as_bytes().eq_ignore_ascii_case(name))
}

/// Kong: the edited header's lower-case name when it is a single field (see
/// [`kong_single_field`]), with whether the map holds it now; `None` on Envoy or for another
/// header.
fn kong_single_field_edit(
    caller: &mut Caller<'_, VmState>,
    map_type: u32,
    key: (u32, u32),
) -> Option<(Vec<u8>, bool)> {
    if !caller.data().profile.is_kong() {
        return None;
    }
    let name = memory::read(caller, key.0, key.1)?;
    if !kong_single_field(map_type, &name) {
        return None;
    }
    let name = name.to_ascii_lowercase();
    let present = with_map(caller.data_mut(), map_type, false, |headers| {
        headers.first(&name).is_some()
    })
    .unwrap_or(false);
    Some((name, present))
}

/// Kong: is this add to a single field that nginx already holds (see [`kong_single_field`])?
/// Then the add is logged and dropped.
fn kong_drops_add(caller: &mut Caller<'_, VmState>, map_type: u32, key: (u32, u32)) -> bool {
    let Some((name, present)) = kong_single_field_edit(caller, map_type, key) else {
        return false;
    };
    let state = caller.data_mut();
    let context = state.active_context;
    let removed = state.streams.get(&context).is_some_and(|stream| {
        stream
            .kong_removed_fields
            .contains(&(map_type, name.clone()))
    });
    if !(removed || present) {
        return false;
    }
    state.log(
        LogOrigin::Host,
        LogLevel::Error,
        format!(
            "cannot add new \"{}\" builtin request header",
            String::from_utf8_lossy(&name)
        ),
    );
    true
}

/// Kong: a single field removed while nginx holds it stays, marked deleted (`h->hash = 0`).
fn kong_note_removed_field(caller: &mut Caller<'_, VmState>, map_type: u32, key: (u32, u32)) {
    let Some((name, true)) = kong_single_field_edit(caller, map_type, key) else {
        return;
    };
    let state = caller.data_mut();
    let context = state.active_context;
    if let Some(stream) = state.streams.get_mut(&context) {
        stream.kong_removed_fields.insert((map_type, name));
    }
}

fn proxy_add_header_map_value(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    k: u32,
    ks: u32,
    v: u32,
    vs: u32,
) -> Ret {
    if kong_drops_add(&mut caller, map_type, (k, ks)) {
        // Through the same checks as any edit (phase, injected faults), then nothing.
        return edit(
            caller,
            "proxy_add_header_map_value",
            map_type,
            (k, ks),
            Some((v, vs)),
            |_, _, _| {},
        );
    }
    edit(
        caller,
        "proxy_add_header_map_value",
        map_type,
        (k, ks),
        Some((v, vs)),
        |h, k, v| h.add(k, v),
    )
}

fn proxy_replace_header_map_value(
    caller: Caller<'_, VmState>,
    map_type: u32,
    k: u32,
    ks: u32,
    v: u32,
    vs: u32,
) -> Ret {
    edit(
        caller,
        "proxy_replace_header_map_value",
        map_type,
        (k, ks),
        Some((v, vs)),
        |h, k, v| h.replace(k, v),
    )
}

fn proxy_remove_header_map_value(
    mut caller: Caller<'_, VmState>,
    map_type: u32,
    k: u32,
    ks: u32,
) -> Ret {
    kong_note_removed_field(&mut caller, map_type, (k, ks));
    edit(
        caller,
        "proxy_remove_header_map_value",
        map_type,
        (k, ks),
        None,
        |h, k, _| {
            h.remove(k);
        },
    )
}

/// The serialised size of a map (Envoy only).
fn proxy_get_header_map_size(mut caller: Caller<'_, VmState>, map_type: u32, ret: u32) -> Ret {
    enter(&mut caller, "proxy_get_header_map_size")?;
    let size = with_map(caller.data_mut(), map_type, false, |headers| {
        let pairs: Vec<(&[u8], &[u8])> = headers
            .pairs()
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        header_pairs::encode(&pairs).len()
    });
    match size {
        Ok(size) => Ok(
            if memory::write_u32(&mut caller, ret, u32::try_from(size).unwrap_or(u32::MAX)) {
                status::OK
            } else {
                status::INVALID_MEMORY_ACCESS
            },
        ),
        Err(err) => map_error(&mut caller, "proxy_get_header_map_size", err),
    }
}

/// The bytes of a buffer, or `None` when this context has no such buffer.
fn buffer_of(state: &VmState, buffer_type: u32) -> Option<Vec<u8>> {
    let stream = state.streams.get(&state.active_context);
    match buffer_type {
        buffer::HTTP_REQUEST_BODY => stream.map(|s| s.request_body.clone()),
        buffer::HTTP_RESPONSE_BODY => stream.map(|s| s.response_body.clone()),
        buffer::HTTP_CALL_RESPONSE_BODY => state.call_response.as_ref().map(|r| r.body.clone()),
        buffer::GRPC_RECEIVE_BUFFER => state.grpc_message.clone(),
        buffer::VM_CONFIGURATION => Some(state.plugin.vm_configuration.clone()),
        buffer::PLUGIN_CONFIGURATION => Some(state.plugin.configuration.clone()),
        _ => None,
    }
}

/// cpp-host `get_buffer_bytes`: NotFound without such a buffer; reads at most `max_size` from
/// `start`, nothing (null, 0) past the end.
fn proxy_get_buffer_bytes(
    mut caller: Caller<'_, VmState>,
    buffer_type: u32,
    start: u32,
    max_size: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_get_buffer_bytes")?;
    let Some(bytes) = buffer_of(caller.data(), buffer_type) else {
        return Ok(status::NOT_FOUND);
    };
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    let max_size = usize::try_from(max_size).unwrap_or(usize::MAX);
    // Kong copies a body held in several buffers past a length cut shorter than the body (the
    // loop clears its counter instead of stopping): it writes beyond the buffer it allocated
    // in the guest's memory. A body that large may always come in several buffers.
    if caller.data().profile.is_kong() && max_size < bytes.len().saturating_sub(start) {
        let version = caller.data().profile.describe();
        let message = format!(
            "{version} profile: proxy_get_buffer_bytes of {max_size} of a {}-byte body writes past the guest's buffer (ngx_proxy_wasm_hfuncs_get_buffer, ngx_proxy_wasm_host.c ≈413-434)",
            bytes.len()
        );
        return Err(trap(&mut caller, FailureKind::HostCrash, message));
    }
    let slice = bytes
        .get(start..)
        .map(|rest| rest.get(..max_size.min(rest.len())).unwrap_or(rest))
        .unwrap_or_default();
    memory::return_bytes(&mut caller, slice, ret_ptr, ret_size)
}

/// Envoy's `Buffer::copyFrom`: `start == 0` replaces the first `size` bytes (prepends when 0),
/// `start >= length` appends, anything else is BadArgument. Only the bodies are writable.
fn proxy_set_buffer_bytes(
    mut caller: Caller<'_, VmState>,
    buffer_type: u32,
    start: u32,
    size: u32,
    data_ptr: u32,
    data_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_set_buffer_bytes")?;
    let Some(data) = memory::read(&mut caller, data_ptr, data_size) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let state = caller.data_mut();
    let context = state.active_context;
    let Some(stream) = state.streams.get_mut(&context) else {
        return Ok(status::NOT_FOUND);
    };
    let body = match buffer_type {
        buffer::HTTP_REQUEST_BODY => &mut stream.request_body,
        buffer::HTTP_RESPONSE_BODY => &mut stream.response_body,
        _ => return Ok(status::BAD_ARGUMENT),
    };
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if start == 0 {
        let drained = size.min(body.len());
        body.splice(..drained, data);
    } else if start >= body.len() {
        body.extend(data);
    } else {
        return Ok(status::BAD_ARGUMENT);
    }
    Ok(status::OK)
}

fn proxy_get_buffer_status(
    mut caller: Caller<'_, VmState>,
    buffer_type: u32,
    len_ptr: u32,
    flags_ptr: u32,
) -> Ret {
    enter(&mut caller, "proxy_get_buffer_status")?;
    let Some(bytes) = buffer_of(caller.data(), buffer_type) else {
        return Ok(status::NOT_FOUND);
    };
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    Ok(
        if memory::write_u32(&mut caller, len_ptr, len)
            && memory::write_u32(&mut caller, flags_ptr, 0)
        {
            status::OK
        } else {
            status::INVALID_MEMORY_ACCESS
        },
    )
}

#[allow(clippy::too_many_arguments)] // the ABI's signature
fn proxy_send_local_response(
    mut caller: Caller<'_, VmState>,
    status_code: u32,
    details_ptr: u32,
    details_size: u32,
    body_ptr: u32,
    body_size: u32,
    headers_ptr: u32,
    headers_size: u32,
    grpc_status: i32,
) -> Ret {
    enter(&mut caller, "proxy_send_local_response")?;
    let (Some(details), Some(mut body), Some(headers)) = (
        memory::read_text(&mut caller, details_ptr, details_size),
        memory::read(&mut caller, body_ptr, body_size),
        memory::read(&mut caller, headers_ptr, headers_size),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let Some(pairs) = header_pairs::decode(&headers) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let profile = caller.data().profile;
    let callback = caller.data().callback;
    let context = caller.data().active_context;
    let Some(stream) = caller.data().streams.get(&context) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let sent = stream.local_reply.is_some();
    let already = sent || stream.pending_local.is_some();
    let body_started = callback == Some(Callback::ResponseBody) || stream.response_started();
    if profile.local_response_rules() {
        // ngx_http_wasm_local_response.c (research note §1, "proxy_send_local_response").
        let version = profile.describe();
        if !(100..=999).contains(&status_code) {
            return Ok(status::BAD_ARGUMENT);
        }
        if already {
            return Err(trap(&mut caller, FailureKind::Trap, format!("{version} profile: proxy_send_local_response traps: \"local response already stashed\"")));
        }
        if body_started {
            return Err(trap(
                &mut caller,
                FailureKind::Trap,
                format!(
                    "{version} profile: proxy_send_local_response traps: \"response already sent\""
                ),
            ));
        }
        if callback == Some(Callback::ResponseHeaders)
            && !profile.local_response_in_response_headers()
        {
            return Err(trap(&mut caller, FailureKind::Refused, format!("{version} profile: proxy_send_local_response from on_http_response_headers is not implemented by ngx_wasm_module before Kong 3.7 (commit c81997ee; docs/PROXY_WASM.md)")));
        }
        body.push(b'\n');
    } else if sent {
        caller.data().log(
            LogOrigin::Host,
            LogLevel::Warn,
            "local reply already sent; ignored".to_owned(),
        );
        return Ok(status::OK);
    }
    let mut reply_headers = Headers::new();
    for (name, value) in &pairs {
        reply_headers = reply_headers.with(&String::from_utf8_lossy(name), value);
    }
    let reply = LocalReply {
        status: u16::try_from(status_code).unwrap_or(u16::MAX),
        headers: reply_headers,
        body,
        details,
        grpc_status: (grpc_status >= 0).then_some(grpc_status),
    };
    if let Some(stream) = caller.data_mut().streams.get_mut(&context) {
        // Applied when the callback returns, as both hosts do.
        stream.pending_local = Some(reply);
    }
    Ok(status::OK)
}

fn continue_stream(caller: &mut Caller<'_, VmState>, stream_kind: u32) -> Ret {
    let state = caller.data_mut();
    let profile = state.profile;
    let context = state.active_context;
    if profile.is_kong() && context == state.root_context {
        // resume_http_request takes the request of the calling context
        // (ngx_http_proxy_wasm_get_rctx): a root context has none, and the NULL is dereferenced.
        let message = format!(
            "{} profile: proxy_continue_stream from the root context (a timer, say) dereferences a NULL request context in ngx_wasm_module: the worker crashes",
            profile.describe()
        );
        return Err(trap(caller, FailureKind::HostCrash, message));
    }
    let Some(stream) = state.streams.get_mut(&context) else {
        return Ok(status::BAD_ARGUMENT);
    };
    match stream_kind {
        // Kong maps both to resume_http_request (ngx_proxy_wasm_host.c).
        stream_type::HTTP_REQUEST | stream_type::HTTP_RESPONSE if profile.is_kong() => {
            stream.resume_request = true;
        }
        stream_type::HTTP_REQUEST => stream.resume_request = true,
        stream_type::HTTP_RESPONSE => stream.resume_response = true,
        _ if profile.is_kong() => {
            state.log(
                LogOrigin::Host,
                LogLevel::Error,
                format!("NYI - continue_stream type {stream_kind}"),
            );
            return Ok(status::INTERNAL_FAILURE);
        }
        _ => return Ok(status::BAD_ARGUMENT),
    }
    Ok(status::OK)
}

fn proxy_continue_stream(mut caller: Caller<'_, VmState>, stream_kind: u32) -> Ret {
    enter(&mut caller, "proxy_continue_stream")?;
    continue_stream(&mut caller, stream_kind)
}

fn proxy_continue_request(mut caller: Caller<'_, VmState>) -> Ret {
    enter(&mut caller, "proxy_continue_request")?;
    continue_stream(&mut caller, stream_type::HTTP_REQUEST)
}

fn proxy_continue_response(mut caller: Caller<'_, VmState>) -> Ret {
    enter(&mut caller, "proxy_continue_response")?;
    continue_stream(&mut caller, stream_type::HTTP_RESPONSE)
}

/// Envoy resets the stream.
fn proxy_close_stream(mut caller: Caller<'_, VmState>, _stream_kind: u32) -> Ret {
    enter(&mut caller, "proxy_close_stream")?;
    let state = caller.data_mut();
    let context = state.active_context;
    let Some(stream) = state.streams.get_mut(&context) else {
        return Ok(status::BAD_ARGUMENT);
    };
    stream.reset = true;
    stream.paused = None;
    Ok(status::OK)
}
