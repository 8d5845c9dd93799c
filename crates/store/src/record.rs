//! The records the store keeps: runs, steps, events and definitions.

use serde::{Deserialize, Serialize};
use serde_json::Value;

macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// The stored and displayed name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)* _ => None }
            }
            /// Reads a stored name: one the store cannot have written is a corrupt record,
            /// on every backend alike.
            pub fn stored(s: &str) -> crate::Result<Self> {
                Self::parse(s).ok_or_else(|| {
                    crate::StoreError::Corrupt(format!("{} `{s}`", stringify!($name)))
                })
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                Self::stored(s).map_err(|e| rusqlite::types::FromSqlError::Other(Box::new(e)))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

status_enum! {
    /// Where a run is in its life.
    RunStatus {
        /// Accepted, not started yet.
        Queued => "queued",
        /// Steps are executing.
        Running => "running",
        /// Every step succeeded or was skipped.
        Succeeded => "succeeded",
        /// A step failed for good (compensation ran).
        Failed => "failed",
        /// Cancelled by a user.
        Cancelled => "cancelled",
        /// Its SLA timeout passed.
        TimedOut => "timed_out",
    }
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

status_enum! {
    /// What an event of a run says happened.
    EventKind {
        /// The run started (or resumed after a restart).
        RunStarted => "run_started",
        /// An attempt of a step started.
        StepStarted => "step_started",
        /// An attempt failed and another follows after a backoff.
        StepRetrying => "step_retrying",
        /// A step succeeded.
        StepSucceeded => "step_succeeded",
        /// A step failed for good.
        StepFailed => "step_failed",
        /// A step's `when:` was false.
        StepSkipped => "step_skipped",
        /// A running step was stopped because the run ended first.
        StepCancelled => "step_cancelled",
        /// A succeeded step is being undone.
        CompensationStarted => "compensation_started",
        /// A step was undone.
        StepCompensated => "step_compensated",
        /// Undoing a step failed.
        CompensationFailed => "compensation_failed",
        /// The run ended; the last event of a run.
        RunFinished => "run_finished",
    }
}

status_enum! {
    /// Where a step is.
    StepStatus {
        /// Waiting for its needs.
        Pending => "pending",
        /// An attempt is in flight (or waiting to retry).
        Running => "running",
        /// Done; its output is final.
        Succeeded => "succeeded",
        /// Failed for good.
        Failed => "failed",
        /// Not run: its condition was false or a need did not succeed.
        Skipped => "skipped",
        /// Succeeded, then undone by its compensation.
        Compensated => "compensated",
        /// Stopped while running: the run ended first (cancelled, timed out, or another
        /// step failed).
        Cancelled => "cancelled",
    }
}

impl StepStatus {
    /// Whether nothing more will happen to the step in this run's forward phase.
    pub fn is_terminal(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

status_enum! {
    /// A workflow run or a single task (`POST /api/v1/execute`).
    RunKind {
        /// A run of a configured workflow.
        Workflow => "workflow",
        /// A one-step task.
        Task => "task",
    }
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// UUIDv7.
    pub id: String,
    /// Workflow or task.
    pub kind: RunKind,
    /// Workflow name (`_task` for tasks).
    pub workflow: String,
    /// Hash of the pinned definition.
    pub definition_hash: String,
    /// The pinned definition (JSON), stored once per hash; `None` when the caller knows
    /// the store already holds it.
    pub definition: Option<String>,
    /// Priority name.
    pub priority: String,
    /// Run input.
    pub input: Value,
    /// Caller metadata.
    pub metadata: Value,
    /// `Idempotency-Key` of the submission, if any.
    pub idempotency_key: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// SLA deadline, unix milliseconds.
    pub deadline_at: Option<i64>,
    /// The process that executes it (shared stores).
    pub owner: Option<String>,
    /// Until when `owner` holds it, unix milliseconds.
    pub lease_until: Option<i64>,
    /// The version that started it (flotilla's, or `engine.version`).
    pub version: Option<String>,
}

/// What creating a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new run was stored.
    Created,
    /// The idempotency key was used before, by this run.
    Existing(String),
}

/// A stored run with its steps.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Workflow or task.
    pub kind: RunKind,
    /// Workflow name.
    pub workflow: String,
    /// Pinned definition hash.
    pub definition_hash: String,
    /// Current status.
    pub status: RunStatus,
    /// Priority name.
    pub priority: String,
    /// Input.
    pub input: Value,
    /// Metadata.
    pub metadata: Value,
    /// Output once succeeded.
    pub output: Option<Value>,
    /// Error once failed.
    pub error: Option<String>,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::required")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::required")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// SLA deadline (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline_at: Option<i64>,
    /// The version that started it (absent for runs started before versions were recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Steps that have left `pending` (others are pending).
    pub steps: Vec<StepRecord>,
    /// Tokens and cost of the run's LLM calls, summed over its steps.
    pub usage: Usage,
}

impl RunRecord {
    /// Sums the steps' usage into `usage`; call once the steps are attached.
    pub fn tally(&mut self) {
        self.usage = self
            .steps
            .iter()
            .filter_map(|s| s.usage)
            .fold(Usage::default(), |a, b| a + b);
    }
}

/// Tokens and cost of LLM calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cost in USD from the price table (0 when the model has no price).
    pub cost_usd: f64,
}

