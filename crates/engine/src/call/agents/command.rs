//! Command agents: a subprocess gets the request JSON on stdin and answers `{"output": …}`
//! on stdout. stderr is logged; the process is killed when the attempt times out.

use std::collections::BTreeMap;
use std::process::Stdio;

use async_trait::async_trait;
use flotilla_spec::AgentConfig;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Agent, AgentError, AgentRequest, AgentResponse};

pub(super) struct CommandAgent {
    name: String,
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
}

impl CommandAgent {
    pub(super) fn new(name: &str, cfg: &AgentConfig) -> Self {
        let mut parts = cfg.command.iter().cloned();
        Self {
            name: name.to_owned(),
            program: parts.next().unwrap_or_default(),
            args: parts.collect(),
            env: cfg.env.clone(),
            working_dir: cfg.working_dir.clone(),
        }
    }
}

#[async_trait]
impl Agent for CommandAgent {
    async fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(&self.env)
            .env("FLOTILLA_IDEMPOTENCY_KEY", &req.idempotency_key)
            .env("TRACEPARENT", &req.traceparent)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.working_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| AgentError::permanent(format!("cannot start `{}`: {e}", self.program)))?;
        let body = serde_json::to_vec(req).expect("requests always serialize");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let write = async move {
            // A program that exits without reading its input is its own business.
            let _ = stdin.write_all(&body).await;
            drop(stdin);
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (_, r1, r2) = tokio::join!(
            write,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err)
        );
        r1.and(r2)
            .map_err(|e| AgentError::retryable(format!("reading from `{}`: {e}", self.program)))?;
        let status = child
            .wait()
            .await
            .map_err(|e| AgentError::retryable(format!("waiting for `{}`: {e}", self.program)))?;
        let stderr_text = String::from_utf8_lossy(&err);
        for line in stderr_text.lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(agent = %self.name, step_id = %req.step_id, "{line}");
        }
        if !status.success() {
            let tail: String = stderr_text
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            return Err(AgentError::retryable(format!(
                "`{}` exited with {status}: {tail}",
                self.program
            )));
        }
        let value: Value = serde_json::from_slice(&out).map_err(|e| {
            AgentError::permanent(format!(
                "`{}` wrote invalid JSON to stdout: {e}",
                self.program
            ))
        })?;
        Ok(AgentResponse::unwrapped(value))
    }
}
