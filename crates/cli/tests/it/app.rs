//! Starting, stopping and talking to a real `flotilla serve`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// A running server and its files.
pub struct TestApp {
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
    /// Extra environment variables of the server process.
    pub env: Vec<(String, String)>,
}

/// Writes `yaml` (with the storage pointed at a temp dir) and starts a server on it.
pub async fn spawn_app(yaml: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flotilla.db");
    spawn_app_in(
        dir,
        &format!("storage: {{ url: \"sqlite://{}\" }}\n{yaml}", db.display()),
    )
    .await
}

/// Starts a server on exactly `yaml` (which names its own storage).
pub async fn spawn_app_in(dir: tempfile::TempDir, yaml: &str) -> TestApp {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    spawn_app_with(dir, yaml, client).await
}

/// Starts a server on `yaml`, talking to it with `client` (HTTPS tests bring their own).
pub async fn spawn_app_with(
    dir: tempfile::TempDir,
    yaml: &str,
    client: reqwest::Client,
) -> TestApp {
    spawn_app_env(dir, yaml, client, Vec::new()).await
}

/// Starts a server on `yaml` with extra environment variables.
pub async fn spawn_app_env(
    dir: tempfile::TempDir,
    yaml: &str,
    client: reqwest::Client,
    env: Vec<(String, String)>,
) -> TestApp {
    let config = dir.path().join("flotilla.yaml");
    std::fs::write(&config, yaml).unwrap();
    let mut app = TestApp {
        addr: String::new(),
        dir,
        config,
        child: None,
        logs: Arc::new(Mutex::new(Vec::new())),
        client,
        env,
    };
    app.start().await;
    app
}

impl TestApp {
    /// Starts (or restarts) the server on the same config and database.
    pub async fn start(&mut self) {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--listen", "127.0.0.1:0"])
            .env("LOG_LEVEL", "info")
            .env_remove("FLOTILLA_ENV")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the flotilla binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let logs = self.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("listening on"))
                {
                    let scheme = v["scheme"].as_str().unwrap_or("http");
                    let _ = tx.send(format!(
                        "{scheme}://{}",
                        v["address"].as_str().unwrap_or_default()
                    ));
                }
                logs.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not log its address; logs:\n{}",
                    self.logs.lock().unwrap().join("\n")
                )
            });
        self.addr = addr;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_ref().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        self.terminate_wait()
    }

    /// Waits for the exit status of a server already told to stop.
    pub fn terminate_wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Starts a run and returns its id.
    pub async fn start_run(&self, workflow: &str, input: Value) -> String {
        let (code, body) = self
            .post(
                &format!("/api/v1/workflows/{workflow}/runs"),
                serde_json::json!({"input": input}),
            )
            .await;
        assert_eq!(code, 202, "{body}");
        body["run_id"].as_str().unwrap().to_owned()
    }

    /// Polls a run until `pred` holds (within 30 s).
    pub async fn wait_run(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_run_within(id, Duration::from_secs(30), pred)
            .await
    }

    /// Polls a run until `pred` holds, at most `within`.
    pub async fn wait_run_within(
        &self,
        id: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (code, run) = self.get(&format!("/api/v1/runs/{id}")).await;
            if code == 200 && pred(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} never reached the expected state: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a run to finish (within 30 s).
    pub async fn finished(&self, id: &str) -> Value {
        self.finished_within(id, Duration::from_secs(30)).await
    }

    /// Waits for a run to finish, at most `within`.
    pub async fn finished_within(&self, id: &str, within: Duration) -> Value {
        self.wait_run_within(id, within, |r| {
            !matches!(r["status"].as_str(), Some("queued" | "running"))
        })
        .await
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A step of a run by id.
pub fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step {id} in {run}"))
}

/// Runs the binary with arguments in a directory; returns (status code, stdout, stderr).
pub fn flotilla(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    flotilla_fed(dir, args, env, b"")
}

/// [`flotilla`] with `stdin` on its standard input.
pub fn flotilla_fed(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> (i32, String, String) {
    use std::io::Write as _;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("FLOTILLA_ENV")
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Dropped after writing: the command sees the end of its input.
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A metric's value from the exposition (sum over series matching all `labels`); panics
/// when no such series is exported, so that "is 0" never passes for a missing gauge.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    try_metric(text, name, labels)
        .unwrap_or_else(|| panic!("no series {name} {labels:?} in the exposition:\n{text}"))
}

/// A metric's value, or `None` when no series matches (not exported yet).
pub fn try_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A fresh database on the test PostgreSQL cluster started by `scripts/test`. Outside CI
/// without a cluster: `None` (the test skips with a note); under `CI=true`: a failure.
pub fn postgres_database() -> Option<String> {
    let Ok(admin) = std::env::var("POSTGRES_TEST_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but POSTGRES_TEST_URL is not set: run the tests through scripts/test, which starts PostgreSQL"
        );
        eprintln!("skipped: POSTGRES_TEST_URL is not set (scripts/test starts PostgreSQL)");
        return None;
    };
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let psql = std::env::var("PG_BIN")
        .map(|b| format!("{b}/psql"))
        .unwrap_or_else(|_| "psql".into());
    let out = Command::new(psql)
        .args([
            admin.as_str(),
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    Some(format!("{base}/{name}"))
}

/// Whether `program args…` runs and succeeds: a tool `scripts/test` installs. Without it,
/// a test is skipped with a note outside CI, and fails under `CI=true`.
pub fn installed(what: &str, program: &str, args: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true but {what} is missing: scripts/test installs it"
        );
        eprintln!("skipped: {what} is not installed (scripts/test installs it)");
    }
    ok
}

/// Waits until `url` answers 2xx (at most `within`).
pub async fn wait_until_up(url: &str, within: Duration, what: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    while !client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback port nothing listens on now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
