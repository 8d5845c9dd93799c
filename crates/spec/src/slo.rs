//! Service-level objectives as operators write them: `p95<200ms`, `p99<=1s`, `errors<1%`,
//! `rps>100`. One parser and one checker, for load-test gates (`flotilla loadtest --slo`)
//! and the rollout policies' thresholds.

use std::fmt;
use std::time::Duration;

/// What an objective measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    /// A latency percentile (`p50`, `p95`, `p99.9`), 0 to 100.
    Percentile(f64),
    /// The largest latency (`max`).
    Max,
    /// The mean latency (`mean`).
    Mean,
    /// The share of requests that failed (`errors`), 0 to 1.
    Errors,
    /// Requests per second (`rps`).
    Rps,
}

/// How the measured value must compare with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl Cmp {
    /// Whether `value` meets `threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Cmp::Lt => value < threshold,
            Cmp::Le => value <= threshold,
            Cmp::Gt => value > threshold,
            Cmp::Ge => value >= threshold,
        }
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }

    /// The comparison that breaks this one (`<` is broken by `>=`).
    pub fn negated(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Ge,
            Cmp::Le => Cmp::Gt,
            Cmp::Gt => Cmp::Le,
            Cmp::Ge => Cmp::Lt,
        }
    }
}

/// One objective: `stat cmp threshold`. Latencies are in seconds, errors a fraction.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    /// What is measured.
    pub stat: Stat,
    /// How it must compare.
    pub cmp: Cmp,
    /// The threshold, in seconds (latencies), a fraction (errors) or per second (rps).
    pub threshold: f64,
    /// As written.
    pub text: String,
}

/// What a run measured, for checking objectives.
pub trait Measured {
    /// A latency percentile, in seconds.
    fn percentile(&self, p: f64) -> f64;
    /// The largest latency, in seconds.
    fn max(&self) -> f64;
    /// The mean latency, in seconds.
    fn mean(&self) -> f64;
    /// Failed share of requests, 0 to 1.
    fn error_rate(&self) -> f64;
    /// Requests per second.
    fn rps(&self) -> f64;
}

impl Objective {
    /// Parses one objective, e.g. `p95<200ms`.
    pub fn parse(text: &str) -> Result<Objective, String> {
        let text = text.trim();
        let at = text
            .find(['<', '>'])
            .ok_or_else(|| format!("`{text}`: expected a comparison such as `p95<200ms`"))?;
        let (name, rest) = text.split_at(at);
        let (cmp, value) = match rest.strip_prefix("<=").or(rest.strip_prefix(">=")) {
            Some(v) if rest.starts_with('<') => (Cmp::Le, v),
            Some(v) => (Cmp::Ge, v),
            None if rest.starts_with('<') => (Cmp::Lt, &rest[1..]),
            None => (Cmp::Gt, &rest[1..]),
        };
        let (name, value) = (name.trim(), value.trim());
        let stat = match name {
            "errors" | "error_rate" => Stat::Errors,
            "rps" => Stat::Rps,
            "max" => Stat::Max,
            "mean" | "avg" => Stat::Mean,
            p if p.starts_with('p') => {
                let n: f64 = p[1..]
                    .parse()
                    .map_err(|_| format!("`{text}`: `{p}` is not a percentile such as p95"))?;
                if !(0.0..=100.0).contains(&n) {
                    return Err(format!("`{text}`: a percentile is between p0 and p100"));
                }
                Stat::Percentile(n)
            }
            other => {
                return Err(format!(
                    "`{text}`: unknown measure `{other}` (p50…p99.99, max, mean, errors, rps)"
                ));
            }
        };
        let threshold = match stat {
            Stat::Errors => match value.strip_suffix('%') {
                Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
                None => value.parse::<f64>(),
            }
            .map_err(|_| format!("`{text}`: `{value}` is not a share such as 1% or 0.01"))?,
            Stat::Rps => value
                .trim_end_matches("/s")
                .parse::<f64>()
                .map_err(|_| format!("`{text}`: `{value}` is not a rate such as 100"))?,
            _ => humantime::parse_duration(value)
                .map(|d: Duration| d.as_secs_f64())
                .map_err(|_| format!("`{text}`: `{value}` is not a duration such as 200ms"))?,
        };
        Ok(Objective {
            stat,
            cmp,
            threshold,
            text: text.to_owned(),
        })
    }

    /// Parses a comma-separated list, e.g. `p95<200ms,errors<1%`.
    pub fn parse_list(text: &str) -> Result<Vec<Objective>, String> {
        text.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Objective::parse)
            .collect()
    }

    /// The measured value this objective looks at.
    pub fn value(&self, m: &dyn Measured) -> f64 {
        match self.stat {
            Stat::Percentile(p) => m.percentile(p),
            Stat::Max => m.max(),
            Stat::Mean => m.mean(),
            Stat::Errors => m.error_rate(),
            Stat::Rps => m.rps(),
        }
    }

    /// Whether `m` meets the objective, and the value it was judged on.
    pub fn check(&self, m: &dyn Measured) -> (bool, f64) {
        let v = self.value(m);
        (self.cmp.holds(v, self.threshold), v)
    }

    /// A value in the objective's unit, for reports (`212ms`, `1.50%`, `98.0/s`).
    pub fn show(&self, value: f64) -> String {
        match self.stat {
            Stat::Errors => format!("{:.2}%", value * 100.0),
            Stat::Rps => format!("{value:.1}/s"),
            _ => format!("{:.1}ms", value * 1000.0),
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M;
    impl Measured for M {
        fn percentile(&self, p: f64) -> f64 {
            p / 1000.0
        }
        fn max(&self) -> f64 {
            1.0
        }
        fn mean(&self) -> f64 {
            0.05
        }
        fn error_rate(&self) -> f64 {
            0.02
        }
        fn rps(&self) -> f64 {
            150.0
        }
    }

    #[test]
    fn parses_and_checks_what_operators_write() {
        let list = Objective::parse_list("p95<200ms, p99.9<=1s,errors<1%,rps>100,max<2s").unwrap();
        assert_eq!(list.len(), 5);
        assert_eq!(list[0].stat, Stat::Percentile(95.0));
        assert_eq!(list[0].threshold, 0.2);
        assert_eq!(list[1].cmp, Cmp::Le);
        assert_eq!(list[2].threshold, 0.01);
        // p95 = 95 ms < 200 ms; p99.9 ≈ 0.999 s <= 1 s; errors 2 % ≥ 1 %; rps 150 > 100.
        let verdicts: Vec<bool> = list.iter().map(|o| o.check(&M).0).collect();
        assert_eq!(verdicts, [true, true, false, true, true]);
        assert_eq!(list[2].show(0.02), "2.00%");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "p95",
            "p95<fast",
            "q95<1s",
            "p101<1s",
            "errors<lots",
            "rps>many",
        ] {
            assert!(Objective::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Objective::parse("latency<1s")
                .unwrap_err()
                .contains("unknown measure")
        );
    }
}
