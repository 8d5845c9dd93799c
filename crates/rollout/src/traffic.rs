//! Traffic routers: who gets the requests. The real one rewrites an nginx upstream file and
//! reloads nginx, testing the configuration first.

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::spec::Nginx;

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// `weight` percent to `canary`, the rest to `stable`.
    Weighted {
        /// The stable instances.
        stable: Vec<String>,
        /// The new version's instances.
        canary: Vec<String>,
        /// Percent to the new version.
        weight: u8,
    },
    /// Only these instances.
    Only(Vec<String>),
}

/// A router could not apply a routing; the previous one is still in force.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrafficError(pub String);

/// Applies routings.
#[async_trait]
pub trait TrafficRouter: Send + Sync {
    /// Makes `routing` the one in force, or leaves the previous one and says why.
    async fn apply(&self, routing: &Routing) -> Result<(), TrafficError>;
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The upstream block for a routing: weights split the share between versions whatever the
/// number of instances of each.
pub fn upstream_block(name: &str, rollout: &str, routing: &Routing) -> String {
    let mut servers: Vec<(String, u64)> = Vec::new();
    match routing {
        Routing::Only(members) => servers.extend(members.iter().map(|m| (m.clone(), 1))),
        Routing::Weighted {
            stable,
            canary,
            weight,
        } => {
            let w = u64::from(*weight);
            let (ns, nc) = (stable.len() as u64, canary.len() as u64);
            // Each stable server gets (100 - w) * nc, each canary server w * ns: the
            // versions' totals are then in the ratio (100 - w) : w.
            let (ws, wc) = ((100 - w) * nc.max(1), w * ns.max(1));
            let g = gcd(ws, wc).max(1);
            if ws > 0 {
                servers.extend(stable.iter().map(|s| (s.clone(), ws / g)));
            }
            if wc > 0 {
                servers.extend(canary.iter().map(|s| (s.clone(), wc / g)));
            }
        }
    }
    let mut out = format!(
        "# Managed by `flotilla rollout` ({rollout}): rewritten on every step, do not edit.\nupstream {name} {{\n"
    );
    for (server, weight) in servers {
        if weight == 1 {
            out.push_str(&format!("    server {server};\n"));
        } else {
            out.push_str(&format!("    server {server} weight={weight};\n"));
        }
    }
    out.push_str("    keepalive 16;\n}\n");
    out
}

/// nginx, through the upstream file it includes.
pub struct NginxRouter {
    config: Nginx,
    rollout: String,
}

impl NginxRouter {
    /// A router for `rollout`'s upstream.
    pub fn new(config: Nginx, rollout: &str) -> Self {
        NginxRouter {
            config,
            rollout: rollout.to_owned(),
        }
    }

    async fn nginx(&self, action: &[&str]) -> Result<(), TrafficError> {
        let out = tokio::process::Command::new(&self.config.binary)
            .args(&self.config.args)
            .args(action)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| TrafficError(format!("cannot run {}: {e}", self.config.binary)))?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(TrafficError(format!(
                "`{} {}` failed: {}",
                self.config.binary,
                action.join(" "),
                stderr.trim()
            )))
        }
    }
}

/// Writes `text` to `path` by a rename, so nginx never reads half a file.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp: PathBuf = path.with_extension("flotilla-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[async_trait]
impl TrafficRouter for NginxRouter {
    async fn apply(&self, routing: &Routing) -> Result<(), TrafficError> {
        let path = self.config.upstream_file.clone();
        let text = upstream_block(&self.config.upstream, &self.rollout, routing);
        let previous = std::fs::read_to_string(&path).ok();
        if previous.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        write_atomically(&path, &text)
            .map_err(|e| TrafficError(format!("cannot write {}: {e}", path.display())))?;
        if let Err(e) = self.nginx(&["-t"]).await {
            // Put back what nginx runs with, so the refused file is never loaded later.
            let restored = match &previous {
                Some(p) => write_atomically(&path, p),
                None => std::fs::remove_file(&path),
            };
            if let Err(r) = restored {
                tracing::error!(file = %path.display(), error = %r, "cannot restore the upstream file");
            }
            return Err(e);
        }
        let old = workers(&self.config.pid_file);
        self.nginx(&["-s", "reload"]).await?;
        // Old workers finish their requests and leave; until then they serve the old split.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !old.is_empty() && std::time::Instant::now() < deadline {
            let now = workers(&self.config.pid_file);
            if !old.iter().any(|p| now.contains(p)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The worker processes of the nginx master named by `pid_file` (empty when it cannot be
/// read, or off Linux).
fn workers(pid_file: &Path) -> Vec<u32> {
    let Some(master) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // /proc/PID/stat: "pid (comm) state ppid …"; comm may hold spaces.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(master)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_split_between_versions_not_servers() {
        let block = upstream_block(
            "api",
            "r",
            &Routing::Weighted {
                stable: vec!["a:1".into(), "b:1".into()],
                canary: vec!["c:1".into()],
                weight: 20,
            },
        );
        // 2 stable servers × 40 vs 1 canary × 20: 80 % to 20 %.
        assert!(block.contains("server a:1 weight=2;"), "{block}");
        assert!(block.contains("server c:1;"), "{block}");
        let all_canary = upstream_block(
            "api",
            "r",
            &Routing::Weighted {
                stable: vec!["a:1".into()],
                canary: vec!["c:1".into()],
                weight: 100,
            },
        );
        assert!(!all_canary.contains("a:1"), "{all_canary}");
        let none = upstream_block(
            "api",
            "r",
            &Routing::Weighted {
                stable: vec!["a:1".into()],
                canary: vec!["c:1".into()],
                weight: 0,
            },
        );
        assert!(!none.contains("c:1"), "{none}");
    }
}
