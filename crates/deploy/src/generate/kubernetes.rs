//! The Kubernetes objects (one builder for the Kustomize base and the Helm chart), the
//! Kustomize overlays, and the Argo Rollouts strategy and analysis.

use flotilla_spec::{DeployConfig, Strategy};
use serde_json::{Value, json};

use super::{GenerateError, Input, PORT, env_host, labels, yaml};
use crate::File;
use crate::monitoring::Bundle;

/// The environment every pod has; secrets and `FLOTILLA_ENV` follow.
fn fixed_env() -> Value {
    json!([
        {"name": "FLOTILLA_SERVER__LISTEN", "value": format!("0.0.0.0:{PORT}")},
        {"name": "FLOTILLA_FLAGS__FILE", "value": "/etc/flotilla/flags.yaml"},
        {"name": "FLOTILLA_ENGINE__REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ])
}

/// `deploy.secrets` as environment variables taken from Secrets.
fn secret_env(d: &DeployConfig) -> Value {
    d.secrets
        .iter()
        .map(|s| json!({"name": s.env, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.key}}}))
        .collect()
}

/// The three probes: liveness checks no dependency (a database outage must not restart every
/// pod); readiness carries the store.
fn probes() -> Value {
    let probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures});
    json!({"startup": probe("/livez", 2, 30), "liveness": probe("/livez", 10, 3), "readiness": probe("/ready", 5, 3)})
}

fn container(k: &Knobs) -> Value {
    json!({
        "name": "flotilla",
        "image": k.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["serve", "--config", "/etc/flotilla/flotilla.yaml"],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": k.env,
        "resources": k.resources,
        "startupProbe": k.probes["startup"],
        "livenessProbe": k.probes["liveness"],
        "readinessProbe": k.probes["readiness"],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 1001,
            "runAsGroup": 1001,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // Kubernetes keeps sending traffic for a moment after it decides to stop a pod; the
        // pod keeps serving (readiness already false) until its endpoints are gone.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/flotilla", "readOnly": true},
            {"name": "data", "mountPath": "/data"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    })
}

/// What differs between the environments' Kubernetes objects: the Kustomize base holds the
/// defaults and each overlay patches them; a Helm chart reads them from its values.
pub(crate) struct Knobs {
    pub replicas: Value,
    /// `image:tag`.
    pub image: Value,
    pub resources: Value,
    pub autoscaling_min: Value,
    pub autoscaling_max: Value,
    pub host: Value,
    /// Every object's labels (selectors keep the app's own).
    pub labels: Value,
    /// Every object's namespace (the base leaves it to the overlay).
    pub namespace: Option<Value>,
    /// The container's environment: the fixed variables, the secrets, `FLOTILLA_ENV`.
    pub env: Value,
    /// `FLOTILLA_ENV` (the base has none).
    pub environment: Option<Value>,
    /// Environment variables from Secrets.
    pub secrets: Value,
    /// `startup`, `liveness` and `readiness`.
    pub probes: Value,
    /// The Rollout's `spec.strategy`.
    pub strategy: Value,
    /// Each analysis metric's `successCondition` and `failureCondition`, by
    /// [`ANALYSIS_KEYS`], and their `interval`.
    pub analysis: Value,
    /// `flotilla.yaml` and `flags.yaml` as mounted.
    pub config: Value,
    pub flags: Value,
    /// Rolls the pods when the configuration or the flags change.
    pub checksum: Value,
    /// Scheduled backups by a CronJob (PostgreSQL): its `schedule` and the volume's `size`.
    pub backup: Option<Value>,
}

/// The backups volume's size.
const BACKUP_SIZE: &str = "10Gi";

/// Where the CronJob writes backups.
const BACKUP_DIR: &str = "/backups";

/// `backup.schedule` when a CronJob takes the backups: scheduled, on PostgreSQL (on SQLite
/// the server takes them itself).
fn backup_knob(config: &flotilla_spec::Config) -> Option<Value> {
    let postgres =
        flotilla_spec::storage::Backend::of(&config.storage.url).is_ok_and(|b| b.is_shared());
    let schedule = config
        .backup
        .schedule
        .as_ref()
        .filter(|_| config.backup.enabled && postgres)?;
    Some(json!({"schedule": schedule, "size": BACKUP_SIZE}))
}

/// The backup CronJob and its volume: `flotilla backup scheduled` at each firing (one at a
/// time), into a PersistentVolumeClaim, pruning past `backup.retention`.
fn backup_objects(
    name: &str,
    k: &Knobs,
    backup: &Value,
    meta: &dyn Fn(&str) -> Value,
) -> Vec<Value> {
    let claim = format!("{name}-backups");
    let pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(&claim),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": backup["size"]}}},
    });
    let cronjob = json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta(&format!("{name}-backup")),
        "spec": {
            "schedule": backup["schedule"],
            "timeZone": "Etc/UTC",
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 3600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": 21600,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": name,
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1001, "runAsGroup": 1001, "fsGroup": 1001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "backup",
                        "image": k.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["backup", "scheduled", "--config", "/etc/flotilla/flotilla.yaml"],
                        "env": k.secrets,
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/flotilla", "readOnly": true},
                            {"name": "backups", "mountPath": BACKUP_DIR},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": format!("{name}-config")}},
                        {"name": "backups", "persistentVolumeClaim": {"claimName": claim}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                }},
            }},
        },
    });
    vec![pvc, cronjob]
}

