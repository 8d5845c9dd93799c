//! Where a rollout's state, its measurements and decisions, and the commands sent to it
//! live: SQLite (shared with other processes: the controller and `flotilla rollout promote`
//! open the same file) or PostgreSQL.

use flotilla_spec::storage::Backend;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("rollout store: {0}")]
pub struct StoreError(pub String);

type Result<T> = std::result::Result<T, StoreError>;

/// A command from another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Go past the current pause (a `pause: {}` step, or a hold for a human).
    Promote,
    /// Roll back now.
    Abort,
    /// Hold where it is.
    Pause,
    /// Go on after `pause`.
    Resume,
}

impl Command {
    /// The command's name, as `flotilla rollout <name>` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Command::Promote => "promote",
            Command::Abort => "abort",
            Command::Pause => "pause",
            Command::Resume => "resume",
        }
    }

    /// The command of a name.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "promote" => Command::Promote,
            "abort" => Command::Abort,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            _ => return None,
        })
    }
}

/// One line of a rollout's history: a measurement or a decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Unix milliseconds.
    pub at: i64,
    /// `measurement` or `decision`.
    pub kind: String,
    /// The measurement or decision.
    pub body: Value,
}

/// Durable rollout state.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The saved state of a rollout (JSON).
    async fn load(&self, name: &str) -> Result<Option<Value>>;
    /// Saves the state.
    async fn save(&self, name: &str, state: &Value, at: i64) -> Result<()>;
    /// Appends to the history.
    async fn append(&self, name: &str, entry: &Entry) -> Result<()>;
    /// The last `limit` entries, oldest first.
    async fn history(&self, name: &str, limit: u32) -> Result<Vec<Entry>>;
    /// Queues a command for the controller.
    async fn send(&self, name: &str, command: Command, at: i64) -> Result<()>;
    /// Takes the queued commands, oldest first.
    async fn take(&self, name: &str) -> Result<Vec<Command>>;
    /// Forgets a rollout's state (a new `run` of a finished rollout starts over).
    async fn reset(&self, name: &str) -> Result<()>;
    /// The saved states of the `limit` most recently changed rollouts, newest first.
    async fn list(&self, limit: u32) -> Result<Vec<Value>>;
}

/// Opens the store at `url` (`sqlite://path` or `postgres://…`).
pub async fn open(url: &str) -> Result<Arc<dyn StateStore>> {
    match Backend::of(url) {
        Ok(Backend::Postgres) => Ok(Arc::new(PgStateStore::open(url).await?)),
        Ok(Backend::Sqlite(path)) => Ok(Arc::new(SqliteStateStore::open(path).await?)),
        Err(e) => Err(StoreError(format!(
            "unsupported store url `{}`: {e}",
            flotilla_spec::redact::redact_url(url)
        ))),
    }
}

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollout_state (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rollout_history (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS rollout_history_name ON rollout_history (name, id);
CREATE TABLE IF NOT EXISTS rollout_commands (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, command TEXT NOT NULL, at INTEGER NOT NULL);
";

/// SQLite, opened per process with WAL and a busy timeout so that several processes share it.
pub struct SqliteStateStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl SqliteStateStore {
    /// Opens (and creates) the file.
    pub async fn open(path: PathBuf) -> Result<Self> {
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<_> {
            let conn = rusqlite::Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(10))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SQLITE_SCHEMA)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError(e.to_string()))?
        .map_err(|e| StoreError(e.to_string()))?;
        Ok(SqliteStateStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError(e.to_string()))?
        .map_err(|e| StoreError(e.to_string()))
    }
}

