//! Semantic checks that types alone cannot express: references, cycles, templates.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::error::{Diagnostic, Origin};
use crate::model::{AgentConfig, AgentKind, Budget, BuiltinKind, Config, Workflow};
use crate::template;
use crate::yaml::{SpanIndex, child_index, child_key};

mod references;
use references::check_references;
pub use references::{check_flag_references, suggest};

struct Checker<'a> {
    index: &'a SpanIndex,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let origin: Option<Origin> = self.index.find(path).cloned();
        self.diags.push(Diagnostic {
            origin,
            message: message.into(),
        });
    }
}

/// Every problem of a deserialized configuration, in source order of discovery.
pub fn validate(config: &Config, index: &SpanIndex) -> Vec<Diagnostic> {
    let mut c = Checker {
        index,
        diags: Vec::new(),
    };
    check_observability(&mut c, config);
    check_deploy(&mut c, config);
    if config.version != 1 {
        c.err(
            "version",
            format!(
                "unsupported config version {} (only 1 exists)",
                config.version
            ),
        );
    }
    if config
        .server
        .listen
        .parse::<std::net::SocketAddr>()
        .is_err()
    {
        c.err(
            "server.listen",
            format!(
                "`{}` is not an address like 127.0.0.1:8080",
                config.server.listen
            ),
        );
    }
    if config.server.max_connections == 0 {
        c.err(
            "server.max_connections",
            "server.max_connections must be at least 1",
        );
    }
    if config.server.header_read_timeout.0.is_zero() {
        c.err("server.header_read_timeout", "must be longer than 0s");
    }
    if config.server.idle_timeout.0.is_zero() {
        c.err("server.idle_timeout", "must be longer than 0s");
    }
    if config.server.request_timeout.0.is_zero() {
        c.err("server.request_timeout", "must be longer than 0s");
    }
    if config.engine.claim_interval.0 * 2 >= config.engine.lease.0 {
        c.err("engine.lease", "engine.lease must be more than twice engine.claim_interval, or leases lapse between renewals");
    }
    let claim = &config.engine.claim_versions;
    if claim != "same" && semver::VersionReq::parse(claim).is_err() {
        c.err(
            "engine.claim_versions",
            format!("`{claim}` is neither `same` nor a semver range such as `>=1.4.0, <2`"),
        );
    }
    if config.engine.max_concurrency == 0 {
        c.err("engine.max_concurrency", "must be at least 1");
    }
    if let Err(e) = crate::storage::Backend::of(&config.storage.url) {
        c.err("storage.url", &e);
    }
    if let Some(schedule) = &config.backup.schedule
        && let Err(e) = crate::schedule::Schedule::parse(schedule)
    {
        c.err("backup.schedule", &e);
    }
    if config.backup.dir.as_os_str().is_empty() {
        c.err("backup.dir", "must name a directory");
    }
    let retention = &config.storage.retention;
    for name in retention.workflows.keys() {
        if !config.workflows.contains_key(name) {
            c.err(
                &format!("storage.retention.workflows.{name}"),
                format!(
                    "no workflow named `{name}`{}",
                    references::suggest(name, config.workflows.keys().map(String::as_str))
                ),
            );
        }
    }
    if !(1..=10_000).contains(&retention.batch) {
        c.err(
            "storage.retention.batch",
            "must be between 1 and 10000 runs",
        );
    }
    if retention.interval.0 < std::time::Duration::from_millis(100) {
        c.err("storage.retention.interval", "must be at least 100ms");
    }
    check_auth(&mut c, config);
    for (name, agent) in &config.agents {
        check_agent(&mut c, config, name, agent);
    }
    let mut capabilities: BTreeSet<&str> = BTreeSet::new();
    for agent in config.agents.values() {
        capabilities.extend(agent.capabilities.iter().map(String::as_str));
    }
    for (name, wf) in &config.workflows {
        check_workflow(&mut c, config, &capabilities, name, wf);
    }
    c.diags
}