/// The analysis metrics' keys in values, in [`analysis_queries`] order.
pub(crate) const ANALYSIS_KEYS: [&str; 3] = ["successRate", "latency", "workflowSuccessRate"];

/// The first 16 hex digits of the SHA-256 of the configuration and the flags (what Helm's
/// `print config flags | sha256sum | trunc 16` gives).
fn checksum(config: &str, flags: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(config.as_bytes());
    h.update(flags.as_bytes());
    hex::encode(h.finalize())[..16].to_owned()
}

impl Knobs {
    /// The base's: the `deploy:` section as written.
    pub(crate) fn base(input: &Input<'_>) -> Knobs {
        let d = &input.config.deploy;
        let r = &d.resources;
        let flags = input.flags_text.unwrap_or("{}\n");
        let mut analysis = serde_json::Map::new();
        for (key, (_, _, success, failure)) in ANALYSIS_KEYS.iter().zip(analysis_queries(d)) {
            analysis.insert(
                (*key).into(),
                json!({"successCondition": success, "failureCondition": failure}),
            );
        }
        analysis.insert(
            "interval".into(),
            json!(format!("{}s", d.rollout.analysis_interval.0.as_secs())),
        );
        let mut env = fixed_env();
        let secrets = secret_env(d);
        env.as_array_mut()
            .into_iter()
            .for_each(|e| e.extend(secrets.as_array().cloned().unwrap_or_default()));
        Knobs {
            replicas: json!(d.replicas),
            image: json!(format!("{}:{}", d.image, d.tag)),
            resources: json!({
                "requests": {"cpu": r.requests.cpu, "memory": r.requests.memory},
                "limits": {"cpu": r.limits.cpu, "memory": r.limits.memory},
            }),
            autoscaling_min: json!(d.autoscaling.min),
            autoscaling_max: json!(d.autoscaling.max),
            host: json!(
                d.domain
                    .clone()
                    .unwrap_or_else(|| format!("{}.example.com", d.name))
            ),
            labels: labels(d),
            namespace: None,
            env,
            environment: None,
            secrets,
            probes: probes(),
            strategy: rollout_strategy(d, d.rollout.strategy),
            analysis: Value::Object(analysis),
            config: json!(input.config_text),
            flags: json!(flags),
            checksum: json!(checksum(input.config_text, flags)),
            backup: backup_knob(input.config),
        }
    }

