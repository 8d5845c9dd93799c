//! Flag files: the seed's readable `flags.yaml`, or an Unleash client-features document,
//! both compiled to Unleash's model so one engine evaluates them.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_spec::Diagnostic;
use flotilla_spec::yaml::{self, SpanIndex};
use serde::Deserialize;
use serde_json::{Value, json};
use unleash_yggdrasil::{ClientFeatures, UpdateMessage};

/// One flag as `flags.yaml` writes it (seed 000 and DESIGN §10).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFlag {
    /// Off means off for everyone.
    pub enabled: bool,
    /// Share of targeting keys that get it, 0 to 100 (default 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
    /// Only on in this environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// Context field hashed for the percentage (default `user_id`, then `session_id`).
    #[serde(default)]
    pub stickiness: Option<String>,
    /// All must hold.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// What it is for.
    #[serde(default)]
    pub description: Option<String>,
}

fn hundred() -> f64 {
    100.0
}

/// A condition: the seed's `{type, value, operator}` (a `label` type compares `key=value`)
/// or Unleash's `{field, operator, values}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Seed form: `label` or a context field name.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Unleash form: the context field.
    #[serde(default)]
    pub field: Option<String>,
    /// `equals`, `not_equals`, or an Unleash operator (`IN`, `STR_CONTAINS`, `NUM_GT`, …).
    pub operator: String,
    /// One value.
    #[serde(default)]
    pub value: Option<String>,
    /// Several values (`IN`, `NOT_IN`, `STR_*`).
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// Negates the result.
    #[serde(default)]
    pub inverted: bool,
    /// Compare strings ignoring case.
    #[serde(default)]
    pub case_insensitive: bool,
}

const UNLEASH_OPERATORS: [&str; 19] = [
    "IN",
    "NOT_IN",
    "STR_ENDS_WITH",
    "STR_STARTS_WITH",
    "STR_CONTAINS",
    "NUM_EQ",
    "NUM_GT",
    "NUM_GTE",
    "NUM_LT",
    "NUM_LTE",
    "DATE_AFTER",
    "DATE_BEFORE",
    "SEMVER_EQ",
    "SEMVER_GT",
    "SEMVER_GTE",
    "SEMVER_LT",
    "SEMVER_LTE",
    "REGEX",
    "IN_CIDR",
];

/// The Unleash context field a flotilla context name stands for.
pub fn unleash_field(name: &str) -> &str {
    match name {
        "user_id" | "userId" | "targetingKey" => "userId",
        "session_id" | "sessionId" => "sessionId",
        "remote_address" | "remoteAddress" => "remoteAddress",
        "app_name" | "appName" => "appName",
        "current_time" | "currentTime" => "currentTime",
        other => other,
    }
}

