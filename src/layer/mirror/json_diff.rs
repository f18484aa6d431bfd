//! Structural diff of two JSON documents, for `compare: { body: json }`.
//!
//! Guarantees: objects compare by key regardless of order, arrays by index,
//! numbers by value (`1.0` and `1` are equal, as JSON does not tell them
//! apart; two integers exactly, also past 2^53 where doubles lose them); values under an ignored path are never reported; at most `limit`
//! differences are collected (the caller learns whether more existed), so a
//! completely different document costs bounded memory.
//!
//! Ignored paths use a small JSONPath subset (RFC 9535 syntax, without
//! filters or recursive descent): `$` then any of `.name`, `['name']` /
//! `["name"]`, `[N]`, `[*]` and `.*`.

use serde::Serialize;
use serde_json::Value;

/// One step of a concrete path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// One step of an ignore pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternStep {
    Key(String),
    Index(usize),
    AnyKey,
    AnyIndex,
}

/// A parsed `ignore_json_paths` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<PatternStep>);

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid JSON path {text:?}: {why}");
        let mut rest = text.strip_prefix('$').ok_or_else(|| bad("must start with $"))?;
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix(".*") {
                steps.push(PatternStep::AnyKey);
                rest = after;
            } else if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                if end == 0 {
                    return Err(bad("empty key after '.'"));
                }
                steps.push(PatternStep::Key(after[..end].to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| bad("unclosed '['"))?;
                let inner = &after[..end];
                let quoted = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
                steps.push(match (inner, quoted) {
                    ("*", _) => PatternStep::AnyIndex,
                    (_, Some(key)) => PatternStep::Key(key.to_string()),
                    _ => PatternStep::Index(inner.parse().map_err(|_| bad("expected [N], [*] or ['key']"))?),
                });
                rest = &after[end + 1..];
            } else {
                return Err(bad("expected '.' or '['"));
            }
        }
        Ok(Self(steps))
    }

    fn matches(&self, path: &[Step]) -> bool {
        self.0.len() == path.len()
            && self.0.iter().zip(path).all(|(p, s)| match (p, s) {
                (PatternStep::Key(a), Step::Key(b)) => a == b,
                (PatternStep::Index(a), Step::Index(b)) => a == b,
                (PatternStep::AnyKey, Step::Key(_)) | (PatternStep::AnyIndex, Step::Index(_)) => true,
                _ => false,
            })
    }
}

/// One differing value. `None` means the path is absent on that side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathDiff {
    pub path: String,
    pub primary: Option<Value>,
    pub shadow: Option<Value>,
}

/// The differences between `primary` and `shadow` outside `ignore`, at most
/// `limit` of them; the flag says whether more were left out.
pub fn diff(primary: &Value, shadow: &Value, ignore: &[JsonPath], limit: usize) -> (Vec<PathDiff>, bool) {
    let mut walk = Walk {
        ignore,
        limit,
        path: Vec::new(),
        out: Vec::new(),
        truncated: false,
    };
    walk.visit(Some(primary), Some(shadow));
    (walk.out, walk.truncated)
}

struct Walk<'a> {
    ignore: &'a [JsonPath],
    limit: usize,
    path: Vec<Step>,
    out: Vec<PathDiff>,
    truncated: bool,
}

impl Walk<'_> {
    fn visit(&mut self, a: Option<&Value>, b: Option<&Value>) {
        if self.ignore.iter().any(|p| p.matches(&self.path)) {
            return;
        }
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))).collect();
                keys.sort();
                for key in keys {
                    self.path.push(Step::Key(key.clone()));
                    self.visit(x.get(key), y.get(key));
                    self.path.pop();
                }
            }
            (Some(Value::Array(x)), Some(Value::Array(y))) => {
                for i in 0..x.len().max(y.len()) {
                    self.path.push(Step::Index(i));
                    self.visit(x.get(i), y.get(i));
                    self.path.pop();
                }
            }
            (Some(Value::Number(x)), Some(Value::Number(y))) if same_number(x, y) => {}
            (a, b) if a == b => {}
            (a, b) => {
                if self.out.len() >= self.limit {
                    self.truncated = true;
                    return;
                }
                self.out.push(PathDiff {
                    path: render(&self.path),
                    primary: a.cloned(),
                    shadow: b.cloned(),
                });
            }
        }
    }
}

/// Integers compare exactly (64-bit ids differ past 2^53); a pair with a
/// fraction or exponent compares as doubles.
fn same_number(x: &serde_json::Number, y: &serde_json::Number) -> bool {
    match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
        (Some(x), Some(y), ..) => x == y,
        (.., Some(x), Some(y)) => x == y,
        _ => (x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64(),
    }
}

/// `$.items[0].etag`; keys that are not plain identifiers as `['key']`.
fn render(path: &[Step]) -> String {
    let mut out = String::from("$");
    for step in path {
        match step {
            Step::Index(i) => out.push_str(&format!("[{i}]")),
            Step::Key(k) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') => {
                out.push('.');
                out.push_str(k);
            }
            Step::Key(k) => out.push_str(&format!("[{}]", Value::String(k.clone()))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(a: Value, b: Value, ignore: &[&str]) -> Vec<String> {
        let ignore: Vec<JsonPath> = ignore.iter().map(|p| JsonPath::parse(p).unwrap()).collect();
        diff(&a, &b, &ignore, 10).0.into_iter().map(|d| d.path).collect()
    }

    #[test]
    fn equal_documents_differ_nowhere() {
        let a = json!({"a": 1, "b": [1, 2, {"c": null}], "n": 1.0});
        let b = json!({"b": [1, 2, {"c": null}], "n": 1, "a": 1});
        assert!(paths(a, b, &[]).is_empty());
    }

    #[test]
    fn differences_name_their_paths_and_values() {
        let a = json!({"user": {"name": "ann", "tier": 1}, "items": [{"id": 1}], "gone": true});
        let b = json!({"user": {"name": "ann", "tier": 2}, "items": [{"id": 1}, {"id": 2}], "odd key": 0});
        assert_eq!(
            paths(a.clone(), b.clone(), &[]),
            ["$.gone", "$.items[1]", r#"$["odd key"]"#, "$.user.tier"]
        );
        let (diffs, truncated) = diff(&a, &b, &[], 1);
        assert!(truncated);
        assert_eq!(
            diffs,
            [PathDiff {
                path: "$.gone".into(),
                primary: Some(json!(true)),
                shadow: None
            }]
        );
    }

    #[test]
    fn ignored_paths_and_wildcards() {
        let a = json!({"generated_at": 1, "items": [{"etag": "x", "v": 1}, {"etag": "y", "v": 2}]});
        let b = json!({"generated_at": 2, "items": [{"etag": "p", "v": 1}, {"etag": "q", "v": 3}]});
        assert_eq!(
            paths(a.clone(), b.clone(), &["$.generated_at", "$.items[*].etag"]),
            ["$.items[1].v"]
        );
        assert!(paths(a.clone(), b.clone(), &["$.generated_at", "$.items"]).is_empty());
        assert!(paths(a, b, &["$.*", "$['items'][1].v"]).is_empty());
    }

    #[test]
    fn bad_paths_are_refused() {
        for bad in ["a.b", "$.", "$[x]", "$[1", "$a"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            JsonPath::parse("$.items[*].etag").unwrap(),
            JsonPath(vec![
                PatternStep::Key("items".into()),
                PatternStep::AnyIndex,
                PatternStep::Key("etag".into())
            ])
        );
    }
}
