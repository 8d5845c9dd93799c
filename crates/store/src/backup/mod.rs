//! Backups and restores of a store, by URL.
//!
//! SQLite: SQLite's online backup API, one consistent snapshot, safe while a server is
//! running (WAL readers never block the writer). Restoring needs the server stopped.
//! PostgreSQL: `pg_dump --format=custom` and `pg_restore`, when installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use flotilla_spec::storage::Backend;

use crate::{Result, StoreError};

pub mod files;

fn backend(url: &str) -> Result<Backend> {
    Backend::of(url)
        .map_err(|e| StoreError::Url(format!("{}: {e}", flotilla_spec::redact::redact_url(url))))
}

/// Writes a backup of the store at `url` to `dest`.
pub async fn backup(url: &str, dest: &Path) -> Result<()> {
    let backend = backend(url)?;
    let (url, dest) = (url.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || match backend {
        Backend::Postgres => run_tool(
            "pg_dump",
            &[
                "--format=custom",
                "--no-owner",
                "--file",
                &dest.display().to_string(),
                "--dbname",
                &url,
            ],
        ),
        Backend::Sqlite(path) => sqlite_backup(&path, &dest),
    })
    .await
    .map_err(|_| StoreError::Closed)?
}

/// Restores `src` into the store at `url`. A store that already holds runs is refused
/// unless `force`.
pub async fn restore(url: &str, src: &Path, force: bool) -> Result<()> {
    if !src.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("backup file {} does not exist", src.display()),
        )));
    }
    let path = match backend(url)? {
        Backend::Sqlite(path) => path,
        Backend::Postgres => return pg_restore(url, src, force).await,
    };
    let src = src.to_owned();
    tokio::task::spawn_blocking(move || sqlite_restore(&path, &src, force))
        .await
        .map_err(|_| StoreError::Closed)?
}

async fn pg_restore(url: &str, src: &Path, force: bool) -> Result<()> {
    let store = crate::PostgresStore::connect(url, Default::default())?;
    if !force && store.holds_runs().await? {
        return Err(refuse_non_empty());
    }
    let (url, src) = (url.to_owned(), src.to_owned());
    tokio::task::spawn_blocking(move || {
        run_tool(
            "pg_restore",
            &[
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "--dbname",
                &url,
                &src.display().to_string(),
            ],
        )
    })
    .await
    .map_err(|_| StoreError::Closed)?
}

/// What a verified backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `sqlite` or `postgres`.
    pub kind: &'static str,
    /// Runs, steps and events in it.
    pub runs: u64,
    /// Steps.
    pub steps: u64,
    /// Events.
    pub events: u64,
}

/// Restores `file` into a temporary store and checks it: a SQLite copy must pass
/// `PRAGMA integrity_check`; a `pg_dump` archive is restored into a temporary database on
/// the PostgreSQL server at `pg_url` (dropped afterwards). Either way the runs, steps and
/// events must read back.
pub async fn verify(file: &Path, pg_url: Option<&str>) -> Result<Verified> {
    let mut head = [0u8; 16];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(file)?;
        let n = f.read(&mut head)?;
        if n < 5 {
            return Err(StoreError::Corrupt(format!(
                "{} is too short to be a backup",
                file.display()
            )));
        }
    }
    if head.starts_with(b"SQLite format 3\0") {
        let file = file.to_owned();
        return tokio::task::spawn_blocking(move || verify_sqlite(&file))
            .await
            .map_err(|_| StoreError::Closed)?;
    }
    if head.starts_with(b"PGDMP") {
        let url = pg_url.ok_or_else(|| {
            StoreError::Refused(
                "verifying a pg_dump archive restores it into a temporary database: set storage.url to a PostgreSQL server".into(),
            )
        })?;
        return verify_postgres(file, url).await;
    }
    Err(StoreError::Corrupt(format!(
        "{} is neither a SQLite database nor a pg_dump archive",
        file.display()
    )))
}

