//! The result cache in a real Redis, and Redis going away mid-test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::{installed, metric, spawn_app};
use crate::fakes::fake_agent;

/// A redis-server on a free loopback port, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> Option<RedisServer> {
        if !installed("redis-server", "redis-server", &["--version"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = crate::app::free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(RedisServer {
            child,
            port,
            _dir: dir,
        })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_shared_through_redis_and_survive_its_outage_uncached() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let fake = fake_agent().await;
    let mut app = spawn_app(&format!(
        r#"
cache: {{ url: "redis://127.0.0.1:{port}/0" }}
agents:
  svc: {{ kind: http, endpoints: ["{url}"], cache: {{ ttl: 60s }} }}
workflows:
  lookup:
    steps:
      - {{ id: get, agent: svc, action: lookup }}
"#,
        port = redis.port,
        url = fake.url
    ))
    .await;
    let lookups = || fake.actions().iter().filter(|a| *a == "lookup").count();
    let id = app.start_run("lookup", json!({"city": "Oslo"})).await;
    assert_eq!(app.finished(&id).await["status"], "succeeded");
    assert_eq!(lookups(), 1);

    // A restarted process has an empty memory: a hit now can only come from Redis.
    app.kill();
    app.start().await;
    let id = app.start_run("lookup", json!({"city": "Oslo"})).await;
    assert_eq!(app.finished(&id).await["status"], "succeeded");
    assert_eq!(lookups(), 1, "served from Redis");
    let text = app.text("/metrics").await;
    assert_eq!(
        metric(&text, "cache_requests_total", &[("result", "hit")]),
        1.0
    );

    redis.kill();
    for _ in 0..3 {
        let id = app.start_run("lookup", json!({"city": "Rome"})).await;
        assert_eq!(
            app.finished(&id).await["status"],
            "succeeded",
            "Redis down: calls go on uncached"
        );
    }
    assert_eq!(lookups(), 4);
    let warnings = app
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("result cache:"))
        .count();
    assert_eq!(
        warnings,
        1,
        "one warning per interval, not per call:\n{}",
        app.log_text()
    );
}
