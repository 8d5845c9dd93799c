//! flotilla-flags: feature flags.
//!
//! A flag file is the seed's readable `flags.yaml` (`enabled`, `percentage`,
//! `environment`, `stickiness`, `conditions`) or an Unleash client-features document. Both
//! compile to Unleash's model and are evaluated by Unleash's own engine
//! (`unleash-yggdrasil`), so percentages are sticky and well distributed
//! (`murmur3("<flag>:<key>") % 100 + 1 <= percentage`) and conditions have Unleash's
//! operators.
//!
//! [`Flags`] holds the live set: [`Flags::watch`] reloads the file within a second of a
//! change (including a ConfigMap's atomic symlink swap); a file that does not parse is
//! rejected whole and the last good flags stay live.
//!
//! ```
//! use flotilla_flags::{Context, FlagSet};
//! let flags = FlagSet::parse("flags.yaml", "beta:\n  enabled: true\n  percentage: 100\n", "production").unwrap();
//! let ctx = Context::from_pairs([("user_id", "42")]);
//! assert!(flags.evaluate("beta", &ctx).unwrap().enabled);
//! assert!(flags.evaluate("missing", &ctx).is_none());
//! ```

mod parse;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use flotilla_spec::Diagnostic;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sha2::{Digest, Sha256};
use unleash_yggdrasil::EngineState;

pub use parse::{Condition, FlagInfo, Kind, SeedFlag, unleash_field};
pub use watch::watch;

/// Why a flag has its value (OpenFeature's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The same for everyone.
    Static,
    /// Conditions matched.
    TargetingMatch,
    /// The key fell in the rollout percentage.
    Split,
    /// The flag is switched off.
    Disabled,
    /// Nothing matched: the default (off).
    Default,
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// On or off.
    pub enabled: bool,
    /// The variant, when the flag has variants and is on.
    pub variant: Option<String>,
    /// Why.
    pub reason: Reason,
}

/// Who is asking: `user_id`, `session_id`, `remote_address`, `environment` and any other
/// fields (properties).
#[derive(Debug, Clone, Default)]
pub struct Context {
    inner: unleash_yggdrasil::Context,
}

impl Context {
    /// A context from `name = value` pairs; well-known names (`user_id`, `targetingKey`,
    /// `session_id`, `remote_address`, `environment`, `app_name`, `current_time`) fill
    /// Unleash's fields, the rest are properties.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut c = unleash_yggdrasil::Context::default();
        for (k, v) in pairs {
            let v = v.to_owned();
            match unleash_field(k) {
                "userId" => c.user_id = Some(v),
                "sessionId" => c.session_id = Some(v),
                "remoteAddress" => c.remote_address = Some(v),
                "appName" => c.app_name = Some(v),
                "currentTime" => c.current_time = Some(v),
                "environment" => c.environment = Some(v),
                other => {
                    c.properties
                        .get_or_insert_with(HashMap::new)
                        .insert(other.to_owned(), v);
                }
            }
        }
        Context { inner: c }
    }

    /// A context from JSON fields: strings as they are, numbers and booleans as text, other
    /// values ignored.
    pub fn from_json(fields: &serde_json::Map<String, serde_json::Value>) -> Self {
        let texts: Vec<(String, String)> = fields
            .iter()
            .filter_map(|(k, v)| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return None,
                };
                Some((k.clone(), text))
            })
            .collect();
        Self::from_pairs(texts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// A context in Unleash's JSON form (`userId`, `sessionId`, `properties`, …).
    pub fn from_unleash(value: serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(Context {
            inner: serde_json::from_value(value)?,
        })
    }

    /// Whether a targeting key (`user_id`, `session_id`) is present.
    pub fn has_targeting_key(&self) -> bool {
        self.inner.user_id.is_some() || self.inner.session_id.is_some()
    }

    /// Sets the environment unless the caller gave one.
    pub fn default_environment(mut self, env: &str) -> Self {
        if self.inner.environment.is_none() {
            self.inner.environment = Some(env.to_owned());
        }
        self
    }
}

/// A parsed, immutable set of flags.
pub struct FlagSet {
    engine: EngineState,
    /// How each flag decides, and whether it is switched on at all.
    kinds: HashMap<String, (Kind, bool)>,
    /// Percentage flags that hash `user_id` or `session_id` (see [`parse::Parsed::keyed`]).
    keyed: std::collections::HashSet<String>,
    info: Vec<FlagInfo>,
    environment: String,
    /// SHA-256 of the file's bytes: changes exactly when the flags may.
    pub digest: String,
}

impl std::fmt::Debug for FlagSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagSet")
            .field("flags", &self.kinds.len())
            .field("digest", &self.digest)
            .finish()
    }
}

impl FlagSet {
    /// No flags at all.
    pub fn empty(environment: &str) -> Self {
        FlagSet {
            engine: EngineState::default(),
            kinds: HashMap::new(),
            keyed: Default::default(),
            info: Vec::new(),
            environment: environment.to_owned(),
            digest: String::new(),
        }
    }

    /// Parses a flag file (`file` names it in errors). Evaluations without an
    /// `environment` in their context use `environment`.
    pub fn parse(file: &str, text: &str, environment: &str) -> Result<Self, Vec<Diagnostic>> {
        let parsed = parse::parse(file, text)?;
        let engine = EngineState::default();
        engine.take_state(parsed.state);
        let kinds = parsed
            .info
            .iter()
            .map(|f| {
                let kind = parsed.kinds.get(&f.name).copied().unwrap_or(Kind::Targeted);
                (f.name.clone(), (kind, f.enabled))
            })
            .collect();
        Ok(FlagSet {
            engine,
            kinds,
            keyed: parsed.keyed.into_iter().collect(),
            info: parsed.info,
            environment: environment.to_owned(),
            digest: hex::encode(Sha256::digest(text.as_bytes())),
        })
    }

