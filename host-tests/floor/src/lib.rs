//! An HTTP filter that does nothing: Envoy still creates a context per request and calls every
//! callback across the Wasm boundary, which is the floor any Wasm filter pays.
//!
//! With a configuration (`<op> <n>`, e.g. `get_header 10`) it does one kind of host call `n`
//! times per request, or `n` thousand steps of guest arithmetic, and nothing else: `just bench
//! --probe` measures each against the empty filter to price one host call in the real proxy's
//! Wasm runtime, which the test host's fuel cannot tell.

#[cfg(target_os = "wasi")]
mod filter {
    use std::cell::Cell;

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType};

    #[derive(Clone, Copy, PartialEq)]
    enum Op {
        Nothing,
        /// `proxy_get_header_map_value` for a header the request has (the host hands a value
        /// over: one call back into the guest's allocator).
        GetHeader,
        /// The same for a header the request lacks (no value handed over).
        GetAbsentHeader,
        /// `proxy_get_header_map_pairs`: the whole request map.
        GetHeaderMap,
        /// `proxy_replace_header_map_value` on the response.
        SetResponseHeader,
        /// `proxy_add_header_map_value` on the request.
        AddRequestHeader,
        /// `proxy_remove_header_map_value` of a header the request lacks.
        RemoveAbsentHeader,
        /// `proxy_get_property` of `xds.route_name`.
        GetRouteName,
        /// `proxy_get_property` of `source.address`.
        GetSourceAddress,
        /// `proxy_get_shared_data` of a key that exists.
        SharedGet,
        /// `proxy_set_shared_data` with the CAS of a preceding get.
        SharedGetSet,
        /// `proxy_increment_metric` on a counter.
        IncrementMetric,
        /// `proxy_get_current_time_nanoseconds`.
        CurrentTime,
        /// 1000 steps of integer arithmetic per count, no host call.
        Compute,
        /// The same work in `on_log`, after the response: whether the client waits for it.
        ComputeOnLog,
        /// One call each of five kinds (clock, present header, shared get, get + CAS set,
        /// metric) per count: what a plugin pays for a few distinct calls, against the sum of
        /// their repeated (warm) prices.
        Mix,
        /// The least a JWT filter with a warm token cache does per count: read the
        /// `authorization` header, the clock, and set one identity header on the request.
        WarmToken,
    }

    impl Op {
        fn parse(name: &str) -> Option<Self> {
            Some(match name {
                "get_header" => Self::GetHeader,
                "get_absent_header" => Self::GetAbsentHeader,
                "get_header_map" => Self::GetHeaderMap,
                "set_response_header" => Self::SetResponseHeader,
                "add_request_header" => Self::AddRequestHeader,
                "remove_absent_header" => Self::RemoveAbsentHeader,
                "get_route_name" => Self::GetRouteName,
                "get_source_address" => Self::GetSourceAddress,
                "shared_get" => Self::SharedGet,
                "shared_get_set" => Self::SharedGetSet,
                "increment_metric" => Self::IncrementMetric,
                "current_time" => Self::CurrentTime,
                "compute" => Self::Compute,
                "compute_on_log" => Self::ComputeOnLog,
                "mix" => Self::Mix,
                "warm_token" => Self::WarmToken,
                _ => return None,
            })
        }
    }

    thread_local! {
        static PROBE: Cell<(Op, u32, u32)> = const { Cell::new((Op::Nothing, 0, 0)) };
    }

    const SHARED_KEY: &str = "palisade-probe";

    struct Root;

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, size: usize) -> bool {
            let Ok(Some(config)) =
                hostcalls::get_buffer(proxy_wasm::types::BufferType::PluginConfiguration, 0, size)
            else {
                return true;
            };
            let text = String::from_utf8_lossy(&config);
            let mut words = text.split_whitespace();
            let (Some(op), Some(n)) = (words.next(), words.next()) else {
                return true;
            };
            let (Some(op), Ok(n)) = (Op::parse(op), n.parse::<u32>()) else {
                return false;
            };
            let metric =
                hostcalls::define_metric(MetricType::Counter, "palisade_probe_count").unwrap_or(0);
            let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&[7u8; 24]), None);
            PROBE.with(|p| p.set((op, n, metric)));
            true
        }

        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Probe))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Probe;

    impl Context for Probe {}

    impl HttpContext for Probe {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            let (op, n, metric) = PROBE.with(Cell::get);
            let mut sink = 0u64;
            for i in 0..n {
                match op {
                    Op::Nothing | Op::SetResponseHeader | Op::ComputeOnLog => {}
                    Op::GetHeader => sink += present_header(),
                    Op::GetAbsentHeader => {
                        let v = hostcalls::get_map_value_bytes(
                            MapType::HttpRequestHeaders,
                            "x-palisade-absent",
                        );
                        sink += v.ok().flatten().map_or(0, |v| v.len() as u64);
                    }
                    Op::GetHeaderMap => {
                        let v = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
                        sink += v.map_or(0, |v| v.len() as u64);
                    }
                    Op::AddRequestHeader => {
                        let _ = hostcalls::add_map_value_bytes(
                            MapType::HttpRequestHeaders,
                            "x-palisade-probe",
                            b"1",
                        );
                    }
                    Op::RemoveAbsentHeader => {
                        let _ = hostcalls::remove_map_value(
                            MapType::HttpRequestHeaders,
                            "x-palisade-absent",
                        );
                    }
                    Op::GetRouteName => {
                        let v = hostcalls::get_property(vec!["xds", "route_name"]);
                        sink += v.ok().flatten().map_or(0, |v| v.len() as u64);
                    }
                    Op::GetSourceAddress => {
                        let v = hostcalls::get_property(vec!["source", "address"]);
                        sink += v.ok().flatten().map_or(0, |v| v.len() as u64);
                    }
                    Op::SharedGet => {
                        if let Ok((Some(v), _)) = hostcalls::get_shared_data(SHARED_KEY) {
                            sink += v.len() as u64;
                        }
                    }
                    Op::SharedGetSet => shared_get_set(),
                    Op::IncrementMetric => {
                        let _ = hostcalls::increment_metric(metric, 1);
                    }
                    Op::CurrentTime => sink += clock(),
                    Op::Compute => sink = sink.wrapping_add(thousand_steps(i)),
                    Op::WarmToken => {
                        let token = hostcalls::get_map_value_bytes(
                            MapType::HttpRequestHeaders,
                            "authorization",
                        );
                        sink += token.ok().flatten().map_or(0, |v| v.len() as u64) + clock();
                        let _ = hostcalls::set_map_value_bytes(
                            MapType::HttpRequestHeaders,
                            "x-palisade-subject",
                            Some(b"bench-user"),
                        );
                    }
                    Op::Mix => {
                        sink += clock() + present_header();
                        shared_get_set();
                        let _ = hostcalls::increment_metric(metric, 1);
                    }
                }
            }
            std::hint::black_box(sink);
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            let (op, n, _) = PROBE.with(Cell::get);
            if op == Op::SetResponseHeader {
                for _ in 0..n {
                    let _ = hostcalls::set_map_value_bytes(
                        MapType::HttpResponseHeaders,
                        "x-palisade-probe",
                        Some(b"1"),
                    );
                }
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            let (op, n, _) = PROBE.with(Cell::get);
            if op == Op::ComputeOnLog {
                let sink = (0..n).fold(0u64, |sink, i| sink.wrapping_add(thousand_steps(i)));
                std::hint::black_box(sink);
            }
        }
    }

    /// The host's clock (`proxy_get_current_time_nanoseconds`), as a number to sink.
    fn clock() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }

    /// A request header every bench request carries: the host hands its value over.
    fn present_header() -> u64 {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-request-id")
            .ok()
            .flatten()
            .map_or(0, |v| v.len() as u64)
    }

    /// Reads the probe's shared-data key and writes it back with the read's CAS.
    fn shared_get_set() {
        if let Ok((Some(v), cas)) = hostcalls::get_shared_data(SHARED_KEY) {
            let _ = hostcalls::set_shared_data(SHARED_KEY, Some(&v), cas);
        }
    }

    /// 1000 dependent xorshift steps: guest work the optimiser cannot skip.
    fn thousand_steps(i: u32) -> u64 {
        let mut x = u64::from(i) | 1;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        x
    }

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Warn);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
    }}
}
