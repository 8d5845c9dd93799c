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