    /// Evaluates `name` for `ctx`; `None` when there is no such flag.
    pub fn evaluate(&self, name: &str, ctx: &Context) -> Option<Evaluation> {
        let (kind, on_at_all) = self
            .kinds
            .get(name)
            .copied()
            .unwrap_or((Kind::Targeted, true));
        let with_env;
        let c = if ctx.inner.environment.is_none() && !self.environment.is_empty() {
            let mut c = ctx.inner.clone();
            c.environment = Some(self.environment.clone());
            with_env = c;
            &with_env
        } else {
            &ctx.inner
        };
        // A percentage rollout hashes a targeting key; without one, Unleash would draw at
        // random on each call. The answer is off instead, the same every time (OFREP
        // refuses such a request with TARGETING_KEY_MISSING before it gets here).
        if on_at_all && self.keyed.contains(name) && !ctx.has_targeting_key() {
            self.engine.resolve(name, c, &None)?;
            return Some(Evaluation {
                enabled: false,
                variant: None,
                reason: Reason::Default,
            });
        }
        let resolved = self.engine.resolve(name, c, &None)?;
        let enabled = resolved.enabled;
        let variant = resolved
            .variant
            .enabled
            .then(|| resolved.variant.name.clone());
        let reason = match (on_at_all, kind, enabled) {
            (false, _, _) => Reason::Disabled,
            (true, Kind::Static, _) => Reason::Static,
            (true, Kind::Split, true) => Reason::Split,
            (true, Kind::Targeted, true) => Reason::TargetingMatch,
            (true, _, false) => Reason::Default,
        };
        Some(Evaluation {
            enabled,
            variant,
            reason,
        })
    }

    /// Whether `name` is on for `ctx` (off when it does not exist).
    pub fn is_enabled(&self, name: &str, ctx: &Context) -> bool {
        self.evaluate(name, ctx).is_some_and(|e| e.enabled)
    }

    /// Every flag, by name.
    pub fn list(&self) -> &[FlagInfo] {
        &self.info
    }

    /// Whether the flag exists.
    pub fn contains(&self, name: &str) -> bool {
        self.kinds.contains_key(name)
    }

    /// Whether the flag hashes a targeting key (a percentage rollout).
    pub fn needs_targeting_key(&self, name: &str) -> bool {
        self.kinds.get(name).is_some_and(|(k, _)| *k == Kind::Split)
    }

    /// Unleash's variant for `name`, for the conformance suite's variant tests.
    pub fn variant(
        &self,
        name: &str,
        ctx: &Context,
    ) -> (bool, String, bool, Option<serde_json::Value>) {
        let v = self.engine.get_variant(name, &ctx.inner, &None);
        let payload = v
            .payload
            .map(|p| serde_json::json!({"type": p.payload_type, "value": p.value}));
        (v.enabled, v.name, v.feature_enabled, payload)
    }

    /// Unleash's evaluation of `name`, for the conformance suite.
    pub fn unleash_enabled(&self, name: &str, ctx: &Context) -> bool {
        self.engine.is_enabled(name, &ctx.inner, &None)
    }
}

/// `flag`, `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagLabels {
    /// Flag name.
    pub flag: String,
    /// `true`, `false` or `unknown`.
    pub result: String,
}

/// The flag metrics, registered by whoever owns the registry.
#[derive(Clone, Debug, Default)]
pub struct FlagMetrics {
    /// `feature_flag_evaluations_total{flag,result}`.
    pub evaluations: Family<FlagLabels, Counter>,
    /// `flag_reload_errors_total`.
    pub reload_errors: Counter,
}

/// The live flags: swapped whole on reload, read without locks.
#[derive(Clone)]
pub struct Flags {
    current: Arc<ArcSwap<FlagSet>>,
    metrics: FlagMetrics,
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Flags").field(&self.current.load()).finish()
    }
}

impl Flags {
    /// Live flags starting from `set`, counting into `metrics`.
    pub fn new(set: FlagSet, metrics: FlagMetrics) -> Self {
        Flags {
            current: Arc::new(ArcSwap::from_pointee(set)),
            metrics,
        }
    }

    /// The flags now.
    pub fn snapshot(&self) -> Arc<FlagSet> {
        self.current.load_full()
    }

    /// Replaces the flags.
    pub fn replace(&self, set: FlagSet) {
        self.current.store(Arc::new(set));
    }

    /// Evaluates and counts in `feature_flag_evaluations_total`.
    pub fn evaluate(&self, name: &str, ctx: &Context) -> Option<Evaluation> {
        let e = self.current.load().evaluate(name, ctx);
        self.record(name, e.as_ref());
        e
    }

    /// Counts an evaluation made on a [`FlagSet`] taken with [`Flags::snapshot`].
    pub fn record(&self, name: &str, e: Option<&Evaluation>) {
        // Unknown names share one series: callers must not grow the label set.
        let (flag, result) = match e {
            Some(e) => (name, if e.enabled { "true" } else { "false" }),
            None => ("_unknown", "unknown"),
        };
        self.metrics
            .evaluations
            .get_or_create(&FlagLabels {
                flag: flag.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// The metrics.
    pub fn metrics(&self) -> &FlagMetrics {
        &self.metrics
    }
}
