//! `log` macros routed to the host's log, and a panic hook that logs the panic at critical level
//! before the VM dies (a panic aborts: the worker's VM is gone, and this line is the only trace).

use super::abi;

const TRACE: u32 = 0;
const DEBUG: u32 = 1;
const INFO: u32 = 2;
const WARN: u32 = 3;
const ERROR: u32 = 4;
const CRITICAL: u32 = 5;

struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => TRACE,
            log::Level::Debug => DEBUG,
            log::Level::Info => INFO,
            log::Level::Warn => WARN,
            log::Level::Error => ERROR,
        };
        write(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

fn write(level: u32, message: &str) {
    // SAFETY: pointer to a live string. A host that cannot log leaves us nothing better to do.
    let _ = unsafe { abi::proxy_log(level, message.as_ptr(), message.len()) };
}

/// Routes `log` to the host at `info` and installs the panic hook. The level is not read from
/// the host: Envoy refuses host calls while the module initialises (`restricted_callback`), and
/// Kong's ngx_wasm_module does not implement `proxy_get_log_level` at all (the call traps), so
/// the host's own level filters what `info` lets through. Debug logging is not emitted.
pub fn init_logging(plugin: &'static str) {
    if log::set_logger(&LOGGER).is_ok() {
        std::panic::set_hook(Box::new(move |info| {
            write(
                CRITICAL,
                &format!("[{plugin}] panic, this worker's VM stops: {info}"),
            );
        }));
    }
    log::set_max_level(log::LevelFilter::Info);
}