impl Condition {
    /// The condition in words: `plan equals pro`, `user_id IN a, b`.
    pub fn describe(&self) -> String {
        let subject = self
            .field
            .as_deref()
            .or(self.kind.as_deref())
            .unwrap_or("?");
        let value = match (&self.values, &self.value) {
            (Some(vs), _) => vs.join(", "),
            (None, Some(v)) => v.clone(),
            (None, None) => String::new(),
        };
        format!("{subject} {} {value}", self.operator)
            .trim_end()
            .to_owned()
    }
    fn constraint(&self) -> Result<Value, String> {
        let (field, default_value) = match (&self.kind, &self.field) {
            (Some(_), Some(_)) => return Err("give `type` or `field`, not both".into()),
            (None, None) => return Err("a condition needs `type` (seed form) or `field`".into()),
            (Some(kind), None) if kind == "label" => {
                let v = self
                    .value
                    .as_deref()
                    .ok_or("a `label` condition needs `value: key=value`")?;
                let (k, v) = v
                    .split_once('=')
                    .ok_or_else(|| format!("label `{v}` is not `key=value`"))?;
                (k.trim().to_owned(), Some(v.trim().to_owned()))
            }
            (Some(kind), None) => (kind.clone(), self.value.clone()),
            (None, Some(field)) => (field.clone(), self.value.clone()),
        };
        let op = self.operator.to_ascii_uppercase();
        let (operator, inverted) = match op.as_str() {
            "EQUALS" | "EQ" | "==" => ("IN".to_owned(), self.inverted),
            "NOT_EQUALS" | "NE" | "!=" => ("IN".to_owned(), !self.inverted),
            o if UNLEASH_OPERATORS.contains(&o) => (o.to_owned(), self.inverted),
            _ => {
                return Err(format!(
                    "unknown operator `{}` (equals, not_equals, {})",
                    self.operator,
                    UNLEASH_OPERATORS.join(", ")
                ));
            }
        };
        let mut c = json!({
            "contextName": unleash_field(&field),
            "operator": operator,
            "inverted": inverted,
            "caseInsensitive": self.case_insensitive,
        });
        let single = matches!(
            operator.as_str(),
            "NUM_EQ"
                | "NUM_GT"
                | "NUM_GTE"
                | "NUM_LT"
                | "NUM_LTE"
                | "DATE_AFTER"
                | "DATE_BEFORE"
                | "SEMVER_EQ"
                | "SEMVER_GT"
                | "SEMVER_GTE"
                | "SEMVER_LT"
                | "SEMVER_LTE"
                | "REGEX"
        );
        match (&self.values, default_value) {
            (Some(vs), _) if !single => c["values"] = json!(vs),
            (_, Some(v)) if single => c["value"] = json!(v),
            (None, Some(v)) => c["values"] = json!([v]),
            (Some(vs), None) if single && vs.len() == 1 => c["value"] = json!(vs[0]),
            _ => return Err(format!("operator `{}` needs a value", self.operator)),
        }
        Ok(c)
    }
}

/// How a flag decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// On or off for everyone.
    Static,
    /// Depends on the context (conditions, strategies).
    Targeted,
    /// A percentage of targeting keys.
    Split,
}

/// What `flotilla flags list` and `GET /api/v1/flags` show of a flag.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FlagInfo {
    /// Name.
    pub name: String,
    /// Switched on at all.
    pub enabled: bool,
    /// Rollout percentage, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percentage: Option<f64>,
    /// Environment it is limited to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Conditions (seed form) or strategies (Unleash form), counted.
    pub rules: usize,
    /// Each rule in words (`plan equals pro`, `strategy flexibleRollout, 2 constraints`).
    #[serde(skip)]
    pub rule_text: Vec<String>,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A parsed flag file.
pub struct Parsed {
    /// The flags in Unleash's model.
    pub state: UpdateMessage,
    /// How each flag decides.
    pub kinds: BTreeMap<String, Kind>,
    /// Seed-format percentage flags with the default stickiness: they hash `user_id` or
    /// `session_id`, and Unleash draws at random when both are missing.
    pub keyed: BTreeSet<String>,
    /// For listings.
    pub info: Vec<FlagInfo>,
}

fn diag(file: &str, index: &SpanIndex, path: &str, message: String) -> Diagnostic {
    index.diagnostic(file, path, message)
}

