//! The rollout tests' fleet: nginx, Prometheus, flotilla backends, the controller as a
//! process, traffic through nginx, and a webhook receiver.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::{TestApp, flotilla, free_port, installed, spawn_app, try_metric};
use crate::prometheus::PrometheusServer;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// The agent every backend serves as `api`: `stable` echoes, `bad` fails 30 % of calls.
pub(crate) fn backend(kind: &str) -> String {
    let agent = match kind {
        "bad" => {
            "{ kind: builtin, builtin: fail, failure_rate: 0.3, circuit_breaker: { failure_threshold: 1000000 } }"
        }
        _ => "{ kind: builtin, builtin: echo }",
    };
    format!("agents:\n  api: {agent}\n")
}

/// nginx on a free port, proxying to the upstream file the rollout owns.
pub(crate) struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    pub(crate) fn args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            self.dir.display().to_string(),
            "-c".into(),
            self.dir.join("nginx.conf").display().to_string(),
        ]
    }

    pub(crate) async fn start(dir: &Path, first: &[String]) -> Option<Nginx> {
        if !installed("nginx", "nginx", &["-v"]) {
            return None;
        }
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let port = free_port();
        let servers: String = first.iter().map(|s| format!("    server {s};\n")).collect();
        std::fs::write(
            dir.join("upstream.conf"),
            format!("upstream api {{\n{servers}}}\n"),
        )
        .unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                r#"user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  include {d}/upstream.conf;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#
            ),
        )
        .unwrap();
        let args = [
            "-p".to_owned(),
            dir.display().to_string(),
            "-c".to_owned(),
            dir.join("nginx.conf").display().to_string(),
        ];
        let nginx = Nginx {
            child: Command::new("nginx")
                .args(args)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            port,
            dir,
        };
        crate::app::wait_until_up(
            &format!("http://127.0.0.1:{port}/health"),
            Duration::from_secs(30),
            "nginx",
        )
        .await;
        Some(nginx)
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (a SIGKILL would leave them behind),
    /// then the master is reaped; killed after 10 s if it has not gone. By pid, not
    /// `nginx -s stop`: that reads the configuration and pid files, which need not exist
    /// any more.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Backends behind nginx, Prometheus scraping them, and a rollout file.
pub(crate) struct Fleet {
    pub stable: Vec<TestApp>,
    pub canary: Vec<TestApp>,
    pub nginx: Nginx,
    pub prometheus: PrometheusServer,
    /// Last: fields drop in order, and the processes above use files in it until they stop.
    pub dir: tempfile::TempDir,
}

pub(crate) fn host(app: &TestApp) -> String {
    app.addr.trim_start_matches("http://").to_owned()
}

