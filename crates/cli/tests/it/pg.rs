//! A private PostgreSQL cluster for tests that stop and start the server.

use std::path::PathBuf;
use std::process::Command;

/// One cluster in a temp dir on a free loopback port; stopped when dropped.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

fn as_postgres(program: PathBuf) -> Command {
    // initdb and postgres refuse to run as root.
    if Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
    {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    /// Starts a cluster, or `None` outside CI when PostgreSQL is not installed.
    pub fn start() -> Option<Self> {
        let Ok(bin) = std::env::var("PG_BIN") else {
            assert!(
                std::env::var("CI").is_err(),
                "CI=true but PG_BIN is not set: run the tests through scripts/test"
            );
            eprintln!("skipped: PG_BIN is not set (scripts/test installs PostgreSQL)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status();
        let port = crate::app::free_port();
        let pg = PrivatePostgres {
            dir,
            bin: PathBuf::from(bin),
            port,
        };
        let ok = as_postgres(pg.bin.join("initdb"))
            .args(["-U", "flotilla", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(pg.data())
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        pg.up();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://…` of the cluster's default database.
    pub fn url(&self) -> String {
        format!("postgres://flotilla@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.path().display()
        );
        let out = as_postgres(self.bin.join("pg_ctl"))
            .args(["-w", "-t", "30", "-l"])
            .arg(self.dir.path().join("log"))
            .args(["-o", &opts, "-D"])
            .arg(self.data())
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server the way an outage does: at once.
    pub fn down(&self) {
        let _ = as_postgres(self.bin.join("pg_ctl"))
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.down();
    }
}
