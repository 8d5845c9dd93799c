//! Rolling updates: instance groups of `max_unavailable` leave the upstream, are replaced by
//! the configured command, checked, and come back; a failed check stops the update and puts
//! the instance set back as it was.

use std::time::{Duration, Instant};

use crate::controller::{Controller, RolloutError, now_ms};
use crate::spec::Rolling;
use crate::state::{Cause, Decision, DecisionRecord, Outcome, State, Status};
use crate::traffic::Routing;

fn render(template: &str, instance: &str, version: &str) -> Result<String, String> {
    let env = minijinja::Environment::new();
    env.render_str(
        template,
        minijinja::context! { instance => instance, version => version },
    )
    .map_err(|e| e.to_string())
}

async fn shell(command: &str) -> Result<(), String> {
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{command}` exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

async fn healthy(url: &str, within: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = e.without_url().to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "{url} not healthy within {}: {last}",
        humantime::format_duration(within)
    ))
}

/// Replaces the next group; promotes after the last.
pub(crate) async fn turn(
    c: &Controller,
    state: &mut State,
    changed: &mut bool,
) -> Result<Option<Outcome>, RolloutError> {
    let spec = &c.loaded.spec;
    let Some(rolling): Option<&Rolling> = spec.rolling.as_ref() else {
        return Ok(None);
    };
    let all = spec.stable.upstreams.clone();
    let size = rolling.max_unavailable.max(1) as usize;
    let groups: Vec<Vec<String>> = all.chunks(size).map(<[String]>::to_vec).collect();
    let Some(group) = groups.get(state.step).cloned() else {
        state.status = Status::Promoted;
        state.weight = 100;
        record(
            c,
            state,
            Decision::Promote,
            Cause::Step,
            "every instance replaced".into(),
        )
        .await?;
        c.notifier.send(&crate::notify::Event {
            rollout: state.name.clone(),
            kind: crate::notify::EventKind::Promoted,
            message: "every instance replaced".into(),
            reason: None,
            step: state.step,
            weight: 100,
            stable_version: state.stable_version.clone(),
            canary_version: state.canary_version.clone(),
            at: now_ms(),
        });
        return Ok(Some(Outcome::Promoted));
    };
    let version = &spec.canary.version;
    let serving: Vec<String> = all.iter().filter(|u| !group.contains(u)).cloned().collect();
    if let Err(e) = c.traffic.apply(&Routing::Only(serving)).await {
        return fail(c, state, e.to_string()).await;
    }
    tokio::time::sleep(rolling.drain.0).await;
    let mut failure = None;
    for instance in &group {
        let step = async {
            shell(&render(&rolling.replace, instance, version)?).await?;
            healthy(
                &render(&rolling.health_url, instance, version)?,
                rolling.health_timeout.0,
            )
            .await
        };
        if let Err(e) = step.await {
            failure = Some((instance.clone(), e));
            break;
        }
    }
    if let Some((instance, error)) = failure {
        // Put every instance this update replaced back on the stable version: the failed
        // group (out of service already), then the earlier groups newest first, each leaving
        // the upstream while it is restored. Then the whole set is in service again.
        if let Some(restore) = &rolling.restore {
            let stable_version = &spec.stable.version;
            restore_group(rolling, restore, &group, stable_version).await;
            for earlier in groups[..state.step].iter().rev() {
                let serving: Vec<String> = all
                    .iter()
                    .filter(|u| !earlier.contains(u))
                    .cloned()
                    .collect();
                if let Err(e) = c.traffic.apply(&Routing::Only(serving)).await {
                    return fail(c, state, e.to_string()).await;
                }
                tokio::time::sleep(rolling.drain.0).await;
                restore_group(rolling, restore, earlier, stable_version).await;
            }
        }
        if let Err(e) = c.traffic.apply(&Routing::Only(all)).await {
            return fail(c, state, e.to_string()).await;
        }
        let message = format!("instance {instance} failed its check: {error}");
        state.status = Status::RolledBack {
            reason: message.clone(),
        };
        record(
            c,
            state,
            Decision::Rollback,
            Cause::HealthCheck,
            message.clone(),
        )
        .await?;
        c.notifier.send(&crate::notify::Event {
            rollout: state.name.clone(),
            kind: crate::notify::EventKind::RolledBack,
            message,
            reason: None,
            step: state.step,
            weight: state.weight,
            stable_version: state.stable_version.clone(),
            canary_version: state.canary_version.clone(),
            at: now_ms(),
        });
        return Ok(Some(Outcome::RolledBack));
    }
    if let Err(e) = c.traffic.apply(&Routing::Only(all.clone())).await {
        return fail(c, state, e.to_string()).await;
    }
    state.step += 1;
    state.step_started = now_ms();
    state.weight = (state.step.min(groups.len()) * 100 / groups.len().max(1)) as u8;
    record(
        c,
        state,
        Decision::Advance,
        Cause::Step,
        format!("replaced {} with {version}", group.join(", ")),
    )
    .await?;
    *changed = true;
    Ok(None)
}

/// Runs `restore` on each instance and waits for its health check; failures are logged (the
/// rollout is being rolled back already).
async fn restore_group(rolling: &Rolling, restore: &str, group: &[String], version: &str) {
    for i in group {
        let restored = async {
            shell(&render(restore, i, version)?).await?;
            healthy(
                &render(&rolling.health_url, i, version)?,
                rolling.health_timeout.0,
            )
            .await
        };
        if let Err(e) = restored.await {
            tracing::error!(instance = %i, error = %e, "restoring an instance failed");
        }
    }
}

async fn record(
    c: &Controller,
    state: &State,
    decision: Decision,
    cause: Cause,
    message: String,
) -> Result<(), RolloutError> {
    c.record_decision(
        state,
        DecisionRecord {
            decision,
            cause,
            message,
            reason: None,
            step: state.step,
            weight: state.weight,
        },
    )
    .await
}

async fn fail(
    c: &Controller,
    state: &mut State,
    error: String,
) -> Result<Option<Outcome>, RolloutError> {
    state.status = Status::Failed {
        error: error.clone(),
    };
    record(c, state, Decision::Fail, Cause::Traffic, error).await?;
    Ok(Some(Outcome::Failed))
}
