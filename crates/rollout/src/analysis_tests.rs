//! The analysis state machine, driven by a fake provider (a list of answers).

use super::*;
use crate::spec::{Metric, Prometheus, Provider};
use flotilla_spec::Dur;

const TIMEOUT: i64 = 600_000;

fn metric(success: Option<&str>, failure: Option<&str>) -> Metric {
    Metric {
        name: "rate".into(),
        interval: Some(Dur::secs(5)),
        count: Some(5),
        initial_delay: None,
        success_condition: success.map(str::to_owned),
        failure_condition: failure.map(str::to_owned),
        failure_limit: 0,
        inconclusive_limit: 0,
        consecutive_error_limit: 4,
        on_unavailable: OnUnavailable::Pause,
        act: Act::Abort,
        provider: Provider {
            prometheus: Prometheus {
                address: "http://127.0.0.1:9".into(),
                query: "up".into(),
                timeout: None,
                headers: Vec::new(),
            },
        },
    }
}

/// Feeds answers 5 s apart, as a fake provider would give them.
fn drive(metric: Metric, answers: Vec<Result<Sample, String>>) -> MetricRun {
    let mut run = MetricRun::new(metric, 0);
    for (i, a) in answers.into_iter().enumerate() {
        let m = measure(&run.metric, a, i as i64 * 5_000);
        run.measurements.push(m);
    }
    run
}

fn v(x: f64) -> Result<Sample, String> {
    Ok(Sample::Vector(vec![x]))
}

#[test]
fn conditions_follow_argo() {
    let both = metric(Some("result[0] >= 0.95"), Some("result[0] < 0.9"));
    assert_eq!(measure(&both, v(0.97), 0).phase, Phase::Successful);
    assert_eq!(measure(&both, v(0.8), 0).phase, Phase::Failed);
    assert_eq!(measure(&both, v(0.92), 0).phase, Phase::Inconclusive);
    let success_only = metric(Some("result[0] >= 0.95"), None);
    assert_eq!(measure(&success_only, v(0.9), 0).phase, Phase::Failed);
    let failure_only = metric(None, Some("result[0] > 0.5"));
    assert_eq!(measure(&failure_only, v(0.1), 0).phase, Phase::Successful);
    let none = metric(None, None);
    assert_eq!(measure(&none, v(0.1), 0).phase, Phase::Successful);
    // A scalar result is a number; Argo's expr operators and helpers work.
    let scalar = metric(Some("result > 1 && !isNaN(result)"), None);
    assert_eq!(
        measure(&scalar, Ok(Sample::Scalar(2.0)), 0).phase,
        Phase::Successful
    );
    assert_eq!(
        measure(&scalar, Ok(Sample::Scalar(f64::NAN)), 0).phase,
        Phase::Failed
    );
    let generated = metric(
        Some("len(result) > 0 && result[0] >= 0.99"),
        Some("len(result) > 0 && result[0] < 0.99"),
    );
    assert_eq!(measure(&generated, v(0.995), 0).phase, Phase::Successful);
    assert_eq!(measure(&generated, v(0.5), 0).phase, Phase::Failed);
    let with_default = metric(Some("default(result[0], 0) >= 0 || result != 1"), None);
    assert_eq!(measure(&with_default, v(1.0), 0).phase, Phase::Successful);
}

#[test]
fn a_condition_that_cannot_be_evaluated_is_an_error() {
    let m = metric(Some("result.nope >= 1"), None);
    let got = measure(&m, Ok(Sample::Scalar(1.0)), 0);
    assert_eq!(got.phase, Phase::Error);
    assert!(got.message.unwrap().contains("result.nope"));
}

