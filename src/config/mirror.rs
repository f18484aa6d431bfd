//! Schema of a route's `mirror:` section (with `compare:` inside): which
//! requests are copied to a shadow cluster and how its answers are compared
//! with the primary's. Kept apart from `schema.rs` so each section is one
//! struct with serde defaults; a missing key always means the default
//! documented in docs/migration.md.
//!
//! Guarantees: every struct denies unknown keys; byte sizes accept a plain
//! number of bytes or a number with a unit (`512KiB`, `1MiB`, `10MB`, see
//! [`parse_byte_size`]) and serialize back in bytes, so `/config` round-trips.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::range::{count, within};

/// `mirror:` on a route: copy sampled requests to a shadow cluster.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub cluster: String,
    /// Share of matching requests mirrored, 0 to 100.
    #[serde(default = "default_percent")]
    pub percent: f64,
    /// Methods mirrored; by default only idempotent ones, so a write is
    /// duplicated only when someone asked for it by name.
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Requests with larger bodies are not mirrored; also the most of each
    /// response body buffered for comparison.
    #[serde(default = "default_max_body_bytes", with = "byte_size")]
    pub max_body_bytes: u64,
    /// Shadow requests at once (per route); more are dropped, never queued.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub compare: Option<CompareConfig>,
}

/// `compare:` inside `mirror:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    #[serde(default = "yes")]
    pub status: bool,
    /// Response headers whose values must match (case-insensitive names).
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub body: BodyCompare,
    /// `$.a.b`, `$.items[*].etag`, `$.items[0].id`: values at these paths are
    /// not compared.
    #[serde(default)]
    pub ignore_json_paths: Vec<String>,
    /// A second copy of the old version; differences it shows too are noise.
    #[serde(default)]
    pub noise_cluster: Option<String>,
    #[serde(default)]
    pub log: Option<CompareLogConfig>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BodyCompare {
    Exact,
    /// Parse both as JSON and compare values (key order, whitespace ignored).
    #[default]
    Json,
    None,
}

/// Where mismatches are written, one JSON line each.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CompareLogConfig {
    /// Relative to the config file's directory.
    pub path: PathBuf,
    #[serde(default = "default_sample_per_second")]
    pub sample_per_second: f64,
}

fn yes() -> bool {
    true
}
fn default_percent() -> f64 {
    100.0
}
fn default_methods() -> Vec<String> {
    // RFC 9110 section 9.2.2 idempotent methods, minus writes (PUT, DELETE):
    // a mirror must not repeat a side effect nobody asked to repeat.
    ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec()
}
fn default_max_body_bytes() -> u64 {
    1 << 20
}
fn default_max_in_flight() -> usize {
    100
}
fn default_sample_per_second() -> f64 {
    10.0
}

/// Ranges of a route's `mirror` keys, as (key below the route, message).
pub fn check(m: &MirrorConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let p = &mut problems;
    within(p, "mirror.percent".into(), m.percent, 0.0, 100.0);
    count(p, "mirror.max_body_bytes".into(), m.max_body_bytes, 0, 64 << 20);
    count(p, "mirror.max_in_flight".into(), m.max_in_flight, 1, 10_000);
    if let Some(log) = m.compare.as_ref().and_then(|c| c.log.as_ref()) {
        within(
            p,
            "mirror.compare.log.sample_per_second".into(),
            log.sample_per_second,
            0.0,
            10_000.0,
        );
    }
    problems
}

/// Parses `1024`, `64KiB`, `1MiB`, `1GiB` (powers of 1024) and `10KB`, `1MB`,
/// `1GB` (powers of 1000), with optional space before the unit and any case.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid byte size {text:?}: expected a number such as 1MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("invalid byte size {text:?}: unknown unit {other:?}")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("byte size {text:?} is too large"))
}

/// Serde for byte sizes: a number of bytes or a string with a unit.
pub mod byte_size {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }

    pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(t) => super::parse_byte_size(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_units() {
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("64 KiB"), Ok(64 << 10));
        assert_eq!(parse_byte_size("10kb"), Ok(10_000));
        assert_eq!(parse_byte_size("123"), Ok(123));
        assert!(parse_byte_size("1 parsec").is_err());
        assert!(parse_byte_size("MiB").is_err());
        assert!(parse_byte_size("99999999999999GiB").is_err());
    }

    #[test]
    fn defaults_apply_and_unknown_keys_fail() {
        let m: MirrorConfig = serde_yaml_ng::from_str("{ cluster: next, max_body_bytes: 2MiB }").unwrap();
        assert_eq!(m.percent, 100.0);
        assert_eq!(m.methods, ["GET", "HEAD", "OPTIONS"]);
        assert_eq!(m.max_body_bytes, 2 << 20);
        assert_eq!(m.max_in_flight, 100);
        let c: CompareConfig = serde_yaml_ng::from_str("{ headers: [content-type] }").unwrap();
        assert!(c.status);
        assert_eq!(c.body, BodyCompare::Json);
        assert!(serde_yaml_ng::from_str::<MirrorConfig>("{ cluster: next, percnt: 5 }").is_err());
    }
}
