//! Tasks: one agent call run as a one-step workflow (`POST /api/v1/execute`).

use std::sync::Arc;
use std::time::Duration;

use flotilla_spec::{Priority, Step, Workflow};
use flotilla_store::{RunKind, RunStatus};
use serde_json::Value;

use crate::engine::{Engine, Submission};
use crate::error::{EngineError, Result};
use crate::run::{Compiled, RunOutcome};

/// A one-step task (`POST /api/v1/execute`).
#[derive(Debug, Clone, Default)]
pub struct TaskRequest {
    /// Agent by name…
    pub agent: Option<String>,
    /// …or any agent offering this capability.
    pub capability: Option<String>,
    /// Action name (default `execute`).
    pub action: Option<String>,
    /// Input.
    pub input: Value,
    /// Instructions, passed verbatim.
    pub instructions: Option<String>,
    /// Priority.
    pub priority: Option<Priority>,
    /// Attempt timeout.
    pub timeout: Option<Duration>,
    /// Metadata.
    pub metadata: Value,
    /// The task's id, when chosen in advance; a new UUIDv7 otherwise.
    pub id: Option<String>,
}

/// A finished (or timed out) task.
#[derive(Debug, Clone)]
pub struct TaskResult {
    /// Task id (a run id).
    pub task_id: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Milliseconds from submission to end.
    pub duration_ms: u64,
}

impl Engine {
    /// The compiled one-step workflow of a task, compiled once per task shape.
    fn task_definition(&self, step: Step) -> Result<Arc<Compiled>> {
        /// Shapes remembered; beyond this the cache starts over.
        const KEEP: usize = 1024;
        let key = serde_json::to_string(&step).unwrap_or_default();
        let cache = || {
            self.shared
                .task_definitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some(c) = cache().get(&key) {
            return Ok(c.clone());
        }
        let wf = Workflow {
            description: None,
            input_schema: None,
            timeout: None,
            priority: None,
            steps: vec![step],
            output: Some(Value::String("{{ steps.task.output }}".into())),
            budget: None,
        };
        let agents = self.shared.env.fleet.registry.configs();
        let compiled = Compiled::new("_task", flotilla_spec::Definition::pin(wf, &agents))?;
        let mut cache = cache();
        if cache.len() >= KEEP {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Runs one task to its end (or its timeout) and returns how it went.
    pub async fn execute(&self, task: TaskRequest) -> Result<TaskResult> {
        match (&task.agent, &task.capability) {
            (Some(_), Some(_)) => {
                return Err(EngineError::BadRequest(
                    "give either `agent` or `capability`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(EngineError::BadRequest(
                    "give `agent` or `capability`".into(),
                ));
            }
            (Some(a), None) if self.shared.env.fleet.registry.get(a).is_none() => {
                return Err(EngineError::UnknownAgent(a.clone()));
            }
            (None, Some(c)) if !self.shared.env.fleet.registry.offers(c) => {
                return Err(EngineError::UnknownCapability(c.clone()));
            }
            _ => {}
        }
        let started = std::time::Instant::now();
        let timeout = task
            .timeout
            .unwrap_or(self.shared.config.engine.default_timeout.0);
        let step = Step {
            id: "task".into(),
            agent: task.agent,
            capability: task.capability,
            action: Some(task.action.unwrap_or_else(|| "execute".into())),
            input: None,
            prompt: None,
            // Caller text is data, not a template.
            instructions: task
                .instructions
                .map(|i| format!("{{% raw %}}{i}{{% endraw %}}")),
            needs: Vec::new(),
            when: None,
            timeout: Some(flotilla_spec::Dur(timeout)),
            retry: None,
            priority: None,
            compensate: None,
            cache: None,
        };
        let compiled = self.task_definition(step)?;
        let priority = task.priority.unwrap_or_default();
        let sub = Submission {
            input: task.input,
            priority: Some(priority),
            metadata: task.metadata,
            idempotency: None,
            id: task.id,
        };
        let mut submitted = self
            .start_run(compiled, RunKind::Task, sub, priority)
            .await?;
        let outcome = submitted
            .outcome(timeout + Duration::from_secs(1))
            .await
            .unwrap_or(RunOutcome {
                status: RunStatus::Running,
                output: None,
                error_kind: Some(crate::error::ErrorKind::Timeout),
                error: Some(format!("task did not finish within {timeout:?}")),
                agent: None,
            });
        Ok(TaskResult {
            task_id: submitted.run_id,
            outcome,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }
}