fn check_agent(c: &mut Checker<'_>, config: &Config, name: &str, a: &AgentConfig) {
    let path = child_key("agents", name);
    if !valid_name(name) {
        c.err(
            &path,
            format!("agent name `{name}` may only use letters, digits, `_`, `-` and `.`"),
        );
    }
    let field = |f: &str| child_key(&path, f);
    let mut stray = Vec::new();
    let kind_name = match a.kind {
        AgentKind::Builtin => "builtin",
        AgentKind::Http => "http",
        AgentKind::Command => "command",
        AgentKind::Llm => "llm",
    };
    let owned: [(&str, bool, AgentKind); 14] = [
        ("builtin", a.builtin.is_some(), AgentKind::Builtin),
        ("template", a.template.is_some(), AgentKind::Builtin),
        ("format", a.format.is_some(), AgentKind::Builtin),
        ("delay", a.delay.is_some(), AgentKind::Builtin),
        ("failure_rate", a.failure_rate.is_some(), AgentKind::Builtin),
        ("endpoints", !a.endpoints.is_empty(), AgentKind::Http),
        ("health_path", a.health_path.is_some(), AgentKind::Http),
        ("headers", !a.headers.is_empty(), AgentKind::Http),
        ("command", !a.command.is_empty(), AgentKind::Command),
        ("working_dir", a.working_dir.is_some(), AgentKind::Command),
        ("provider", a.provider.is_some(), AgentKind::Llm),
        ("model", a.model.is_some(), AgentKind::Llm),
        ("system", a.system.is_some(), AgentKind::Llm),
        (
            "response_schema",
            a.response_schema.is_some(),
            AgentKind::Llm,
        ),
    ];
    for (f, set, kind) in owned {
        if set && kind != a.kind {
            stray.push(f);
        }
    }
    for f in stray {
        c.err(
            &field(f),
            format!("agent `{name}`: `{f}` does not apply to kind {kind_name}"),
        );
    }
    match a.kind {
        AgentKind::Builtin => match a.builtin {
            None => c.err(
                &field("kind"),
                format!("agent `{name}`: kind builtin needs `builtin: echo|template|sleep|fail`"),
            ),
            Some(BuiltinKind::Template) => match &a.template {
                None => c.err(
                    &field("builtin"),
                    format!("agent `{name}`: builtin template needs `template:`"),
                ),
                Some(t) => {
                    if let Err(e) = template::check_template(t) {
                        c.err(
                            &field("template"),
                            format!("agent `{name}`: invalid template: {e}"),
                        );
                    }
                }
            },
            Some(_) => {}
        },
        AgentKind::Http => {
            for (i, ep) in a.endpoints.iter().enumerate() {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    c.err(
                        &child_index(&field("endpoints"), i),
                        format!(
                            "agent `{name}`: endpoint `{ep}` must be an http:// or https:// URL"
                        ),
                    );
                }
            }
        }
        AgentKind::Command => {
            if a.command.is_empty() {
                c.err(
                    &field("kind"),
                    format!("agent `{name}`: kind command needs `command: [program, args…]`"),
                );
            }
        }
        AgentKind::Llm => {
            match &a.provider {
                None => c.err(
                    &field("kind"),
                    format!("agent `{name}`: kind llm needs `provider:`"),
                ),
                Some(p) if !config.llm.providers.contains_key(p) => c.err(
                    &field("provider"),
                    format!(
                        "agent `{name}`: unknown provider `{p}` (known: {})",
                        known(config.llm.providers.keys())
                    ),
                ),
                Some(_) => {}
            }
            if a.model.is_none() {
                c.err(
                    &field("kind"),
                    format!("agent `{name}`: kind llm needs `model:`"),
                );
            }
            if let Some(schema) = &a.response_schema
                && let Err(e) = jsonschema::validator_for(schema)
            {
                c.err(
                    &field("response_schema"),
                    format!("agent `{name}`: invalid JSON Schema: {e}"),
                );
            }
        }
    }
    if let Some(rate) = a.failure_rate
        && !(0.0..=1.0).contains(&rate)
    {
        c.err(
            &field("failure_rate"),
            "failure_rate must be between 0 and 1",
        );
    }
    if let Some(b) = &a.budget {
        check_budget(c, &field("budget"), b);
    }
    if a.max_concurrency == Some(0) {
        c.err(
            &field("max_concurrency"),
            "max_concurrency must be at least 1",
        );
    }
    if a.circuit_breaker.failure_threshold == 0 || a.circuit_breaker.half_open_successes == 0 {
        c.err(
            &field("circuit_breaker"),
            "circuit breaker thresholds must be at least 1",
        );
    }
}

fn check_budget(c: &mut Checker<'_>, path: &str, b: &Budget) {
    if b.usd.is_none() && b.tokens.is_none() {
        c.err(path, "a budget needs `usd`, `tokens` or both");
    }
    if b.usd.is_some_and(|u| !(u.is_finite() && u > 0.0)) {
        c.err(
            &child_key(path, "usd"),
            "budget.usd must be a positive number",
        );
    }
    if b.tokens == Some(0) {
        c.err(
            &child_key(path, "tokens"),
            "budget.tokens must be at least 1",
        );
    }
}

