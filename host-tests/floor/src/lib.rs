//! An HTTP filter that does nothing: Envoy still creates a context per request and calls every
//! callback across the Wasm boundary, which is the floor any Wasm filter pays.

#[cfg(target_os = "wasi")]
mod filter {
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::LogLevel;

    struct Empty;

    impl Context for Empty {}

    impl HttpContext for Empty {}

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_http_context(|_, _| -> Box<dyn HttpContext> { Box::new(Empty) });
    }}
}
