//! Metrics defined once per root context, incremented cheaply per request. A definition the
//! host refuses with a status leaves that metric a no-op (logged once): metrics never fail a
//! request.
//!
//! Kong before 3.8 (ngx_wasm_module < 0.4.0) does not refuse: its metric functions are stubs
//! that trap, which kills the VM. Plugins that define metrics therefore take a `metrics` switch
//! in their config, and Kong 3.4–3.7 configs set it to `false`.

use super::abi;

const COUNTER: u32 = 0;
const GAUGE: u32 = 1;
const HISTOGRAM: u32 = 2;

fn define(kind: u32, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: pointers to a live string and a local.
    let status = unsafe { abi::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    if status == abi::OK {
        Some(id)
    } else {
        log::warn!("metric {name} unavailable (host status {status}); it will not be recorded");
        None
    }
}

/// A monotonically increasing count.
#[derive(Debug, Clone, Copy)]
pub struct Counter(Option<u32>);

impl Counter {
    pub fn define(name: &str) -> Self {
        Self(define(COUNTER, name))
    }

    pub fn inc(self) {
        self.add(1);
    }

    pub fn add(self, n: u64) {
        if let Some(id) = self.0 {
            // SAFETY: plain values. A failed increment is dropped: metrics never fail requests.
            let _ =
                unsafe { abi::proxy_increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX)) };
        }
    }
}

/// A value that goes up and down (open circuits, queue depth).
#[derive(Debug, Clone, Copy)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn define(name: &str) -> Self {
        Self(define(GAUGE, name))
    }

    pub fn set(self, value: u64) {
        if let Some(id) = self.0 {
            // SAFETY: plain values.
            let _ = unsafe { abi::proxy_record_metric(id, value) };
        }
    }

    pub fn add(self, delta: i64) {
        if let Some(id) = self.0 {
            // SAFETY: plain values.
            let _ = unsafe { abi::proxy_increment_metric(id, delta) };
        }
    }
}

/// A distribution (latencies, batch sizes).
#[derive(Debug, Clone, Copy)]
pub struct Histogram(Option<u32>);

impl Histogram {
    pub fn define(name: &str) -> Self {
        Self(define(HISTOGRAM, name))
    }

    pub fn record(self, value: u64) {
        if let Some(id) = self.0 {
            // SAFETY: plain values.
            let _ = unsafe { abi::proxy_record_metric(id, value) };
        }
    }
}
