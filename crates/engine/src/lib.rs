//! flotilla-engine: runs workflows.
//!
//! - [`scheduler`] is pure: `decide(state, event) -> actions`, property-tested.
//! - The driver (one task per run) feeds it events and carries out its actions: a step's
//!   success is committed before anything that depends on it starts; every other record is
//!   queued behind it, so one group commit in the store covers many transitions.
//! - [`agents`] holds one runtime per agent kind (builtin, http, command, llm); calls run
//!   under a global and a per-agent priority [`gate`], a per-agent [`breaker`], and an
//!   attempt timeout; failures retry with [`backoff`].
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

pub(crate) mod call;
mod clock;
mod engine;
mod error;
pub mod metrics;
pub mod mlflow;
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
