//! What templates read: steps, inputs and flags that must exist where they are read.

use std::collections::{BTreeSet, HashMap};

use super::Checker;
use crate::error::Diagnostic;
use crate::model::{Config, Workflow};
use crate::template;
use crate::yaml::{SpanIndex, child_index, child_key};

/// `; did you mean `x`?` when one of `names` is close to `name`.
pub fn suggest<'a>(name: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| (strsim::damerau_levenshtein(name, n), n))
        .filter(|(d, n)| *d <= (name.len().max(n.len()) / 3).max(1) && *d < name.len())
        .min()
        .map_or(String::new(), |(_, n)| format!("; did you mean `{n}`?"))
}

/// The steps each step runs after, directly or through others (the workflow has no cycle).
fn ancestors(wf: &Workflow, ids: &HashMap<&str, usize>) -> Vec<BTreeSet<usize>> {
    fn visit(
        i: usize,
        wf: &Workflow,
        ids: &HashMap<&str, usize>,
        memo: &mut Vec<Option<BTreeSet<usize>>>,
    ) -> BTreeSet<usize> {
        if let Some(done) = &memo[i] {
            return done.clone();
        }
        let mut all = BTreeSet::new();
        for need in &wf.steps[i].needs {
            if let Some(&j) = ids.get(need.as_str()) {
                all.insert(j);
                all.extend(visit(j, wf, ids, memo));
            }
        }
        memo[i] = Some(all.clone());
        all
    }
    let mut memo = vec![None; wf.steps.len()];
    (0..wf.steps.len())
        .map(|i| visit(i, wf, ids, &mut memo))
        .collect()
}

/// What templates read: `steps.X` must name a step that runs before (among the step's
/// needs, directly or not), and `input.x` a property of a closed `input_schema`.
pub(super) fn check_references(
    c: &mut Checker<'_>,
    name: &str,
    wf: &Workflow,
    path: &str,
    ids: &HashMap<&str, usize>,
) {
    let before = ancestors(wf, ids);
    let closed: Option<Vec<&str>> = wf.input_schema.as_ref().and_then(|s| {
        (s.get("additionalProperties") == Some(&serde_json::Value::Bool(false)))
            .then(|| s.get("properties").and_then(|p| p.as_object()))
            .flatten()
            .map(|p| p.keys().map(String::as_str).collect())
    });
    let step_ids: Vec<&str> = wf.steps.iter().map(|s| s.id.as_str()).collect();
    let check = |c: &mut Checker<'_>,
                 at: &str,
                 who: &str,
                 step: Option<usize>,
                 refs: Vec<String>| {
        let mut seen = BTreeSet::new();
        for r in refs {
            let mut parts = r.split('.');
            let (Some(root), Some(key)) = (parts.next(), parts.next()) else {
                continue;
            };
            if !seen.insert((root.to_owned(), key.to_owned())) {
                continue;
            }
            match (root, step) {
                ("steps", _) if !ids.contains_key(key) => c.err(
                    at,
                    format!("{who} reads `steps.{key}`, but workflow `{name}` has no step `{key}`{}", suggest(key, step_ids.iter().copied())),
                ),
                ("steps", Some(i)) if wf.steps[i].id == key => {
                    c.err(at, format!("{who} reads its own output (`steps.{key}`)"))
                }
                ("steps", Some(i)) if !before[i].contains(&ids[key]) => c.err(
                    at,
                    format!("{who} reads `steps.{key}`, which may not have run yet: add `{key}` to its `needs`"),
                ),
                ("input", _) if closed.as_ref().is_some_and(|props| !props.contains(&key)) => c.err(
                    at,
                    format!(
                        "{who} reads `input.{key}`, which the workflow's input_schema does not allow{}",
                        suggest(key, closed.iter().flatten().copied())
                    ),
                ),
                _ => {}
            }
        }
    };
    for (i, step) in wf.steps.iter().enumerate() {
        let sp = child_index(&child_key(path, "steps"), i);
        let who = format!("step `{}`", step.id);
        if let Some(input) = &step.input {
            check(
                c,
                &child_key(&sp, "input"),
                &who,
                Some(i),
                template::value_references(input),
            );
        }
        for (field, text) in [
            ("prompt", &step.prompt),
            ("instructions", &step.instructions),
        ] {
            if let Some(t) = text {
                check(
                    c,
                    &child_key(&sp, field),
                    &who,
                    Some(i),
                    template::references(t),
                );
            }
        }
        if let Some(when) = &step.when {
            check(
                c,
                &child_key(&sp, "when"),
                &who,
                Some(i),
                template::expression_references(when),
            );
        }
    }
    if let Some(out) = &wf.output {
        let who = format!("the output of workflow `{name}`");
        check(
            c,
            &child_key(path, "output"),
            &who,
            None,
            template::value_references(out),
        );
    }
}

/// Every `flag('name')` in the workflows' templates and conditions that names no flag in
/// `known` (the flag file's flags).
pub fn check_flag_references(
    config: &Config,
    index: &SpanIndex,
    known: &BTreeSet<String>,
) -> Vec<Diagnostic> {
    let mut c = Checker {
        index,
        diags: Vec::new(),
    };
    for (name, wf) in &config.workflows {
        for (i, step) in wf.steps.iter().enumerate() {
            let sp = child_index(&child_key(&child_key("workflows", name), "steps"), i);
            let texts = [
                ("when", step.when.clone()),
                ("prompt", step.prompt.clone()),
                ("instructions", step.instructions.clone()),
                ("input", step.input.as_ref().map(|v| v.to_string())),
            ];
            for (field, text) in texts {
                for flag in template::flag_names(text.as_deref().unwrap_or_default()) {
                    if !known.contains(&flag) {
                        c.err(
                            &child_key(&sp, field),
                            format!(
                                "step `{}` asks for flag `{flag}`, which flags.file does not define{}",
                                step.id,
                                suggest(&flag, known.iter().map(String::as_str))
                            ),
                        );
                    }
                }
            }
        }
    }
    c.diags
}
