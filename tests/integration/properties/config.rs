//! The config loader and validator: any text in, a config or errors that
//! each name a key or a line out, never a panic.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::cases;

/// The example configs, the starting points of the mutations.
fn examples() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    ["weft.yaml", "tls.yaml", "demo.yaml"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .collect()
}

/// Keys of the schema, to write where they may or may not belong.
const KEYS: &[&str] = &[
    "admin",
    "address",
    "listeners",
    "clusters",
    "name",
    "protocol",
    "routes",
    "match",
    "path_prefix",
    "path_exact",
    "path_regex",
    "method",
    "headers",
    "exact",
    "prefix",
    "regex",
    "present",
    "cluster",
    "split",
    "weight",
    "timeout",
    "retry",
    "mirror",
    "percent",
    "compare",
    "body",
    "ignore_json_paths",
    "sticky",
    "header",
    "cookie",
    "direct_response",
    "status",
    "tls",
    "cert",
    "key",
    "ca",
    "sni",
    "limits",
    "max_connections",
    "max_request_headers_kb",
    "header_read_timeout",
    "endpoints",
    "zone",
    "lb",
    "connect_timeout",
    "health_check",
    "outlier_detection",
    "adaptive_concurrency",
    "retry_budget",
    "circuit_breaker",
    "tracing",
    "otlp_endpoint",
    "sample_ratio",
    "node",
    "runtime",
    "worker_threads",
    "drain_timeout",
    "access_log",
    "enabled",
    "client_identity",
    "advertise_http3",
    "zone_aware",
];

/// Values that sit on the edges of what the schema accepts.
const VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "65536",
    "4294967296",
    "18446744073709551616",
    "1.5",
    "NaN",
    "true",
    "null",
    "~",
    "[]",
    "{}",
    "[ {} ]",
    "'x'",
    "\"\"",
    "0s",
    "1ms",
    "10000000000h",
    "5 s",
    "127.0.0.1:0",
    "[::1]:80",
    "localhost:80",
    "/",
    "/api",
    "(",
    "a{1000}{1000}",
    ".*",
    "GET",
    "g e t",
    "x-canary",
    "bad name",
    "http1",
    "http2",
    "http3",
    "tcp",
    "web-stable",
    "web-canary",
    "db",
    "nope",
    "$.a[*]",
    "$[",
    "/nonexistent",
    "&anchor x",
    "*anchor",
    "!!binary aGk=",
    "|\n  block",
    "- item",
    "{ a: [ b, { c: d } ] }",
];

