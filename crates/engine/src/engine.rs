//! The engine's public face: submit, execute, wait, cancel, inspect, recover, shut down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_spec::{Config, Definition, Priority};
use flotilla_store::{
    CreateOutcome, EventRecord, NewRun, RunKind, RunQuery, RunRecord, RunStatus, StepRecord,
    StepStatus, Store,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::call::Fleet;
use crate::call::gate::Gate;
use crate::call::registry::{AgentStatus, Registration, RegistrationError, Registry};
use crate::clock::now_ms;
use crate::error::{EngineError, Result};
use crate::metrics::{Held, Metrics, VersionLabels};
use crate::run::Control;
use crate::run::driver::Driver;
use crate::run::machine::Machine;
use crate::run::{Compiled, Env, RunOutcome};
use crate::shared::{ClaimVersions, RunHandle, Shared};

/// A request to start a workflow run.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// Run input.
    pub input: Value,
    /// Overrides the workflow's priority.
    pub priority: Option<Priority>,
    /// Free-form caller metadata.
    pub metadata: Value,
    /// `Idempotency-Key` and who sent it: a second submission by the same caller, to the
    /// same workflow, with the same key and body returns the first run once it finished.
    pub idempotency: Option<Idempotency>,
    /// The run's id, when the caller chose it in advance (a batch names its tasks before
    /// running them); a new UUIDv7 otherwise.
    pub id: Option<String>,
}

/// An `Idempotency-Key` within its scope.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Who sent it (an API key's name, a token's subject, a client address): keys of
    /// different callers never meet.
    pub principal: String,
    /// The key as sent.
    pub key: String,
}

