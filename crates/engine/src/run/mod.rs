//! Runs: the pure [`scheduler`] (which step may run), the pure run [`machine`] around it
//! (what a run records, publishes and calls next), and the [`driver`] that carries the
//! machine's effects out.

pub(crate) mod backoff;
pub(crate) mod context;
pub(crate) mod driver;
pub(crate) mod machine;
pub mod scheduler;

#[cfg(test)]
mod crash_props;

use std::sync::Arc;

use flotilla_spec::Workflow;
use flotilla_store::{EventRecord, RunStatus, Store};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::call::Fleet;
use crate::error::{EngineError, ErrorKind, Result};
use crate::metrics::Metrics;
use crate::mlflow::Tracker;
use scheduler::Dag;

/// Messages from the engine to a run.
#[derive(Debug)]
pub(crate) enum Control {
    Cancel,
}

/// What a run's driver uses of the engine.
pub(crate) struct Env {
    pub store: Arc<dyn Store>,
    /// The agents, and what every call to them goes through.
    pub fleet: Fleet,
    /// Every run's events, for live subscribers.
    pub events: broadcast::Sender<EventRecord>,
    /// The live feature flags.
    pub flags: flotilla_flags::Flags,
    pub metrics: Arc<Metrics>,
    /// Finished runs go to MLflow, when configured.
    pub tracker: Option<Tracker>,
}

/// A workflow ready to run: its definition, graph and input validator.
pub(crate) struct Compiled {
    pub name: String,
    pub workflow: Workflow,
    pub hash: String,
    pub json: String,
    pub dag: Dag,
    pub schema: Option<jsonschema::Validator>,
}

impl Compiled {
    pub(crate) fn new(name: &str, workflow: Workflow) -> Result<Arc<Compiled>> {
        let schema = match &workflow.input_schema {
            Some(s) => Some(
                jsonschema::validator_for(s)
                    .map_err(|e| EngineError::Definition(name.to_owned(), e.to_string()))?,
            ),
            None => None,
        };
        // One serialization gives both the stored snapshot and its hash.
        let (json, hash) = workflow.snapshot();
        Ok(Arc::new(Compiled {
            name: name.to_owned(),
            hash,
            dag: Dag::new(&workflow),
            json,
            workflow,
            schema,
        }))
    }
}

/// How a run ended, for those waiting on it in this process.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Final status.
    pub status: RunStatus,
    /// Output, when succeeded.
    pub output: Option<Value>,
    /// Why it did not succeed.
    pub error_kind: Option<ErrorKind>,
    /// Error message, when not succeeded.
    pub error: Option<String>,
    /// The agent that served the last call.
    pub agent: Option<String>,
}
