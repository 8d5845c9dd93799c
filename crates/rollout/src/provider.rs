//! Metric providers: where a measurement's value comes from.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::analysis::Sample;
use crate::spec::Metric;

/// What a query is filled in with.
#[derive(Debug, Clone, Default)]
pub struct QueryContext {
    /// The analysis' `args`.
    pub args: BTreeMap<String, String>,
    /// `127.0.0.1:8082|127.0.0.1:8083`, regex-escaped, for `instance=~"…"`.
    pub canary_instances: String,
    /// The same for the stable version.
    pub stable_instances: String,
    /// The new version's name.
    pub canary_version: String,
    /// The stable version's name.
    pub stable_version: String,
}

/// The instances as a PromQL regex alternative (`.` escaped).
pub fn instances_regex(upstreams: &[String]) -> String {
    upstreams
        .iter()
        .map(|u| u.replace('.', "\\\\."))
        .collect::<Vec<_>>()
        .join("|")
}

impl QueryContext {
    /// Fills a query: Argo's `{{args.NAME}}` (names may hold `-`) and minijinja over
    /// `args`, `canary_instances`, `stable_instances`, `canary_version`, `stable_version`.
    pub fn render(&self, query: &str) -> Result<String, String> {
        let mut text = query.to_owned();
        for (k, v) in &self.args {
            for pattern in [format!("{{{{args.{k}}}}}"), format!("{{{{ args.{k} }}}}")] {
                text = text.replace(&pattern, v);
            }
        }
        let ctx = minijinja::context! {
            args => &self.args,
            canary_instances => &self.canary_instances,
            stable_instances => &self.stable_instances,
            canary_version => &self.canary_version,
            stable_version => &self.stable_version,
        };
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.render_str(&text, ctx)
            .map_err(|e| format!("the query template: {e}"))
    }
}

/// Something that answers a metric's query.
#[async_trait]
pub trait MetricProvider: Send + Sync {
    /// Measures once: `Err` is the provider's failure (unavailable), never a verdict.
    async fn measure(&self, metric: &Metric, ctx: &QueryContext) -> Result<Sample, String>;
}

/// Prometheus' instant query API.
#[derive(Clone)]
pub struct PrometheusProvider {
    client: reqwest::Client,
}

impl Default for PrometheusProvider {
    fn default() -> Self {
        PrometheusProvider {
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .expect("a reqwest client with default TLS"),
        }
    }
}

#[async_trait]
impl MetricProvider for PrometheusProvider {
    async fn measure(&self, metric: &Metric, ctx: &QueryContext) -> Result<Sample, String> {
        let p = &metric.provider.prometheus;
        let query = ctx.render(&p.query)?;
        let timeout = p.timeout.map_or(Duration::from_secs(10), |t| t.get());
        let url = url::Url::parse_with_params(
            &format!("{}/api/v1/query", p.address.trim_end_matches('/')),
            &[("query", query.as_str())],
        )
        .map_err(|e| format!("prometheus address: {e}"))?;
        let mut req = self.client.get(url).timeout(timeout);
        for h in &p.headers {
            req = req.header(&h.key, &h.value);
        }
        let resp = req.send().await.map_err(|e| {
            let e = if e.is_timeout() {
                format!("no answer within {}", humantime::format_duration(timeout))
            } else {
                e.without_url().to_string()
            };
            format!(
                "prometheus at {}: {e}",
                flotilla_spec::redact::redact_url(&p.address)
            )
        })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .map_err(|e| format!("prometheus answered {status} with no JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!(
                "prometheus answered {status}: {}",
                body["error"].as_str().unwrap_or("no error message")
            ));
        }
        parse_result(&body["data"])
    }
}

fn number(v: &Value) -> Result<f64, String> {
    // Prometheus writes values as strings: "0.97", "NaN", "+Inf".
    let text = v[1]
        .as_str()
        .ok_or_else(|| format!("a sample without a value: {v}"))?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        t => t
            .parse()
            .map_err(|_| format!("a sample value that is not a number: {t}")),
    }
}

/// `data` of a query answer: a scalar or an instant vector.
pub fn parse_result(data: &Value) -> Result<Sample, String> {
    match data["resultType"].as_str() {
        Some("scalar") => Ok(Sample::Scalar(number(&data["result"])?)),
        Some("vector") => {
            let series = data["result"].as_array().cloned().unwrap_or_default();
            Ok(Sample::Vector(
                series
                    .iter()
                    .map(|s| number(&s["value"]))
                    .collect::<Result<_, _>>()?,
            ))
        }
        other => Err(format!(
            "a {} result; an analysis query must give a scalar or an instant vector",
            other.unwrap_or("missing")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_parse_as_argo_sees_them() {
        let v = json!({"resultType": "vector", "result": [
            {"metric": {}, "value": [1.0, "0.97"]}, {"metric": {}, "value": [1.0, "NaN"]}]});
        let Sample::Vector(xs) = parse_result(&v).unwrap() else {
            panic!()
        };
        assert_eq!(xs[0], 0.97);
        assert!(xs[1].is_nan());
        let s = json!({"resultType": "scalar", "result": [1.0, "2"]});
        assert_eq!(parse_result(&s).unwrap(), Sample::Scalar(2.0));
        assert!(parse_result(&json!({"resultType": "matrix", "result": []})).is_err());
    }

    #[test]
    fn queries_take_argo_args_and_builtins() {
        let ctx = QueryContext {
            args: [("service-name".to_owned(), "api".to_owned())].into(),
            canary_instances: instances_regex(&["127.0.0.1:8082".into()]),
            ..Default::default()
        };
        assert_eq!(
            ctx.render(r#"up{job="{{args.service-name}}",instance=~"{{ canary_instances }}"}"#)
                .unwrap(),
            r#"up{job="api",instance=~"127\\.0\\.0\\.1:8082"}"#
        );
        assert!(ctx.render("{{ args.nope }}").is_err());
    }
}