impl Usage {
    /// Prompt and completion tokens together.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens + o.prompt_tokens,
            completion_tokens: self.completion_tokens + o.completion_tokens,
            cost_usd: self.cost_usd + o.cost_usd,
        }
    }
}

/// A stored step.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StepRecord {
    /// Step id.
    #[serde(rename = "id")]
    pub step_id: String,
    /// Status.
    pub status: StepStatus,
    /// Attempts started.
    pub attempts: u32,
    /// Output once succeeded.
    pub output: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// When its first attempt started.
    #[serde(serialize_with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<i64>,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// The agent that served its last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Tokens and cost of its LLM calls, over all attempts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One transition, kept for the events stream.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct EventRecord {
    /// Run id.
    pub run_id: String,
    /// Position within the run, from 1.
    pub seq: i64,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::required")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// What happened.
    pub kind: EventKind,
    /// The step, for step events.
    pub step_id: Option<String>,
    /// Details.
    pub data: Value,
}

/// A change to apply.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or replace a step's row.
    Step {
        /// Run id.
        run_id: String,
        /// The step's new state.
        step: StepRecord,
    },
    /// Change a run's status.
    Run {
        /// Run id.
        run_id: String,
        /// New status.
        status: RunStatus,
        /// Output, when succeeded.
        output: Option<Value>,
        /// Error, when failed.
        error: Option<String>,
        /// Unix milliseconds.
        at: i64,
    },
    /// Append an event.
    Event(EventRecord),
    /// The batch's writes to `run_id` count only while the run is held under `epoch`: on a
    /// shared store a claim by another replica raises the epoch, and the whole batch is then
    /// refused with [`StoreError::Fenced`](crate::StoreError::Fenced).
    Fence {
        /// Run id.
        run_id: String,
        /// The epoch of the claim the writer holds.
        epoch: i64,
    },
}

/// Moves the unfinished runs pinned to one definition to another (`flotilla runs migrate`).
#[derive(Debug, Clone)]
pub struct MoveRuns {
    /// The definition the runs are pinned to now.
    pub from_hash: String,
    /// The definition they move to.
    pub to_hash: String,
    /// Its workflow's name.
    pub workflow: String,
    /// Its stored body (kept if the store holds it already).
    pub body: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// Which runs a claim may take, by the version that started them (`None`: started before
/// versions were recorded).
pub type VersionFilter<'a> = &'a (dyn Fn(Option<&str>) -> bool + Send + Sync);

/// A run taken by a claim, with the epoch (fencing token) its writes must carry.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The run, with its steps.
    pub run: RunRecord,
    /// Raised by every claim; a write under an older epoch is refused.
    pub epoch: i64,
}

/// A run as lists show it: no input, output or steps, whose size the caller controls;
/// `GET /api/v1/runs/{id}` has those.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// Run id.
    pub id: String,
    /// Workflow or task.
    pub kind: RunKind,
    /// Workflow name.
    pub workflow: String,
    /// Hash of the pinned definition.
    pub definition_hash: String,
    /// Where it is.
    pub status: RunStatus,
    /// Priority name.
    pub priority: String,
    /// Caller metadata (at most [`RunSummary::MAX_METADATA`] bytes of JSON; larger is shown
    /// as null here).
    pub metadata: Value,
    /// Why it failed (at most [`RunSummary::MAX_ERROR`] characters here).
    pub error: Option<String>,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::required")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::required")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
    /// When (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<i64>,
    /// SLA deadline (RFC 3339 in JSON; unix milliseconds here).
    #[serde(serialize_with = "timestamp::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deadline_at: Option<i64>,
    /// The version that started it (absent for runs started before versions were recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl RunSummary {
    /// Largest metadata a summary carries.
    pub const MAX_METADATA: usize = 16 * 1024;
    /// Longest error a summary carries.
    pub const MAX_ERROR: usize = 1024;
}