/// Parses a flag file: the seed's map of flags, or an Unleash document (an object with
/// `features`, or a delta with `events`). Every problem is reported with its position.
pub fn parse(file: &str, text: &str) -> Result<Parsed, Vec<Diagnostic>> {
    let lookup = |name: &str| std::env::var(name).ok();
    let (value, index) = yaml::parse(file, text, &lookup)?;
    let Value::Object(map) = &value else {
        return Err(vec![diag(
            file,
            &index,
            "",
            "a flag file is a map of flag names to flags, or an Unleash features document".into(),
        )]);
    };
    if map.contains_key("features") || map.contains_key("events") {
        return unleash(file, &index, value);
    }
    let mut features = Vec::new();
    let mut kinds = BTreeMap::new();
    let mut keyed = BTreeSet::new();
    let mut info = Vec::new();
    let mut problems = Vec::new();
    for (name, body) in map {
        let flag: SeedFlag = match serde_path_to_error::deserialize(body) {
            Ok(f) => f,
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." {
                    name.clone()
                } else {
                    format!("{name}.{inner}")
                };
                problems.push(diag(file, &index, &path, e.into_inner().to_string()));
                continue;
            }
        };
        if !(0.0..=100.0).contains(&flag.percentage) {
            problems.push(diag(
                file,
                &index,
                &format!("{name}.percentage"),
                format!(
                    "percentage must be between 0 and 100, got {}",
                    flag.percentage
                ),
            ));
            continue;
        }
        let mut constraints = Vec::new();
        for (i, c) in flag.conditions.iter().enumerate() {
            match c.constraint() {
                Ok(c) => constraints.push(c),
                Err(m) => problems.push(diag(file, &index, &format!("{name}.conditions[{i}]"), m)),
            }
        }
        if let Some(env) = &flag.environment {
            constraints
                .push(json!({"contextName": "environment", "operator": "IN", "values": [env]}));
        }
        let kind = if flag.percentage < 100.0 {
            Kind::Split
        } else if constraints.is_empty() {
            Kind::Static
        } else {
            Kind::Targeted
        };
        let rollout = if flag.percentage.fract() == 0.0 {
            format!("{}", flag.percentage as u32)
        } else {
            flag.percentage.to_string()
        };
        let stickiness = flag
            .stickiness
            .as_deref()
            .map_or("default", unleash_field)
            .to_owned();
        features.push(json!({
            "name": name,
            "enabled": flag.enabled,
            "description": flag.description,
            "strategies": [{
                "name": "flexibleRollout",
                "parameters": {"rollout": rollout, "stickiness": stickiness, "groupId": name},
                "constraints": constraints,
            }],
        }));
        if kind == Kind::Split && flag.stickiness.is_none() {
            keyed.insert(name.clone());
        }
        kinds.insert(name.clone(), kind);
        info.push(FlagInfo {
            name: name.clone(),
            enabled: flag.enabled,
            percentage: Some(flag.percentage),
            environment: flag.environment.clone(),
            rules: flag.conditions.len(),
            rule_text: flag.conditions.iter().map(Condition::describe).collect(),
            description: flag.description.clone(),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let features: ClientFeatures =
        serde_json::from_value(json!({"version": 2, "features": features}))
            .map_err(|e| vec![diag(file, &index, "", e.to_string())])?;
    Ok(Parsed {
        state: UpdateMessage::FullResponse(features),
        kinds,
        keyed,
        info,
    })
}

fn unleash(file: &str, index: &SpanIndex, value: Value) -> Result<Parsed, Vec<Diagnostic>> {
    let state: UpdateMessage = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        vec![diag(
            file,
            index,
            &path,
            format!("not an Unleash features document: {}", e.into_inner()),
        )]
    })?;
    let mut kinds = BTreeMap::new();
    let mut info = Vec::new();
    if let UpdateMessage::FullResponse(features) = &state {
        for f in &features.features {
            let strategies = f.strategies.as_deref().unwrap_or_default();
            let split = strategies.iter().any(|s| {
                let p = s.parameters.as_ref();
                let pct = p
                    .and_then(|p| p.get("rollout").or_else(|| p.get("percentage")))
                    .and_then(|r| r.parse::<f64>().ok());
                pct.is_some_and(|r| r < 100.0)
            });
            let plain = strategies.iter().all(|s| {
                s.name == "default"
                    && s.constraints.as_ref().is_none_or(Vec::is_empty)
                    && s.segments.as_ref().is_none_or(Vec::is_empty)
            }) && f.dependencies.as_ref().is_none_or(Vec::is_empty);
            let kind = if split {
                Kind::Split
            } else if plain {
                Kind::Static
            } else {
                Kind::Targeted
            };
            kinds.insert(f.name.clone(), kind);
            info.push(FlagInfo {
                name: f.name.clone(),
                enabled: f.enabled,
                percentage: None,
                environment: None,
                rules: strategies.len(),
                rule_text: strategies
                    .iter()
                    .map(|s| {
                        let n = s.constraints.as_ref().map_or(0, Vec::len);
                        format!("strategy {}, {n} constraint(s)", s.name)
                    })
                    .collect(),
                description: f.description.clone(),
            });
        }
    }
    Ok(Parsed {
        state,
        kinds,
        keyed: BTreeSet::new(),
        info,
    })
}
