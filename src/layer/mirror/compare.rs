//! Comparing a primary response with its shadow (`compare:` in `mirror:`):
//! status, chosen headers and the body (exact bytes, JSON values, or not at
//! all), classifying the pair as match, mismatch or noise, and the rate
//! limit of the mismatch log.
//!
//! Guarantees: pure functions of their inputs (time is passed in), so every
//! rule is unit-tested; a difference counts as noise only if the same
//! difference (same status pair side, same header, same JSON path) also
//! appears between the primary and a second copy of the old version, the
//! approach of Twitter's Diffy ("Diffy: finding bugs without writing tests",
//! 2015); a pair is noise only if every difference is.

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::Serialize;
use serde_json::Value;

use super::json_diff::{self, JsonPath, PathDiff};
use crate::config::mirror::{BodyCompare, CompareConfig};
use crate::telemetry::mirror::MirrorResult;

/// The mismatch log's rate limit (a token bucket shared with the log's).
pub use crate::telemetry::log_limit::LogLimiter;

/// Most body differences kept per pair.
const MAX_BODY_DIFFS: usize = 20;
/// Longest rendering of one value in a mismatch record.
const MAX_VALUE_CHARS: usize = 200;

/// One side's response, as far as comparison needs it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A compiled `compare:` section.
#[derive(Debug, Clone)]
pub struct CompareSpec {
    status: bool,
    headers: Vec<HeaderName>,
    body: BodyCompare,
    ignore: Vec<JsonPath>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeaderDiff {
    pub name: String,
    pub primary: Option<String>,
    pub shadow: Option<String>,
}

/// Everything that differs between two responses.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Differences {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<(u16, u16)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderDiff>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub body: Vec<PathDiff>,
    /// More body differences existed than were kept.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
}

impl Differences {
    pub fn is_empty(&self) -> bool {
        self.status.is_none() && self.headers.is_empty() && self.body.is_empty()
    }

    /// The differences not explained by `noise` (primary against a second
    /// copy of the old version).
    pub fn without_noise(mut self, noise: &Differences) -> Differences {
        if noise.status.is_some() {
            self.status = None;
        }
        self.headers.retain(|h| !noise.headers.iter().any(|n| n.name == h.name));
        self.body.retain(|d| !noise.body.iter().any(|n| n.path == d.path));
        self
    }

    /// Values cut to a readable length for logs and `/compare`.
    pub fn truncated(mut self) -> Differences {
        for d in &mut self.body {
            d.primary = d.primary.take().map(shorten);
            d.shadow = d.shadow.take().map(shorten);
        }
        self
    }
}

fn shorten(value: Value) -> Value {
    let text = match &value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if text.chars().count() <= MAX_VALUE_CHARS {
        return value;
    }
    let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    Value::String(format!("{cut}…"))
}

