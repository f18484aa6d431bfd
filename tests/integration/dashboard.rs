//! `deploy/grafana/weft.json` is a Grafana import file whose queries name only
//! metric families weft exports (or that the overload work adds, listed
//! explicitly below).

use serde_json::Value;

/// Families registered in `src/telemetry` on this branch.
const EXPORTED: &[&str] = &[
    "weft_requests_total",
    "weft_request_duration_seconds",
    "weft_upstream_requests_total",
    "weft_config_reloads_total",
    "weft_downstream_connections_active",
    "weft_downstream_connections_total",
    "weft_tls_certificate_reloads_total",
    "weft_outlier_ejections_total",
    "weft_endpoint_ejected",
    "weft_endpoint_healthy",
    "weft_zone_routed_requests_total",
    "weft_cluster_panic",
    "weft_zone_panic_total",
    "weft_trace_spans_dropped_total",
    "weft_trace_spans_exported_total",
];

/// Families the overload protection work (retries, adaptive concurrency)
/// exports; the dashboard shows them once that work is merged.
const FROM_OVERLOAD: &[&str] = &[
    "weft_concurrency_limit",
    "weft_concurrency_in_flight",
    "weft_retries_total",
    "weft_retry_budget_exhausted_total",
];

/// Every `weft_*` name in a PromQL expression, histogram suffixes removed.
fn families(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("weft_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| EXPORTED.contains(b)))
            .unwrap_or(name);
        out.push(base.to_string());
        rest = &tail[end..];
    }
    out
}

fn panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in list.as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(&p["panels"]));
    }
    out
}

#[test]
fn grafana_dashboard_queries_only_weft_families() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/weft.json");
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(dashboard["schemaVersion"].is_u64());

    let telemetry = [
        include_str!("../../src/telemetry/metrics.rs"),
        include_str!("../../src/telemetry/health.rs"),
        include_str!("../../src/telemetry/trace.rs"),
    ]
    .concat();
    for name in EXPORTED {
        assert!(
            telemetry.contains(&format!("\"{name}\"")),
            "{name} is not registered in src/telemetry"
        );
    }

    let mut used = std::collections::BTreeSet::new();
    let mut queries = 0;
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
            let expr = target["expr"].as_str().unwrap();
            let names = families(expr);
            assert!(!names.is_empty(), "{title}: {expr}");
            for name in names {
                assert!(
                    EXPORTED.contains(&name.as_str()) || FROM_OVERLOAD.contains(&name.as_str()),
                    "{title}: {name} is not a weft metric family"
                );
                used.insert(name);
            }
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries}");
    // What the issue asks the dashboard to show.
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