fn corrupt(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

#[async_trait]
impl StateStore for SqliteStateStore {
    async fn load(&self, name: &str) -> Result<Option<Value>> {
        let name = name.to_owned();
        self.with(move |c| {
            let text: Option<String> = c
                .query_row(
                    "SELECT state FROM rollout_state WHERE name = ?1",
                    [&name],
                    |r| r.get(0),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })?;
            text.map(|t| serde_json::from_str(&t).map_err(corrupt))
                .transpose()
        })
        .await
    }

    async fn save(&self, name: &str, state: &Value, at: i64) -> Result<()> {
        let (name, text) = (name.to_owned(), state.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO rollout_state (name, state, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                rusqlite::params![name, text, at],
            )
            .map(|_| ())
        })
        .await
    }

    async fn append(&self, name: &str, entry: &Entry) -> Result<()> {
        let (name, e) = (name.to_owned(), entry.clone());
        self.with(move |c| {
            c.execute(
                "INSERT INTO rollout_history (name, at, kind, body) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![name, e.at, e.kind, e.body.to_string()],
            )
            .map(|_| ())
        })
        .await
    }

    async fn history(&self, name: &str, limit: u32) -> Result<Vec<Entry>> {
        let name = name.to_owned();
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT at, kind, body FROM rollout_history WHERE name = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let mut rows = st
                .query_map(rusqlite::params![name, limit], |r| {
                    let body: String = r.get(2)?;
                    Ok(Entry {
                        at: r.get(0)?,
                        kind: r.get(1)?,
                        body: serde_json::from_str(&body).map_err(corrupt)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        })
        .await
    }

    async fn send(&self, name: &str, command: Command, at: i64) -> Result<()> {
        let name = name.to_owned();
        self.with(move |c| {
            c.execute(
                "INSERT INTO rollout_commands (name, command, at) VALUES (?1, ?2, ?3)",
                rusqlite::params![name, command.name(), at],
            )
            .map(|_| ())
        })
        .await
    }

    async fn take(&self, name: &str) -> Result<Vec<Command>> {
        let name = name.to_owned();
        self.with(move |c| {
            // Immediate: a read that turns into a write fails at once (busy, without waiting)
            // when another process wrote in between; taking the write lock first waits.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let commands: Vec<String> = {
                let mut st =
                    tx.prepare("SELECT command FROM rollout_commands WHERE name = ?1 ORDER BY id")?;
                st.query_map([&name], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?
            };
            tx.execute("DELETE FROM rollout_commands WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(commands.iter().filter_map(|c| Command::parse(c)).collect())
        })
        .await
    }

    async fn reset(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.with(move |c| {
            c.execute("DELETE FROM rollout_state WHERE name = ?1", [&name])?;
            c.execute("DELETE FROM rollout_commands WHERE name = ?1", [&name])
                .map(|_| ())
        })
        .await
    }

    async fn list(&self, limit: u32) -> Result<Vec<Value>> {
        self.with(move |c| {
            let mut st = c.prepare(
                "SELECT state FROM rollout_state ORDER BY updated_at DESC, name LIMIT ?1",
            )?;
            let texts = st
                .query_map([limit], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            texts
                .iter()
                .map(|t| serde_json::from_str(t).map_err(corrupt))
                .collect()
        })
        .await
    }
}

const PG_SCHEMA: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS rollout_state (name TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rollout_history (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rollout_history_name ON rollout_history (name, id)",
    "CREATE TABLE IF NOT EXISTS rollout_commands (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, command TEXT NOT NULL, at BIGINT NOT NULL)",
];

/// PostgreSQL.
pub struct PgStateStore {
    pool: sqlx::PgPool,
}

fn pg(e: sqlx::Error) -> StoreError {
    StoreError(flotilla_spec::redact::redact_text(&e.to_string()))
}

impl PgStateStore {
    /// Connects and creates the tables.
    pub async fn open(url: &str) -> Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(pg)?;
        for statement in PG_SCHEMA {
            // Two processes creating the tables at once may race; the loser sees them.
            if let Err(e) = sqlx::query(statement).execute(&pool).await {
                tracing::debug!(error = %e, "rollout schema statement");
            }
        }
        Ok(PgStateStore { pool })
    }
}

#[async_trait]
impl StateStore for PgStateStore {
    async fn load(&self, name: &str) -> Result<Option<Value>> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT state FROM rollout_state WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg)?;
        row.map(|(t,)| serde_json::from_str(&t).map_err(|e| StoreError(e.to_string())))
            .transpose()
    }

    async fn save(&self, name: &str, state: &Value, at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollout_state (name, state, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
        )
        .bind(name)
        .bind(state.to_string())
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(pg)?;
        Ok(())
    }

    async fn append(&self, name: &str, entry: &Entry) -> Result<()> {
        sqlx::query("INSERT INTO rollout_history (name, at, kind, body) VALUES ($1, $2, $3, $4)")
            .bind(name)
            .bind(entry.at)
            .bind(&entry.kind)
            .bind(entry.body.to_string())
            .execute(&self.pool)
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn history(&self, name: &str, limit: u32) -> Result<Vec<Entry>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT at, kind, body FROM rollout_history WHERE name = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg)?;
        let mut out = rows
            .into_iter()
            .map(|(at, kind, body)| {
                Ok(Entry {
                    at,
                    kind,
                    body: serde_json::from_str(&body).map_err(|e| StoreError(e.to_string()))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    async fn send(&self, name: &str, command: Command, at: i64) -> Result<()> {
        sqlx::query("INSERT INTO rollout_commands (name, command, at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(command.name())
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn take(&self, name: &str) -> Result<Vec<Command>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "WITH taken AS (DELETE FROM rollout_commands WHERE name = $1 RETURNING id, command)
             SELECT command FROM taken ORDER BY id",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
        .map_err(pg)?;
        Ok(rows.iter().filter_map(|(c,)| Command::parse(c)).collect())
    }

    async fn reset(&self, name: &str) -> Result<()> {
        for statement in [
            "DELETE FROM rollout_state WHERE name = $1",
            "DELETE FROM rollout_commands WHERE name = $1",
        ] {
            sqlx::query(statement)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(pg)?;
        }
        Ok(())
    }

    async fn list(&self, limit: u32) -> Result<Vec<Value>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT state FROM rollout_state ORDER BY updated_at DESC, name LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(pg)?;
        rows.iter()
            .map(|(t,)| serde_json::from_str(t).map_err(|e| StoreError(e.to_string())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn list_shows_the_latest_changed_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStateStore::open(dir.path().join("r.db"))
            .await
            .unwrap();
        assert!(store.list(10).await.unwrap().is_empty());
        store
            .save("a", &serde_json::json!({"name": "a"}), 1)
            .await
            .unwrap();
        store
            .save("b", &serde_json::json!({"name": "b"}), 2)
            .await
            .unwrap();
        store
            .save("a", &serde_json::json!({"name": "a", "v": 2}), 3)
            .await
            .unwrap();
        let names: Vec<_> = store
            .list(10)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s["name"].clone())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.list(1).await.unwrap().len(), 1);
        assert_eq!(
            Command::parse(Command::Promote.name()),
            Some(Command::Promote)
        );
        assert_eq!(Command::parse("launch"), None);
    }
}
