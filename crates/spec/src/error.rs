//! Diagnostics: problems found in a configuration, each pointing at `file:line:col`.

use std::fmt;

/// Where a value came from: a file position, an environment variable or a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A position in a YAML file (line and column are 1-based).
    File {
        file: String,
        line: usize,
        col: usize,
    },
    /// An environment variable override (`FLOTILLA_SERVER__LISTEN`).
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, line, col } => write!(f, "{file}:{line}:{col}"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is, when known.
    pub origin: Option<Origin>,
    /// What is wrong, in words a user can act on. Never contains a secret value.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Some(origin) => write!(f, "{origin}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The configuration is invalid; every problem found is listed.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
    /// A template or expression failed while rendering.
    #[error("template error: {0}")]
    Template(String),
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Result alias of this crate.
pub type Result<T, E = SpecError> = std::result::Result<T, E>;
