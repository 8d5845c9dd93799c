//! No module imports another in a circle, in the engine and the server: at the top level of
//! each crate, and between the modules of each folder. Imports are read from the sources
//! (`crate::…` and `super::…` paths), so a new cycle fails here before review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path of a source file (`run/driver.rs` → `["run", "driver"]`, `call/mod.rs` →
/// `["call"]`); `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (parts != ["lib"] && parts != ["main"] && !parts.is_empty()).then_some(parts)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module paths a file refers to through `crate::`, `super::`, `self::` and `use` of
/// its own submodules, outside comments and its unit tests.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let text = text
        .split("\n#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let relative = code.trim_start().strip_prefix("use ").map(|_| "use ");
        for (prefix, base) in [
            ("crate::", Vec::new()),
            ("super::", module[..module.len().saturating_sub(1)].to_vec()),
            ("self::", module.to_vec()),
            (relative.unwrap_or("crate::"), module.to_vec()),
        ] {
            for (at, _) in code.match_indices(prefix) {
                let path: Vec<String> = code[at + prefix.len()..]
                    .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if prefix == "use "
                    && path
                        .first()
                        .is_some_and(|p| ["crate", "super", "self"].contains(&p.as_str()))
                {
                    continue;
                }
                let mut full = base.clone();
                full.extend(path);
                out.push(full);
            }
        }
    }
    out
}

/// A cycle in `edges`, if any, as the nodes along it.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut c = stack[at..].to_vec();
            c.push(node.to_owned());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

/// Every cycle-free check of one crate: the top level, then each folder.
fn check(crate_dir: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(crate_dir)
        .join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .filter_map(|f| Some((module_of(&src, f)?, std::fs::read_to_string(f).unwrap())))
        .collect();
    // Edges at every level: between siblings under the same parent (the folder's own
    // `mod.rs` counts as a sibling named `(mod)`).
    let mut levels: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, text) in &modules {
        for target in references(module, text) {
            // The longest known module the path names.
            let Some(target) = (1..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|t| modules.contains_key(t))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            let name = |m: &[String]| m.get(common).cloned().unwrap_or_else(|| "(mod)".into());
            let (from, to) = (name(module), name(&target));
            if from != to {
                levels
                    .entry(module[..common].to_vec())
                    .or_default()
                    .entry(from)
                    .or_default()
                    .insert(to);
            }
        }
    }
    levels
        .iter()
        .filter_map(|(folder, edges)| {
            cycle(edges).map(|c| format!("{crate_dir}/src/{}: {}", folder.join("/"), c.join(" → ")))
        })
        .collect()
}

#[test]
fn no_module_imports_another_in_a_circle() {
    let cycles: Vec<String> = ["engine", "server"].iter().flat_map(|c| check(c)).collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_check_sees_a_cycle() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]
    .into();
    assert_eq!(
        cycle(&edges),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    let module = vec!["run".to_owned(), "driver".to_owned()];
    assert_eq!(
        references(
            &module,
            "use super::machine::Effect; // crate::ignored\nuse crate::call::Fleet;"
        ),
        [vec!["run", "machine", "Effect"], vec!["call", "Fleet"]]
    );
}
