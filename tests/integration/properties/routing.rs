//! Route compilation and matching against a model written from the
//! documented semantics: generated routes compile exactly when the model says
//! they are valid, and the first matching route is the model's first match,
//! for arbitrary methods, paths and header names and values.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use weft::config::schema::RouteConfig;

use super::cases;

/// A header match as written in the config.
#[derive(Debug, Clone)]
struct HeaderRule {
    name: String,
    exact: Option<String>,
    prefix: Option<String>,
    /// A literal, written escaped as `regex` (so it matches only itself).
    literal_regex: Option<String>,
    present: Option<bool>,
}

#[derive(Debug, Clone)]
enum PathRule {
    Any,
    Prefix(String),
    Exact(String),
    /// `regex: <escaped literal>` and optionally `.*` after it.
    Regex(String, bool),
    /// Two path keys at once: a compile error.
    Conflicting,
}

#[derive(Debug, Clone)]
struct RouteRule {
    path: PathRule,
    method: Option<String>,
    headers: Vec<HeaderRule>,
    cluster: &'static str,
}

/// Bytes paths and values are made of: the usual, the separators, percent
/// escapes, regex metacharacters (taken literally) and non-ASCII.
const TEXT: &str = r"[a-c/._~%?\-*+()|\[\]{}^$\\é ]{0,6}";

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["x-a", "x-b", "X-A", "x-canary"]).prop_map(str::to_string),
        1 => "[ -~]{0,4}",
    ]
}

fn header_rule() -> impl Strategy<Value = HeaderRule> {
    (
        header_name(),
        prop::option::weighted(0.4, TEXT),
        prop::option::weighted(0.3, TEXT),
        prop::option::weighted(0.3, TEXT),
        prop::option::weighted(0.3, any::<bool>()),
    )
        .prop_map(|(name, exact, prefix, literal_regex, present)| HeaderRule {
            name,
            exact,
            prefix,
            literal_regex,
            present,
        })
}

fn path_rule() -> impl Strategy<Value = PathRule> {
    prop_oneof![
        Just(PathRule::Any),
        TEXT.prop_map(|p| PathRule::Prefix(format!("/{p}"))),
        TEXT.prop_map(|p| PathRule::Exact(format!("/{p}"))),
        (TEXT, any::<bool>()).prop_map(|(p, tail)| PathRule::Regex(format!("/{p}"), tail)),
        Just(PathRule::Conflicting),
    ]
}

fn route_rule() -> impl Strategy<Value = RouteRule> {
    (
        path_rule(),
        prop::option::of(prop_oneof![
            prop::sample::select(vec!["GET", "get", "POST", "PURGE"]).prop_map(str::to_string),
            "[ -~]{0,3}",
        ]),
        prop::collection::vec(header_rule(), 0..3),
        prop::sample::select(vec!["a", "b", "missing"]),
    )
        .prop_map(|(path, method, headers, cluster)| RouteRule {
            path,
            method,
            headers,
            cluster,
        })
}

fn config_of(rule: &RouteRule, i: usize) -> RouteConfig {
    let mut matcher = Map::new();
    match &rule.path {
        PathRule::Any => {}
        PathRule::Prefix(p) => {
            matcher.insert("path_prefix".into(), json!(p));
        }
        PathRule::Exact(p) => {
            matcher.insert("path_exact".into(), json!(p));
        }
        PathRule::Regex(p, tail) => {
            let tail = if *tail { ".*" } else { "" };
            matcher.insert("path_regex".into(), json!(format!("{}{tail}", regex::escape(p))));
        }
        PathRule::Conflicting => {
            matcher.insert("path_prefix".into(), json!("/"));
            matcher.insert("path_exact".into(), json!("/"));
        }
    }
    if let Some(m) = &rule.method {
        matcher.insert("method".into(), json!(m));
    }
    let headers: Vec<Value> = rule
        .headers
        .iter()
        .map(|h| {
            let mut entry = Map::new();
            entry.insert("name".into(), json!(h.name));
            if let Some(v) = &h.exact {
                entry.insert("exact".into(), json!(v));
            }
            if let Some(v) = &h.prefix {
                entry.insert("prefix".into(), json!(v));
            }
            if let Some(v) = &h.literal_regex {
                entry.insert("regex".into(), json!(regex::escape(v)));
            }
            if let Some(v) = h.present {
                entry.insert("present".into(), json!(v));
            }
            Value::Object(entry)
        })
        .collect();
    matcher.insert("headers".into(), Value::Array(headers));
    let route = json!({ "name": format!("r{i}"), "match": matcher, "cluster": rule.cluster });
    serde_json::from_value(route).unwrap()
}