    /// An environment's: the base with its overrides, as its overlay renders.
    pub(crate) fn environment(input: &Input<'_>, env: &str) -> Knobs {
        let d = &input.config.deploy;
        let o = d.environments.get(env).cloned().unwrap_or_default();
        let mut k = Knobs::base(input);
        if let Some(r) = o.replicas {
            k.replicas = json!(r);
        }
        if let Some(b) = o.autoscaling.filter(|_| d.autoscaling.enabled) {
            k.autoscaling_min = json!(b.min);
            k.autoscaling_max = json!(b.max);
        }
        if let Some(r) = &o.resources {
            k.resources = json!({
                "requests": {"cpu": r.requests.cpu, "memory": r.requests.memory},
                "limits": {"cpu": r.limits.cpu, "memory": r.limits.memory},
            });
        }
        k.image = json!(format!(
            "{}:{}",
            d.image,
            o.tag.unwrap_or_else(|| d.tag.clone())
        ));
        k.host = json!(env_host(d, env));
        k.labels["app.kubernetes.io/instance"] = json!(format!("{}-{env}", d.name));
        k.labels["environment"] = json!(env);
        k.namespace = Some(json!(format!("{}-{env}", d.namespace)));
        k.environment = Some(json!(env));
        if let Some(list) = k.env.as_array_mut() {
            list.push(json!({"name": "FLOTILLA_ENV", "value": env}));
        }
        k
    }
}

