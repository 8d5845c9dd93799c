//! What to load and how: the target request, the load model, the profile.

use std::time::Duration;

use serde_json::Value;

/// What each iteration sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// `POST /api/v1/workflows/{name}/runs?wait=…`: latency is the whole run.
    Workflow { name: String, input: Value },
    /// `POST /api/v1/execute` to an agent or a capability.
    Execute {
        agent: Option<String>,
        capability: Option<String>,
        input: Value,
    },
    /// Any route, as other load tools send it.
    Http {
        method: reqwest::Method,
        path: String,
        body: Option<String>,
    },
}

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Model {
    /// `concurrency` iterations in flight at all times, each starting when one ends.
    Closed { concurrency: u32 },
    /// Arrivals at `rate` per second (reached linearly over `ramp`), whatever the latency:
    /// at most `max_in_flight` at once, later arrivals wait (their wait counts in latency)
    /// and are dropped past `max_backlog` waiting.
    Open {
        rate: f64,
        ramp: Duration,
        max_in_flight: u32,
    },
}

/// A load test.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Base URL of the server.
    pub base: reqwest::Url,
    pub target: Target,
    pub model: Model,
    /// How long load is offered, after the warm-up.
    pub duration: Duration,
    /// Load offered before measuring (not recorded).
    pub warmup: Duration,
    /// Most iterations started, warm-up included.
    pub max_requests: u64,
    /// A request's timeout (and the `?wait=` of workflow runs).
    pub timeout: Duration,
    /// Extra headers (`--api-key`, `--header`).
    pub headers: Vec<(String, String)>,
}

/// A named starting point: the seed's load-test stages, plus a short smoke test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// 2 concurrent for 30 s: does it work at all.
    Smoke,
    /// 10 concurrent workflows for 10 minutes.
    Baseline,
    /// 50 concurrent for 30 minutes.
    Stress,
    /// 25 concurrent for 4 hours.
    Endurance,
}

impl Profile {
    /// By name.
    pub fn parse(name: &str) -> Option<Profile> {
        Some(match name {
            "smoke" => Profile::Smoke,
            "baseline" => Profile::Baseline,
            "stress" => Profile::Stress,
            "endurance" => Profile::Endurance,
            _ => return None,
        })
    }

    /// Concurrency and duration.
    pub fn shape(self) -> (u32, Duration) {
        let min = |m: u64| Duration::from_secs(m * 60);
        match self {
            Profile::Smoke => (2, Duration::from_secs(30)),
            Profile::Baseline => (10, min(10)),
            Profile::Stress => (50, min(30)),
            Profile::Endurance => (25, min(240)),
        }
    }
}

/// Parses a rate: `200`, `200/s`, `12000/m`.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (n, per) = match text.split_once('/') {
        Some((n, unit)) => {
            let per = match unit {
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(format!("`{text}`: the unit is /s, /m or /h")),
            };
            (n, per)
        }
        None => (text, 1.0),
    };
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a rate such as 200/s"))?;
    if !(n > 0.0 && n.is_finite()) {
        return Err(format!("`{text}`: a rate is more than 0"));
    }
    Ok(n / per)
}

/// When the `i`-th arrival (from 0) is due, from the start: rate reached linearly over
/// `ramp`, then constant.
pub fn arrival(i: u64, rate: f64, ramp: Duration) -> Duration {
    let ramp_s = ramp.as_secs_f64();
    let during_ramp = rate * ramp_s / 2.0;
    let i = i as f64;
    let t = if ramp_s > 0.0 && i < during_ramp {
        (2.0 * ramp_s * i / rate).sqrt()
    } else {
        ramp_s + (i - during_ramp.min(i)) / rate
    };
    Duration::from_secs_f64(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_arrivals() {
        assert_eq!(parse_rate("200/s").unwrap(), 200.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("5/d").is_err());
        // Constant rate: one every 10 ms.
        assert_eq!(
            arrival(10, 100.0, Duration::ZERO),
            Duration::from_millis(100)
        );
        // A 2 s ramp to 100/s offers 100 arrivals during the ramp, then 100/s.
        let at = |i| arrival(i, 100.0, Duration::from_secs(2)).as_secs_f64();
        assert!((at(100) - 2.0).abs() < 1e-9);
        assert!((at(200) - 3.0).abs() < 1e-9);
        assert!(at(25) > 0.9 && at(25) < 1.1, "{}", at(25));
    }
}