fn check_workflow(
    c: &mut Checker<'_>,
    config: &Config,
    caps: &BTreeSet<&str>,
    name: &str,
    wf: &Workflow,
) {
    let path = child_key("workflows", name);
    if !valid_name(name) {
        c.err(
            &path,
            format!("workflow name `{name}` may only use letters, digits, `_`, `-` and `.`"),
        );
    }
    if wf.steps.is_empty() {
        c.err(
            &child_key(&path, "steps"),
            format!("workflow `{name}` has no steps"),
        );
    }
    if let Some(b) = &wf.budget {
        check_budget(c, &child_key(&path, "budget"), b);
    }
    if let Some(schema) = &wf.input_schema
        && let Err(e) = jsonschema::validator_for(schema)
    {
        c.err(
            &child_key(&path, "input_schema"),
            format!("workflow `{name}`: invalid JSON Schema: {e}"),
        );
    }
    if let Some(out) = &wf.output
        && let Err(e) = template::check_value(out)
    {
        c.err(
            &child_key(&path, "output"),
            format!("workflow `{name}`: invalid output template: {e}"),
        );
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, step) in wf.steps.iter().enumerate() {
        let sp = child_index(&child_key(&path, "steps"), i);
        if !valid_name(&step.id) {
            c.err(
                &child_key(&sp, "id"),
                format!(
                    "step id `{}` may only use letters, digits, `_`, `-` and `.`",
                    step.id
                ),
            );
        }
        if ids.insert(step.id.as_str(), i).is_some() {
            c.err(
                &child_key(&sp, "id"),
                format!("workflow `{name}` has two steps with id `{}`", step.id),
            );
        }
    }
    for (i, step) in wf.steps.iter().enumerate() {
        let sp = child_index(&child_key(&path, "steps"), i);
        let f = |x: &str| child_key(&sp, x);
        let id = &step.id;
        check_target(
            c,
            config,
            caps,
            &sp,
            &format!("step `{id}`"),
            step.agent.as_deref(),
            step.capability.as_deref(),
        );
        for (j, need) in step.needs.iter().enumerate() {
            if need == id {
                c.err(
                    &child_index(&f("needs"), j),
                    format!("step `{id}` needs itself"),
                );
            } else if !ids.contains_key(need.as_str()) {
                c.err(
                    &child_index(&f("needs"), j),
                    format!(
                        "step `{id}` needs unknown step `{need}` (steps: {})",
                        known(ids.keys())
                    ),
                );
            }
        }
        if let Some(when) = &step.when
            && let Err(e) = template::check_expression(when)
        {
            c.err(
                &f("when"),
                format!("step `{id}`: invalid `when` expression: {e}"),
            );
        }
        for (field, text) in [
            ("prompt", &step.prompt),
            ("instructions", &step.instructions),
        ] {
            if let Some(t) = text
                && let Err(e) = template::check_template(t)
            {
                c.err(
                    &f(field),
                    format!("step `{id}`: invalid {field} template: {e}"),
                );
            }
        }
        if let Some(input) = &step.input
            && let Err(e) = template::check_value(input)
        {
            c.err(
                &f("input"),
                format!("step `{id}`: invalid input template: {e}"),
            );
        }
        if let Some(r) = &step.retry {
            if r.attempts == 0 {
                c.err(
                    &child_key(&f("retry"), "attempts"),
                    format!("step `{id}`: retry.attempts must be at least 1"),
                );
            }
            if r.multiplier < 1.0 {
                c.err(
                    &child_key(&f("retry"), "multiplier"),
                    format!("step `{id}`: retry.multiplier must be at least 1"),
                );
            }
        }
        if let Some(comp) = &step.compensate {
            let agent = comp.agent.as_deref().or(if comp.capability.is_none() {
                step.agent.as_deref()
            } else {
                None
            });
            check_target(
                c,
                config,
                caps,
                &f("compensate"),
                &format!("compensation of step `{id}`"),
                agent,
                comp.capability.as_deref(),
            );
        }
    }
    let cycle = find_cycle(wf);
    if cycle.is_none() {
        check_references(c, name, wf, &path, &ids);
    }
    if let Some(cycle) = cycle {
        let first = ids.get(cycle[0].as_str()).copied().unwrap_or(0);
        let sp = child_index(&child_key(&path, "steps"), first);
        c.err(
            &child_key(&sp, "needs"),
            format!(
                "workflow `{name}` has a dependency cycle: {}",
                cycle.join(" -> ")
            ),
        );
    }
}

