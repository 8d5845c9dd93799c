//! One expression language everywhere: minijinja (Jinja2 syntax).
//!
//! Strings in step inputs are templates (`"{{ input.city }}"`); a string that is exactly one
//! `{{ expression }}` keeps the expression's type, so `"{{ steps.a.output }}"` passes an
//! object, not its text. `when:` conditions are bare expressions (`input.budget > 1000`).

use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

use crate::error::{Result, SpecError};

/// Most work one rendering or condition may do (minijinja's fuel: about one unit per
/// instruction). Ordinary templates use a few thousand; a loop over user input that would
/// run for seconds stops with an error instead.
pub const FUEL: u64 = 2_000_000;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_fuel(Some(FUEL));
        env
    })
}

/// The environment of JSON templates: `{{ x }}` writes `x` as a JSON value (a string
/// quoted and escaped), so interpolated data can never add fields.
fn json_env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Json);
        env.set_fuel(Some(FUEL));
        env
    })
}

/// Renders a JSON template (see [`json_env`]) and parses the result.
pub fn render_json(template: &str, ctx: &minijinja::Value) -> Result<Value> {
    let text = json_env()
        .render_str(template, ctx)
        .map_err(template_error)?;
    serde_json::from_str(text.trim())
        .map_err(|e| SpecError::Template(format!("the template did not render valid JSON: {e}")))
}

/// Whether a string holds template syntax at all.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The expression inside `{{ … }}` when the string is exactly one such block.
fn sole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// Builds a template context from a JSON object.
pub fn context(value: &Value) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

/// Renders every string of `value` as a template against `ctx`.
pub fn render_value(value: &Value, ctx: &minijinja::Value) -> Result<Value> {
    Ok(match value {
        Value::String(s) if is_template(s) => {
            if let Some(expr) = sole_expression(s) {
                let out = env()
                    .compile_expression(expr)
                    .and_then(|e| e.eval(ctx))
                    .map_err(template_error)?;
                if out.is_undefined() {
                    Value::Null
                } else {
                    serde_json::to_value(&out).map_err(|e| SpecError::Template(e.to_string()))?
                }
            } else {
                Value::String(render_str(s, ctx)?)
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, ctx))
                .collect::<Result<_>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, ctx)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Renders one template string.
pub fn render_str(template: &str, ctx: &minijinja::Value) -> Result<String> {
    if !is_template(template) {
        return Ok(template.to_owned());
    }
    env().render_str(template, ctx).map_err(template_error)
}

/// Evaluates a condition; undefined is false.
pub fn eval_condition(expr: &str, ctx: &minijinja::Value) -> Result<bool> {
    let v = env()
        .compile_expression(expr)
        .and_then(|e| e.eval(ctx))
        .map_err(template_error)?;
    Ok(v.is_true())
}

/// Checks the syntax of a template string.
pub fn check_template(template: &str) -> std::result::Result<(), String> {
    if let Some(expr) = sole_expression(template) {
        return check_expression(expr);
    }
    env()
        .template_from_str(template)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Checks the syntax of an expression.
pub fn check_expression(expr: &str) -> std::result::Result<(), String> {
    env()
        .compile_expression(expr)
        .map(|_| ())
        .map_err(|e| describe(&e))
}

/// Checks every template string inside a JSON value.
pub fn check_value(value: &Value) -> std::result::Result<(), String> {
    match value {
        Value::String(s) if is_template(s) => check_template(s),
        Value::Array(items) => items.iter().try_for_each(check_value),
        Value::Object(map) => map.values().try_for_each(check_value),
        _ => Ok(()),
    }
}

/// The context paths a template string reads (`steps.plan.output.city`, `input.budget`),
/// however it is written; empty when it does not parse (its syntax is checked apart).
pub fn references(template: &str) -> Vec<String> {
    if !is_template(template) {
        return Vec::new();
    }
    let mut found: Vec<String> = match env().template_from_str(template) {
        Ok(t) => t.undeclared_variables(true).into_iter().collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    found
}

/// The context paths a condition reads.
pub fn expression_references(expr: &str) -> Vec<String> {
    let mut found: Vec<String> = match env().compile_expression(expr) {
        Ok(e) => e.undeclared_variables(true).into_iter().collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    found
}

/// The context paths every template string inside a JSON value reads.
pub fn value_references(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => references(s),
        Value::Array(items) => items.iter().flat_map(value_references).collect(),
        Value::Object(map) => map.values().flat_map(value_references).collect(),
        _ => Vec::new(),
    }
}

/// The flags a template or condition asks for by name: `flag('beta')`, `flag("beta")`.
pub fn flag_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("flag(") {
        let preceded = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + 5..];
        let arg = rest.trim_start();
        let Some(quote) = arg.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            continue;
        };
        if let Some(end) = arg[1..].find(quote)
            && !preceded
        {
            out.push(arg[1..1 + end].to_owned());
        }
    }
    out
}

fn describe(e: &minijinja::Error) -> String {
    if e.kind() == minijinja::ErrorKind::OutOfFuel {
        return format!(
            "the template did too much work (over {FUEL} steps): loop over less, or do the work in an agent"
        );
    }
    match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    }
}

fn template_error(e: minijinja::Error) -> SpecError {
    SpecError::Template(describe(&e))
}

#[cfg(test)]
mod reference_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_found_in_templates_values_and_conditions() {
        assert_eq!(
            references("{{ steps.plan.output.city }} in {{ input.days }} days"),
            ["input.days", "steps.plan.output.city"]
        );
        assert_eq!(references("plain text"), Vec::<String>::new());
        assert_eq!(
            expression_references("input.budget > 1000 and steps.a.output.ok"),
            ["input.budget", "steps.a.output.ok"]
        );
        assert_eq!(
            value_references(&json!({"a": ["{{ steps.x.output }}"], "b": 3})),
            ["steps.x.output"]
        );
        // A loop's own variable is not a reference.
        assert_eq!(
            references("{% for d in input.days %}{{ d }}{% endfor %}"),
            ["input.days"]
        );
    }

    #[test]
    fn flag_names_are_read_from_calls() {
        assert_eq!(
            flag_names("flag('beta') and not flag(\"gamma\")"),
            ["beta", "gamma"]
        );
        assert_eq!(
            flag_names("myflag('x') or flag(name)"),
            Vec::<String>::new()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sole_expression_keeps_type() {
        let ctx = context(&json!({"steps": {"a": {"output": {"city": "Oslo", "n": 3}}}}));
        let out = render_value(
            &json!({"all": "{{ steps.a.output }}", "n": "{{ steps.a.output.n }}"}),
            &ctx,
        )
        .unwrap();
        assert_eq!(out, json!({"all": {"city": "Oslo", "n": 3}, "n": 3}));
    }

    #[test]
    fn mixed_text_renders_as_string() {
        let ctx = context(&json!({"input": {"destination": "Rome"}}));
        let out = render_value(&json!("Trip to {{ input.destination }}!"), &ctx).unwrap();
        assert_eq!(out, json!("Trip to Rome!"));
    }

    #[test]
    fn conditions() {
        let ctx = context(&json!({"input": {"budget": 1500}}));
        assert!(eval_condition("input.budget > 1000", &ctx).unwrap());
        assert!(!eval_condition("input.missing", &ctx).unwrap());
        assert!(check_expression("input.budget >").is_err());
        assert!(check_template("{% if x %}").is_err());
    }
}