fn verify_sqlite(file: &Path) -> Result<Verified> {
    // A copy, so that checking never changes the backup.
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("verify.db");
    std::fs::copy(file, &copy)?;
    let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let problems: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if problems != ["ok"] {
        return Err(StoreError::Corrupt(format!(
            "{} fails the integrity check: {}",
            file.display(),
            problems.join("; ")
        )));
    }
    let count = |table: &str| -> Result<u64> {
        let n: i64 = conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
        Ok(n as u64)
    };
    Ok(Verified {
        kind: "sqlite",
        runs: count("runs")?,
        steps: count("steps")?,
        events: count("events")?,
    })
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

async fn verify_postgres(file: &Path, url: &str) -> Result<Verified> {
    use sqlx::Connection as _;
    let scratch = format!("flotilla_verify_{:x}", files::now_ms());
    let mut admin = sqlx::PgConnection::connect(url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {scratch}")))
        .execute(&mut admin)
        .await?;
    let target = with_database(url, &scratch);
    let checked = async {
        let (into, file) = (target.clone(), file.to_owned());
        tokio::task::spawn_blocking(move || {
            run_tool(
                "pg_restore",
                &[
                    "--no-owner",
                    "--exit-on-error",
                    "--dbname",
                    &into,
                    &file.display().to_string(),
                ],
            )
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        let mut conn = sqlx::PgConnection::connect(&target).await?;
        let (runs, steps, events): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM steps), (SELECT count(*) FROM events)",
        )
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok::<_, StoreError>(Verified {
            kind: "postgres",
            runs: runs as u64,
            steps: steps as u64,
            events: events as u64,
        })
    }
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    checked
}

fn refuse_non_empty() -> StoreError {
    StoreError::Refused("the target store already holds runs; pass --force to replace them".into())
}

fn sqlite_backup(db: &Path, dest: &Path) -> Result<()> {
    if !db.exists() {
        return Err(StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("database {} does not exist", db.display()),
        )));
    }
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_secs(10))?;
    let tmp = PathBuf::from(format!("{}.partial", dest.display()));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut out = Connection::open(&tmp)?;
        let backup = Backup::new(&src, &mut out)?;
        // One step: a single read transaction, so the copy is one consistent snapshot.
        match backup.step(-1)? {
            StepResult::Done => {}
            other => {
                return Err(StoreError::Refused(format!(
                    "backup did not complete: {other:?}"
                )));
            }
        }
    }
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

fn sqlite_restore(db: &Path, src: &Path, force: bool) -> Result<()> {
    let _lock = crate::sqlite::take_lock(db)?.map_err(|_| {
        StoreError::Locked(format!(
            "database {} is in use by a running flotilla; stop it before restoring",
            db.display()
        ))
    })?;
    let mut conn = Connection::open(db)?;
    let holds_runs: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'runs')",
            [],
            |r| r.get(0),
        )
        .and_then(|has| {
            if has {
                conn.query_row("SELECT EXISTS (SELECT 1 FROM runs)", [], |r| r.get(0))
            } else {
                Ok(false)
            }
        })?;
    if holds_runs && !force {
        return Err(refuse_non_empty());
    }
    conn.restore(
        rusqlite::MAIN_DB,
        src,
        None::<fn(rusqlite::backup::Progress)>,
    )?;
    Ok(())
}

/// Finds a PostgreSQL client tool on PATH or in Debian's versioned directories.
fn find_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    });
    on_path.or_else(|| {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        dirs.sort();
        dirs.into_iter()
            .rev()
            .map(|d| d.join("bin").join(name))
            .find(|c| c.is_file())
    })
}

fn run_tool(name: &str, args: &[&str]) -> Result<()> {
    let tool = find_tool(name).ok_or_else(|| {
        StoreError::Refused(format!("{name} is not installed; install PostgreSQL's client tools (Debian: apt-get install postgresql-client)"))
    })?;
    let out = Command::new(&tool).args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(StoreError::Refused(format!(
            "{name} failed: {}",
            flotilla_spec::redact::redact_url(stderr.trim())
        )))
    }
}
