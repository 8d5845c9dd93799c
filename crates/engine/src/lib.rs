//! flotilla-engine: runs workflows.
//!
//! - `run/`: a run is one pure state machine (`run::machine`: inputs in, typed effects
//!   out) around the pure [`scheduler`] (which step may run; property-tested), and a thin
//!   driver per run that carries the effects out: a step's success is committed before
//!   anything that depends on it starts; every other record rides along with the next
//!   commit, so one group commit in the store covers many transitions. Every batch carries
//!   the run's lease epoch, and a stale one is refused.
//! - `call/`: the one path of an agent call, knowing nothing of runs: the registry and the
//!   four agent kinds (builtin, http, command, llm), a global and a per-agent priority
//!   gate, a per-agent circuit breaker, the result cache and budgets; everything a call
//!   takes is given back by a guard when it is dropped mid-await.
//! - [`metrics`] is the catalogue every component reports to.
//!
//! ```no_run
//! # async fn demo(config: flotilla_spec::Config, store: std::sync::Arc<dyn flotilla_store::Store>) -> flotilla_engine::Result<()> {
//! use std::sync::Arc;
//! use flotilla_engine::{Engine, Submission, metrics::Metrics};
//! let engine = Engine::start(Arc::new(config), store, Arc::new(Metrics::new())).await?;
//! let run = engine.submit("travel_planning", Submission { input: serde_json::json!({"destination": "Oslo"}), ..Default::default() }).await?;
//! let done = engine.wait(&run.run_id, std::time::Duration::from_secs(30)).await?;
//! println!("{}", done.status);
//! # Ok(()) }
//! ```

mod background;
pub mod backups;
pub(crate) mod call;
mod clock;
mod engine;
mod error;
pub mod metrics;
pub mod mlflow;
mod process_metrics;
pub mod retention;
mod run;
mod shared;
mod task;
pub mod trace;

pub use call::registry::{AgentStatus, Registration, RegistrationError};
pub use clock::now_ms;
pub use engine::{Engine, Idempotency, Submission, Submitted};
pub use error::{EngineError, ErrorKind, Result};
pub use run::RunOutcome;
pub use run::scheduler;
pub use task::{TaskRequest, TaskResult};
