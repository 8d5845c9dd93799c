//! HTTP agents: `POST` the request JSON to the least-busy healthy endpoint, with
//! `Idempotency-Key` and `traceparent` headers; the answer is `{"output": …}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use flotilla_spec::AgentConfig;
use serde_json::Value;

use super::{Agent, AgentError, AgentRequest, AgentResponse};

/// One endpoint and its load.
#[derive(Debug)]
pub struct Endpoint {
    /// Where requests go.
    pub url: String,
    /// The URL as errors show it: credentials hidden.
    shown: String,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
}

impl Endpoint {
    fn new(url: String) -> Arc<Self> {
        let shown = flotilla_spec::redact::redact_url(&url);
        Arc::new(Self {
            url,
            shown,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        })
    }

    /// The probe URL: the endpoint's origin plus `health_path`.
    pub fn health_url(&self, path: &str) -> String {
        let after_scheme = self.url.find("://").map_or(0, |i| i + 3);
        let origin_end = self.url[after_scheme..]
            .find('/')
            .map_or(self.url.len(), |i| i + after_scheme);
        format!("{}{}", &self.url[..origin_end], path)
    }
}

/// The http runtime.
pub struct HttpAgent {
    endpoints: RwLock<Vec<Arc<Endpoint>>>,
    headers: BTreeMap<String, String>,
    health_path: String,
    client: reqwest::Client,
}

struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpAgent {
    /// An agent over `endpoints`.
    pub fn new(endpoints: Vec<String>, cfg: &AgentConfig, client: reqwest::Client) -> Self {
        Self {
            endpoints: RwLock::new(endpoints.into_iter().map(Endpoint::new).collect()),
            headers: cfg.headers.clone(),
            health_path: cfg.health_path.clone().unwrap_or_else(|| "/health".into()),
            client,
        }
    }

    /// Replaces the endpoint list (remote registration), keeping the load of known ones.
    pub fn set_endpoints(&self, urls: &[String]) {
        let mut eps = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        let kept: Vec<Arc<Endpoint>> = urls
            .iter()
            .map(|u| {
                eps.iter()
                    .find(|e| &e.url == u)
                    .cloned()
                    .unwrap_or_else(|| Endpoint::new(u.clone()))
            })
            .collect();
        *eps = kept;
    }

    /// Endpoint URLs.
    pub fn endpoint_urls(&self) -> Vec<String> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|e| e.url.clone())
            .collect()
    }

    /// Probes every endpoint; returns whether at least one is healthy.
    pub async fn probe(&self) -> bool {
        let eps: Vec<Arc<Endpoint>> = self
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut any = false;
        for ep in eps {
            let ok = self
                .client
                .get(ep.health_url(&self.health_path))
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            ep.healthy.store(ok, Ordering::Relaxed);
            any |= ok;
        }
        any
    }

    /// Least connections among healthy endpoints (any endpoint when none is healthy).
    fn pick(&self) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.read().unwrap_or_else(|e| e.into_inner());
        let healthy = eps.iter().filter(|e| e.healthy.load(Ordering::Relaxed));
        healthy
            .min_by_key(|e| e.in_flight.load(Ordering::Relaxed))
            .or_else(|| {
                eps.iter()
                    .min_by_key(|e| e.in_flight.load(Ordering::Relaxed))
            })
            .cloned()
    }
}

#[async_trait]
impl Agent for HttpAgent {
    async fn call(&self, req: &AgentRequest) -> Result<AgentResponse, AgentError> {
        let ep = self.pick().ok_or_else(|| {
            AgentError::Unavailable("no endpoint is registered for this agent".into())
        })?;
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(&ep);
        let mut builder = self
            .client
            .post(&ep.url)
            .header("Idempotency-Key", &req.idempotency_key)
            .header("traceparent", &req.traceparent)
            .json(req);
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        let resp = builder.send().await.map_err(|e| {
            AgentError::retryable(format!("calling {}: {}", ep.shown, super::error_text(e)))
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            AgentError::retryable(format!(
                "reading answer of {}: {}",
                ep.shown,
                super::error_text(e)
            ))
        })?;
        if !status.is_success() {
            let snippet: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            let message = format!("{} answered {status}: {snippet}", ep.shown);
            let retryable =
                status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
            return Err(AgentError::Failed { message, retryable });
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| {
            AgentError::permanent(format!("{} answered invalid JSON: {e}", ep.shown))
        })?;
        Ok(AgentResponse::unwrapped(value))
    }

    fn as_http(&self) -> Option<&HttpAgent> {
        Some(self)
    }
}
