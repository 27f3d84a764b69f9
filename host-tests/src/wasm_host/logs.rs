//! Captured log lines: the plugin's (`proxy_log`) and the host's own (what Envoy or Kong would
//! log about the plugin: unsupported properties, failed dispatches, bad return actions).

pub use super::abi::LogLevel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOrigin {
    Plugin,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub worker: usize,
    /// The context the line was logged from (the root context id outside a request).
    pub context_id: u32,
    pub origin: LogOrigin,
    pub level: LogLevel,
    pub message: String,
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = match self.origin {
            LogOrigin::Plugin => "plugin",
            LogOrigin::Host => "host",
        };
        write!(
            f,
            "[worker {} ctx {} {origin} {:?}] {}",
            self.worker, self.context_id, self.level, self.message
        )
    }
}
