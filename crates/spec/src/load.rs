//! Layered loading: defaults < `flotilla.yaml` < `flotilla.<env>.yaml` < `FLOTILLA_*` < flags.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Diagnostic, Origin, Result, SpecError};
use crate::model::Config;
use crate::validate::validate;
use crate::yaml::{self, SpanIndex, child_key};

/// A configuration text and the name errors should use for it.
#[derive(Debug, Clone)]
pub struct Source {
    /// Shown in diagnostics (`flotilla.yaml`, `examples/demo.yaml (embedded)`).
    pub name: String,
    /// YAML text.
    pub text: String,
    /// Where the overlay `NAME.<env>.yaml` is looked for, when the source is a file.
    pub path: Option<PathBuf>,
}

impl Source {
    /// Reads a file.
    pub fn file(path: &Path) -> Result<Source> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecError::Invalid(vec![Diagnostic {
                origin: None,
                message: format!("cannot read config file {}: {e}", path.display()),
            }])
        })?;
        Ok(Source {
            name: path.display().to_string(),
            text,
            path: Some(path.to_owned()),
        })
    }
}

/// Everything that goes into an effective configuration.
pub struct Loader<'a> {
    /// The main file (or the embedded demo).
    pub base: Source,
    /// Environment name (`--env`, `FLOTILLA_ENV`): selects the overlay file.
    pub env_name: Option<String>,
    /// Looks up environment variables, for `${VAR}` and `FLOTILLA_*`.
    pub vars: &'a dyn Fn(&str) -> Option<String>,
    /// Every environment variable name, to find the `FLOTILLA_*` overrides.
    pub var_names: Vec<String>,
    /// Command-line overrides as (path, value, flag name).
    pub flags: Vec<(String, Value, String)>,
}

/// A loaded, valid configuration and the files it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// Files read, in layering order.
    pub files: Vec<String>,
    /// Things worth telling the operator that are not errors.
    pub warnings: Vec<String>,
    /// Where each setting came from, for diagnostics found after loading.
    pub index: SpanIndex,
}

/// Variables that are about flotilla itself rather than settings.
const NOT_SETTINGS: &[&str] = &["FLOTILLA_ENV", "FLOTILLA_CONFIG", "FLOTILLA_REVISION"];

impl Loader<'_> {
    /// Reads every layer, merges them, deserializes and validates.
    pub fn load(self) -> Result<Loaded> {
        let mut diags = Vec::new();
        let mut files = vec![self.base.name.clone()];
        let (mut value, mut index) = match yaml::parse(&self.base.name, &self.base.text, self.vars)
        {
            Ok(parsed) => parsed,
            Err(d) => return Err(SpecError::Invalid(d)),
        };
        if let (Some(env), Some(path)) = (&self.env_name, &self.base.path) {
            let overlay = overlay_path(path, env);
            if overlay.exists() {
                let src = Source::file(&overlay)?;
                files.push(src.name.clone());
                match yaml::parse(&src.name, &src.text, self.vars) {
                    Ok((v, idx)) => {
                        merge(&mut value, v);
                        index.extend(idx);
                    }
                    Err(d) => diags.extend(d),
                }
            }
        }
        let mut overrides: Vec<(String, Value, Origin)> = Vec::new();
        if let Some(url) = (self.vars)("DATABASE_URL") {
            overrides.push((
                "storage.url".into(),
                Value::String(url),
                Origin::Env("DATABASE_URL".into()),
            ));
        }
        let mut names: Vec<&String> = self
            .var_names
            .iter()
            .filter(|n| n.starts_with("FLOTILLA_"))
            .collect();
        names.sort();
        let mut ignored = Vec::new();
        for name in names {
            if NOT_SETTINGS.contains(&name.as_str()) {
                continue;
            }
            let Some(raw) = (self.vars)(name) else {
                continue;
            };
            let path = name["FLOTILLA_".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            // Only `FLOTILLA_<SECTION>__<FIELD>` sets something: other FLOTILLA_* variables
            // (the service links Kubernetes adds for a Service named `flotilla`) are not ours.
            let section = path.split('.').next().unwrap_or_default();
            if !path.contains('.') || !Config::SECTIONS.contains(&section) {
                ignored.push(name.clone());
                continue;
            }
            overrides.push((path, yaml::scalar_from_env(&raw), Origin::Env(name.clone())));
        }
        let warnings = if ignored.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "ignored environment variables that are not settings (settings are FLOTILLA_<SECTION>__<FIELD>): {}",
                ignored.join(", ")
            )]
        };
        for (path, v, flag) in self.flags {
            overrides.push((path, v, Origin::Flag(flag)));
        }
        let layered = value.clone();
        for (path, v, origin) in &overrides {
            set_path(&mut value, path, v.clone());
            index.insert(path.clone(), origin.clone());
        }
        if !diags.is_empty() {
            return Err(SpecError::Invalid(diags));
        }
        let mut config = deserialize(value, &index, &mut diags);
        if config.is_none() {
            // Deserializing stops at the first error: try each override on its own too, so
            // that every bad variable or flag is reported, not only the first.
            for (path, v, origin) in &overrides {
                let mut alone = layered.clone();
                set_path(&mut alone, path, v.clone());
                let mut found = Vec::new();
                deserialize(alone, &index, &mut found);
                for d in found {
                    let from_it = d.origin.as_ref() == Some(origin);
                    if from_it && !diags.iter().any(|e| e.message == d.message) {
                        diags.push(d);
                    }
                }
            }
        }
        if let Some(config) = &mut config {
            diags.extend(validate(config, &index));
            if config.flags.environment.is_none() {
                config.flags.environment = self.env_name.clone();
            }
        }
        match config {
            Some(config) if diags.is_empty() => Ok(Loaded {
                config,
                files,
                warnings,
                index,
            }),
            _ => Err(SpecError::Invalid(diags)),
        }
    }
}

