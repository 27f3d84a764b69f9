//! HTTP dispatches, gRPC calls, `proxy_get_status`, foreign functions.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use super::{enter, trap};
use crate::wasm_host::abi::{status, LogLevel};
use crate::wasm_host::callouts::{CallState, GrpcCall, HttpCall};
use crate::wasm_host::error::FailureKind;
use crate::wasm_host::headers::Headers;
use crate::wasm_host::logs::LogOrigin;
use crate::wasm_host::memory;
use crate::wasm_host::vm::{Callback, VmState};
use palisade_kit::header_pairs;

type Ret = wasmtime::Result<u32>;

pub(super) fn define(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_http_call", proxy_http_call)?;
    linker.func_wrap("env", "proxy_grpc_call", proxy_grpc_call)?;
    linker.func_wrap("env", "proxy_grpc_stream", proxy_grpc_stream)?;
    linker.func_wrap("env", "proxy_grpc_send", proxy_grpc_send)?;
    linker.func_wrap("env", "proxy_grpc_cancel", proxy_grpc_cancel)?;
    linker.func_wrap("env", "proxy_grpc_close", proxy_grpc_close)?;
    linker.func_wrap("env", "proxy_get_status", proxy_get_status)?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        proxy_call_foreign_function,
    )?;
    Ok(())
}

fn headers_from(bytes: &[u8]) -> Option<Headers> {
    let pairs = header_pairs::decode(bytes)?;
    Some(pairs.iter().fold(Headers::new(), |headers, (n, v)| {
        headers.with(&String::from_utf8_lossy(n), v)
    }))
}

/// Kong's dispatch target: `host[:port]`, an IP, `[v6][:port]` or `unix:/path`
/// (PROXY_WASM.md "HTTP Dispatches", ngx_wasm_socket_tcp.c:139-232).
fn kong_upstream_error(upstream: &str) -> Option<&'static str> {
    if upstream.is_empty() {
        return Some("tcp socket - no host");
    }
    if let Some(path) = upstream.strip_prefix("unix:") {
        return path
            .is_empty()
            .then_some("tcp socket - no path in the unix domain socket");
    }
    let (host, port) = if let Some(v6) = upstream.strip_prefix('[') {
        let Some((host, rest)) = v6.split_once(']') else {
            return Some("tcp socket - invalid host");
        };
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Some("tcp socket - invalid host"),
            },
        }
    } else {
        match upstream.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (upstream, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
    if !host_ok {
        return Some("tcp socket - invalid host");
    }
    if let Some(port) = port {
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Some("tcp socket - invalid port");
        }
    }
    None
}

