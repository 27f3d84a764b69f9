//! Metrics (`proxy_define/increment/record/get_metric`), shared by every VM of a host as Envoy's
//! stats store and Kong's metrics shm are.

use std::collections::BTreeMap;

use super::abi::{metric, status};
use super::profile::Profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricValue {
    Counter(u64),
    Gauge(i64),
    /// Every recorded value, in order.
    Histogram(Vec<u64>),
}

/// Kong's `max_metric_name_length` default, which applies to the prefixed name (METRICS.md).
const KONG_MAX_NAME: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    by_name: BTreeMap<(MetricKind, String), u32>,
    values: BTreeMap<u32, (String, MetricValue)>,
}

/// A call ngx_wasm_module answers with a trap rather than a status (ngx_proxy_wasm_host.c
/// ≈1598–1825).
pub(crate) type KongTrap = String;

impl Metrics {
    pub(crate) fn define(
        &mut self,
        profile: Profile,
        plugin: &str,
        kind: u32,
        name: &str,
    ) -> Result<Result<u32, u32>, KongTrap> {
        let kind = match kind {
            metric::COUNTER => MetricKind::Counter,
            metric::GAUGE => MetricKind::Gauge,
            metric::HISTOGRAM => MetricKind::Histogram,
            _ => return Ok(Err(status::BAD_ARGUMENT)),
        };
        if profile.is_kong() {
            let stored = format!("pw:{plugin}:{name}");
            if stored.len() > KONG_MAX_NAME {
                return Err(format!(
                    "kong profile: metric name {stored:?} is longer than max_metric_name_length ({KONG_MAX_NAME}): ngx_wasm_module traps"
                ));
            }
        }
        let key = (kind, name.to_owned());
        if let Some(&id) = self.by_name.get(&key) {
            return Ok(Ok(id));
        }
        let id = u32::try_from(self.values.len() + 1).unwrap_or(u32::MAX);
        let value = match kind {
            MetricKind::Counter => MetricValue::Counter(0),
            MetricKind::Gauge => MetricValue::Gauge(0),
            MetricKind::Histogram => MetricValue::Histogram(Vec::new()),
        };
        self.by_name.insert(key, id);
        self.values.insert(id, (name.to_owned(), value));
        Ok(Ok(id))
    }

    pub(crate) fn increment(
        &mut self,
        profile: Profile,
        id: u32,
        offset: i64,
    ) -> Result<u32, KongTrap> {
        let Some((name, value)) = self.values.get_mut(&id) else {
            return unknown(profile, id);
        };
        match value {
            MetricValue::Counter(count) => {
                if offset < 0 {
                    return Ok(status::BAD_ARGUMENT);
                }
                *count = count.saturating_add(offset.unsigned_abs());
            }
            MetricValue::Gauge(gauge) if !profile.is_kong() => {
                *gauge = gauge.saturating_add(offset);
            }
            _ if profile.is_kong() => {
                return Err(format!(
                    "kong profile: proxy_increment_metric on {name:?}, which is not a counter: ngx_wasm_module traps (set gauges with proxy_record_metric)"
                ));
            }
            MetricValue::Gauge(_) | MetricValue::Histogram(_) => return Ok(status::BAD_ARGUMENT),
        }
        Ok(status::OK)
    }

    pub(crate) fn record(
        &mut self,
        profile: Profile,
        id: u32,
        sample: u64,
    ) -> Result<u32, KongTrap> {
        let Some((name, value)) = self.values.get_mut(&id) else {
            return unknown(profile, id);
        };
        match value {
            MetricValue::Counter(_) if profile.is_kong() => {
                return Err(format!(
                    "kong profile: proxy_record_metric on counter {name:?}: ngx_wasm_module traps"
                ));
            }
            MetricValue::Counter(count) => *count = count.saturating_add(sample),
            MetricValue::Gauge(gauge) => *gauge = i64::try_from(sample).unwrap_or(i64::MAX),
            MetricValue::Histogram(samples) => samples.push(sample),
        }
        Ok(status::OK)
    }

    pub(crate) fn get(&self, profile: Profile, id: u32) -> Result<Result<u64, u32>, KongTrap> {
        let Some((name, value)) = self.values.get(&id) else {
            return unknown(profile, id).map(Err);
        };
        Ok(match value {
            MetricValue::Counter(count) => Ok(*count),
            MetricValue::Gauge(gauge) => Ok(u64::try_from(*gauge).unwrap_or(0)),
            MetricValue::Histogram(_) if profile.is_kong() => {
                return Err(format!(
                    "kong profile: proxy_get_metric on histogram {name:?}: ngx_wasm_module traps"
                ));
            }
            MetricValue::Histogram(_) => Err(status::BAD_ARGUMENT),
        })
    }

    /// Every metric by name.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, MetricValue> {
        self.values.values().cloned().collect()
    }
}

fn unknown(profile: Profile, id: u32) -> Result<u32, KongTrap> {
    if profile.is_kong() {
        Err(format!(
            "kong profile: metric id {id} is unknown: ngx_wasm_module traps"
        ))
    } else {
        Ok(status::NOT_FOUND)
    }
}
