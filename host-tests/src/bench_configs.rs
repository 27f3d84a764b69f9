//! Plugin configurations `just bench` runs, shared with the tests that bound their per-request
//! cost (plugin_host_calls.rs), so a regression shows without running the benchmark.

/// header-security as an edge would run it: the API preset, CORS for one app, a request id.
pub const HEADER_SECURITY: &str = r#"{
    "security_headers": {"preset": "api"},
    "cors": {"allow_origins": [{"exact": "https://app.example.com"}], "allow_methods": ["GET", "POST"],
             "allow_headers": ["authorization", "content-type"], "max_age": "10m"},
    "trace_context": {"create": false}
}"#;