impl Fleet {
    pub(crate) async fn start(stable: &[&str], canary: &[&str]) -> Option<Fleet> {
        if !installed("nginx", "nginx", &["-v"])
            || !installed("prometheus", "prometheus", &["--version"])
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut s = Vec::new();
        for kind in stable {
            s.push(spawn_app(&backend(kind)).await);
        }
        let mut c = Vec::new();
        for kind in canary {
            c.push(spawn_app(&backend(kind)).await);
        }
        let targets: Vec<String> = s.iter().chain(c.iter()).map(host).collect();
        let prometheus_config = dir.path().join("prometheus.yml");
        std::fs::write(
            &prometheus_config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: flotilla\n    static_configs: [ {{ targets: {} }} ]\n",
                serde_json::to_string(&targets).unwrap()
            ),
        )
        .unwrap();
        let prometheus = PrometheusServer::start(dir.path(), &prometheus_config).await?;
        let first: Vec<String> = s.iter().map(host).collect();
        let nginx = Nginx::start(dir.path(), &first).await?;
        Some(Fleet {
            stable: s,
            canary: c,
            nginx,
            prometheus,
            dir,
        })
    }

    /// Writes the rollout file: `body` is YAML under `rollout:` after the common fields.
    pub(crate) fn rollout(&self, strategy: &str, body: &str) -> PathBuf {
        let stable: Vec<String> = self.stable.iter().map(host).collect();
        let canary: Vec<String> = self.canary.iter().map(host).collect();
        let args = self.nginx.args();
        let text = format!(
            r#"storage: {{ url: "sqlite://{db}" }}
rollout:
  name: api
  strategy: {strategy}
  stable: {{ version: "1.0.0", upstreams: {stable} }}
  canary: {{ version: "2.0.0", upstreams: {canary} }}
  traffic:
    nginx: {{ upstream_file: "{upstream}", upstream: api, args: {args}, pid_file: "{pid}" }}
  analysis_templates:
    - name: success-rate
      metrics:
        - name: success-rate
          interval: 2s
          failure_limit: 1
          success_condition: "result[0] >= 0.95"
          provider:
            prometheus:
              address: {prom}
              query: &rate sum(rate(http_requests_total{{instance=~"{{{{ canary_instances }}}}",route="/api/v1/execute",code!~"5.."}}[10s])) / sum(rate(http_requests_total{{instance=~"{{{{ canary_instances }}}}",route="/api/v1/execute"}}[10s]))
    - name: success-rate-3
      metrics:
        - name: success-rate
          interval: 2s
          count: 3
          success_condition: "result[0] >= 0.95"
          provider: {{ prometheus: {{ address: {prom}, query: *rate }} }}
{body}"#,
            db = self.dir.path().join("rollout.db").display(),
            stable = serde_json::to_string(&stable).unwrap(),
            canary = serde_json::to_string(&canary).unwrap(),
            upstream = self.nginx.dir.join("upstream.conf").display(),
            pid = self.nginx.dir.join("nginx.pid").display(),
            args = serde_json::to_string(&args).unwrap(),
            prom = self.prometheus.url,
        );
        let path = self.dir.path().join("rollout.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub(crate) fn cli(&self, args: &[&str]) -> (i32, String, String) {
        flotilla(self.dir.path(), args, &[])
    }

    pub(crate) fn status(&self) -> Value {
        let (code, out, err) = self.cli(&[
            "rollout",
            "status",
            "--config",
            "rollout.yaml",
            "--output",
            "json",
        ]);
        if code != 0 {
            return json!({"missing": err});
        }
        serde_json::from_str(&out).unwrap()
    }

    /// Polls `status` until `check` holds (at most `within`).
    pub(crate) async fn wait_status(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let s = self.status();
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what} within {within:?}: {s:#}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The controller as its own process. Its output is read as it comes: a pipe nobody reads
/// fills after 64 KiB and then stops the process at its next log line.
pub(crate) struct Controller {
    pub(crate) child: tokio::process::Child,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
}

/// Reads `pipe` to its end.
fn drain(
    pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut text).await;
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

impl Controller {
    pub(crate) fn start(fleet: &Fleet) -> Controller {
        Controller::start_with(fleet, &[])
    }

    pub(crate) fn start_with(fleet: &Fleet, extra: &[&str]) -> Controller {
        let mut child = tokio::process::Command::new(BIN)
            .args(["rollout", "run", "--config", "rollout.yaml"])
            .args(extra)
            .current_dir(fleet.dir.path())
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Controller {
            stdout: drain(child.stdout.take()),
            stderr: drain(child.stderr.take()),
            child,
        }
    }

    pub(crate) async fn exit(mut self, within: Duration) -> (i32, String, String) {
        let pid = self.child.id();
        let wait = tokio::time::timeout(within, self.child.wait()).await;
        if wait.is_err() {
            let _ = self.child.start_kill();
        }
        let status = self.child.wait().await.unwrap();
        let out = self.stdout.await.unwrap_or_default();
        let err = self.stderr.await.unwrap_or_default();
        assert!(
            wait.is_ok(),
            "the rollout (pid {pid:?}) did not end within {within:?}:\n{err}"
        );
        (status.code().unwrap_or(-1), out, err)
    }
}

/// Requests through nginx until stopped: (sent, failed) counts.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub(crate) fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (s, n, f, e) = (stop.clone(), sent.clone(), failed.clone(), errors.clone());
        let task = tokio::spawn(async move {
            // A new connection per request: when nginx reloads, its old workers close idle
            // keep-alive connections, and a request sent on one at that instant is lost
            // between client and nginx whatever the rollout does. Fresh connections go to
            // the new workers, so a failure here is the rollout's.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            // Bounded: at most 20 minutes of traffic at ~50 requests a second.
            for _ in 0..60_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let r = client
                    .post(&url)
                    .json(&json!({"agent": "api", "input": {"n": 1}}))
                    .send()
                    .await;
                n.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        let mut errs = e.lock().unwrap();
                        if errs.len() < 5 {
                            errs.push(format!("{}", r.status()));
                        }
                    }
                    Err(err) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        let mut errs = e.lock().unwrap();
                        if errs.len() < 5 {
                            errs.push(err.to_string());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Traffic {
            stop,
            sent,
            failed,
            errors,
            task,
        }
    }

    pub(crate) async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.errors.lock().unwrap().clone(),
        )
    }
}

/// `/api/v1/execute` requests a backend has answered.
pub(crate) async fn served(app: &TestApp) -> f64 {
    try_metric(
        &app.text("/metrics").await,
        "http_requests_total",
        &[("route", "/api/v1/execute")],
    )
    .unwrap_or(0.0)
}

/// A fake receiver of webhooks (PagerDuty's Events v2, Slack's incoming webhooks): records
/// every JSON body posted to `path`.
pub(crate) async fn fake_receiver(
    path: &'static str,
) -> (String, Arc<Mutex<Vec<Value>>>, tokio::task::JoinHandle<()>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        path,
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(body);
                (axum::http::StatusCode::ACCEPTED, "{\"status\":\"success\"}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, seen, task)
}

/// Waits until `seen` holds a body for which `check` holds (at most 20 s).
pub(crate) async fn received(
    seen: &Mutex<Vec<Value>>,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = seen.lock().unwrap().iter().find(|v| check(v)) {
            return v.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what} never arrived: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