/// One edit of a config's lines.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replaces what follows the line's first `: ` (or the whole line).
    Value(usize, &'static str),
    /// Writes `key: value` after the line, at its indentation.
    Insert(usize, &'static str, &'static str),
    Indent(usize, bool),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let line = any::<prop::sample::Index>().prop_map(|i| i.index(1 << 16));
    let key = prop::sample::select(KEYS);
    let value = prop::sample::select(VALUES);
    prop_oneof![
        line.clone().prop_map(Edit::Delete),
        line.clone().prop_map(Edit::Duplicate),
        (line.clone(), line.clone()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (line.clone(), value.clone()).prop_map(|(l, v)| Edit::Value(l, v)),
        (line.clone(), key, value).prop_map(|(l, k, v)| Edit::Insert(l, k, v)),
        (line.clone(), any::<bool>()).prop_map(|(l, more)| Edit::Indent(l, more)),
        line.prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for edit in edits {
        if lines.is_empty() {
            break;
        }
        let count = lines.len();
        let at = |i: &usize| i % count;
        match edit {
            Edit::Delete(i) => {
                lines.remove(at(i));
            }
            Edit::Duplicate(i) => {
                let i = at(i);
                lines.insert(i, lines[i].clone());
            }
            Edit::Swap(a, b) => {
                let (a, b) = (at(a), at(b));
                lines.swap(a, b);
            }
            Edit::Value(i, value) => {
                let line = &mut lines[at(i)];
                match line.find(": ") {
                    Some(colon) => line.replace_range(colon + 2.., value),
                    None => *line = (*value).to_string(),
                }
            }
            Edit::Insert(i, key, value) => {
                let i = at(i);
                let indent: String = lines[i].chars().take_while(|c| *c == ' ').collect();
                lines.insert(i + 1, format!("{indent}{key}: {value}"));
            }
            Edit::Indent(i, more) => {
                let line = &mut lines[at(i)];
                if *more {
                    line.insert_str(0, "  ");
                } else if let Some(rest) = line.strip_prefix("  ") {
                    *line = rest.to_string();
                }
            }
            Edit::Truncate(i) => {
                let line = &mut lines[at(i)];
                let cut = line.char_indices().nth(line.len() / 2).map_or(0, |(c, _)| c);
                line.truncate(cut);
            }
        }
    }
    lines.join("\n")
}

/// What `weft check` runs: schema, problems, then the checks needing the
/// compiled modules. Every error must say where (a key or a line) and what.
fn check(path: &Path, text: &[u8]) -> Result<(), String> {
    let errors = match weft::config::parse_bytes(path, text) {
        Err(errors) => errors,
        Ok(loaded) => {
            let problems = weft::config::problems(&loaded.config);
            let result = if problems.is_empty() {
                weft::snapshot::check(&loaded)
            } else {
                Err(loaded.errors(problems))
            };
            match result {
                Ok(()) => return Ok(()),
                Err(errors) => errors,
            }
        }
    };
    prop_assert_ok(!errors.0.is_empty(), "an error result without errors")?;
    for e in &errors.0 {
        prop_assert_ok(e.file == path, &format!("error names another file: {e}"))?;
        prop_assert_ok(!e.message.is_empty(), &format!("error without a message: {e:?}"))?;
        prop_assert_ok(
            !e.key.is_empty() || e.line.is_some(),
            &format!("error naming neither key nor line: {e}"),
        )?;
    }
    Ok(())
}

fn prop_assert_ok(holds: bool, what: &str) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

#[test]
fn the_examples_check_clean() {
    for (path, text) in examples() {
        assert_eq!(check(&path, text.as_bytes()), Ok(()), "{}", path.display());
    }
}

/// Inputs coverage-guided fuzzing (`fuzz/`, target `config`) found.
#[test]
fn what_fuzzing_found_loads_or_says_where_it_is_wrong() {
    // A YAML error that serde_yaml_ng gives without a place; and as proptest shrank it.
    for input in [
        &b"!!WWW }\n        direct_responsec 252.0.0.1:<port>0"[..],
        b"!!str: }\n",
    ] {
        assert_eq!(check(Path::new("/nonexistent/weft.yaml"), input), Ok(()));
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn edited_examples_load_or_say_where_they_are_wrong(
        example in 0..3usize,
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let (path, text) = &examples()[example];
        let edited = apply(text, &edits);
        check(path, edited.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}\n--- config:\n{edited}")))?;
    }

    #[test]
    fn any_text_loads_or_says_where_it_is_wrong(text in "(?s).{0,200}") {
        check(Path::new("/nonexistent/weft.yaml"), text.as_bytes()).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn any_bytes_load_or_say_where_they_are_wrong(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        check(Path::new("/nonexistent/weft.yaml"), &bytes).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn yaml_shaped_text_loads_or_says_where_it_is_wrong(
        text in r"([ ]{0,6}(- )?([a-z_]{1,12}|\[|\{|\}|\]|,|'|&a|\*a|!!str)?(: ?)?([a-z0-9_./:\[\]{}, -]{0,16})?\n){0,12}"
    ) {
        check(Path::new("/nonexistent/weft.yaml"), text.as_bytes()).map_err(TestCaseError::fail)?;
    }
}
