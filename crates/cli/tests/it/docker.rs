//! The image and the compose stack, built and run for real by a Docker daemon that
//! `scripts/test` starts (`DOCKER_HOST`), with the base images it makes locally.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{flotilla, free_port, installed, wait_until_up};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs a command to its end; (exit code, stdout, stderr).
fn run(program: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> (i32, String, String) {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn docker(args: &[&str]) -> String {
    let (code, out, err) = run("docker", args, &[], Path::new("."));
    assert_eq!(code, 0, "docker {args:?}: {err}");
    out.trim().to_owned()
}

/// A container removed however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// The compose project, brought down however the test ends.
struct Stack<'a> {
    dir: &'a Path,
    env: Vec<(&'static str, String)>,
    up: bool,
}

impl Stack<'_> {
    fn compose(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["-p", "flotillatest", "-f", "compose/compose.yaml"];
        all.extend_from_slice(args);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run("docker-compose", &all, &env, self.dir)
    }
}

impl Drop for Stack<'_> {
    fn drop(&mut self) {
        if self.up {
            let _ = self.compose(&["down", "-v", "--timeout", "10"]);
        }
    }
}

async fn json_of(url: &str) -> Option<Value> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

// flotilla's own Dockerfile builds from a checkout; the container runs as 1001 with a
// read-only root, answers /ready, runs a demo workflow and exits 0 on `docker stop`. Then
// `deploy generate`'s compose stack: nginx in front of two replicas on PostgreSQL, with
// Prometheus scraping both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_and_the_compose_stack_run() {
    if std::env::var("DOCKER_HOST").is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but DOCKER_HOST is not set: run the tests through scripts/test, which starts dockerd"
        );
        eprintln!("skipped: DOCKER_HOST is not set (scripts/test starts a Docker daemon)");
        return;
    }
    if !installed("docker", "docker", &["info"])
        || !installed("docker-compose", "docker-compose", &["version"])
    {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tag = format!("flotilla:{VERSION}");
    let (code, _, err) = run(
        "docker",
        &["build", "--network", "host", "-q", "-t", &tag, "."],
        &[],
        &root,
    );
    assert_eq!(code, 0, "docker build: {err}");

    // The image on its own: read-only root, uid 1001, the demo fleet.
    let port = free_port();
    let id = docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "--read-only",
        "--tmpfs",
        "/data:uid=1001,gid=1001",
        "--tmpfs",
        "/tmp",
        &tag,
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let container = Container(id);
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(
        &format!("{base}/ready"),
        Duration::from_secs(60),
        "the container",
    )
    .await;
    assert_eq!(
        docker(&["inspect", "-f", "{{.Config.User}}", &container.0]),
        "1001:1001"
    );
    assert_eq!(docker(&["exec", &container.0, "id", "-u"]), "1001");
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.ReadonlyRootfs}}",
            &container.0
        ]),
        "true"
    );
    let client = reqwest::Client::new();
    let run_ = client
        .post(format!(
            "{base}/api/v1/workflows/travel_planning/runs?wait=30s"
        ))
        .json(&json!({"input": {"destination": "Lisbon"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(run_.status(), 200);
    let run_: Value = run_.json().await.unwrap();
    assert_eq!(run_["status"], "succeeded", "{run_}");
    docker(&["stop", "-t", "30", &container.0]);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.ExitCode}}", &container.0]),
        "0",
        "exit status after docker stop"
    );
    drop(container);

    // The compose stack deploy generate writes.
    let dir = tempfile::tempdir().unwrap();
    let demo = include_str!("../../../../examples/demo.yaml");
    std::fs::write(
        dir.path().join("flotilla.yaml"),
        format!("{demo}\ndeploy: {{ replicas: 2 }}\n"),
    )
    .unwrap();
    let (code, _, err) = flotilla(
        dir.path(),
        &[
            "deploy",
            "generate",
            "--config",
            "flotilla.yaml",
            "--target",
            "compose",
            "--output",
            "out",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("out");
    let (http, prom) = (free_port(), free_port());
    let mut stack = Stack {
        dir: &out,
        env: vec![
            ("POSTGRES_PASSWORD", "compose-test-password".into()),
            ("HTTP_PORT", http.to_string()),
            ("PROMETHEUS_PORT", prom.to_string()),
        ],
        up: true,
    };
    let (code, _, err) = stack.compose(&["up", "-d", "--build"]);
    assert_eq!(code, 0, "docker-compose up: {err}");
    let front = format!("http://127.0.0.1:{http}");
    wait_until_up(
        &format!("{front}/ready"),
        Duration::from_secs(180),
        "nginx in front of flotilla",
    )
    .await;
    let r = client
        .post(format!(
            "{front}/api/v1/workflows/travel_planning/runs?wait=30s"
        ))
        .json(&json!({"input": {"destination": "Oslo"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    // Prometheus scrapes both replicas.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = json_of(&format!("http://127.0.0.1:{prom}/api/v1/query?query=up")).await;
        let healthy = up
            .as_ref()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .map(|r| r.iter().filter(|s| s["value"][1] == "1").count())
            .unwrap_or(0);
        if healthy >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw both replicas: {up:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (code, _, err) = stack.compose(&["down", "-v", "--timeout", "10"]);
    assert_eq!(code, 0, "docker-compose down: {err}");
    stack.up = false;
}
