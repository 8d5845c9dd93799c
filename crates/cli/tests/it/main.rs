//! Black-box tests: the real `flotilla` binary on port 0 with a fresh database per test.

mod agents;
mod api;
mod app;
mod artifacts;
mod auth;
mod backups;
mod cli;
mod docker;
mod durability;
mod engine;
mod fakes;
mod flags;
mod hostile;
mod llm;
mod mlflow;
mod outage;
mod pg;
mod prometheus;
mod promises;
mod redis_cache;
mod replicas;
mod rollout;
mod schemathesis;
mod secrets;
mod tls;
mod tracing;
