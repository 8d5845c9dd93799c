//! Engine errors.

use flotilla_store::StoreError;

/// What can go wrong when asking the engine for something.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No workflow by that name.
    #[error("unknown workflow `{0}`")]
    UnknownWorkflow(String),
    /// No agent by that name.
    #[error("unknown agent `{0}`")]
    UnknownAgent(String),
    /// No agent, healthy or not, offers that capability.
    #[error("no agent offers capability `{0}`")]
    UnknownCapability(String),
    /// No run or task with that id.
    #[error("no run with id `{0}`")]
    RunNotFound(String),
    /// No run with that id, and one that old would have been deleted by retention.
    #[error(
        "no run with id `{id}`: it started {age} ago, and storage.retention deletes finished runs after {keep}, so it was probably pruned"
    )]
    RunPruned {
        /// The id asked for.
        id: String,
        /// How long ago its id says it started.
        age: String,
        /// The shortest retention time.
        keep: String,
    },
    /// The input does not satisfy the workflow's `input_schema`.
    #[error("the input does not match the workflow's input_schema")]
    InvalidInput(Vec<String>),
    /// A request that is wrong in itself.
    #[error("{0}")]
    BadRequest(String),
    /// An `Idempotency-Key` this caller used before for this workflow with another body.
    #[error(
        "the Idempotency-Key was used for run `{0}` with a different input, priority or metadata"
    )]
    IdempotencyMismatch(String),
    /// An `Idempotency-Key` whose run is still in progress.
    #[error(
        "the run started with this Idempotency-Key, `{0}`, is still in progress; repeat the request once it finished, or follow the run by its id"
    )]
    IdempotencyInProgress(String),
    /// The run already finished.
    #[error("run `{0}` already finished with status {1}")]
    AlreadyFinished(String, String),
    /// The engine is draining for shutdown.
    #[error("flotilla is shutting down and accepts no new work")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored definition does not parse.
    #[error("stored definition {0} is unreadable: {1}")]
    Definition(String, String),
}

/// Result alias of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Why a run or task did not succeed, for callers that answer differently by cause (the
/// API's 502, 503 and 504).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The agent answered with an error or an unusable answer.
    AgentError,
    /// An attempt, or the run, ran out of time.
    Timeout,
    /// No agent could take the call (circuit open, nothing healthy, unknown).
    Unavailable,
    /// A step's `when:` could not be evaluated.
    Condition,
    /// A user cancelled the run.
    Cancelled,
}

impl ErrorKind {
    /// The name in logs and spans: `agent_error`, `timeout`, …
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::AgentError => "agent_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Condition => "condition",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