#[allow(clippy::too_many_arguments)] // the ABI's signature
fn proxy_http_call(
    mut caller: Caller<'_, VmState>,
    upstream_ptr: u32,
    upstream_size: u32,
    headers_ptr: u32,
    headers_size: u32,
    body_ptr: u32,
    body_size: u32,
    trailers_ptr: u32,
    trailers_size: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> Ret {
    enter(&mut caller, "proxy_http_call")?;
    let (Some(upstream), Some(headers), Some(body), Some(trailers)) = (
        memory::read_text(&mut caller, upstream_ptr, upstream_size),
        memory::read(&mut caller, headers_ptr, headers_size),
        memory::read(&mut caller, body_ptr, body_size),
        memory::read(&mut caller, trailers_ptr, trailers_size),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let (Some(headers), Some(trailers)) = (headers_from(&headers), headers_from(&trailers)) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let state = caller.data();
    let profile = state.profile;
    let callback = state.callback;
    if profile.is_kong() {
        let version = profile.describe();
        let allowed = matches!(
            callback,
            Some(
                Callback::RequestHeaders
                    | Callback::RequestBody
                    | Callback::Tick
                    | Callback::HttpCallResponse
            )
        );
        let problem = if profile.enforces_dispatch_steps() && !allowed {
            Some(format!(
                "proxy_http_call from {} traps: ngx_wasm_module (Kong ≥ 3.6, commit 5553ae05) only dispatches from on_request_headers, on_request_body, on_tick and on_http_call_response",
                callback.map_or("?".to_owned(), |c| c.to_string())
            ))
        } else if let Some(error) = kong_upstream_error(&upstream) {
            Some(format!(
                "proxy_http_call to {upstream:?} traps: \"dispatch failed: {error}\": Kong dispatches to a host address (host[:port], IP, [v6]:port, unix:/path), not to an Envoy cluster (docs/PROXY_WASM.md \"HTTP Dispatches\")"
            ))
        } else if !headers.contains(":method") {
            Some(
                "proxy_http_call traps: \"dispatch failed: no :method\" (dispatch.c:370)"
                    .to_owned(),
            )
        } else if !headers.contains(":path") {
            Some("proxy_http_call traps: \"dispatch failed: no :path\" (dispatch.c:374)".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(trap(
                &mut caller,
                FailureKind::Trap,
                format!("{version} profile: {problem}"),
            ));
        }
    } else {
        // Envoy's Context::httpCall: :path, :method and :authority are required, the upstream is
        // a cluster name.
        if !(headers.contains(":method")
            && headers.contains(":path")
            && headers.contains(":authority"))
        {
            state.log(
                LogOrigin::Host,
                LogLevel::Warn,
                "http call without :method, :path or :authority: BadArgument".to_owned(),
            );
            return Ok(status::BAD_ARGUMENT);
        }
        if !state.world.borrow().clusters.contains(&upstream) {
            state.log(
                LogOrigin::Host,
                LogLevel::Warn,
                format!("http call to unknown cluster {upstream:?}: BadArgument (add it with Host::add_cluster or script a reply)"),
            );
            return Ok(status::BAD_ARGUMENT);
        }
    }
    let (worker, context) = (state.worker, state.active_context);
    let token = {
        let mut world = state.world.borrow_mut();
        let token = world.callouts.token();
        let dispatched_at = world.clock.elapsed();
        world.callouts.start_http(HttpCall {
            token,
            worker,
            context_id: context,
            upstream,
            headers,
            body,
            trailers,
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            dispatched_at,
            state: CallState::Pending,
        });
        token
    };
    if let Some(stream) = caller.data_mut().streams.get_mut(&context) {
        stream.dispatched_in_callback = true;
    }
    Ok(if memory::write_u32(&mut caller, ret_token, token) {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    })
}

#[allow(clippy::too_many_arguments)] // the ABI's signature
fn proxy_grpc_call(
    mut caller: Caller<'_, VmState>,
    upstream_ptr: u32,
    upstream_size: u32,
    service_ptr: u32,
    service_size: u32,
    method_ptr: u32,
    method_size: u32,
    metadata_ptr: u32,
    metadata_size: u32,
    message_ptr: u32,
    message_size: u32,
    timeout_ms: u32,
    ret_token: u32,
) -> Ret {
    enter(&mut caller, "proxy_grpc_call")?;
    let (Some(upstream), Some(service), Some(method), Some(metadata), Some(message)) = (
        memory::read_text(&mut caller, upstream_ptr, upstream_size),
        memory::read_text(&mut caller, service_ptr, service_size),
        memory::read_text(&mut caller, method_ptr, method_size),
        memory::read(&mut caller, metadata_ptr, metadata_size),
        memory::read(&mut caller, message_ptr, message_size),
    ) else {
        return Ok(status::INVALID_MEMORY_ACCESS);
    };
    let Some(initial_metadata) = headers_from(&metadata) else {
        return Ok(status::BAD_ARGUMENT);
    };
    let state = caller.data();
    if !state.world.borrow().clusters.contains(&upstream) {
        state.log(
            LogOrigin::Host,
            LogLevel::Warn,
            format!("grpc call to unknown cluster {upstream:?}: BadArgument"),
        );
        return Ok(status::BAD_ARGUMENT);
    }
    let (worker, context) = (state.worker, state.active_context);
    let token = {
        let mut world = state.world.borrow_mut();
        let token = world.callouts.token();
        let dispatched_at = world.clock.elapsed();
        world.callouts.start_grpc(GrpcCall {
            token,
            worker,
            context_id: context,
            upstream,
            service,
            method,
            initial_metadata,
            message,
            timeout: Duration::from_millis(u64::from(timeout_ms)),
            dispatched_at,
            state: CallState::Pending,
        });
        token
    };
    if let Some(stream) = caller.data_mut().streams.get_mut(&context) {
        stream.dispatched_in_callback = true;
    }
    Ok(if memory::write_u32(&mut caller, ret_token, token) {
        status::OK
    } else {
        status::INVALID_MEMORY_ACCESS
    })
}

fn not_in_test_host(caller: &mut Caller<'_, VmState>, name: &str) -> wasmtime::Error {
    trap(
        caller,
        FailureKind::Usage,
        format!("{name}: gRPC streams are not implemented by this test host (only unary proxy_grpc_call)"),
    )
}

#[allow(clippy::too_many_arguments)] // the ABI's signature
fn proxy_grpc_stream(
    mut caller: Caller<'_, VmState>,
    _upstream_ptr: u32,
    _upstream_size: u32,
    _service_ptr: u32,
    _service_size: u32,
    _method_ptr: u32,
    _method_size: u32,
    _metadata_ptr: u32,
    _metadata_size: u32,
    _ret_token: u32,
) -> Ret {
    enter(&mut caller, "proxy_grpc_stream")?;
    Err(not_in_test_host(&mut caller, "proxy_grpc_stream"))
}

fn proxy_grpc_send(
    mut caller: Caller<'_, VmState>,
    _token: u32,
    _ptr: u32,
    _size: u32,
    _end: u32,
) -> Ret {
    enter(&mut caller, "proxy_grpc_send")?;
    Err(not_in_test_host(&mut caller, "proxy_grpc_send"))
}

fn cancel_grpc(caller: &mut Caller<'_, VmState>, token: u32) -> u32 {
    let mut world = caller.data().world.borrow_mut();
    match world.callouts.grpc.get_mut(&token) {
        Some((call, _)) if call.state == CallState::Pending => {
            call.state = CallState::Cancelled;
            status::OK
        }
        _ => status::NOT_FOUND,
    }
}

fn proxy_grpc_cancel(mut caller: Caller<'_, VmState>, token: u32) -> Ret {
    enter(&mut caller, "proxy_grpc_cancel")?;
    Ok(cancel_grpc(&mut caller, token))
}

fn proxy_grpc_close(mut caller: Caller<'_, VmState>, token: u32) -> Ret {
    enter(&mut caller, "proxy_grpc_close")?;
    Ok(cancel_grpc(&mut caller, token))
}

/// The status of the gRPC call being closed (`on_grpc_close`).
fn proxy_get_status(
    mut caller: Caller<'_, VmState>,
    ret_code: u32,
    ret_ptr: u32,
    ret_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_get_status")?;
    let Some((code, message)) = caller.data().grpc_status.clone() else {
        return Ok(status::NOT_FOUND);
    };
    if !memory::write_u32(&mut caller, ret_code, code) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    memory::return_bytes(&mut caller, message.as_bytes(), ret_ptr, ret_size)
}

/// No foreign function is registered in the test host: NotFound, as Envoy answers an unknown one.
fn proxy_call_foreign_function(
    mut caller: Caller<'_, VmState>,
    name_ptr: u32,
    name_size: u32,
    _args_ptr: u32,
    _args_size: u32,
    _ret_ptr: u32,
    _ret_size: u32,
) -> Ret {
    enter(&mut caller, "proxy_call_foreign_function")?;
    let name = memory::read_text(&mut caller, name_ptr, name_size).unwrap_or_default();
    caller.data().log(
        LogOrigin::Host,
        LogLevel::Warn,
        format!("foreign function {name:?} is not registered in the test host"),
    );
    Ok(status::NOT_FOUND)
}
