//! The exit-code contract of every command, as one table (README "CLI client"): 0 done, 1
//! the thing asked about failed, 2 usage or configuration, 3 a gate failed, 4 unavailable.

use crate::app::free_port;
use crate::client::{cli, server};

const FLAGS: &str = "
shown: { enabled: true, percentage: 100.0 }
hidden: { enabled: false, percentage: 0.0 }
";

#[tokio::test]
async fn every_command_exits_by_one_table() {
    let app = server().await;
    let dir = app.dir.path();
    std::fs::write(dir.join("flags.yaml"), FLAGS).unwrap();
    std::fs::write(dir.join("flagged.yaml"), "flags: { file: flags.yaml }\n").unwrap();
    std::fs::write(
        dir.join("broken.yaml"),
        "workflows:\n  w: { steps: [ { id: a, agent: nobody } ] }\n",
    )
    .unwrap();
    std::fs::write(dir.join("taken.db"), "").unwrap();
    let config = app.config.to_str().unwrap();
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let flagged = ["--config", "flagged.yaml"];

    let table: &[(&[&str], i32, &str)] = &[
        // 0: done.
        (&["runs", "start", "greet", "--wait", "60s"], 0, ""),
        (&["runs", "list"], 0, ""),
        (&["agents", "list"], 0, ""),
        (
            &[
                "tasks",
                "execute",
                "--agent",
                "echo",
                "--input",
                "{\"a\": 1}",
            ],
            0,
            "",
        ),
        (&["flags", "eval", "shown", flagged[0], flagged[1]], 0, ""),
        (&["validate", "--config", config], 0, ""),
        // 1: the run, the task or the flag asked about failed, or the server refused.
        (&["runs", "start", "broken", "--wait", "60s"], 1, ""),
        (&["runs", "get", "no-such-run"], 1, "404"),
        (&["tasks", "execute", "--agent", "broken"], 1, "502"),
        (&["tasks", "execute", "--agent", "ghost"], 1, "404"),
        (&["flags", "eval", "hidden", flagged[0], flagged[1]], 1, ""),
        // 2: usage or configuration.
        (
            &["runs", "start", "greet", "--input", "{nope"],
            2,
            "--input is not JSON",
        ),
        (&["tasks", "execute", "--input", "{}"], 2, "--agent"),
        (
            &["tasks", "execute", "--agent", "echo", "--timeout", "soon"],
            2,
            "--timeout",
        ),
        (&["runs", "list", "-o", "xml"], 2, "xml"),
        (
            &["flags", "eval", "ghost", flagged[0], flagged[1]],
            2,
            "ghost",
        ),
        (&["validate", "--config", "broken.yaml"], 2, "broken.yaml:2"),
        (
            &["backup", "--config", config, "--output", "taken.db"],
            2,
            "--force",
        ),
        (&["no-such-command"], 2, "no-such-command"),
        // 3: a gate failed (an SLO no server meets).
        (
            &[
                "loadtest",
                "--target",
                &app.addr,
                "--http",
                "GET",
                "/health",
                "--concurrency",
                "1",
                "--duration",
                "1s",
                "--slo",
                "p50<1us",
            ],
            3,
            "",
        ),
        // 4: unavailable.
        (
            &["runs", "list", "--server", &nobody],
            4,
            "cannot be reached",
        ),
        (
            &["tasks", "execute", "--agent", "echo", "--server", &nobody],
            4,
            "cannot be reached",
        ),
    ];
    let mut wrong = Vec::new();
    for (args, expected, says) in table {
        let (code, out, err) = cli(&app, args);
        if code != *expected || !err.contains(says) {
            wrong.push(format!(
                "flotilla {}: exit {code} (expected {expected}, stderr to say `{says}`)\n{out}{err}",
                args.join(" ")
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
