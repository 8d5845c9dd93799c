//! The CI workflows: build and test, deploy to staging, deploy to production by hand.

use flotilla_spec::{DeployConfig, Strategy};
use serde_json::json;

use super::{GenerateError, env_host, yaml};
use crate::File;

/// The registry an image name lives in (`docker.io` when it names none).
fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

pub(super) fn ci(d: &DeployConfig) -> Result<Vec<File>, GenerateError> {
    let image = &d.image;
    let base = &d.base_image;
    let registry = registry_of(image);
    let in_flotilla = |cmd: &str| format!("docker run --rm -v \"$PWD:/w\" -w /w {base} {cmd}");
    let build = json!({
        "name": "build and test",
        "on": {"push": {"branches": ["main"]}, "pull_request": {}},
        "permissions": {"contents": "read", "packages": "write"},
        "jobs": {
            "test": {
                "runs-on": "ubuntu-latest",
                "timeout-minutes": 15,
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"name": "Validate the configuration", "run": in_flotilla("validate --config flotilla.yaml")},
                    {"name": "The generated files are up to date", "run": format!(
                        "{} && diff -r deploy /tmp/generated",
                        in_flotilla("deploy generate --config flotilla.yaml --output /tmp/generated")
                            .replace("-v \"$PWD:/w\"", "-v \"$PWD:/w\" -v /tmp:/tmp")
                    )},
                ],
            },
            "image": {
                "needs": "test",
                "if": "github.event_name == 'push'",
                "runs-on": "ubuntu-latest",
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"uses": "docker/login-action@v3", "with": {"registry": registry, "username": "${{ secrets.REGISTRY_USERNAME }}", "password": "${{ secrets.REGISTRY_PASSWORD }}"}},
                    {"uses": "docker/build-push-action@v6", "with": {
                        "context": "deploy/image",
                        "push": true,
                        "build-args": "REVISION=${{ github.sha }}",
                        "tags": format!("{image}:${{{{ github.sha }}}}"),
                    }},
                ],
            },
        },
    });
    let deploy_step = |env: &str| {
        json!([
            {"uses": "actions/checkout@v4"},
            {"name": "Pin the image", "run": format!("cd deploy/kubernetes/overlays/{env} && kustomize edit set image {image}={image}:${{{{ github.sha }}}}")},
        ])
    };
    let commit = |env: &str| json!({"name": "Commit for ArgoCD", "run": format!("git config user.name ci && git config user.email ci@users.noreply.github.com && git commit -am \"deploy {env} ${{{{ github.sha }}}}\" && git push")});
    // ArgoCD syncs, then the rollout replaces the pods: wait until the new revision answers
    // before judging it.
    let smoke = |env: &str| {
        let host = env_host(d, env);
        json!({"name": "Wait for the new version, then smoke test", "run": format!(
            "for i in $(seq 120); do \
               if curl -fsS https://{host}/version | grep -q \"\\\"revision\\\":\\\"${{{{ github.sha }}}}\\\"\"; then \
                 curl -fsS https://{host}/ready && exit 0; \
               fi; sleep 15; \
             done; echo \"the new version never answered at {host}\" >&2; exit 1"
        )})
    };
    let mut staging_steps = deploy_step("staging")
        .as_array()
        .cloned()
        .unwrap_or_default();
    staging_steps.push(commit("staging"));
    staging_steps.push(smoke("staging"));
    // Then a short load test through the API (reads the store, checks the key): open loop,
    // so latency counts from each arrival's intended start, judged by objectives over the
    // run and every 10 s window.
    staging_steps.push(json!({"name": "Load test (smoke profile)", "run": format!(
        "docker run --rm -e FLOTILLA_API_KEY {image}:${{{{ github.sha }}}} loadtest \
           --target https://{host} --profile smoke --rate 10/s --http GET '/api/v1/runs?limit=1' \
           --slo 'p95<500ms,errors<1%' --slo-window 10s --abort-on-fail",
        host = env_host(d, "staging")
    ), "env": {"FLOTILLA_API_KEY": "${{ secrets.FLOTILLA_API_KEY }}"}}));
    let staging = json!({
        "name": "deploy staging",
        "on": {"workflow_run": {"workflows": ["build and test"], "types": ["completed"], "branches": ["main"]}},
        "permissions": {"contents": "write"},
        "jobs": {"staging": {
            "if": "github.event.workflow_run.conclusion == 'success'",
            "runs-on": "ubuntu-latest",
            "timeout-minutes": 45,
            "environment": "staging",
            "steps": staging_steps,
        }},
    });
    let mut prod_steps = deploy_step("production")
        .as_array()
        .cloned()
        .unwrap_or_default();
    if d.rollout.strategy != Strategy::Rolling {
        prod_steps.push(json!({"name": "Choose the rollout strategy", "run": "cd deploy/kubernetes/overlays/production && cp \"strategies/${{ inputs.strategy }}.yaml\" strategy.yaml"}));
    }
    prod_steps.push(commit("production"));
    prod_steps.push(smoke("production"));
    let production = json!({
        "name": "deploy production",
        "on": {"workflow_dispatch": {"inputs": {"strategy": {
            "description": "How the new version replaces the old (Argo Rollouts carries it out, judged by the analysis templates)",
            "type": "choice",
            "options": ["canary", "blue-green", "rolling"],
            "default": match d.rollout.strategy { Strategy::Canary => "canary", Strategy::BlueGreen => "blue-green", Strategy::Rolling => "rolling" },
        }}}},
        "permissions": {"contents": "write"},
        "jobs": {"production": {
            "runs-on": "ubuntu-latest",
            "timeout-minutes": 90,
            "environment": "production",
            "steps": prod_steps,
        }},
    });
    // Off Kubernetes (one host, compose, VMs): `flotilla rollout` on the host is the
    // controller, nginx shifts the traffic, Prometheus judges, and it rolls back on its own.
    let hosts = json!({
        "name": "deploy production (hosts)",
        "on": {"workflow_dispatch": {"inputs": {"strategy": {
            "description": "How the new version replaces the old (flotilla rollout carries it out through nginx, judged by Prometheus)",
            "type": "choice",
            "options": ["canary", "blue_green", "rolling"],
            "default": match d.rollout.strategy { Strategy::Canary => "canary", Strategy::BlueGreen => "blue_green", Strategy::Rolling => "rolling" },
        }}}},
        "permissions": {"contents": "read"},
        "concurrency": {"group": "production-hosts", "cancel-in-progress": false},
        "jobs": {"production": {
            "runs-on": ["self-hosted", "flotilla-production"],
            "timeout-minutes": 90,
            "environment": "production",
            "steps": [
                {"uses": "actions/checkout@v4"},
                {"name": "Check the rollout", "run": "flotilla rollout validate --config flotilla.yaml"},
                {"name": "Roll out (exit 3: rolled back on its own; the reason is in the status)", "run": "flotilla rollout run --config flotilla.yaml --strategy \"${{ inputs.strategy }}\" --canary-version \"${{ github.sha }}\""},
                {"name": "Show what happened", "if": "always()", "run": "flotilla rollout status --config flotilla.yaml"},
            ],
        }},
    });
    Ok(vec![
        yaml("ci/.github/workflows/build.yml", &[build])?,
        yaml("ci/.github/workflows/deploy-staging.yml", &[staging])?,
        yaml("ci/.github/workflows/deploy-production.yml", &[production])?,
        yaml("ci/.github/workflows/deploy-production-hosts.yml", &[hosts])?,
    ])
}
