//! The one error type of flowstage.
//!
//! Every failure a user can cause ends up as a [`FlowError`]: invalid settings are reported
//! when a pipeline is built or started, and a panic or `Err` inside a stage ends the run with
//! an error that names the stage ([`StageInfo`]) and carries the message.

use std::fmt;

/// `Result` with [`FlowError`] as the error.
pub type Result<T, E = FlowError> = std::result::Result<T, E>;

/// The error a user callback returns from inside a stage.
///
/// Any `std::error::Error` converts into it with `?`, and so do `String` and `&str`.
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The role a stage plays in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// Emits events in answer to demand.
    Producer,
    /// Consumes events and emits new ones.
    ProducerConsumer,
    /// Consumes events.
    Consumer,
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StageKind::Producer => "producer",
            StageKind::ProducerConsumer => "producer-consumer",
            StageKind::Consumer => "consumer",
        })
    }
}

/// Which stage of a pipeline something happened in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StageInfo {
    /// The stage's name: the one given in its options, or `"<kind>#<index>"`.
    pub name: String,
    /// The stage's role.
    pub kind: StageKind,
    /// The stage's index in the pipeline, in the order stages were added.
    pub index: usize,
}

impl fmt::Display for StageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}` (stage {})", self.kind, self.name, self.index)
    }
}

/// Everything that can go wrong when building or running a pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// A setting is out of range (checked when the pipeline is built or started).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// User code inside a stage returned an error.
    #[error("{stage} failed: {message}")]
    StageFailed {
        /// The stage that failed.
        stage: StageInfo,
        /// The error's message.
        message: String,
        /// The error itself.
        #[source]
        source: Option<StageError>,
    },
    /// User code inside a stage panicked.
    #[error("{stage} panicked: {message}")]
    StagePanicked {
        /// The stage that panicked.
        stage: StageInfo,
        /// The panic's message.
        message: String,
    },
    /// An I/O operation failed: on a file (or standard input, a pipe) the library reads or
    /// writes — naming it, and the byte offset where known — or anywhere else: a
    /// `std::io::Error` that user code turns into a `FlowError` with `?` becomes one too,
    /// as [`IoOperation::Unknown`] without a path (use [`FlowError::io`] to say what and
    /// where).
    ///
    /// ```
    /// use flowstage::{FlowError, IoOperation};
    ///
    /// fn load(path: &str) -> flowstage::Result<String> {
    ///     Ok(std::fs::read_to_string(path)?)
    /// }
    /// let error = load("/nonexistent/flowstage.toml").unwrap_err();
    /// assert!(matches!(error, FlowError::Io { operation: IoOperation::Unknown, .. }));
    /// assert!(error.to_string().starts_with("I/O error: "), "{error}");
    ///
    /// let path = "/nonexistent/flowstage.toml";
    /// let error = std::fs::read_to_string(path)
    ///     .map_err(|e| FlowError::io(IoOperation::Read, path, e))
    ///     .unwrap_err();
    /// assert!(error.to_string().starts_with("cannot read /nonexistent/flowstage.toml: "));
    /// ```
    #[error("{}", io_message(*operation, path.as_deref(), *offset, source))]
    Io {
        /// What was being done.
        operation: IoOperation,
        /// The file (`-` for standard input, the name given to a reader); `None` when
        /// unknown (an error converted with `?`).
        path: Option<std::path::PathBuf>,
        /// Where in the file, when known.
        offset: Option<u64>,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Text that must be UTF-8 is not.
    #[error("{}: invalid UTF-8 at byte {offset}", path.display())]
    InvalidUtf8 {
        /// The file (`-` for standard input).
        path: std::path::PathBuf,
        /// The offset of the first invalid byte in the file.
        offset: u64,
    },
    /// A record of a file could not be parsed (a CSV row, a JSON line) or written.
    #[error("{}:{line}: {message}", path.display())]
    Record {
        /// The file.
        path: std::path::PathBuf,
        /// The record's line in the file, from 1 (for a sink: the record's number).
        line: u64,
        /// What is wrong with it.
        message: String,
    },
    /// A message broker could not be reached, or a command to it failed.
    #[error("broker {url}: {message}")]
    Broker {
        /// The broker's address.
        url: String,
        /// What failed and why.
        message: String,
    },
    /// An operator, source or setting the chosen backend cannot run (reported when the
    /// flow is built onto it, before anything runs).
    #[error("{operator} is not supported on the {backend} backend")]
    Unsupported {
        /// The operator (or source, or setting), as the builder names it.
        operator: String,
        /// The backend: `"timely"` for [`cluster`](crate::cluster).
        backend: &'static str,
    },
    /// A cluster run failed outside user code: a process could not connect to the others
    /// in time, a peer died or left, or a worker panicked.
    #[error("cluster process {process}: {message}")]
    Cluster {
        /// The index of the process reporting the error.
        process: usize,
        /// What happened.
        message: String,
    },
    /// The run was cancelled before it finished (its handle was dropped or cancelled).
    #[error("the run was cancelled")]
    Cancelled,
    /// The runtime could not be started (the operating system refused its threads).
    /// Only that: other I/O errors are [`FlowError::Io`].
    #[error("could not start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// What an I/O operation was doing when it failed: see [`FlowError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoOperation {
    /// Opening a file (or a folder) to read it.
    Open,
    /// Reading.
    Read,
    /// Creating a file to write it.
    Create,
    /// Writing (flushing included).
    Write,
    /// Starting the thread that reads an input.
    Spawn,
    /// Not known: a `std::io::Error` converted into a `FlowError` with `?` says nothing of
    /// what was being done.
    Unknown,
}