/// `dir/flotilla.yaml` + `production` → `dir/flotilla.production.yaml`.
pub fn overlay_path(path: &Path, env: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("flotilla");
    let ext = path.extension().and_then(|s| s.to_str()).unwrap_or("yaml");
    path.with_file_name(format!("{stem}.{env}.{ext}"))
}

/// Deep merge: objects merge key by key, anything else is replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn set_path(root: &mut Value, path: &str, v: Value) {
    let mut cur = root;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let obj = cur.as_object_mut().expect("made an object above");
        if i == parts.len() - 1 {
            obj.insert((*part).to_owned(), v);
            return;
        }
        cur = obj
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// Deserializes section by section so that one bad agent does not hide another's problems.
fn deserialize(value: Value, index: &SpanIndex, diags: &mut Vec<Diagnostic>) -> Option<Config> {
    let Value::Object(mut root) = value else {
        diags.push(Diagnostic {
            origin: index.find("").cloned(),
            message: "the configuration must be a mapping".into(),
        });
        return None;
    };
    let mut ok = true;
    let mut agents = Map::new();
    let mut workflows = Map::new();
    for (section, target) in [("agents", &mut agents), ("workflows", &mut workflows)] {
        match root.remove(section) {
            Some(Value::Object(entries)) => {
                for (name, entry) in entries {
                    let path = child_key(section, &name);
                    let valid = match section {
                        "agents" => {
                            de::<crate::model::AgentConfig>(entry.clone(), &path, index, diags)
                                .is_some()
                        }
                        _ => de::<crate::model::Workflow>(entry.clone(), &path, index, diags)
                            .is_some(),
                    };
                    ok &= valid;
                    target.insert(name, entry);
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => {
                diags.push(Diagnostic {
                    origin: index.find(section).cloned(),
                    message: format!("`{section}` must be a mapping of names to definitions"),
                });
                ok = false;
            }
        }
    }
    let rest: Config = de(Value::Object(root), "", index, diags)?;
    if !ok {
        return None;
    }
    let agents = de(Value::Object(agents), "agents", index, diags)?;
    let workflows = de(Value::Object(workflows), "workflows", index, diags)?;
    Some(Config {
        agents,
        workflows,
        ..rest
    })
}

fn de<T: DeserializeOwned>(
    value: Value,
    path: &str,
    index: &SpanIndex,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let mut full = match inner.as_str() {
                "." => path.to_owned(),
                p if path.is_empty() => p.to_owned(),
                p if p.starts_with('[') => format!("{path}{p}"),
                p => format!("{path}.{p}"),
            };
            let message = e.inner().to_string();
            // Point an unknown field at the field itself rather than its parent.
            if let Some(field) = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
                && !full.ends_with(&format!(".{field}"))
                && full != field
            {
                full = child_key(&full, field);
            }
            let message = if full.is_empty() {
                message
            } else {
                format!("{full}: {message}")
            };
            diags.push(Diagnostic {
                origin: index.find(&full).cloned(),
                message,
            });
            None
        }
    }
}