pub(super) fn kubernetes(input: &Input<'_>, envs: &[String]) -> Result<Vec<File>, GenerateError> {
    let d = &input.config.deploy;
    let canary = d.rollout.strategy != Strategy::Rolling;
    let mut files = Vec::new();
    let mut names = Vec::new();
    for (file, docs) in objects(input, &Knobs::base(input))? {
        names.push(file);
        files.push(yaml(&format!("kubernetes/base/{file}"), &docs)?);
    }
    files.push(yaml(
        "kubernetes/base/kustomization.yaml",
        &[json!({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": names, "labels": [{"pairs": labels(d), "includeSelectors": false}]})],
    )?);
    for env in envs {
        files.extend(overlay(d, env, canary)?);
    }
    Ok(files)
}

/// The Kubernetes objects, by file, with `k`'s values.
pub(crate) fn objects(
    input: &Input<'_>,
    k: &Knobs,
) -> Result<Vec<(&'static str, Vec<Value>)>, GenerateError> {
    let d = &input.config.deploy;
    let name = &d.name;
    let sel = labels(d);
    let meta = |n: &str| {
        let mut m = json!({"name": n, "labels": k.labels});
        if let Some(ns) = &k.namespace {
            m["namespace"] = ns.clone();
        }
        m
    };
    let canary = d.rollout.strategy != Strategy::Rolling;
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name),
        "spec": {
            "replicas": if canary { json!(0) } else { k.replicas.clone() },
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": sel},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": sel, "annotations": {"checksum/config": k.checksum, "prometheus.io/scrape": "true", "prometheus.io/port": PORT.to_string()}},
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": false,
                    // Service links would set FLOTILLA_PORT and the like for the Services
                    // named after this app; flotilla needs none of them.
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 45,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 1001, "runAsGroup": 1001, "fsGroup": 1001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "topologySpreadConstraints": [
                        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": sel}},
                        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": sel}},
                    ],
                    "containers": [container(k)],
                    "volumes": [
                        {"name": "config", "configMap": {"name": format!("{name}-config")}},
                        {"name": "data", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    });
    let service_named = |n: &str| {
        json!({
            "apiVersion": "v1", "kind": "Service", "metadata": meta(n),
            "spec": {"selector": sel, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
        })
    };
    let mut services = vec![service_named(name)];
    if canary {
        // Both, so that a pipeline may pick the strategy of each release.
        services.push(service_named(&format!("{name}-canary")));
        services.push(service_named(&format!("{name}-preview")));
    }
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta(name),
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"host": k.host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": name, "port": {"name": "http"}}}}]}}],
        },
    });
    let mut cm_data = serde_json::Map::new();
    cm_data.insert("flotilla.yaml".into(), k.config.clone());
    cm_data.insert("flags.yaml".into(), k.flags.clone());
    let configmap = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&format!("{name}-config")), "data": cm_data});
    let target_ref = if canary {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": name})
    } else {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": name})
    };
    let a = &d.autoscaling;
    let hpa = json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta(name),
        "spec": {
            "scaleTargetRef": target_ref,
            "minReplicas": k.autoscaling_min, "maxReplicas": k.autoscaling_max,
            "metrics": [
                {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.cpu_percent}}},
                {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization", "averageUtilization": a.memory_percent}}},
                {"type": "Pods", "pods": {"metric": {"name": "agent_queue_length"}, "target": {"type": "AverageValue", "averageValue": a.queue_length.to_string()}}},
            ],
        },
    });
    let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(name), "spec": {"maxUnavailable": 1, "selector": {"matchLabels": sel}}});
    let netpol = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(name),
        "spec": {
            "podSelector": {"matchLabels": sel},
            "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": PORT, "protocol": "TCP"}]}],
        },
    });
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name), "automountServiceAccountToken": false});
    // One scrape per pod (both Services select every pod), labelled with the pod template
    // hash Argo Rollouts sets, so that analysis can tell the canary's pods from the stable ones.
    let monitor = json!({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": meta(name),
        "spec": {
            "selector": {"matchLabels": sel},
            "podMetricsEndpoints": [{
                "port": "http", "path": "/metrics", "interval": "15s",
                "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_label_rollouts_pod_template_hash"], "targetLabel": "rollouts_pod_template_hash"}],
            }],
        },
    });
    let (rules, _) = flotilla_spec::yaml::parse(
        "alerts.yml",
        &Bundle {
            runbook_base: super::runbook_base(d),
            backup_stale_after: Bundle::stale_after(input.config),
            ..Bundle::default()
        }
        .alert_rules(),
        &|_| None,
    )
    .map_err(|e| GenerateError::Yaml("alert rules".into(), format!("{e:?}")))?;
    let prometheus_rule = json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": meta(name), "spec": rules});
    let mut resources = vec![
        ("serviceaccount.yaml", sa),
        ("configmap.yaml", configmap),
        ("deployment.yaml", deployment),
        ("service.yaml", Value::Array(services)),
        ("ingress.yaml", ingress),
        ("pdb.yaml", pdb),
        ("networkpolicy.yaml", netpol),
        ("podmonitor.yaml", monitor),
        ("prometheusrule.yaml", prometheus_rule),
    ];
    if d.autoscaling.enabled {
        resources.push(("hpa.yaml", hpa));
    }
    if let Some(backup) = &k.backup {
        resources.push((
            "backup.yaml",
            Value::Array(backup_objects(name, k, backup, &meta)),
        ));
    }
    if canary {
        resources.push(("rollout.yaml", rollout(d, k, meta(name))));
        resources.push((
            "analysistemplates.yaml",
            Value::Array(analysis_templates(d, k, &meta)),
        ));
    }
    Ok(resources
        .into_iter()
        .map(|(file, doc)| match doc {
            Value::Array(docs) => (file, docs),
            one => (file, vec![one]),
        })
        .collect())
}

