//! flotilla-spec: the configuration and workflow model.
//!
//! It owns everything between a YAML file and a valid [`Config`]: parsing with positions,
//! `${VAR}` interpolation, environment overlays and `FLOTILLA_*` overrides, semantic
//! validation with compiler-style diagnostics, secret redaction, and the one expression
//! language (minijinja) used by step inputs, `when:` conditions and outputs.
//!
//! ```
//! use flotilla_spec::{Loader, Source};
//! let text = "agents: { a: { kind: builtin, builtin: echo } }\n\
//!             workflows: { w: { steps: [ { id: s, agent: a } ] } }\n";
//! let loaded = Loader {
//!     base: Source { name: "inline.yaml".into(), text: text.into(), path: None },
//!     env_name: None,
//!     vars: &|_| None,
//!     var_names: vec![],
//!     flags: vec![],
//! }
//! .load()
//! .unwrap();
//! assert_eq!(loaded.config.workflows["w"].steps[0].id, "s");
//! ```

mod definition;
mod deploy;
mod error;
mod interpolate;
mod load;
mod model;
pub mod redact;
pub mod schedule;
pub mod secret;
pub mod slo;
pub mod storage;
pub mod template;
mod units;
mod validate;
pub mod whole;
pub mod yaml;

pub use definition::{Definition, DefinitionDiff};
pub use deploy::*;
pub use error::{Diagnostic, Origin, Result, SpecError};
pub use interpolate::{InterpolationError, interpolate};
pub use load::{Loaded, Loader, Source, overlay_path};
pub use model::*;
pub use units::{ByteSize, Dur};
pub use validate::{check_flag_references, find_cycle, suggest};