impl CompareSpec {
    pub fn compile(config: &CompareConfig) -> Result<Self, (String, String)> {
        let headers = config
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderName::try_from(h.as_str())
                    .map_err(|e| (format!("headers[{i}]"), format!("invalid header name {h:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let ignore = config
            .ignore_json_paths
            .iter()
            .enumerate()
            .map(|(i, p)| JsonPath::parse(p).map_err(|e| (format!("ignore_json_paths[{i}]"), e)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            status: config.status,
            headers,
            body: config.body,
            ignore,
        })
    }

    pub fn differences(&self, primary: &Observed, shadow: &Observed) -> Differences {
        let status = (self.status && primary.status != shadow.status).then_some((primary.status, shadow.status));
        let value =
            |h: &HeaderMap, name: &HeaderName| h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let headers = self
            .headers
            .iter()
            .map(|name| HeaderDiff {
                name: name.to_string(),
                primary: value(&primary.headers, name),
                shadow: value(&shadow.headers, name),
            })
            .filter(|d| d.primary != d.shadow)
            .collect();
        let (body, body_truncated) = self.body_differences(&primary.body, &shadow.body);
        Differences {
            status,
            headers,
            body,
            body_truncated,
        }
    }

    fn body_differences(&self, primary: &Bytes, shadow: &Bytes) -> (Vec<PathDiff>, bool) {
        let as_json = |b: &Bytes| serde_json::from_slice::<Value>(b).ok();
        match self.body {
            BodyCompare::None => (Vec::new(), false),
            BodyCompare::Json => match (as_json(primary), as_json(shadow)) {
                (Some(a), Some(b)) => json_diff::diff(&a, &b, &self.ignore, MAX_BODY_DIFFS),
                // Not JSON on one side (an error page, say): bytes decide.
                _ => exact(primary, shadow),
            },
            BodyCompare::Exact => exact(primary, shadow),
        }
    }
}

fn exact(primary: &Bytes, shadow: &Bytes) -> (Vec<PathDiff>, bool) {
    if primary == shadow {
        return (Vec::new(), false);
    }
    let text = |b: &Bytes| Some(Value::String(String::from_utf8_lossy(b).into_owned()));
    let diff = PathDiff {
        path: "$".into(),
        primary: text(primary),
        shadow: text(shadow),
    };
    (vec![diff], false)
}

/// Match, mismatch or noise for a compared pair; `noise` is the primary
/// against the noise cluster's answer, when there is one.
pub fn classify(differences: &Differences, noise: Option<&Differences>) -> MirrorResult {
    if differences.is_empty() {
        return MirrorResult::Match;
    }
    match noise {
        Some(noise) if differences.clone().without_noise(noise).is_empty() => MirrorResult::Noise,
        _ => MirrorResult::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CompareSpec {
        CompareSpec::compile(&serde_yaml_ng::from_str(yaml).unwrap()).unwrap()
    }

    fn json(status: u16, body: &str) -> Observed {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        Observed {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn json_bodies_compare_as_values() {
        let s = spec("{ headers: [content-type], ignore_json_paths: ['$.at'] }");
        let a = json(200, r#"{"v": 1, "at": 5, "name": "x"}"#);
        let b = json(200, r#"{ "name": "x", "at": 6, "v": 1.0 }"#);
        assert_eq!(classify(&s.differences(&a, &b), None), MirrorResult::Match);
        let c = json(201, r#"{"v": 2, "at": 5, "name": "x"}"#);
        let d = s.differences(&a, &c);
        assert_eq!(d.status, Some((200, 201)));
        assert_eq!(d.body[0].path, "$.v");
        assert_eq!(classify(&d, None), MirrorResult::Mismatch);
    }

    #[test]
    fn noise_explains_only_shared_differences() {
        let s = spec("{ body: json }");
        let primary = json(200, r#"{"id": 1, "rand": 10}"#);
        let old_copy = json(200, r#"{"id": 1, "rand": 11}"#);
        let noise = s.differences(&primary, &old_copy);
        let shadow_rand = json(200, r#"{"id": 1, "rand": 12}"#);
        let shadow_both = json(200, r#"{"id": 2, "rand": 12}"#);
        assert_eq!(
            classify(&s.differences(&primary, &shadow_rand), Some(&noise)),
            MirrorResult::Noise
        );
        assert_eq!(
            classify(&s.differences(&primary, &shadow_both), Some(&noise)),
            MirrorResult::Mismatch
        );
    }

    #[test]
    fn exact_and_none_and_headers() {
        let a = json(200, "hello");
        let mut b = json(200, "hello!");
        b.headers.insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(spec("{ body: exact }").differences(&a, &b).body[0].path, "$");
        assert!(spec("{ body: none }").differences(&a, &b).is_empty());
        let d = spec("{ body: none, headers: [content-type] }").differences(&a, &b);
        assert_eq!(d.headers[0].shadow.as_deref(), Some("text/plain"));
        // Non-JSON bodies under `json` fall back to bytes.
        assert_eq!(spec("{ body: json }").differences(&a, &b).body.len(), 1);
    }

    #[test]
    fn long_values_are_truncated() {
        let d = spec("{}").differences(&json(200, &format!("\"{}\"", "a".repeat(500))), &json(200, "\"b\""));
        let cut = d.truncated();
        let shown = cut.body[0].primary.as_ref().unwrap().as_str().unwrap();
        assert_eq!(shown.chars().count(), MAX_VALUE_CHARS + 1);
    }
}
