//! Reloading the flag file when it changes.
//!
//! The file is read (following symlinks) a few times a second and compared by content, which
//! sees every kind of change the same way: an edit in place, a rename over it, and the
//! atomic `..data` symlink swap by which Kubernetes updates a mounted ConfigMap.

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{FlagSet, Flags};

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_millis(250);

/// Reloads `flags` from `path` whenever its content changes, until `stop` turns true. A file
/// that does not parse, or has gone, is logged (with file:line:col) and counted in
/// `flag_reload_errors_total` once per distinct problem; the last good flags stay live.
pub fn watch(
    flags: Flags,
    path: PathBuf,
    environment: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let name = path.display().to_string();
        let mut last_problem: Option<String> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) => {
                    let problem = format!("{name}: cannot read the flag file: {e}");
                    if last_problem.as_deref() != Some(problem.as_str()) {
                        tracing::error!(error = %problem, "flags not reloaded; the last good flags stay live");
                        flags.metrics().reload_errors.inc();
                        last_problem = Some(problem);
                    }
                    continue;
                }
            };
            let digest = hex::encode(Sha256::digest(text.as_bytes()));
            if digest == flags.snapshot().digest {
                last_problem = None;
                continue;
            }
            match FlagSet::parse(&name, &text, &environment) {
                Ok(set) => {
                    tracing::info!(file = %name, flags = set.list().len(), "flags reloaded");
                    flags.replace(set);
                    last_problem = None;
                }
                Err(diags) => {
                    let problem = diags
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    if last_problem.as_deref() != Some(problem.as_str()) {
                        tracing::error!(error = %problem, "flag file rejected; the last good flags stay live");
                        flags.metrics().reload_errors.inc();
                        last_problem = Some(problem);
                    }
                }
            }
        }
    })
}