#[test]
fn failure_limit_is_strictly_greater() {
    let mut m = metric(Some("result[0] >= 0.95"), None);
    m.failure_limit = 1;
    let one = drive(m.clone(), vec![v(0.5), v(0.99)]);
    assert_eq!(one.phase(10_000, TIMEOUT), MetricPhase::Running);
    let two = drive(m.clone(), vec![v(0.5), v(0.99), v(0.5)]);
    assert_eq!(two.phase(15_000, TIMEOUT), MetricPhase::Failed);
    // The default limit 0 fails on the first failure.
    let zero = drive(metric(Some("result[0] >= 0.95"), None), vec![v(0.5)]);
    assert_eq!(zero.phase(5_000, TIMEOUT), MetricPhase::Failed);
    let (verdict, _) = verdict(&[two], 15_000, TIMEOUT);
    let Verdict::Abort { reason } = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(reason.metric, "rate");
    assert_eq!(reason.rule, "2 failed measurements > failure_limit 1");
    assert!(
        reason.values.contains("[0.5] (failed)"),
        "{}",
        reason.values
    );
    assert!(reason.condition.contains("result[0] >= 0.95"));
}

#[test]
fn count_completes_a_metric_within_its_limits() {
    let mut m = metric(Some("result[0] >= 0.95"), None);
    m.failure_limit = 1;
    let run = drive(m, vec![v(0.99), v(0.5), v(0.99), v(0.99), v(0.99)]);
    assert_eq!(run.phase(25_000, TIMEOUT), MetricPhase::Successful);
    assert_eq!(run.next_due(25_000, TIMEOUT), None);
    assert_eq!(verdict(&[run], 25_000, TIMEOUT).0, Verdict::Successful);
}

#[test]
fn inconclusive_past_its_limit_pauses() {
    let mut m = metric(Some("result[0] >= 0.95"), Some("result[0] < 0.9"));
    m.inconclusive_limit = 1;
    let run = drive(m, vec![v(0.92), v(0.93)]);
    assert_eq!(run.phase(10_000, TIMEOUT), MetricPhase::Inconclusive);
    assert!(matches!(
        verdict(&[run], 10_000, TIMEOUT).0,
        Verdict::Pause { .. }
    ));
}

#[test]
fn consecutive_errors_past_the_limit_err_and_a_success_resets_them() {
    let m = metric(Some("result.nope"), None);
    let ok = metric(Some("result[0] >= 0"), None);
    let mut run = drive(m.clone(), vec![v(1.0); 4]);
    assert_eq!(run.phase(20_000, TIMEOUT), MetricPhase::Running);
    run.measurements.push(measure(&m, v(1.0), 25_000));
    assert_eq!(run.phase(25_000, TIMEOUT), MetricPhase::Error);
    // Four errors, a success, four errors: never more than four in a row.
    let mut run = drive(m.clone(), vec![v(1.0); 4]);
    run.metric.count = Some(20);
    run.measurements.push(measure(&ok, v(1.0), 20_000));
    for i in 0..4 {
        run.measurements
            .push(measure(&m, v(1.0), 25_000 + i * 5_000));
    }
    assert_eq!(run.tally().consecutive_errors, 4);
    assert_eq!(run.phase(45_000, TIMEOUT), MetricPhase::Running);
}

