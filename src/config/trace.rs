//! The `tracing` section: where spans are exported (OTLP over HTTP/protobuf,
//! <https://opentelemetry.io/docs/specs/otlp/#otlphttp>) and which share of
//! new traces is sampled. Absent, weft still propagates trace context but
//! records no spans.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318`; spans
    /// are POSTed to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: String,
    /// Share of new traces (those arriving without a sampling decision) that
    /// are recorded, 0.0 to 1.0. A sampled incoming trace is always recorded.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// Problems as (key path, message), like the rest of validation.
pub fn validate(tracing: Option<&TracingConfig>) -> Vec<(String, String)> {
    let Some(t) = tracing else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    super::range::within(&mut problems, "tracing.sample_ratio".into(), t.sample_ratio, 0.0, 1.0);
    if let Err(e) = traces_uri(&t.otlp_endpoint) {
        problems.push(("tracing.otlp_endpoint".into(), e));
    }
    problems
}

/// `{endpoint}/v1/traces`, the OTLP/HTTP traces path. Only plain `http` is
/// supported: the collector is normally a node-local agent.
pub fn traces_uri(endpoint: &str) -> Result<http::Uri, String> {
    let base = endpoint.trim_end_matches('/');
    let uri: http::Uri = format!("{base}/v1/traces")
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "{endpoint:?} must be an http:// URL such as http://127.0.0.1:4318"
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_traces_uri() {
        assert_eq!(
            traces_uri("http://127.0.0.1:4318").unwrap().to_string(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_uri("http://collector:4318/otlp/").unwrap().to_string(),
            "http://collector:4318/otlp/v1/traces"
        );
        assert!(traces_uri("https://collector:4318").is_err());
        assert!(traces_uri("collector:4318").is_err());
    }

    #[test]
    fn validates_ratio_and_endpoint() {
        let ok = TracingConfig {
            otlp_endpoint: "http://127.0.0.1:4318".into(),
            sample_ratio: 0.1,
        };
        assert!(validate(Some(&ok)).is_empty());
        let bad = TracingConfig {
            otlp_endpoint: "ftp://x".into(),
            sample_ratio: 1.5,
        };
        let keys: Vec<String> = validate(Some(&bad)).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["tracing.sample_ratio", "tracing.otlp_endpoint"]);
        assert!(validate(None).is_empty());
    }
}