fn overlay(d: &DeployConfig, env: &str, canary: bool) -> Result<Vec<File>, GenerateError> {
    let o = d.environments.get(env).cloned().unwrap_or_default();
    let name = &d.name;
    let namespace = format!("{}-{env}", d.namespace);
    let tag = o.tag.clone().unwrap_or_else(|| d.tag.clone());
    let workload = if canary {
        ("argoproj.io", "v1alpha1", "Rollout")
    } else {
        ("apps", "v1", "Deployment")
    };
    let mut patches = Vec::new();
    if let Some(r) = o.replicas {
        patches.push(json!({
            "target": {"group": workload.0, "version": workload.1, "kind": workload.2, "name": name},
            "patch": format!("- op: replace\n  path: /spec/replicas\n  value: {r}\n"),
        }));
    }
    if let Some(b) = o.autoscaling.filter(|_| d.autoscaling.enabled) {
        patches.push(json!({
            "target": {"group": "autoscaling", "version": "v2", "kind": "HorizontalPodAutoscaler", "name": name},
            "patch": format!("- op: replace\n  path: /spec/minReplicas\n  value: {}\n- op: replace\n  path: /spec/maxReplicas\n  value: {}\n", b.min, b.max),
        }));
    }
    if let Some(res) = &o.resources {
        patches.push(json!({
            "target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": name},
            "patch": format!(
                "- op: replace\n  path: /spec/template/spec/containers/0/resources\n  value:\n    requests: {{cpu: \"{}\", memory: \"{}\"}}\n    limits: {{cpu: \"{}\", memory: \"{}\"}}\n",
                res.requests.cpu, res.requests.memory, res.limits.cpu, res.limits.memory
            ),
        }));
    }
    patches.push(json!({
        "target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": name},
        "patch": format!("- op: add\n  path: /spec/template/spec/containers/0/env/-\n  value: {{name: FLOTILLA_ENV, value: {env}}}\n"),
    }));
    let mut k = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": namespace,
        "resources": ["../../base"],
        "images": [{"name": d.image, "newTag": tag}],
        "labels": [{"pairs": {"app.kubernetes.io/instance": format!("{name}-{env}"), "environment": env}, "includeSelectors": false}],
        "patches": patches,
    });
    let host = env_host(d, env);
    k["patches"].as_array_mut().into_iter().for_each(|p| {
        p.push(json!({
            "target": {"group": "networking.k8s.io", "version": "v1", "kind": "Ingress", "name": name},
            "patch": format!("- op: replace\n  path: /spec/rules/0/host\n  value: {host}\n"),
        }));
    });
    let mut files = Vec::new();
    if canary {
        // The release pipeline copies one of strategies/*.yaml over strategy.yaml to pick
        // how this environment's next version rolls out.
        let patch = |strategy: Strategy| {
            let value = rollout_strategy(d, strategy);
            let text = serde_saphyr::to_string(
                &json!([{"op": "replace", "path": "/spec/strategy", "value": value}]),
            )
            .map_err(|e| GenerateError::Yaml("strategy patch".into(), e.to_string()))?;
            Ok::<_, GenerateError>(format!(
                "# Generated by `flotilla deploy generate`.\n{text}"
            ))
        };
        for (file, strategy) in [
            ("canary", Strategy::Canary),
            ("blue-green", Strategy::BlueGreen),
            ("rolling", Strategy::Rolling),
        ] {
            files.push(File::new(
                format!("kubernetes/overlays/{env}/strategies/{file}.yaml"),
                patch(strategy)?,
            ));
        }
        files.push(File::new(
            format!("kubernetes/overlays/{env}/strategy.yaml"),
            patch(d.rollout.strategy)?,
        ));
        k["patches"].as_array_mut().into_iter().for_each(|p| {
            p.push(json!({"path": "strategy.yaml", "target": {"group": "argoproj.io", "version": "v1alpha1", "kind": "Rollout", "name": name}}));
        });
    }
    files.push(yaml(
        &format!("kubernetes/overlays/{env}/kustomization.yaml"),
        &[k],
    )?);
    Ok(files)
}

fn rollout(d: &DeployConfig, k: &Knobs, metadata: Value) -> Value {
    let name = &d.name;
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": metadata,
        "spec": {
            "replicas": k.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": labels(d)},
            "workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "scaleDown": "progressively"},
            "strategy": k.strategy,
        },
    })
}