fn check_target(
    c: &mut Checker<'_>,
    config: &Config,
    caps: &BTreeSet<&str>,
    path: &str,
    what: &str,
    agent: Option<&str>,
    capability: Option<&str>,
) {
    match (agent, capability) {
        (Some(_), Some(_)) => c.err(
            path,
            format!("{what} sets both `agent` and `capability`; choose one"),
        ),
        (None, None) => c.err(path, format!("{what} needs `agent:` or `capability:`")),
        (Some(a), None) if !config.agents.contains_key(a) => c.err(
            &child_key(path, "agent"),
            format!(
                "{what} uses unknown agent `{a}` (agents: {})",
                known(config.agents.keys())
            ),
        ),
        (None, Some(cap)) if !caps.contains(cap) => c.err(
            &child_key(path, "capability"),
            format!("{what} asks for capability `{cap}` that no agent offers"),
        ),
        _ => {}
    }
}

/// A dependency cycle as a list of step ids (first repeated at the end), if any.
pub fn find_cycle(wf: &Workflow) -> Option<Vec<String>> {
    let ids: BTreeMap<&str, usize> = wf
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let n = wf.steps.len();
    // 0 unvisited, 1 on stack, 2 done
    let mut color = vec![0u8; n];
    let mut stack: Vec<usize> = Vec::new();
    fn dfs(
        v: usize,
        wf: &Workflow,
        ids: &BTreeMap<&str, usize>,
        color: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        color[v] = 1;
        stack.push(v);
        for need in &wf.steps[v].needs {
            let Some(&u) = ids.get(need.as_str()) else {
                continue;
            };
            if color[u] == 1 {
                let start = stack.iter().position(|&x| x == u).unwrap_or(0);
                let mut cycle: Vec<String> = stack[start..]
                    .iter()
                    .map(|&i| wf.steps[i].id.clone())
                    .collect();
                cycle.push(wf.steps[u].id.clone());
                return Some(cycle);
            }
            if color[u] == 0
                && let Some(c) = dfs(u, wf, ids, color, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        color[v] = 2;
        None
    }
    (0..n).find_map(|v| {
        if color[v] == 0 {
            dfs(v, wf, &ids, &mut color, &mut stack)
        } else {
            None
        }
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn known<'a>(names: impl Iterator<Item = &'a (impl AsRef<str> + 'a + ?Sized)>) -> String {
    let v: Vec<&str> = names.map(|n| n.as_ref()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn check_deploy(c: &mut Checker<'_>, config: &Config) {
    let d = &config.deploy;
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 53
            && s.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    };
    for (path, value) in [("deploy.name", &d.name), ("deploy.namespace", &d.namespace)] {
        if !dns(value) {
            c.err(
                path,
                format!("`{value}` must be a DNS label: lowercase letters, digits and `-`, at most 53 characters"),
            );
        }
    }
    for name in d.environments.keys() {
        if !dns(name) {
            c.err(
                &child_key("deploy.environments", name),
                format!("environment `{name}` must be a DNS label"),
            );
        }
    }
    if d.autoscaling.min == 0 || d.autoscaling.min > d.autoscaling.max {
        c.err("deploy.autoscaling", "autoscaling needs 1 <= min <= max");
    }
    for (i, s) in d.rollout.steps.iter().enumerate() {
        let set = [
            s.set_weight.is_some(),
            s.pause.is_some(),
            s.analysis.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            c.err(
                &child_index("deploy.rollout.steps", i),
                "each step is one of `set_weight`, `pause` or `analysis`",
            );
        }
        if s.set_weight.is_some_and(|w| w > 100) {
            c.err(
                &child_index("deploy.rollout.steps", i),
                "set_weight is a percentage, 0 to 100",
            );
        }
    }
    for (path, v) in [
        (
            "deploy.rollout.min_success_rate",
            d.rollout.min_success_rate,
        ),
        (
            "deploy.rollout.min_workflow_success_rate",
            d.rollout.min_workflow_success_rate,
        ),
    ] {
        if !(0.0..=1.0).contains(&v) {
            c.err(path, "a rate is between 0 and 1");
        }
    }
    if d.rollout.max_p95_seconds.is_nan() || d.rollout.max_p95_seconds <= 0.0 {
        c.err(
            "deploy.rollout.max_p95_seconds",
            "must be a positive number of seconds",
        );
    }
}

fn check_observability(c: &mut Checker<'_>, config: &Config) {
    let o = &config.observability;
    if o.sample_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        c.err(
            "observability.sample_ratio",
            "sample_ratio must be between 0 and 1",
        );
    }
    let urls = [
        (
            "observability.otlp.endpoint",
            o.otlp.as_ref().map(|x| &x.endpoint),
        ),
        (
            "observability.mlflow.tracking_uri",
            o.mlflow.as_ref().map(|x| &x.tracking_uri),
        ),
    ];
    for (path, url) in urls {
        if let Some(url) = url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            c.err(path, format!("`{url}` must be an http:// or https:// URL"));
        }
    }
    if let Some(f) = &config.logging.file
        && !matches!(f.rotation.as_str(), "daily" | "hourly" | "never")
    {
        c.err(
            "logging.file.rotation",
            format!("unknown rotation `{}` (daily, hourly, never)", f.rotation),
        );
    }
    if !matches!(config.logging.format.as_str(), "json" | "pretty") {
        c.err(
            "logging.format",
            format!(
                "unknown log format `{}` (json, pretty)",
                config.logging.format
            ),
        );
    }
}

/// Rates a limit may take: from one a day to a billion a second.
const RATE_RANGE: std::ops::RangeInclusive<f64> = (1.0 / 86_400.0)..=1e9;

fn check_auth(c: &mut Checker<'_>, config: &Config) {
    use crate::model::{AuthMode, JwtAlgorithm};
    let auth = &config.auth;
    for (i, key) in auth.api_keys.iter().enumerate() {
        let ok = key
            .hash
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
        if !ok {
            c.err(
                &child_key(&child_index("auth.api_keys", i), "hash"),
                format!("api key `{}`: hash must be `sha256:` and 64 hex digits (see `flotilla keys create`)", key.name),
            );
        }
    }
    if matches!(auth.mode, AuthMode::ApiKey) && auth.api_keys.is_empty() {
        c.err(
            "auth.mode",
            "auth.mode api_key needs at least one entry in auth.api_keys",
        );
    }
    if auth.mode == AuthMode::Jwt && auth.jwt.is_none() {
        c.err("auth.mode", "auth.mode jwt needs auth.jwt");
    }
    if auth.mode == AuthMode::Any && auth.jwt.is_none() && auth.api_keys.is_empty() {
        c.err("auth.mode", "auth.mode any needs auth.api_keys or auth.jwt");
    }
    if let Some(jwt) = &auth.jwt {
        match jwt.algorithm {
            JwtAlgorithm::HS256 if jwt.secret.as_deref().is_none_or(str::is_empty) => {
                c.err("auth.jwt.algorithm", "HS256 needs auth.jwt.secret")
            }
            JwtAlgorithm::HS256 => {
                match crate::secret::resolve(jwt.secret.as_deref().unwrap_or_default()) {
                    Err(e) => c.err("auth.jwt.secret", format!("auth.jwt.secret: {e}")),
                    Ok(s) if s.len() < crate::secret::MIN_HMAC_SECRET => c.err(
                        "auth.jwt.secret",
                        format!(
                            "auth.jwt.secret is {} bytes (after trimming white space); an HS256 secret needs at least {}",
                            s.len(),
                            crate::secret::MIN_HMAC_SECRET
                        ),
                    ),
                    Ok(_) => {}
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 if jwt.public_key.is_none() => c.err(
                "auth.jwt.algorithm",
                "RS256 and ES256 need auth.jwt.public_key",
            ),
            _ => {}
        }
    }
    let limits = config
        .rate_limits
        .default
        .iter()
        .map(|l| ("rate_limits.default".to_owned(), l));
    let groups = config
        .rate_limits
        .groups
        .iter()
        .map(|(g, l)| (child_key("rate_limits.groups", g), l));
    let failed = std::iter::once((
        "rate_limits.failed_auth".to_owned(),
        &config.rate_limits.failed_auth,
    ));
    for (path, limit) in limits.chain(groups).chain(failed) {
        if !(RATE_RANGE.contains(&limit.per_second) && (1..=1_000_000).contains(&limit.burst)) {
            c.err(
                &path,
                format!(
                    "a rate limit needs per_second between {} (one a day) and {} and burst between 1 and 1000000",
                    RATE_RANGE.start(),
                    RATE_RANGE.end()
                ),
            );
        }
    }
    for group in config.rate_limits.groups.keys() {
        if !["read", "operate", "admin"].contains(&group.as_str()) {
            c.err(
                &child_key("rate_limits.groups", group),
                format!("unknown route group `{group}` (read, operate, admin)"),
            );
        }
    }
}