/// Filters for listing runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// Only this workflow.
    pub workflow: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// Only workflow runs, or only tasks (all when unset).
    pub kind: Option<RunKind>,
    /// Page size.
    pub limit: u32,
    /// Only runs older than this id (the previous page's `next_cursor`).
    pub before: Option<String>,
    /// Only runs created at or after this, unix milliseconds.
    pub created_from: Option<i64>,
    /// Only runs created before this, unix milliseconds.
    pub created_to: Option<i64>,
    /// Only runs whose metadata has this top-level key with this value (compared as text:
    /// `5` matches the number 5 and the string "5").
    pub metadata: Option<MetadataMatch>,
}

/// A metadata filter: a top-level key and the value it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataMatch {
    /// The key: letters, digits, `_`, `-` and `.` (checked by [`MetadataMatch::new`]).
    key: String,
    /// The value, as text.
    pub value: String,
}

impl MetadataMatch {
    /// A filter on `key`; `None` unless the key is 1 to 64 letters, digits, `_`, `-` or `.`.
    pub fn new(key: &str, value: &str) -> Option<MetadataMatch> {
        let ok = (1..=64).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        ok.then(|| MetadataMatch {
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// SQLite's JSON path of the key (quoted: a key with `.` is one key, not a path).
    pub(crate) fn json_path(&self) -> String {
        format!("$.\"{}\"", self.key)
    }
}

/// One backup's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    /// When it started, unix milliseconds.
    pub started_at: i64,
    /// When it ended.
    pub finished_at: i64,
    /// The file it wrote (or meant to).
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// Why it failed; `None` when it succeeded.
    pub error: Option<String>,
}

/// What the recorded backups say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupStats {
    /// When the latest successful backup ended, unix milliseconds.
    pub last_success_at: Option<i64>,
    /// How long the latest successful backup took, milliseconds.
    pub last_duration_ms: Option<i64>,
    /// Backups that failed, ever.
    pub failures: u64,
}

/// Which finished runs a prune deletes: those of one final status that finished before a
/// time, of one workflow or of every workflow but some (those with rules of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneRule {
    /// The final status (never queued or running: a run in flight is never pruned).
    pub status: RunStatus,
    /// Runs that finished before this, unix milliseconds.
    pub finished_before: i64,
    /// Which workflows' runs.
    pub workflows: WorkflowMatch,
}

/// The workflows a [`PruneRule`] applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowMatch {
    /// Every workflow (and tasks).
    All,
    /// One workflow.
    Only(String),
    /// Every workflow but these.
    Except(Vec<String>),
}

/// How many runs a [`RunQuery`]'s filters match in each status (its `status`, `limit` and
/// `before` are ignored). Statuses with no run are absent.
pub type StatusCounts = Vec<(RunStatus, u64)>;

/// A step's usage as stored.
pub(crate) fn usage_json(u: &Usage) -> String {
    serde_json::to_string(u).unwrap_or_default()
}

/// A step's stored usage.
pub(crate) fn parse_usage(text: Option<String>) -> crate::Result<Option<Usage>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| crate::StoreError::Corrupt(format!("step usage: {e}")))
    })
    .transpose()
}

/// Parses a stored JSON column; text that does not parse is a corrupt record.
pub(crate) fn parse_json(text: Option<String>) -> crate::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| crate::StoreError::Corrupt(e.to_string())))
        .transpose()
}

/// Timestamps kept as unix milliseconds, written out as RFC 3339 (UTC, milliseconds), as
/// the API shows them.
pub mod timestamp {
    use std::time::{Duration, UNIX_EPOCH};

    use serde::Serializer;

    /// `2026-12-01T17:29:05.123Z` for unix milliseconds (before 1970 reads as 1970).
    pub fn rfc3339(ms: i64) -> String {
        let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        humantime::format_rfc3339_millis(t).to_string()
    }

    /// Serializes unix milliseconds as RFC 3339.
    pub fn required<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&rfc3339(*ms))
    }

    /// Serializes optional unix milliseconds as RFC 3339 or null.
    pub fn option<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&rfc3339(*ms)),
            None => s.serialize_none(),
        }
    }
}
