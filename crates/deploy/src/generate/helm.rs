//! The Helm chart: the same Kubernetes objects as the Kustomize base (one builder,
//! [`objects`]), with what differs between environments ([`Knobs`]) read from values; so
//! `helm template -f values-<env>.yaml` renders what `kubectl kustomize overlays/<env>` does.

use flotilla_spec::DeployConfig;
use serde_json::{Value, json};

use super::kubernetes::ANALYSIS_KEYS;
use super::{GenerateError, Input, Knobs, objects, yaml};
use crate::File;

/// Marks where a value goes while the objects are written as YAML; replaced by a template
/// action afterwards. `__` separates the parts of the value's path.
const MARK: &str = "HELMVALUE__";
const NAMESPACE_MARK: &str = "HELMRELEASENAMESPACE";

fn mark(path: &str) -> Value {
    json!(format!("{MARK}{}", path.replace('.', "__")))
}

/// Marks an expression (which must end in `| toJson`); `exprs` keeps them by number.
const EXPR_MARK: &str = "HELMEXPR__";

fn expr(exprs: &mut Vec<String>, e: String) -> Value {
    exprs.push(e);
    json!(format!("{EXPR_MARK}{}", exprs.len() - 1))
}

/// Knobs that are template actions, and the expressions some of them stand for.
fn template_knobs(base: &Knobs) -> (Knobs, Vec<String>) {
    let mut exprs = Vec::new();
    let all = base.env.as_array().cloned().unwrap_or_default();
    let fixed = all.len() - base.secrets.as_array().map_or(0, Vec::len);
    let fixed = Value::Array(all[..fixed].to_vec());
    let env = expr(
        &mut exprs,
        format!(
            "concat (fromJsonArray `{fixed}`) .Values.secrets (list (dict \"name\" \"FLOTILLA_ENV\" \"value\" .Values.environment)) | toJson"
        ),
    );
    let checksum = expr(
        &mut exprs,
        "print .Values.config .Values.flags | sha256sum | trunc 16 | toJson".into(),
    );
    let mut analysis = serde_json::Map::new();
    for key in ANALYSIS_KEYS {
        analysis.insert(
            key.into(),
            json!({
                "successCondition": mark(&format!("analysis.{key}.successCondition")),
                "failureCondition": mark(&format!("analysis.{key}.failureCondition")),
            }),
        );
    }
    analysis.insert("interval".into(), mark("analysis.interval"));
    let knobs = Knobs {
        replicas: mark("replicas"),
        image: mark("image"),
        resources: mark("resources"),
        autoscaling_min: mark("autoscaling.minReplicas"),
        autoscaling_max: mark("autoscaling.maxReplicas"),
        host: mark("ingress.host"),
        labels: mark("labels"),
        namespace: Some(json!(NAMESPACE_MARK)),
        env,
        environment: Some(mark("environment")),
        secrets: mark("secrets"),
        probes: json!({"startup": mark("probes.startup"), "liveness": mark("probes.liveness"), "readiness": mark("probes.readiness")}),
        strategy: mark("rollout.strategy"),
        analysis: Value::Object(analysis),
        config: mark("config"),
        flags: mark("flags"),
        checksum,
        backup: base
            .backup
            .as_ref()
            .map(|_| json!({"schedule": mark("backup.schedule"), "size": mark("backup.size")})),
    };
    (knobs, exprs)
}

