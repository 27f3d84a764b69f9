//! The one error type of the test host: what went wrong, said so a failing test explains itself.

use std::fmt;

/// Why a host operation failed. Tests mostly propagate it with `?`; its `Debug` is its message,
/// so a test returning `Result<(), Failure>` prints the message itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The built `.wasm` is not there.
    MissingWasm,
    /// The module did not compile, link or initialise.
    Load,
    /// The plugin trapped (a panic, `unreachable`, out of fuel, `proc_exit`).
    Trap,
    /// The profile's host does not implement a host call the plugin made (the Kong profile).
    Refused,
    /// A host call the host refuses at that moment (during `_initialize` or memory allocation).
    Restricted,
    /// The test drove the host wrongly (a body before headers, a second response...).
    Usage,
    /// The profile's proxy would crash (Kong: a stream callback the module does not export).
    HostCrash,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Usage, message)
    }

    pub(crate) fn load(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Load, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Failure {}

pub type Result<T, E = Failure> = std::result::Result<T, E>;
