//! The engine's error type: every failure names the model file and what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Bundle(#[from] edgedx_bundle::BundleError),
    #[error("cannot map {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a loadable ONNX model: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: tract panicked while {what} the model ({message}); the file is malformed or uses an unsupported construct")]
    Panicked {
        path: PathBuf,
        what: String,
        message: String,
    },
    /// A panic in the engine's own code (its rewrites and kernels): a bug in edgedx, never
    /// the model file's fault.
    #[error("{path}: internal error in edgedx's engine while {what} the model, at {location} ({message}); this is a bug in edgedx, not a problem of the model file: please report it")]
    Internal {
        path: PathBuf,
        what: String,
        location: String,
        message: String,
    },
    #[error("bad engine options: {0}")]
    BadOptions(String),
    #[error("input does not fit the model: {0}")]
    BadInput(String),
    #[error("inference failed: {0}")]
    Run(String),
    #[error("model produced an invalid output: {0}")]
    InvalidOutput(String),
}

/// Coarse classes of [`EngineError`], stable strings for machine-readable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Bundle,
    Io,
    Load,
    Panicked,
    Internal,
    Options,
    Input,
    Run,
    InvalidOutput,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Bundle => "bundle",
            ErrorKind::Io => "io",
            ErrorKind::Load => "model_load",
            ErrorKind::Panicked => "model_panic",
            ErrorKind::Internal => "internal",
            ErrorKind::Options => "options",
            ErrorKind::Input => "input",
            ErrorKind::Run => "inference",
            ErrorKind::InvalidOutput => "invalid_output",
        }
    }
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Bundle(_) => ErrorKind::Bundle,
            EngineError::Io { .. } => ErrorKind::Io,
            EngineError::Load { .. } => ErrorKind::Load,
            EngineError::Panicked { .. } => ErrorKind::Panicked,
            EngineError::Internal { .. } => ErrorKind::Internal,
            EngineError::BadOptions(_) => ErrorKind::Options,
            EngineError::BadInput(_) => ErrorKind::Input,
            EngineError::Run(_) => ErrorKind::Run,
            EngineError::InvalidOutput(_) => ErrorKind::InvalidOutput,
        }
    }
}