impl Idempotency {
    /// What the store keeps: a digest of (principal, workflow, key), each length-prefixed so
    /// that no two scopes can spell the same string.
    fn stored(&self, workflow: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [self.principal.as_str(), workflow, self.key.as_str()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// An accepted submission.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    /// Run id.
    pub run_id: String,
    /// Status at acceptance.
    pub status: RunStatus,
    /// Whether the idempotency key matched an earlier run.
    #[serde(skip)]
    pub existing: bool,
    #[serde(skip)]
    done: Option<watch::Receiver<Option<Arc<RunOutcome>>>>,
}

impl Submitted {
    /// Waits up to `timeout` for the run started by this submission to end. `None` when it
    /// did not end in time, or when the submission found an earlier run (see `existing`).
    pub async fn outcome(&mut self, timeout: Duration) -> Option<RunOutcome> {
        let done = self.done.as_mut()?;
        match tokio::time::timeout(timeout, done.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.as_deref().cloned(),
            _ => None,
        }
    }
}

/// The engine.
#[derive(Clone)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
    pub(crate) prober: Task,
    pub(crate) leases: Task,
    pub(crate) pruner: Task,
    pub(crate) backups: Task,
}

/// A background task the engine owns (aborted at shutdown).
pub(crate) type Task = Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>;

impl Engine {
    /// Builds the engine over a migrated store and resumes every unfinished run.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<Engine> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| EngineError::BadRequest(format!("building the HTTP client: {e}")))?;
        let mut workflows = HashMap::new();
        let mut definitions = HashMap::new();
        for (name, a) in &config.agents {
            if let Some(usd) = a.budget.and_then(|b| b.usd) {
                metrics.budget("agent", name, usd);
            }
        }
        for name in config.workflows.keys() {
            metrics.prime_workflow(name);
        }
        for (name, wf) in &config.workflows {
            if let Some(usd) = wf.budget.and_then(|b| b.usd) {
                metrics.budget("workflow", name, usd);
            }
            let c = Compiled::new(name, Definition::pin(wf.clone(), &config.agents))?;
            definitions.insert(c.hash.clone(), c.clone());
            workflows.insert(name.clone(), c);
        }
        let (events, _) = broadcast::channel(4096);
        let cache = crate::call::cache::ResultCache::new(
            config.cache.max_entries,
            config.cache.url.as_deref(),
            &metrics,
        )
        .map_err(EngineError::BadRequest)?;
        let version = config
            .engine
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
        let config_replica = config
            .engine
            .replica_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let environment = config
            .flags
            .environment
            .clone()
            .unwrap_or_else(|| "development".into());
        let flag_set = match &config.flags.file {
            None => flotilla_flags::FlagSet::empty(&environment),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    EngineError::BadRequest(format!("cannot read the flag file {path}: {e}"))
                })?;
                flotilla_flags::FlagSet::parse(path, &text, &environment).map_err(|d| {
                    EngineError::BadRequest(format!(
                        "the flag file is invalid:\n{}",
                        d.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("\n")
                    ))
                })?
            }
        };
        let flags = flotilla_flags::Flags::new(flag_set, metrics.flags.clone());
        let (stop_flags, stop) = watch::channel(false);
        if let Some(path) = &config.flags.file {
            flotilla_flags::watch(flags.clone(), path.into(), environment.clone(), stop);
        }
        let tracker = config.observability.mlflow.as_ref().map(|m| {
            crate::mlflow::Tracker::start(
                &m.tracking_uri,
                &m.experiment,
                client.clone(),
                metrics.clone(),
            )
        });
        let claim_versions = ClaimVersions::new(&config.engine.claim_versions, &version);
        let env = Arc::new(Env {
            tracker,
            flags,
            fleet: Fleet {
                registry: Registry::new(&config, client, metrics.clone()),
                gate: Gate::new(
                    config.engine.max_concurrency as usize,
                    metrics.queue_length.clone(),
                ),
                cache,
                metrics: metrics.clone(),
                default_timeout: config.engine.default_timeout.0,
            },
            store,
            metrics,
            events,
        });
        let shared = Arc::new(Shared {
            env,
            stop_flags,
            stored_definitions: Mutex::new(HashSet::new()),
            task_definitions: Mutex::new(HashMap::new()),
            config,
            workflows,
            definitions: Mutex::new(definitions),
            runs: Mutex::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            idle: tokio::sync::Notify::new(),
            replica: config_replica,
            claim_versions,
            version,
        });
        let engine = Engine {
            shared,
            prober: Arc::new(Mutex::new(None)),
            leases: Arc::new(Mutex::new(None)),
            pruner: Arc::new(Mutex::new(None)),
            backups: Arc::new(Mutex::new(None)),
        };
        engine.start_prober();
        engine.start_backups();
        *engine.pruner.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::retention::start(
            Arc::downgrade(&engine.shared),
            engine.shared.config.storage.retention.clone(),
        ));
        engine.claim().await?;
        engine.start_leases();
        Ok(engine)
    }

    pub(crate) async fn definition(&self, hash: &str, workflow: &str) -> Result<Arc<Compiled>> {
        if let Some(c) = self
            .shared
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
        {
            return Ok(c.clone());
        }
        let json = self
            .shared
            .env
            .store
            .definition(hash)
            .await?
            .ok_or_else(|| EngineError::Definition(hash.to_owned(), "missing".into()))?;
        let c = Compiled::stored(workflow, hash, json)?;
        self.shared
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash.to_owned(), c.clone());
        Ok(c)
    }

    /// Drives a run here; `version` started it.
    pub(crate) fn spawn(
        &self,
        run_id: String,
        version: Option<&str>,
        driver: Driver,
    ) -> watch::Receiver<Option<Arc<RunOutcome>>> {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (done_tx, done) = watch::channel(None);
        let mut runs = self.shared.runs();
        runs.insert(
            run_id.clone(),
            RunHandle {
                control,
                done: done.clone(),
                task: None,
                epoch: driver.epoch(),
            },
        );
        // A child of the request that submitted the run, if any; a root after a restart.
        let span = tracing::info_span!(
            "run",
            otel.name = %format!("run {}", driver.workflow()),
            "flotilla.run.id" = %run_id,
            "flotilla.workflow.name" = %driver.workflow(),
            "flotilla.run.status" = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let shared = self.shared.clone();
        let (id, epoch) = (run_id.clone(), driver.epoch());
        let labels = VersionLabels {
            version: version.unwrap_or("unknown").to_owned(),
        };
        let in_flight = Held::new(
            self.shared
                .env
                .metrics
                .runs_in_flight
                .get_or_create(&labels)
                .clone(),
        );
        let task = tokio::spawn(
            async move {
                let _in_flight = in_flight;
                driver.run(control_rx, done_tx).await;
                shared.forget(&id, epoch);
            }
            .instrument(span),
        );
        if let Some(h) = runs.get_mut(&run_id) {
            h.task = Some(task.abort_handle());
        }
        done
    }

    /// Starts a run of a configured workflow; returns once the run is durably accepted.
    pub async fn submit(&self, workflow: &str, sub: Submission) -> Result<Submitted> {
        let compiled = self
            .shared
            .workflows
            .get(workflow)
            .cloned()
            .ok_or_else(|| EngineError::UnknownWorkflow(workflow.to_owned()))?;
        if let Some(schema) = &compiled.schema {
            let problems: Vec<String> = schema
                .iter_errors(&sub.input)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    format!("{}: {e}", if at.is_empty() { "/".to_owned() } else { at })
                })
                .collect();
            if !problems.is_empty() {
                return Err(EngineError::InvalidInput(problems));
            }
        }
        let priority = sub
            .priority
            .or(compiled.workflow.priority)
            .unwrap_or_default();
        self.start_run(compiled, RunKind::Workflow, sub, priority)
            .await
    }

    pub(crate) async fn start_run(
        &self,
        compiled: Arc<Compiled>,
        kind: RunKind,
        sub: Submission,
        priority: Priority,
    ) -> Result<Submitted> {
        if !self.shared.accepting.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let metadata_len = serde_json::to_vec(&sub.metadata).map_or(0, |v| v.len());
        if metadata_len > flotilla_store::RunSummary::MAX_METADATA {
            return Err(EngineError::BadRequest(format!(
                "`metadata` is {metadata_len} bytes of JSON; the limit is {} (put large data in `input`)",
                flotilla_store::RunSummary::MAX_METADATA
            )));
        }
        let now = now_ms();
        let id = sub
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let metadata = if sub.metadata.is_null() {
            Value::Object(Default::default())
        } else {
            sub.metadata
        };
        let new = NewRun {
            id: id.clone(),
            kind,
            workflow: compiled.name.clone(),
            definition_hash: compiled.hash.clone(),
            // Each definition is written once per process; later runs only name its hash.
            definition: (!self.shared.stored_definitions().contains(&compiled.hash))
                .then(|| compiled.json.clone()),
            priority: priority.as_str().to_owned(),
            input: sub.input,
            metadata,
            idempotency_key: sub.idempotency.as_ref().map(|i| i.stored(&compiled.name)),
            created_at: now,
            deadline_at: compiled
                .workflow
                .timeout
                .map(|t| now + t.0.as_millis() as i64),
            owner: Some(self.shared.replica.clone()),
            lease_until: Some(now + self.shared.config.engine.lease.0.as_millis() as i64),
            version: Some(self.shared.version.clone()),
        };
        let record = RunRecord {
            id: id.clone(),
            kind,
            workflow: new.workflow.clone(),
            definition_hash: new.definition_hash.clone(),
            status: RunStatus::Queued,
            priority: new.priority.clone(),
            input: new.input.clone(),
            metadata: new.metadata.clone(),
            output: None,
            error: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            deadline_at: new.deadline_at,
            version: new.version.clone(),
            steps: Vec::new(),
            usage: Default::default(),
        };
        match self.shared.env.store.create_run(new).await? {
            CreateOutcome::Existing(existing) => {
                let Some(first) = self.shared.env.store.run(&existing).await? else {
                    return Err(EngineError::RunNotFound(existing));
                };
                // The IETF Idempotency-Key draft's answers: another body is a misuse of the
                // key (422), a first request still at work a conflict (409).
                if first.input != record.input
                    || first.metadata != record.metadata
                    || first.priority != record.priority
                {
                    return Err(EngineError::IdempotencyMismatch(existing));
                }
                if !first.status.is_terminal() {
                    return Err(EngineError::IdempotencyInProgress(existing));
                }
                Ok(Submitted {
                    run_id: existing,
                    status: first.status,
                    existing: true,
                    done: None,
                })
            }
            CreateOutcome::Created => {
                self.shared
                    .stored_definitions()
                    .insert(compiled.hash.clone());
                let machine = Machine::new(compiled, &record, 0);
                let driver = Driver::new(self.shared.env.clone(), machine, &record, priority);
                let done = self.spawn(id.clone(), record.version.as_deref(), driver);
                Ok(Submitted {
                    run_id: id,
                    status: RunStatus::Queued,
                    existing: false,
                    done: Some(done),
                })
            }
        }
    }

    async fn wait_outcome(&self, run_id: &str, timeout: Duration) -> Option<RunOutcome> {
        let mut done = self.shared.runs().get(run_id).map(|h| h.done.clone())?;
        let waited = tokio::time::timeout(timeout, done.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(v)) => v.as_deref().cloned(),
            _ => None,
        }
    }

    /// Waits up to `timeout` for a run to finish, then shows it (finished or not).
    pub async fn wait(&self, run_id: &str, timeout: Duration) -> Result<RunRecord> {
        let _ = self.wait_outcome(run_id, timeout).await;
        self.run(run_id).await?.ok_or_else(|| self.missing(run_id))
    }

    /// The error for a run id the store does not hold: pruned by retention, or unknown.
    pub fn missing(&self, run_id: &str) -> EngineError {
        crate::retention::missing(run_id, &self.shared.config.storage.retention, now_ms())
    }

    /// Cancels a run and returns it as it ended.
    pub async fn cancel(&self, run_id: &str) -> Result<RunRecord> {
        let done = {
            let runs = self.shared.runs();
            runs.get(run_id).map(|h| {
                let _ = h.control.send(Control::Cancel);
                h.done.clone()
            })
        };
        match done {
            Some(mut done) => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), done.wait_for(Option::is_some))
                        .await;
                self.run(run_id).await?.ok_or_else(|| self.missing(run_id))
            }
            None => match self.shared.env.store.run(run_id).await? {
                None => Err(self.missing(run_id)),
                Some(r) => Err(EngineError::AlreadyFinished(
                    run_id.to_owned(),
                    r.status.to_string(),
                )),
            },
        }
    }

    /// A run with every step of its pinned definition.
    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        match self.shared.env.store.run(run_id).await? {
            Some(r) => Ok(Some(self.view(r).await?)),
            None => Ok(None),
        }
    }

    /// Run summaries, newest first.
    pub async fn list(&self, query: &RunQuery) -> Result<Vec<flotilla_store::RunSummary>> {
        Ok(self.shared.env.store.list_runs(query).await?)
    }

    /// Completes a stored run with every step of its pinned definition, in declaration
    /// order (steps without a record yet are pending).
    async fn view(&self, mut r: RunRecord) -> Result<RunRecord> {
        let compiled = self.definition(&r.definition_hash, &r.workflow).await?;
        let mut by_id: HashMap<String, StepRecord> =
            r.steps.drain(..).map(|s| (s.step_id.clone(), s)).collect();
        r.steps = compiled
            .dag
            .ids
            .iter()
            .map(|id| {
                by_id.remove(id).unwrap_or_else(|| StepRecord {
                    step_id: id.clone(),
                    status: StepStatus::Pending,
                    attempts: 0,
                    output: None,
                    error: None,
                    started_at: None,
                    finished_at: None,
                    agent: None,
                    usage: None,
                })
            })
            .collect();
        Ok(r)
    }

    /// Stored events of a run after `after_seq`.
    pub async fn events(&self, run_id: &str, after_seq: i64) -> Result<Vec<EventRecord>> {
        Ok(self.shared.env.store.events(run_id, after_seq).await?)
    }

    /// Live events of every run, published after they are recorded.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.shared.env.events.subscribe()
    }

    /// Whether a run is executing in this process.
    pub fn is_active(&self, run_id: &str) -> bool {
        self.shared.runs().contains_key(run_id)
    }

    /// Agents and their health.
    pub fn agents(&self) -> Vec<AgentStatus> {
        self.shared.env.fleet.registry.statuses()
    }

    /// How long an open circuit still refuses calls to this agent (or, for a capability,
    /// to every agent offering it).
    pub fn retry_in(&self, agent: Option<&str>, capability: Option<&str>) -> Option<Duration> {
        self.shared.env.fleet.registry.retry_in(agent, capability)
    }

    /// Whether every agent is healthy.
    pub fn agents_healthy(&self) -> bool {
        self.shared.env.fleet.registry.all_healthy()
    }

    /// Registers (or refreshes) a remote agent.
    pub fn register_agent(&self, reg: Registration) -> Result<AgentStatus, RegistrationError> {
        self.shared.env.fleet.registry.register(reg)
    }

    /// Names of the configured workflows.
    pub fn workflow_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.shared.workflows.keys().cloned().collect();
        v.sort();
        v
    }

    /// Runs executing in this process.
    pub fn active_runs(&self) -> usize {
        self.shared.runs().len()
    }

    /// The metrics catalogue.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.env.metrics
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.env.store
    }

    /// The live feature flags.
    pub fn flags(&self) -> &flotilla_flags::Flags {
        &self.shared.env.flags
    }

    /// Stops accepting work, lets runs finish for up to `grace`, then stops the rest where
    /// they are: their state is in the store and they resume at the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.accepting.store(false, Ordering::Release);
        let _ = self.shared.stop_flags.send(true);
        for task in [&self.prober, &self.pruner, &self.backups] {
            if let Some(t) = task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.abort();
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.shared.idle.notified();
            if self.shared.runs().is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let left: Vec<AbortHandle> = self
            .shared
            .runs()
            .drain()
            .filter_map(|(_, h)| h.task)
            .collect();
        if !left.is_empty() {
            tracing::info!(
                runs = left.len(),
                "grace period over; unfinished runs will resume at the next start"
            );
        }
        for task in left {
            task.abort();
        }
        if let Some(l) = self.leases.lock().unwrap_or_else(|e| e.into_inner()).take() {
            l.abort();
        }
        if let Some(tracker) = &self.shared.env.tracker {
            tracker.shutdown(Duration::from_secs(5)).await;
        }
        if self.shared.env.store.is_shared()
            && let Err(e) = self
                .shared
                .env
                .store
                .release_leases(&self.shared.replica)
                .await
        {
            tracing::warn!(error = %e, "releasing run leases failed; other replicas take them when they lapse");
        }
    }
}