#[test]
fn unavailable_holds_and_never_rolls_back_by_itself() {
    let m = metric(Some("result[0] >= 0.95"), None);
    let run = drive(
        m.clone(),
        vec![
            v(0.99),
            Err("connection refused".into()),
            Ok(Sample::Vector(vec![])),
        ],
    );
    assert_eq!(
        run.phase(10_000, TIMEOUT),
        MetricPhase::Unavailable {
            since: 5_000,
            timed_out: false
        }
    );
    let (v1, _) = verdict(std::slice::from_ref(&run), 10_000, TIMEOUT);
    let Verdict::Hold { since, reason } = v1 else {
        panic!("{v1:?}")
    };
    assert_eq!(since, 5_000);
    assert!(reason.rule.contains("no series"), "{}", reason.rule);
    // Unavailable measurements do not count towards `count`, nor towards errors.
    assert_eq!(run.tally().consecutive_errors, 0);
    assert!(run.next_due(10_000, TIMEOUT).is_some());
    // Past the timeout: `pause` (the default) waits for a human, `fail` rolls back.
    let late = 5_000 + TIMEOUT;
    assert!(matches!(
        verdict(std::slice::from_ref(&run), late, TIMEOUT).0,
        Verdict::Pause { .. }
    ));
    let mut failing = run.clone();
    failing.metric.on_unavailable = OnUnavailable::Fail;
    assert!(matches!(
        verdict(&[failing], late, TIMEOUT).0,
        Verdict::Abort { .. }
    ));
    // Answers again: the outage is over.
    let mut back = run.clone();
    back.measurements.push(measure(&m, v(0.99), 15_000));
    assert_eq!(back.phase(15_000, TIMEOUT), MetricPhase::Running);
    // `ignore`: an outage never holds, and counts towards completion.
    let mut ignored = m.clone();
    ignored.on_unavailable = OnUnavailable::Ignore;
    ignored.count = Some(2);
    let run = drive(ignored, vec![v(0.99), Err("timeout".into())]);
    assert_eq!(run.phase(10_000, TIMEOUT), MetricPhase::Successful);
}

#[test]
fn the_worst_metric_decides_and_advisory_metrics_only_advise() {
    let failed = drive(metric(Some("result[0] >= 0.95"), None), vec![v(0.5)]);
    let mut advisory = failed.clone();
    advisory.metric.name = "advice".into();
    advisory.metric.act = Act::Advisory;
    let mut paused = failed.clone();
    paused.metric.name = "hold-me".into();
    paused.metric.act = Act::Pause;
    let running = drive(metric(Some("result[0] >= 0.95"), None), vec![v(0.99)]);
    let (v1, advice) = verdict(&[advisory.clone(), running.clone()], 5_000, TIMEOUT);
    assert_eq!(v1, Verdict::Running);
    assert_eq!(advice.len(), 1);
    assert_eq!(advice[0].reason.metric, "advice");
    let (v2, _) = verdict(&[paused.clone(), running.clone()], 5_000, TIMEOUT);
    assert!(matches!(v2, Verdict::Pause { .. }));
    let (v3, _) = verdict(&[paused, failed, running], 5_000, TIMEOUT);
    assert!(matches!(v3, Verdict::Abort { reason } if reason.metric == "rate"));
}

#[test]
fn initial_delay_and_interval_schedule_measurements() {
    let mut m = metric(Some("result[0] >= 0.95"), None);
    m.initial_delay = Some(Dur::secs(30));
    let mut run = MetricRun::new(m.clone(), 1_000);
    assert_eq!(run.next_due(1_000, TIMEOUT), Some(31_000));
    run.measurements.push(measure(&m, v(0.99), 31_000));
    assert_eq!(run.next_due(31_000, TIMEOUT), Some(36_000));
    // Without count or interval, one measurement decides.
    let mut once = metric(Some("result[0] >= 0.95"), None);
    once.interval = None;
    once.count = None;
    let run = drive(once, vec![v(0.99)]);
    assert_eq!(run.phase(0, TIMEOUT), MetricPhase::Successful);
    // With an interval and no count, it runs until stopped.
    let mut forever = metric(Some("result[0] >= 0.95"), None);
    forever.count = None;
    let run = drive(forever, vec![v(0.99); 50]);
    assert_eq!(run.phase(250_000, TIMEOUT), MetricPhase::Running);
}

#[test]
fn argo_operators_become_minijinja() {
    assert_eq!(
        to_minijinja("a && !b || c != 'x&&y'"),
        "a  and   not b  or  c != 'x&&y'"
    );
    assert!(check_condition("result[0] >= 0.95 && len(result) > 0").is_ok());
    assert!(check_condition("result[0] >=").is_err());
}
