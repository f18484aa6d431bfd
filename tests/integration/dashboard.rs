//! `deploy/grafana/weft.json` is a Grafana import file whose queries name
//! only metric families, labels and label values that a running weft
//! actually exports on `/metrics` (read after traffic through every feature
//! the dashboard shows), not names found in the source.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::support::*;
use crate::tls::Ca;

/// What `/metrics` exports: each family's type, and for each family the
/// label names and values of its series.
#[derive(Default, Debug)]
struct Exported {
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exported {
    fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                out.types.insert(name.into(), kind.into());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (name, labels) = match line.split_once('{') {
                Some((name, rest)) => (name, label_pairs(rest.rsplit_once('}').unwrap().0)),
                None => (line.split_once(' ').unwrap().0, Vec::new()),
            };
            let family = out.family_of(name).unwrap_or_else(|| panic!("{name}: no # TYPE line"));
            let entry = out.labels.entry(family).or_default();
            for (key, value) in labels {
                entry.entry(key).or_default().insert(value);
            }
        }
        out
    }

    /// The family a sample or query name belongs to (histogram series add
    /// `_bucket`, `_sum` and `_count` to the family name).
    fn family_of(&self, name: &str) -> Option<String> {
        if self.types.contains_key(name) {
            return Some(name.into());
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| self.types.get(*base).is_some_and(|t| t == "histogram"))
            .map(Into::into)
    }

    /// Label names of `family`'s series (with `le` for a histogram's buckets).
    fn has_label(&self, family: &str, label: &str) -> bool {
        (label == "le" && self.types[family] == "histogram")
            || self.labels.get(family).is_some_and(|l| l.contains_key(label))
    }
}

/// `key="value"` pairs of a sample's label set.
fn label_pairs(set: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = set;
    while let Some((key, tail)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = tail.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {set}"),
            }
        };
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &tail[end + 1..];
    }
    out
}

/// A metric a query names: its name and its selector's matchers as
/// (label, operator, value).
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// Every `weft_*` selector in a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("weft_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let mut matchers = Vec::new();
        if let Some(body) = tail[end..].strip_prefix('{') {
            let close = body.find('}').unwrap();
            for matcher in body[..close].split(", ") {
                let op_at = matcher.find(['=', '!']).unwrap();
                let op_len = if matcher[op_at + 1..].starts_with(['=', '~']) {
                    2
                } else {
                    1
                };
                let value = matcher[op_at + op_len..].trim_matches('"');
                matchers.push((
                    matcher[..op_at].to_string(),
                    matcher[op_at..op_at + op_len].to_string(),
                    value.to_string(),
                ));
            }
        }
        out.push(Selector {
            name: tail[..end].to_string(),
            matchers,
        });
        rest = &tail[end..];
    }
    out
}

/// The labels of every `by (...)` clause in an expression.
fn grouping_labels(expr: &str) -> Vec<String> {
    expr.split("by (")
        .skip(1)
        .flat_map(|part| part[..part.find(')').unwrap()].split(',').map(|l| l.trim().to_string()))
        .collect()
}

fn panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in list.as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(&p["panels"]));
    }
    out
}

/// weft with everything the dashboard shows in use: a TLS listener, a route
/// with retries to a zone-aware cluster under outlier detection, health
/// checks and adaptive concurrency, tracing to a collector that is down; then
/// traffic, including one retried request.
async fn exported_after_traffic() -> Exported {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("dashboard-ca");
    ca.leaf(dir.path(), "server", "server", None);
    let upstream = Upstream::text("ok").await;
    let refused = refused_addr();
    let down = refused.addr;
    let yaml = format!(
        "node: {{ zone: zone-a }}
tracing: {{ otlp_endpoint: http://{down}, sample_ratio: 1.0 }}
{}",
        config(
            "  - name: public
    address: 127.0.0.1:0
    routes:
      - { name: api, cluster: web, retry: { max_retries: 1, retry_on: [connect_failure] } }
  - name: secure
    address: 127.0.0.1:0
    tls: { cert: server.pem, key: server.key }
    routes: [ { name: tea, direct_response: { status: 503 } } ]",
            &format!(
                "  - name: web
    lb: round_robin
    zone_aware: {{ min_cluster_size: 1 }}
    outlier_detection: {{ consecutive_gateway_failure: 1, base_ejection_time: 60s, max_ejection_percent: 50 }}
    health_check: {{ path: /health, interval: 1s }}
    adaptive_concurrency: {{}}
    endpoints:
      - {{ address: {down}, zone: zone-a }}
      - {{ address: {}, zone: zone-a }}",
                upstream.addr
            ),
        ),
    );
    let app = start_in(dir.path(), &yaml).await;
    let url = format!("http://{}/", app.listener_addr("public").await.unwrap());
    let client = h1_client();
    for _ in 0..4 {
        assert_eq!(get(&client, &url).await, (200, "ok".into()));
    }
    let text = get(&client, &format!("http://{}/metrics", app.admin_addr())).await.1;
    Exported::parse(&text)
}

#[tokio::test]
async fn grafana_dashboard_queries_only_what_weft_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/weft.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].is_u64());

    let exported = exported_after_traffic().await;
    let mut used = BTreeSet::new();
    let mut queries = 0;
    let mut check = |context: &str, expr: &str| {
        let found = selectors(expr);
        assert!(!found.is_empty(), "{context}: no weft metric in {expr}");
        let mut families = Vec::new();
        for selector in found {
            let family = exported
                .family_of(&selector.name)
                .unwrap_or_else(|| panic!("{context}: {} is not exported by weft", selector.name));
            for (label, op, value) in &selector.matchers {
                assert!(
                    exported.has_label(&family, label),
                    "{context}: {family} has no label {label}"
                );
                if op == "=" && !value.contains('$') {
                    assert!(
                        exported.labels[&family][label].contains(value),
                        "{context}: no {family} series with {label}=\"{value}\""
                    );
                }
            }
            families.push(family);
        }
        for label in grouping_labels(expr) {
            for family in &families {
                assert!(
                    exported.has_label(family, &label),
                    "{context}: groups by {label}, which {family} does not have"
                );
            }
        }
        used.extend(families);
    };
    for panel in panels(&dashboard["panels"]) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}");
        for target in targets {
            check(title, target["expr"].as_str().unwrap());
            queries += 1;
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        let query = variable["query"]["query"].as_str().unwrap();
        let (family, label) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.split_once(", "))
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        check(&format!("variable {}", variable["name"]), family);
        assert!(exported.has_label(family, label), "{query}: no label {label}");
    }
    assert!(queries >= 10, "{queries}");
    // What the dashboard is for.
    for needed in [
        "weft_requests_total",
        "weft_request_duration_seconds",
        "weft_outlier_ejections_total",
        "weft_concurrency_limit",
        "weft_concurrency_in_flight",
        "weft_retries_total",
        "weft_retry_budget_exhausted_total",
        "weft_zone_routed_requests_total",
    ] {
        assert!(used.contains(needed), "no panel shows {needed}");
    }
}
