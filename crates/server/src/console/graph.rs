//! A run drawn two ways, as SVG built on the server: the DAG of its steps (status colours,
//! the critical path) and a timeline with every attempt as its own bar.

use std::collections::HashMap;
use std::fmt::Write as _;

use flotilla_store::{EventKind, EventRecord, RunRecord, StepRecord};

/// Escapes text for SVG content and attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// A step of the definition: its id and what it needs.
pub(crate) struct Node<'a> {
    pub id: &'a str,
    pub needs: &'a [String],
}

/// How long a step took (so far), in ms; 0 before it started.
fn took(step: Option<&StepRecord>, now: i64) -> i64 {
    step.and_then(|s| s.started_at.map(|t| s.finished_at.unwrap_or(now) - t))
        .unwrap_or(0)
        .max(0)
}

/// The steps on the longest chain of needs, weighted by how long each step took.
fn critical_path(nodes: &[Node<'_>], steps: &HashMap<&str, &StepRecord>, now: i64) -> Vec<bool> {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    // Definitions are validated acyclic, and a need is declared before use or not: settle
    // lengths by repeated passes, at most one per step.
    let mut best = vec![(0i64, None::<usize>); nodes.len()];
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            let own = took(steps.get(n.id).copied(), now);
            let (before, via) = n
                .needs
                .iter()
                .filter_map(|d| index.get(d.as_str()).map(|&j| (best[j].0, Some(j))))
                .max_by_key(|(len, _)| *len)
                .unwrap_or((0, None));
            if best[i] != (before + own, via) {
                best[i] = (before + own, via);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut on = vec![false; nodes.len()];
    let mut at = best
        .iter()
        .enumerate()
        .filter(|(_, b)| b.0 > 0)
        .max_by_key(|(_, b)| b.0)
        .map(|(i, _)| i);
    let mut guard = nodes.len();
    while let Some(i) = at
        && guard > 0
    {
        on[i] = true;
        at = best[i].1;
        guard -= 1;
    }
    on
}

/// The DAG: a column per depth, status as colour and text, the critical path in bold.
pub(crate) fn dag(nodes: &[Node<'_>], run: &RunRecord, now: i64) -> String {
    const W: i64 = 164;
    const H: i64 = 34;
    const COL: i64 = 204;
    const ROW: i64 = 50;
    let steps: HashMap<&str, &StepRecord> =
        run.steps.iter().map(|s| (s.step_id.as_str(), s)).collect();
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id, i)).collect();
    let mut depth = vec![0usize; nodes.len()];
    for _ in 0..nodes.len() {
        for (i, n) in nodes.iter().enumerate() {
            depth[i] = n
                .needs
                .iter()
                .filter_map(|d| index.get(d.as_str()))
                .map(|&j| depth[j] + 1)
                .max()
                .unwrap_or(0);
        }
    }
    let mut rows: HashMap<usize, i64> = HashMap::new();
    let pos: Vec<(i64, i64)> = depth
        .iter()
        .map(|&d| {
            let row = rows.entry(d).or_insert(0);
            *row += 1;
            (10 + d as i64 * COL, 10 + (*row - 1) * ROW)
        })
        .collect();
    let critical = critical_path(nodes, &steps, now);
    let width = 10 + (depth.iter().max().copied().unwrap_or(0) as i64 + 1) * COL - (COL - W) + 10;
    let height = 10 + rows.values().max().copied().unwrap_or(1) * ROW - (ROW - H) + 10;
    let mut svg = format!(
        "<svg class=\"dag\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" aria-labelledby=\"dag-title\"><title id=\"dag-title\">Steps of the run and what each needs; the critical path is drawn bold</title>"
    );
    for (i, n) in nodes.iter().enumerate() {
        for d in n.needs {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            let (x1, y1) = (pos[j].0 + W, pos[j].1 + H / 2);
            let (x2, y2) = (pos[i].0, pos[i].1 + H / 2);
            let mid = (x1 + x2) / 2;
            let class = if critical[i] && critical[j] {
                "edge critical"
            } else {
                "edge"
            };
            let _ = write!(
                svg,
                "<path class=\"{class}\" d=\"M{x1} {y1} C{mid} {y1} {mid} {y2} {x2} {y2}\"/>"
            );
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        let status = steps.get(n.id).map_or("pending", |s| s.status.as_str());
        let (x, y) = pos[i];
        let crit = if critical[i] { " critical" } else { "" };
        let attempts = steps.get(n.id).map_or(0, |s| s.attempts);
        let _ = write!(
            svg,
            "<g class=\"node s-{status}{crit}\"><title>{}: {status}, {attempts} attempt(s){}</title>\
             <rect x=\"{x}\" y=\"{y}\" width=\"{W}\" height=\"{H}\" rx=\"6\"/>\
             <text x=\"{}\" y=\"{}\">{}</text><text class=\"sub\" x=\"{}\" y=\"{}\">{status}</text></g>",
            esc(n.id),
            if critical[i] {
                ", on the critical path"
            } else {
                ""
            },
            x + 8,
            y + 15,
            esc(&short(n.id, 21)),
            x + 8,
            y + 28,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One attempt of a step, read from the run's events.
#[derive(Debug, PartialEq)]
pub(crate) struct Attempt {
    pub step: String,
    pub number: u64,
    pub start: i64,
    pub end: Option<i64>,
    /// `succeeded`, `failed`, `retried`, `running` or `stopped` (the run ended first).
    pub outcome: &'static str,
}

/// Every attempt of every step, in the order they started.
pub(crate) fn attempts(events: &[EventRecord]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    for e in events {
        let step = e.step_id.clone().unwrap_or_default();
        let outcome = match e.kind {
            EventKind::StepStarted => {
                open.insert(step.clone(), out.len());
                out.push(Attempt {
                    number: e.data.get("attempt").and_then(|a| a.as_u64()).unwrap_or(1),
                    step,
                    start: e.at,
                    end: None,
                    outcome: "running",
                });
                continue;
            }
            EventKind::StepRetrying => "retried",
            EventKind::StepFailed => "failed",
            EventKind::StepCancelled => "cancelled",
            EventKind::StepSucceeded => "succeeded",
            EventKind::RunFinished => {
                for (_, i) in open.drain() {
                    out[i].end = Some(e.at);
                    out[i].outcome = "stopped";
                }
                continue;
            }
            _ => continue,
        };
        if let Some(i) = open.remove(&step) {
            out[i].end = Some(e.at);
            out[i].outcome = outcome;
        }
    }
    out
}

/// The timeline: a row per step, a bar per attempt, from the run's creation to its end.
pub(crate) fn gantt(attempts: &[Attempt], run: &RunRecord, now: i64) -> String {
    const LABEL: i64 = 150;
    const PLOT: i64 = 560;
    const ROW: i64 = 24;
    let t0 = run.created_at;
    let t1 = attempts
        .iter()
        .map(|a| a.end.unwrap_or(now))
        .chain(run.finished_at)
        .max()
        .unwrap_or(now)
        .max(t0 + 1);
    let span = (t1 - t0) as f64;
    let mut order: Vec<&str> = Vec::new();
    for a in attempts {
        if !order.contains(&a.step.as_str()) {
            order.push(&a.step);
        }
    }
    let width = LABEL + PLOT + 40;
    let height = 30 + order.len().max(1) as i64 * ROW;
    let x = |t: i64| LABEL + (((t - t0) as f64 / span) * PLOT as f64).round() as i64;
    let mut svg = format!(
        "<svg class=\"gantt\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-labelledby=\"gantt-title\"><title id=\"gantt-title\">Timeline: one bar per attempt, from the run's start ({})</title>",
        super::format::duration(t1 - t0)
    );
    for k in 0..=4 {
        let t = t0 + (t1 - t0) * k / 4;
        let _ = write!(
            svg,
            "<line class=\"tick\" x1=\"{0}\" x2=\"{0}\" y1=\"4\" y2=\"{1}\"/><text class=\"axis\" text-anchor=\"middle\" x=\"{0}\" y=\"{2}\">{3}</text>",
            x(t),
            height - 14,
            height - 2,
            super::format::duration(t - t0)
        );
    }
    for (row, step) in order.iter().enumerate() {
        let y = 6 + row as i64 * ROW;
        let _ = write!(
            svg,
            "<text class=\"label\" x=\"4\" y=\"{}\">{}</text>",
            y + 14,
            esc(&short(step, 20))
        );
        for a in attempts.iter().filter(|a| a.step == *step) {
            let end = a.end.unwrap_or(now);
            let (x1, x2) = (x(a.start), x(end));
            let _ = write!(
                svg,
                "<rect class=\"bar a-{}\" x=\"{x1}\" y=\"{y}\" width=\"{}\" height=\"{}\" rx=\"3\"><title>{} attempt {}: {}, {}</title></rect>",
                a.outcome,
                (x2 - x1).max(3),
                ROW - 8,
                esc(step),
                a.number,
                a.outcome,
                super::format::duration(end - a.start)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A metric's measurements as a small line chart, each point coloured by its phase.
pub(crate) fn sparkline(metric: &str, points: &[(i64, Option<f64>, String)]) -> String {
    const W: f64 = 260.0;
    const H: f64 = 56.0;
    let values: Vec<f64> = points.iter().filter_map(|p| p.1).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if values.is_empty() {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    let n = points.len().max(2) as f64 - 1.0;
    let at = |i: usize, v: f64| {
        (
            6.0 + i as f64 / n * (W - 12.0),
            H - 6.0 - (v - lo) / (hi - lo) * (H - 12.0),
        )
    };
    let mut svg = format!(
        "<svg class=\"spark\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{} over {} measurements, from {lo:.4} to {hi:.4}\">",
        esc(metric),
        points.len()
    );
    let line: Vec<String> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.1.map(|v| at(i, v)))
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = write!(
        svg,
        "<polyline class=\"line\" points=\"{}\"/>",
        line.join(" ")
    );
    for (i, (t, v, phase)) in points.iter().enumerate() {
        let (x, y) = at(i, v.unwrap_or(lo));
        let _ = write!(
            svg,
            "<circle class=\"p-{}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\"><title>{}: {} ({})</title></circle>",
            esc(phase),
            super::format::time(*t),
            v.map_or("no value".into(), |v| format!("{v}")),
            esc(phase)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: i64, at: i64, kind: EventKind, step: &str, attempt: u64) -> EventRecord {
        EventRecord {
            run_id: "r".into(),
            seq,
            at,
            kind,
            step_id: (!step.is_empty()).then(|| step.into()),
            data: json!({"attempt": attempt}),
        }
    }

    #[test]
    fn retries_are_separate_attempts() {
        use EventKind::*;
        let events = [
            event(1, 0, RunStarted, "", 0),
            event(2, 1, StepStarted, "a", 1),
            event(3, 5, StepRetrying, "a", 1),
            event(4, 9, StepStarted, "a", 2),
            event(5, 12, StepSucceeded, "a", 2),
            event(6, 12, StepStarted, "b", 1),
            event(7, 20, RunFinished, "", 0),
        ];
        let got = attempts(&events);
        let brief: Vec<_> = got
            .iter()
            .map(|a| (a.step.as_str(), a.number, a.start, a.end, a.outcome))
            .collect();
        assert_eq!(
            brief,
            [
                ("a", 1, 1, Some(5), "retried"),
                ("a", 2, 9, Some(12), "succeeded"),
                ("b", 1, 12, Some(20), "stopped"),
            ]
        );
    }

    #[test]
    fn the_critical_path_follows_the_slowest_chain() {
        let needs_a = vec!["a".to_owned()];
        let nodes = [
            Node {
                id: "a",
                needs: &[],
            },
            Node {
                id: "fast",
                needs: &needs_a,
            },
            Node {
                id: "slow",
                needs: &needs_a,
            },
        ];
        let rec = |id: &str, start, end| StepRecord {
            step_id: id.into(),
            status: flotilla_store::StepStatus::Succeeded,
            attempts: 1,
            output: None,
            error: None,
            started_at: Some(start),
            finished_at: Some(end),
            agent: None,
            usage: None,
        };
        let (a, f, s) = (rec("a", 0, 10), rec("fast", 10, 12), rec("slow", 10, 50));
        let steps: HashMap<&str, &StepRecord> = [("a", &a), ("fast", &f), ("slow", &s)].into();
        assert_eq!(critical_path(&nodes, &steps, 100), [true, false, true]);
    }

    #[test]
    fn step_names_are_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
