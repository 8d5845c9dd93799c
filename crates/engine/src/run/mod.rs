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

use flotilla_spec::{Definition, Workflow};
use flotilla_store::{EventRecord, RunStatus, Store};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::call::{Fleet, Pins};
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

/// A workflow ready to run: its pinned definition, graph and input validator.
pub(crate) struct Compiled {
    pub name: String,
    pub workflow: Workflow,
    pub hash: String,
    pub json: String,
    pub dag: Dag,
    pub schema: Option<jsonschema::Validator>,
    /// The agent behaviour the definition pins.
    pub pins: Arc<Pins>,
}

impl Compiled {
    /// A definition from the configuration: stored under the hash of its snapshot.
    pub(crate) fn new(name: &str, definition: Definition) -> Result<Arc<Compiled>> {
        // One serialization gives both the stored snapshot and its hash.
        let (json, hash) = definition.snapshot();
        Compiled::build(name, definition, json, hash)
    }

    /// A definition as the store holds it, under its stored hash (a definition stored
    /// before agents were pinned reads as a bare workflow).
    pub(crate) fn stored(name: &str, hash: &str, json: String) -> Result<Arc<Compiled>> {
        let definition = Definition::parse(&json)
            .map_err(|e| EngineError::Definition(hash.to_owned(), e.to_string()))?;
        Compiled::build(name, definition, json, hash.to_owned())
    }

    fn build(
        name: &str,
        definition: Definition,
        json: String,
        hash: String,
    ) -> Result<Arc<Compiled>> {
        let Definition { workflow, agents } = definition;
        let schema = match &workflow.input_schema {
            Some(s) => Some(
                jsonschema::validator_for(s)
                    .map_err(|e| EngineError::Definition(name.to_owned(), e.to_string()))?,
            ),
            None => None,
        };
        Ok(Arc::new(Compiled {
            name: name.to_owned(),
            hash,
            dag: Dag::new(&workflow),
            json,
            pins: Arc::new(Pins::new(agents)),
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