/// YAML as a Helm template: literal `{{` (workflow templates in the configuration, alert
/// annotations, analysis arguments) stays text, and each mark becomes the action that
/// writes its value (as JSON, which is YAML).
fn template(yaml: &str, exprs: &[String]) -> String {
    let mut escaped = yaml
        .replace("{{", "{{ \"{{\" }}")
        .replace(NAMESPACE_MARK, "{{ .Release.Namespace }}");
    // Highest number first, so that mark 1 does not match the start of mark 10.
    for (i, e) in exprs.iter().enumerate().rev() {
        escaped = escaped.replace(&format!("{EXPR_MARK}{i}"), &format!("{{{{ {e} }}}}"));
    }
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped.as_str();
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let tail = &rest[at + MARK.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let path = tail[..end].replace("__", ".");
        out.push_str(&format!("{{{{ toJson .Values.{path} }}}}"));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The values of `k`, commented.
fn values(k: &Knobs, what: &str) -> Result<String, GenerateError> {
    let sections = [
        (
            "Pods when no autoscaler decides (the Rollout's, or the Deployment's).",
            json!({"replicas": k.replicas}),
        ),
        ("The image, `repository:tag`.", json!({"image": k.image})),
        (
            "CPU and memory of the flotilla container.",
            json!({"resources": k.resources}),
        ),
        (
            "Bounds of the HorizontalPodAutoscaler (when `deploy.autoscaling.enabled`).",
            json!({"autoscaling": {"minReplicas": k.autoscaling_min, "maxReplicas": k.autoscaling_max}}),
        ),
        ("The Ingress host.", json!({"ingress": {"host": k.host}})),
        (
            "Labels of every object (selectors keep `app.kubernetes.io/name` and `part-of`).",
            json!({"labels": k.labels}),
        ),
        (
            "`FLOTILLA_ENV`: which `environments:` overlay of flotilla.yaml the pods load.",
            json!({"environment": k.environment}),
        ),
        (
            "The Argo Rollout's `spec.strategy`: canary steps with analysis, blue-green or rolling.",
            json!({"rollout": {"strategy": k.strategy}}),
        ),
        (
            "Environment variables from Kubernetes Secrets (references, never values).",
            json!({"secrets": k.secrets}),
        ),
        (
            "Probes: liveness and startup check no dependency; readiness carries the store.",
            json!({"probes": k.probes}),
        ),
        (
            "Analysis of the new version's pods: each metric's conditions (thresholds from deploy.rollout) and how often it is measured.",
            json!({"analysis": k.analysis}),
        ),
        (
            "PodMonitor and PrometheusRule (prometheus-operator): turn off where the cluster has no operator.",
            json!({"monitoring": {"podMonitor": true, "prometheusRule": true}}),
        ),
        (
            "flotilla.yaml as mounted (a change rolls the pods).",
            json!({"config": k.config}),
        ),
        (
            "The flag file as mounted (a change rolls the pods).",
            json!({"flags": k.flags}),
        ),
    ];
    let mut sections = sections.to_vec();
    if let Some(b) = &k.backup {
        sections.push((
            "Scheduled backups (PostgreSQL): a CronJob runs `flotilla backup scheduled` into a volume of `size` (retention: backup.retention in flotilla.yaml).",
            json!({"backup": {"enabled": true, "schedule": b["schedule"], "size": b["size"]}}),
        ));
    }
    let mut out = format!(
        "# {what}\n# Generated by `flotilla deploy generate`; edit flotilla.yaml and regenerate.\n"
    );
    for (comment, value) in sections {
        let text = serde_saphyr::to_string(&value)
            .map_err(|e| GenerateError::Yaml("helm values".into(), e.to_string()))?;
        out.push_str(&format!("\n# {comment}\n{text}"));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// `values.schema.json`: `helm install` and `helm lint` refuse a value of the wrong shape.
fn schema() -> Value {
    let quantity =
        json!({"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"});
    let pair = json!({"type": "object", "additionalProperties": false, "required": ["cpu", "memory"], "properties": {"cpu": quantity, "memory": quantity}});
    let conditions = json!({"type": "object", "additionalProperties": false, "required": ["successCondition", "failureCondition"],
        "properties": {"successCondition": {"type": "string"}, "failureCondition": {"type": "string"}}});
    json!({
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "flotilla chart values",
        "type": "object",
        "additionalProperties": false,
        "required": ["replicas", "image", "resources", "autoscaling", "ingress", "labels", "environment", "rollout",
            "secrets", "probes", "analysis", "monitoring", "config", "flags"],
        "properties": {
            "replicas": {"type": "integer", "minimum": 0},
            "image": {"type": "string", "pattern": "^[^\\s:]+(:[0-9]+)?[^\\s:]*:[^\\s:]+$"},
            "resources": {"type": "object", "additionalProperties": false, "required": ["requests", "limits"], "properties": {"requests": pair, "limits": pair}},
            "autoscaling": {"type": "object", "additionalProperties": false, "required": ["minReplicas", "maxReplicas"],
                "properties": {"minReplicas": {"type": "integer", "minimum": 1}, "maxReplicas": {"type": "integer", "minimum": 1}}},
            "ingress": {"type": "object", "additionalProperties": false, "required": ["host"], "properties": {"host": {"type": "string", "minLength": 1}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "environment": {"type": "string", "minLength": 1},
            "secrets": {"type": "array", "items": {"type": "object", "required": ["name", "valueFrom"], "additionalProperties": false,
                "properties": {"name": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}, "valueFrom": {"type": "object"}}}},
            "probes": {"type": "object", "additionalProperties": false, "required": ["startup", "liveness", "readiness"],
                "properties": {"startup": {"type": "object"}, "liveness": {"type": "object"}, "readiness": {"type": "object"}}},
            "analysis": {"type": "object", "additionalProperties": false, "required": ["interval", "successRate", "latency", "workflowSuccessRate"],
                "properties": {
                    "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                    "successRate": conditions, "latency": conditions, "workflowSuccessRate": conditions,
                }},
            "monitoring": {"type": "object", "additionalProperties": false, "required": ["podMonitor", "prometheusRule"],
                "properties": {"podMonitor": {"type": "boolean"}, "prometheusRule": {"type": "boolean"}}},
            "config": {"type": "string", "minLength": 1},
            "flags": {"type": "string"},
            "backup": {"type": "object", "additionalProperties": false, "required": ["enabled", "schedule", "size"], "properties": {
                "enabled": {"type": "boolean"}, "schedule": {"type": "string", "minLength": 9}, "size": quantity}},
            "rollout": {"type": "object", "additionalProperties": false, "required": ["strategy"], "properties": {"strategy": {"type": "object",
                "minProperties": 1, "maxProperties": 1, "properties": {"canary": {"type": "object"}, "blueGreen": {"type": "object"}}, "additionalProperties": false}}},
        },
    })
}

/// The environment `values.yaml` defaults to: production when there is one.
fn default_environment(d: &DeployConfig, envs: &[String]) -> Option<String> {
    envs.iter()
        .find(|e| *e == "production")
        .or(envs.first())
        .cloned()
        .or_else(|| d.environments.keys().next().cloned())
}

/// `helm/<name>/`: Chart.yaml, values (defaults and one file per environment), the values
/// schema, the templates, NOTES.txt and a `helm test` that asks the Service for `/ready`.
pub(crate) fn chart(input: &Input<'_>, envs: &[String]) -> Result<Vec<File>, GenerateError> {
    let d = &input.config.deploy;
    let dir = format!("helm/{}", d.name);
    let version = env!("CARGO_PKG_VERSION");
    let mut files = vec![yaml(
        &format!("{dir}/Chart.yaml"),
        &[json!({
            "apiVersion": "v2",
            "name": d.name,
            "description": format!("{}: durable multi-agent workflows (flotilla)", d.name),
            "type": "application",
            "version": version,
            "appVersion": version,
        })],
    )?];
    let Some(default) = default_environment(d, envs) else {
        return Ok(Vec::new());
    };
    files.push(File::new(
        format!("{dir}/values.yaml"),
        values(
            &Knobs::environment(input, &default),
            &format!(
                "Defaults: the `{default}` environment. Each values-<env>.yaml sets an environment."
            ),
        )?,
    ));
    for env in envs {
        files.push(File::new(
            format!("{dir}/values-{env}.yaml"),
            values(&Knobs::environment(input, env), &format!("The `{env}` environment: helm upgrade --install {} . -f values-{env}.yaml --namespace {}-{env}", d.name, d.namespace))?,
        ));
    }
    files.push(File::new(
        format!("{dir}/values.schema.json"),
        serde_json::to_string_pretty(&schema()).unwrap_or_default() + "\n",
    ));
    let (knobs, exprs) = template_knobs(&Knobs::base(input));
    for (file, docs) in objects(input, &knobs)? {
        let text = yaml(&format!("{dir}/templates/{file}"), &docs)?;
        let mut body = template(&text.contents, &exprs);
        let toggle = match file {
            "podmonitor.yaml" => Some("monitoring.podMonitor"),
            "prometheusrule.yaml" => Some("monitoring.prometheusRule"),
            "backup.yaml" => Some("backup.enabled"),
            _ => None,
        };
        if let Some(t) = toggle {
            body = format!("{{{{- if .Values.{t} }}}}\n{body}{{{{- end }}}}\n");
        }
        files.push(File::new(text.path.clone(), body));
    }
    let name = &d.name;
    files.push(File::new(
        format!("{dir}/templates/_helpers.tpl"),
        format!(
            "{{{{/* The Service the chart's workload answers on. */}}}}\n{{{{- define \"{name}.service\" -}}}}\n{name}.{{{{ .Release.Namespace }}}}.svc\n{{{{- end -}}}}\n"
        ),
    ));
    files.push(File::new(
        format!("{dir}/templates/NOTES.txt"),
        format!(
            "{name} ({{{{ .Values.image }}}}) in {{{{ .Release.Namespace }}}}, environment {{{{ .Values.environment }}}}.\n\n\
             Inside the cluster: http://{{{{ include \"{name}.service\" . }}}}/health\n\
             Outside: https://{{{{ .Values.ingress.host }}}}/ (through the Ingress)\n\
             Readiness of the release: helm test {{{{ .Release.Name }}}} --namespace {{{{ .Release.Namespace }}}}\n"
        ),
    ));
    let test = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{name}-test-ready"), "namespace": NAMESPACE_MARK, "labels": mark("labels"),
            "annotations": {"helm.sh/hook": "test", "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1001, "runAsGroup": 1001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "ready",
                "image": "busybox:1.36",
                "command": ["wget", "-q", "-O", "-", format!("http://{name}/ready")],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    });
    let test = yaml(&format!("{dir}/templates/tests/test-ready.yaml"), &[test])?;
    files.push(File::new(test.path.clone(), template(&test.contents, &[])));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_become_actions_and_literal_braces_stay_text() {
        let yaml = "replicas: HELMVALUE__replicas\nmin: HELMVALUE__autoscaling__minReplicas\nq: '{{args.x}}'\nns: HELMRELEASENAMESPACE\n";
        assert_eq!(
            template(yaml, &[]),
            "replicas: {{ toJson .Values.replicas }}\nmin: {{ toJson .Values.autoscaling.minReplicas }}\nq: '{{ \"{{\" }}args.x}}'\nns: {{ .Release.Namespace }}\n"
        );
    }
}
