//! Which database a `storage.url` names: decided here once, for every crate.

use std::path::PathBuf;

/// The database behind a `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH` (or `sqlite:PATH`): one process owns the file.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`: shared by replicas.
    Postgres,
}

impl Backend {
    /// Reads a storage URL; the error says what is accepted.
    pub fn of(url: &str) -> Result<Backend, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Backend::Postgres);
        }
        let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        else {
            return Err("storage.url must start with sqlite:// or postgres://".into());
        };
        let path = rest.split('?').next().unwrap_or(rest);
        if path.is_empty() || path.starts_with(":memory:") || path == "memory:" {
            return Err(
                "in-memory databases are not durable; give a file path such as sqlite://flotilla.db"
                    .into(),
            );
        }
        Ok(Backend::Sqlite(PathBuf::from(path)))
    }

    /// Whether several processes share the store (so runs are held under leases).
    pub fn is_shared(&self) -> bool {
        matches!(self, Backend::Postgres)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            Backend::of("sqlite://flotilla.db"),
            Ok(Backend::Sqlite("flotilla.db".into()))
        );
        assert_eq!(
            Backend::of("sqlite:/var/lib/f.db?mode=rwc"),
            Ok(Backend::Sqlite("/var/lib/f.db".into()))
        );
        assert_eq!(Backend::of("postgres://u@h/db"), Ok(Backend::Postgres));
        assert_eq!(Backend::of("postgresql://u@h/db"), Ok(Backend::Postgres));
        assert!(
            Backend::of("sqlite::memory:")
                .unwrap_err()
                .contains("not durable")
        );
        assert!(
            Backend::of("mysql://h/db")
                .unwrap_err()
                .contains("sqlite://")
        );
    }
}