/// RFC 9110 `token`: what method and header names are made of.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether the model accepts the route.
fn valid(rule: &RouteRule) -> bool {
    let one_value = |h: &HeaderRule| {
        [
            h.exact.is_some(),
            h.prefix.is_some(),
            h.literal_regex.is_some(),
            h.present.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count()
            == 1
    };
    !matches!(rule.path, PathRule::Conflicting)
        && rule.method.as_deref().is_none_or(is_token)
        && rule.headers.iter().all(|h| is_token(&h.name) && one_value(h))
        && rule.cluster != "missing"
}

/// A header value as text, as a matcher reads it (visible ASCII, space, tab).
fn text_of(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    bytes
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then(|| std::str::from_utf8(bytes).ok())
        .flatten()
}

/// Whether the model's route accepts the request.
fn model_matches(rule: &RouteRule, method: &Method, path: &str, headers: &HeaderMap) -> bool {
    let path_ok = match &rule.path {
        PathRule::Any => true,
        PathRule::Prefix(p) => path.starts_with(p.as_str()),
        PathRule::Exact(p) | PathRule::Regex(p, false) => path == p,
        PathRule::Regex(p, true) => path.starts_with(p.as_str()) && !path[p.len()..].contains('\n'),
        PathRule::Conflicting => unreachable!("never compiles"),
    };
    let method_ok = rule
        .method
        .as_ref()
        .is_none_or(|m| m.to_ascii_uppercase() == method.as_str());
    let header_ok = |h: &HeaderRule| {
        let name = h.name.to_ascii_lowercase();
        let values: Vec<&HeaderValue> = headers.get_all(name.as_str()).iter().collect();
        if let Some(wanted) = h.present {
            return values.is_empty() != wanted;
        }
        values.iter().filter_map(|v| text_of(v)).any(|v| {
            h.exact.as_deref().is_some_and(|e| v == e)
                || h.prefix.as_deref().is_some_and(|p| v.starts_with(p))
                || h.literal_regex.as_deref().is_some_and(|r| v == r)
        })
    };
    path_ok && method_ok && rule.headers.iter().all(header_ok)
}

#[derive(Debug, Clone)]
struct Probe {
    method: Method,
    path: String,
    headers: HeaderMap,
}

fn probe() -> impl Strategy<Value = Probe> {
    let method = prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::from_bytes(b"get").unwrap()),
        Just(Method::from_bytes(b"PURGE").unwrap()),
    ];
    let header = (
        header_name(),
        prop_oneof![
            TEXT.prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..4)
        ],
    );
    (
        method,
        TEXT.prop_map(|p| format!("/{p}")),
        prop::collection::vec(header, 0..4),
    )
        .prop_map(|(method, path, pairs)| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value))
                {
                    headers.append(name, value);
                }
            }
            Probe { method, path, headers }
        })
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn routes_compile_and_match_as_the_model_says(
        rules in prop::collection::vec(route_rule(), 1..4),
        probes in prop::collection::vec(probe(), 1..6),
    ) {
        let clusters = HashMap::from([("a", 0), ("b", 1)]);
        let mut routes = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let compiled = weft::route::compile(&config_of(rule, i), &clusters);
            prop_assert_eq!(compiled.is_ok(), valid(rule), "route {:?}: {:?}", rule, compiled.as_ref().err());
            match compiled {
                Ok(route) => routes.push((rule, route)),
                Err(e) => prop_assert!(!e.key.is_empty() && !e.message.is_empty(), "{:?}", e),
            }
        }
        let compiled: Vec<&weft::route::Route> = routes.iter().map(|(_, r)| r).collect();
        for p in &probes {
            let found = weft::route::find(&compiled, &p.method, &p.path, &p.headers, None, &|_| false).map(|r| r.name.to_string());
            let expected = routes
                .iter()
                .find(|(rule, _)| model_matches(rule, &p.method, &p.path, &p.headers))
                .map(|(_, r)| r.name.to_string());
            prop_assert_eq!(found, expected, "probe {:?}", p);
        }
    }
}