/// The Rollout's `spec.strategy` for `strategy`; `rolling` is a canary without steps, which
/// Argo Rollouts carries out as a rolling update.
pub(super) fn rollout_strategy(d: &DeployConfig, strategy: Strategy) -> Value {
    let r = &d.rollout;
    let name = &d.name;
    let analysis = json!({
        "templates": [
            {"templateName": format!("{name}-success-rate")},
            {"templateName": format!("{name}-latency")},
            {"templateName": format!("{name}-workflow-success-rate")},
        ],
        "args": [
            {"name": "service-name", "value": name},
            {"name": "namespace", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            // The new version's pods: what the analysis judges.
            {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
        ],
    });
    match strategy {
        Strategy::Rolling => json!({"canary": {
            "canaryService": format!("{name}-canary"),
            "stableService": name,
            "steps": [],
        }}),
        Strategy::BlueGreen => json!({"blueGreen": {
            "activeService": name,
            "previewService": format!("{name}-preview"),
            "autoPromotionEnabled": true,
            "prePromotionAnalysis": analysis,
            "scaleDownDelaySeconds": 30,
        }}),
        Strategy::Canary => {
            let steps: Vec<Value> = r
                .steps
                .iter()
                .map(|s| {
                    if let Some(w) = s.set_weight {
                        json!({"setWeight": w})
                    } else if let Some(p) = &s.pause {
                        json!({"pause": {"duration": format!("{}s", p.0.as_secs())}})
                    } else {
                        json!({"analysis": analysis.clone()})
                    }
                })
                .collect();
            json!({"canary": {
                "canaryService": format!("{name}-canary"),
                "stableService": name,
                "trafficRouting": {"nginx": {"stableIngress": name}},
                "steps": steps,
            }})
        }
    }
}

/// The PromQL of the analysis: request success rate, p95 latency (long polls, which wait on
/// purpose, left out), workflow success rate, all of the new version's pods only (the pod
/// template hash the PodMonitor copies from Argo's pod label). An empty result (no traffic
/// yet) is neither success nor failure: inconclusive.
pub fn analysis_queries(d: &DeployConfig) -> Vec<(String, String, String, String)> {
    let sel = r#"job=~"(.+/)?{{args.service-name}}",namespace=~"{{args.namespace}}",rollouts_pod_template_hash=~"{{args.canary-hash}}""#;
    let r = &d.rollout;
    vec![
        (
            format!("{}-success-rate", d.name),
            format!(
                "sum(rate(http_requests_total{{{sel},code!~\"5..\"}}[2m])) / sum(rate(http_requests_total{{{sel}}}[2m]))"
            ),
            format!("len(result) > 0 && result[0] >= {}", r.min_success_rate),
            format!("len(result) > 0 && result[0] < {}", r.min_success_rate),
        ),
        (
            format!("{}-latency", d.name),
            format!(
                "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{sel},route!~\".*[?]wait\"}}[2m])))"
            ),
            format!("len(result) > 0 && result[0] <= {}", r.max_p95_seconds),
            format!("len(result) > 0 && result[0] > {}", r.max_p95_seconds),
        ),
        (
            format!("{}-workflow-success-rate", d.name),
            format!(
                "sum(rate(workflow_runs_total{{{sel},status=\"succeeded\"}}[5m])) / sum(rate(workflow_runs_total{{{sel}}}[5m]))"
            ),
            format!(
                "len(result) > 0 && result[0] >= {}",
                r.min_workflow_success_rate
            ),
            format!(
                "len(result) > 0 && result[0] < {}",
                r.min_workflow_success_rate
            ),
        ),
    ]
}

fn analysis_templates(d: &DeployConfig, k: &Knobs, meta: &dyn Fn(&str) -> Value) -> Vec<Value> {
    analysis_queries(d)
        .into_iter()
        .zip(ANALYSIS_KEYS)
        .map(|((name, query, _, _), key)| {
            json!({
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "AnalysisTemplate",
                "metadata": meta(&name),
                "spec": {
                    "args": [{"name": "service-name"}, {"name": "namespace"}, {"name": "canary-hash"}],
                    "metrics": [{
                        "name": name,
                        "interval": k.analysis["interval"],
                        "count": 5,
                        "failureLimit": 1,
                        "inconclusiveLimit": 2,
                        "successCondition": k.analysis[key]["successCondition"],
                        "failureCondition": k.analysis[key]["failureCondition"],
                        "provider": {"prometheus": {"address": d.prometheus_url, "query": query}},
                    }],
                },
            })
        })
        .collect()
}
