//! YAML to JSON values, remembering where every value came from.
//!
//! The parser walks saphyr's event stream once, producing a `serde_json::Value` and an index
//! from each value's path (`workflows.travel.steps[1].needs[0]`, the format of
//! `serde_path_to_error`) to its `file:line:col`, so that every later error can point at
//! the source. `${VAR}` interpolation happens here too, where the position is known.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

use crate::error::{Diagnostic, Origin};
use crate::interpolate::{InterpolationError, interpolate};

/// Positions of values by path.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    map: HashMap<String, Origin>,
}

impl SpanIndex {
    /// The origin of the value at `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<&Origin> {
        let mut p = path;
        loop {
            if let Some(o) = self.map.get(p) {
                return Some(o);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// A problem at `path` (`""`: the document), pointing at its position, or at the top of
    /// `file` when the index has none; the message is prefixed with the path.
    pub fn diagnostic(&self, file: &str, path: &str, message: String) -> Diagnostic {
        Diagnostic {
            origin: self.find(path).cloned().or(Some(Origin::File {
                file: file.to_owned(),
                line: 1,
                col: 1,
            })),
            message: if path.is_empty() {
                message
            } else {
                format!("{path}: {message}")
            },
        }
    }

    /// Records where `path` came from (later records win, as later layers do).
    pub fn insert(&mut self, path: String, origin: Origin) {
        self.map.insert(path, origin);
    }

    /// Takes every entry of `other`, replacing what was there.
    pub fn extend(&mut self, other: SpanIndex) {
        self.map.extend(other.map);
    }
}

/// Joins a map key onto a path.
pub fn child_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub fn child_index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Largest YAML text read.
pub const MAX_TEXT: usize = 16 * 1024 * 1024;

/// Most nodes a document may expand to, aliases counted at every use: a few hundred bytes
/// of nested aliases ("billion laughs") would otherwise expand to gigabytes.
pub const MAX_NODES: usize = 1_000_000;

/// Parses one YAML document. Problems (syntax, missing variables, a text or an alias
/// expansion over the limits) are all returned.
pub fn parse(
    file: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(Value, SpanIndex), Vec<Diagnostic>> {
    if text.len() > MAX_TEXT {
        return Err(vec![Diagnostic {
            origin: Some(Origin::File {
                file: file.to_owned(),
                line: 1,
                col: 1,
            }),
            message: format!(
                "the file is {} bytes; YAML files are read up to {MAX_TEXT}",
                text.len()
            ),
        }]);
    }
    let mut walker = Walker {
        nodes: 0,
        over: false,
        file,
        lookup,
        events: Vec::new(),
        pos: 0,
        anchors: HashMap::new(),
        index: SpanIndex::default(),
        diags: Vec::new(),
    };
    for ev in Parser::new_from_str(text) {
        match ev {
            Ok((event, span)) => walker.events.push((event, span)),
            Err(e) => {
                let m = e.marker();
                return Err(vec![Diagnostic {
                    origin: Some(Origin::File {
                        file: file.to_owned(),
                        line: m.line(),
                        col: m.col() + 1,
                    }),
                    message: format!("invalid YAML: {}", e.info()),
                }]);
            }
        }
    }
    // Skip to the first node of the first document.
    while walker.pos < walker.events.len() {
        match walker.events[walker.pos].0 {
            Event::StreamStart | Event::DocumentStart(_) | Event::Nothing => walker.pos += 1,
            _ => break,
        }
    }
    let value = match walker.events.get(walker.pos) {
        Some((Event::StreamEnd, _)) | Some((Event::DocumentEnd, _)) | None => {
            Value::Object(Map::new())
        }
        Some(_) => walker.node(""),
    };
    if walker.diags.is_empty() {
        Ok((value, walker.index))
    } else {
        Err(walker.diags)
    }
}

struct Walker<'a, 'input> {
    file: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    events: Vec<(Event<'input>, Span)>,
    pos: usize,
    anchors: HashMap<usize, (Value, usize)>,
    index: SpanIndex,
    diags: Vec<Diagnostic>,
    /// Nodes produced so far, aliases counted at every use.
    nodes: usize,
    /// Whether [`MAX_NODES`] was passed (reported once).
    over: bool,
}

impl Walker<'_, '_> {
    fn origin(&self, span: &Span) -> Origin {
        Origin::File {
            file: self.file.to_owned(),
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }

    /// Counts `n` more nodes; past the limit, reports it once and returns false.
    fn count(&mut self, n: usize, span: &Span) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            if !self.over {
                self.over = true;
                self.diags.push(Diagnostic {
                    origin: Some(self.origin(span)),
                    message: format!(
                        "the document expands to more than {MAX_NODES} nodes (aliases are counted at every use)"
                    ),
                });
            }
            return false;
        }
        true
    }

    fn node(&mut self, path: &str) -> Value {
        let (event, span) = self.events[self.pos].clone();
        self.pos += 1;
        let before = self.nodes;
        if !matches!(event, Event::Alias(_)) {
            // Past the limit the walk goes on, so that events stay paired, but builds nothing.
            self.count(1, &span);
        }
        if !self.index.map.contains_key(path) {
            let origin = self.origin(&span);
            self.index.map.insert(path.to_owned(), origin);
        }
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                let forced_str = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let text = match interpolate(&text, self.lookup) {
                    Ok(t) => t,
                    Err(e) => {
                        let message = match e {
                            InterpolationError::Missing(var) => format!(
                                "environment variable `{var}` is not set (write `${{{var}:-default}}` to give a default)"
                            ),
                            InterpolationError::Malformed(expr) => {
                                format!("malformed interpolation `{expr}`")
                            }
                        };
                        self.diags.push(Diagnostic {
                            origin: Some(self.origin(&span)),
                            message,
                        });
                        String::new()
                    }
                };
                let v = if style == ScalarStyle::Plain && !forced_str {
                    resolve_plain(&text)
                } else {
                    Value::String(text)
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, (v.clone(), 1));
                }
                v
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                while !matches!(self.events[self.pos].0, Event::SequenceEnd) {
                    let p = child_index(path, items.len());
                    items.push(self.node(&p));
                }
                self.pos += 1;
                let v = if self.over {
                    Value::Null
                } else {
                    Value::Array(items)
                };
                if anchor > 0 {
                    self.anchors
                        .insert(anchor, (v.clone(), self.nodes - before));
                }
                v
            }
            Event::MappingStart(anchor, _) => {
                let mut map = Map::new();
                while !matches!(self.events[self.pos].0, Event::MappingEnd) {
                    let (key_event, key_span) = self.events[self.pos].clone();
                    let key = match key_event {
                        Event::Scalar(k, ..) => {
                            self.pos += 1;
                            k.into_owned()
                        }
                        _ => {
                            self.diags.push(Diagnostic {
                                origin: Some(self.origin(&key_span)),
                                message: "only plain keys are supported in mappings".into(),
                            });
                            let _ = self.node(path);
                            "?".into()
                        }
                    };
                    let p = child_key(path, &key);
                    self.index.insert(p.clone(), self.origin(&key_span));
                    let value = self.node(&p);
                    if key == "<<" {
                        // YAML merge key: copy entries the mapping does not set itself.
                        let sources = match value {
                            Value::Array(v) => v,
                            other => vec![other],
                        };
                        for src in sources {
                            if let Value::Object(m) = src {
                                for (k, v) in m {
                                    map.entry(k).or_insert(v);
                                }
                            }
                        }
                        continue;
                    }
                    if map.contains_key(&key) {
                        self.diags.push(Diagnostic {
                            origin: Some(self.origin(&key_span)),
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                    map.insert(key, value);
                }
                self.pos += 1;
                let v = if self.over {
                    Value::Null
                } else {
                    Value::Object(map)
                };
                if anchor > 0 {
                    self.anchors
                        .insert(anchor, (v.clone(), self.nodes - before));
                }
                v
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((v, n)) => {
                    let (v, n) = (v.clone(), *n);
                    if self.count(n, &span) { v } else { Value::Null }
                }
                None => Value::Null,
            },
            _ => Value::Null,
        }
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::Number(i.into());
    }
    let looks_numeric = text
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
        && text.chars().any(|c| c.is_ascii_digit());
    if looks_numeric
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_owned())
}

/// Parses a single scalar written in an environment variable the way YAML would.
pub fn scalar_from_env(text: &str) -> Value {
    resolve_plain(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn values_and_positions() {
        let text = "server:\n  listen: \"0.0.0.0:8080\"\nsteps:\n  - id: a\n    n: 3\n  - id: b\n";
        let (v, idx) = parse("f.yaml", text, &no_env).unwrap();
        assert_eq!(v["server"]["listen"], "0.0.0.0:8080");
        assert_eq!(v["steps"][0]["n"], 3);
        assert_eq!(idx.find("steps[1].id").unwrap().to_string(), "f.yaml:6:5",);
        assert_eq!(
            idx.find("steps[1].id.deeper").unwrap().to_string(),
            "f.yaml:6:5"
        );
    }

    #[test]
    fn missing_variable_points_at_value() {
        let err = parse("c.yaml", "a: 1\nb: \"${NOPE}\"\n", &no_env).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0]
                .to_string()
                .starts_with("c.yaml:2:4: environment variable `NOPE`")
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse("c.yaml", "a: [1, 2\nb: 3\n", &no_env).unwrap_err();
        assert!(err[0].to_string().starts_with("c.yaml:"), "{}", err[0]);
        assert!(err[0].message.contains("invalid YAML"));
    }

    #[test]
    fn anchors_and_merge_keys() {
        let text = "base: &b { timeout: 5s }\nx:\n  <<: *b\n  extra: 1\n";
        let (v, _) = parse("f.yaml", text, &no_env).unwrap();
        assert_eq!(v["x"]["timeout"], "5s");
        assert_eq!(v["x"]["extra"], 1);
    }
}
