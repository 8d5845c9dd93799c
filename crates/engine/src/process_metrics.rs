//! The standard `process_*` metrics (CPU, memory, file descriptors, start time), read from
//! `/proc` at each scrape. Elsewhere than Linux they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ: 100 on every Linux architecture
/// flotilla ships for).
const TICKS: f64 = 100.0;

/// What `/proc` says of this process.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: i64,
    open_fds: i64,
    max_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

/// `utime + stime` and the start (ticks after boot) from a `stat` line.
fn parse_stat(stat: &str) -> Option<(f64, f64)> {
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) is index 11 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let start: f64 = fields.get(19)?.parse().ok()?;
    Some((utime + stime, start))
}

fn field(text: &str, key: &str) -> Option<i64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .find_map(|w| w.parse().ok())
}

fn sample() -> Option<Sample> {
    let (ticks, start) = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| field(&s, "btime"));
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| field(&s, "Max open files"));
    Some(Sample {
        cpu_seconds: ticks / TICKS,
        resident_bytes: field(&status, "VmRSS:").unwrap_or(0) * 1024,
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64),
        max_fds,
        start_time_seconds: boot.map(|b| b as f64 + start / TICKS),
    })
}

/// Registers with [`prometheus_client::registry::Registry::register_collector`].
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = sample() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            s.resident_bytes as f64,
        )?;
        gauge(
            "process_open_fds",
            "Open file descriptors",
            s.open_fds as f64,
        )?;
        if let Some(max) = s.max_fds {
            gauge(
                "process_max_fds",
                "Most file descriptors the process may open",
                max as f64,
            )?;
        }
        if let Some(start) = s.start_time_seconds {
            gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds",
                start,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_strange_name_parses() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 8 0 12345 1000000 200";
        assert_eq!(parse_stat(stat), Some((300.0, 12345.0)));
    }

    #[test]
    fn this_process_is_measured_on_linux() {
        if cfg!(target_os = "linux") {
            let s = sample().unwrap();
            assert!(s.resident_bytes > 0 && s.open_fds > 0, "{s:?}");
            assert!(s.start_time_seconds.unwrap() > 1.0e9);
        }
    }
}
