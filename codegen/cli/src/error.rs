//! The one error type of the commands: a message that says what is wrong
//! and how to fix it.

use std::path::Path;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// Bad input: a name, a flag, a file's contents. Exit status 2.
    #[error("{0}")]
    Usage(String),
    /// Anything else. Exit status 1.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    pub(crate) fn msg(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }

    pub(crate) fn io(action: &str, path: &Path, err: std::io::Error) -> Self {
        Error::Failed(format!("cannot {action} {}: {err}", path.display()))
    }

    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Failed(_) => 1,
        }
    }
}