impl fmt::Display for IoOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOperation::Open => "open",
            IoOperation::Read => "read",
            IoOperation::Create => "create",
            IoOperation::Write => "write",
            IoOperation::Spawn => "start the reader thread of",
            IoOperation::Unknown => "I/O",
        })
    }
}

/// `cannot read data.csv at byte 120: ...`; `I/O error: ...` when nothing is known.
fn io_message(
    operation: IoOperation,
    path: Option<&std::path::Path>,
    offset: Option<u64>,
    source: &std::io::Error,
) -> String {
    let mut message = match (operation, path) {
        (IoOperation::Unknown, None) => "I/O error".to_string(),
        (IoOperation::Unknown, Some(path)) => format!("I/O error on {}", path.display()),
        (operation, None) => format!("cannot {operation}"),
        (operation, Some(path)) => format!("cannot {operation} {}", path.display()),
    };
    if let Some(offset) = offset {
        message.push_str(&format!(" at byte {offset}"));
    }
    format!("{message}: {source}")
}

/// A `std::io::Error` met with `?` — in user code, typically — is a [`FlowError::Io`]
/// whose operation and path are unknown (never a [`FlowError::Runtime`]).
impl From<std::io::Error> for FlowError {
    fn from(source: std::io::Error) -> Self {
        FlowError::Io {
            operation: IoOperation::Unknown,
            path: None,
            offset: None,
            source,
        }
    }
}

impl FlowError {
    /// An I/O error that says what was being done to which file (no byte offset):
    /// `FlowError::io(IoOperation::Open, "data.csv", error)`. See [`FlowError::Io`].
    pub fn io(
        operation: IoOperation,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        FlowError::Io {
            operation,
            path: Some(path.as_ref().to_path_buf()),
            offset: None,
            source,
        }
    }

    /// The stage the error happened in, if it happened in one.
    pub fn stage(&self) -> Option<&StageInfo> {
        match self {
            FlowError::StageFailed { stage, .. } | FlowError::StagePanicked { stage, .. } => {
                Some(stage)
            }
            _ => None,
        }
    }

    pub(crate) fn from_stage_error(stage: &StageInfo, error: StageError) -> Self {
        FlowError::StageFailed {
            stage: stage.clone(),
            message: error.to_string(),
            source: Some(error),
        }
    }

    pub(crate) fn from_panic(stage: &StageInfo, payload: Box<dyn std::any::Any + Send>) -> Self {
        FlowError::StagePanicked {
            stage: stage.clone(),
            message: panic_message(payload.as_ref()),
        }
    }
}

/// The text of a panic payload (`&str` or `String`; anything else gets a generic text).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
