//! What every VM of a host shares: the clock, shared data and queues, metrics, callouts, logs,
//! and the events waiting to be delivered.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::callouts::Callouts;
use super::clock::VirtualClock;
use super::headers::PropertyValue;
use super::logs::LogEntry;
use super::metrics::Metrics;
use super::profile::Profile;
use super::queues::SharedQueues;
use super::shared_data::SharedData;

/// A property Kong does not support that a plugin asked for (Kong answered NotFound).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedProperty {
    pub worker: usize,
    pub path: String,
    /// What Kong logs for it.
    pub log: String,
}

/// Something to deliver once the current callback has returned (hosts never re-enter a VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    QueueReady {
        vm: usize,
        root_context: u32,
        queue: u32,
    },
}

pub(crate) struct World {
    pub seed: u64,
    pub clock: VirtualClock,
    pub shared_data: SharedData,
    pub queues: SharedQueues,
    pub metrics: Metrics,
    pub callouts: Callouts,
    /// Envoy clusters a dispatch may target (scripting a reply adds its upstream).
    pub clusters: BTreeSet<String>,
    pub logs: Vec<LogEntry>,
    pub refused_properties: Vec<RefusedProperty>,
    pub events: VecDeque<Event>,
    /// Properties every request and root context sees unless a request overrides them.
    pub properties: BTreeMap<String, PropertyValue>,
    /// Fault injection: every header map write answers INTERNAL_FAILURE.
    pub refuse_header_writes: bool,
    /// Fault injection on shared data, while set.
    pub shared_data_fault: Option<SharedDataFault>,
}

/// How shared data misbehaves while a test says so ([`crate::wasm_host::Host::fail_shared_data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDataFault {
    /// Every write loses to another worker's, which lands just before it: the key gets a new
    /// version (an absent one is inserted empty) and the write reports CasMismatch. Contention
    /// no retry outlasts; reads still answer.
    LoseEveryWrite,
    /// Every read and write answers this status and stores nothing: a host error no Palisade
    /// plugin can recover from inside the request.
    Status(u32),
}

impl World {
    pub(crate) fn new(profile: Profile, seed: u64) -> Self {
        Self {
            seed,
            clock: VirtualClock::default(),
            shared_data: SharedData::new(profile.cas_rule()),
            queues: SharedQueues::default(),
            metrics: Metrics::default(),
            callouts: Callouts::default(),
            clusters: BTreeSet::new(),
            logs: Vec::new(),
            refuse_header_writes: false,
            shared_data_fault: None,
            refused_properties: Vec::new(),
            events: VecDeque::new(),
            properties: BTreeMap::new(),
        }
    }
}
