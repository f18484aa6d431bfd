//! Loading, validating and watching the YAML config. Every error names the
//! file, the line and the key path (`listeners[0].routes[2].cluster`), so a
//! person can go straight to it.

pub mod discovery;
pub mod files;
pub mod health;
pub mod limits;
pub mod lines;
pub mod mirror;
pub mod original_destination;
pub mod overload;
pub mod range;
pub mod schema;
pub mod trace;
pub mod udp;
mod validate;
pub use validate::advertised_http3;
pub mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use schema::Config;

use lines::LineIndex;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.key, self.message)
        }
    }
}

/// All the errors of one load attempt.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A parsed and validated config with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub path: PathBuf,
    /// The directory relative paths in the config resolve against.
    pub base_dir: PathBuf,
    /// Where each key is written, for errors found by later passes.
    pub lines: Arc<LineIndex>,
    /// The digest of the file's bytes, to tell an unchanged file on reload.
    pub digest: Digest,
}

/// SHA-256 of a config file's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        let mut out = [0; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        Self(out)
    }
}

impl Loaded {
    /// `problems` (key path, message) as errors naming this file and each line.
    pub fn errors(&self, problems: Vec<(String, String)>) -> ConfigErrors {
        keyed_errors(&self.path, &self.lines, problems)
    }
}

/// One error per key (the first found: a range check runs before the
/// later passes that may see the same value), sorted by line.
fn keyed_errors(path: &Path, index: &LineIndex, problems: Vec<(String, String)>) -> ConfigErrors {
    let mut seen = std::collections::HashSet::new();
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .filter(|(key, _)| seen.insert(key.clone()))
        .map(|(key, message)| ConfigError {
            file: path.to_path_buf(),
            line: index.line_of(&key),
            key,
            message,
        })
        .collect();
    errors.sort_by_key(|e| e.line);
    ConfigErrors(errors)
}

/// An error about the file as a whole (no key), at `line` if known.
fn file_error(path: &Path, line: Option<usize>, message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        file: path.to_path_buf(),
        line,
        key: String::new(),
        message,
    }])
}

/// Reads `path` (a regular file of at most [`files::MAX_CONFIG_BYTES`]).
/// Blocking: not for a worker thread.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    files::read_regular(path, files::MAX_CONFIG_BYTES)
}

/// Reads and parses `path` (blocking, see [`read`]).
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let bytes = read(path).map_err(|e| file_error(path, None, format!("cannot read: {e}")))?;
    parse_bytes(path, &bytes)
}

/// Parses a config file's bytes: see [`decode`] and [`parse`].
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Loaded, ConfigErrors> {
    parse_text(path, decode(path, bytes)?, Digest::of(bytes))
}

/// The text of a config file's bytes. A leading UTF-8 byte-order mark is
/// dropped (some Kubernetes tooling writes one; it carries no meaning in
/// UTF-8); bytes that are not UTF-8 are an error naming line and column.
pub fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str, ConfigErrors> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let good = bytes.get(..e.valid_up_to()).unwrap_or_default();
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(good.get(line_start..).unwrap_or_default())
            .chars()
            .count()
            + 1;
        let byte = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
        let message = format!("invalid UTF-8 at column {column} (byte 0x{byte:02X}); save the file as UTF-8");
        file_error(path, Some(line), message)
    })
}

/// The directory relative paths in `path` resolve against.
pub fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Parses config text against the schema; relative paths in it resolve
/// against `path`'s directory. The checks beyond the schema are
/// [`problems`] (and those needing other modules, `snapshot::check`).
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigErrors> {
    parse_text(path, text, Digest::of(text.as_bytes()))
}

fn parse_text(path: &Path, text: &str, digest: Digest) -> Result<Loaded, ConfigErrors> {
    if let Some(line) = files::too_deep(text, files::MAX_YAML_DEPTH) {
        let message = format!(
            "mappings and sequences nest deeper than {} levels here; weft reads configs up to that depth",
            files::MAX_YAML_DEPTH
        );
        return Err(file_error(path, Some(line), message));
    }
    let index = LineIndex::build(text);
    if let Some(line) = index.second_document_line() {
        let message = "a second YAML document starts here; weft reads one document per file".to_string();
        return Err(file_error(path, Some(line), message));
    }
    let mut config: Config =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors(vec![yaml_error(path, &e, &index)]))?;
    let base_dir = base_dir(path);
    config.resolve_paths(&base_dir);
    override_zone(&mut config, std::env::var("WEFT_ZONE").ok());
    Ok(Loaded {
        config,
        path: path.to_path_buf(),
        base_dir,
        lines: Arc::new(index),
        digest,
    })
}

/// What is wrong with `config` beyond its schema, as (key path, message):
/// names, references, protocol combinations, ranges.
pub fn problems(config: &Config) -> Vec<(String, String)> {
    validate::validate(config)
}

/// `WEFT_ZONE` (when set and not empty) replaces `node.zone`: the zone is
/// usually known only to the pod (downward API), not to the shared config file.
pub fn override_zone(config: &mut Config, env_zone: Option<String>) {
    if let Some(zone) = env_zone.filter(|z| !z.trim().is_empty()) {
        config.node.zone = Some(zone.trim().to_string());
    }
}

/// serde_yaml_ng reports "path.to.key: message at line L column C"; split that
/// into our fields. Errors raised while parsing a value (a bad duration) are
/// reported at the enclosing mapping; when the message quotes the bad value,
/// the index finds its own key and line.
fn yaml_error(path: &Path, e: &serde_yaml_ng::Error, index: &LineIndex) -> ConfigError {
    let mut message = e.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    let (key, message) = match message.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') => (key.to_string(), rest.to_string()),
        _ => (String::new(), message),
    };
    let quoted = message.split('"').nth(1).filter(|v| !v.is_empty());
    if let Some((found, line)) = quoted.and_then(|v| index.find_value(&key, v)) {
        return ConfigError {
            file: path.to_path_buf(),
            line: Some(line),
            key: found.to_string(),
            message,
        };
    }
    ConfigError {
        file: path.to_path_buf(),
        line: e.location().map(|l| l.line()).or(index.syntax_error_line()),
        key,
        message,
    }
}

/// ` (did you mean "x"?)` when a known name is a small edit away from `name`.
pub fn did_you_mean<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> String {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// What the config and snapshot tests start from.
#[cfg(test)]
pub(crate) mod fixture {
    /// One listener routing to one cluster with one endpoint.
    pub const BASE: &str = "listeners:
  - name: public
    address: 127.0.0.1:8080
    routes:
      - name: r0
        cluster: web-canary
clusters:
  - name: web-canary
    endpoints:
      - { address: 127.0.0.1:9001 }
";

    /// Each error of `checked` as printed (`file:line: key: message`); none if it passed.
    pub fn messages<T>(checked: Result<T, super::ConfigErrors>) -> Vec<String> {
        match checked {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{messages, BASE};
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let checked = parse(Path::new("weft.yaml"), text).and_then(|loaded| match problems(&loaded.config) {
            found if found.is_empty() => Ok(loaded),
            found => Err(loaded.errors(found)),
        });
        messages(checked)
    }

    #[test]
    fn valid_config_parses_with_defaults() {
        let config = parse(Path::new("weft.yaml"), BASE).unwrap().config;
        assert_eq!(config.admin.address.port(), 9901);
        assert_eq!(config.drain_timeout.as_secs(), 15);
        assert_eq!(config.drain_delay.as_secs(), 5);
        assert_eq!(config.clusters[0].endpoints[0].weight, 1);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = BASE.replace(
            "        cluster: web-canary",
            "        cluster: web-canary\n        timout: 5s",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("weft.yaml:7: listeners[0].routes[0]: unknown field `timout`"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn bad_duration_is_reported() {
        let text = BASE.replace(
            "        cluster: web-canary",
            "        cluster: web-canary\n        timeout: soon",
        );
        let errs = errors(&text);
        assert!(
            errs[0].starts_with("weft.yaml:7: listeners[0].routes[0].timeout: "),
            "{}",
            errs[0]
        );
        assert!(errs[0].contains("invalid duration"), "{}", errs[0]);
    }

    #[test]
    fn weft_zone_overrides_node_zone() {
        let mut config = parse(Path::new("weft.yaml"), &format!("node: {{ zone: zone-a }}\n{BASE}"))
            .unwrap()
            .config;
        override_zone(&mut config, None);
        assert_eq!(config.node.zone.as_deref(), Some("zone-a"));
        override_zone(&mut config, Some(" ".into()));
        assert_eq!(config.node.zone.as_deref(), Some("zone-a"));
        override_zone(&mut config, Some("zone-b".into()));
        assert_eq!(config.node.zone.as_deref(), Some("zone-b"));
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean("web-stabel", ["web-stable", "db"].into_iter()),
            " (did you mean \"web-stable\"?)"
        );
        assert_eq!(did_you_mean("zzz", ["web-stable"].into_iter()), "");
    }

    /// Writes `bytes` as `weft.yaml` in a new directory and loads it.
    fn load_bytes(bytes: &[u8]) -> (Vec<String>, Option<Loaded>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.yaml");
        std::fs::write(&path, bytes).unwrap();
        let shown = |e: ConfigErrors| {
            e.0.iter()
                .map(|e| e.to_string().replace(&*dir.path().to_string_lossy(), ""))
                .collect()
        };
        match load(&path) {
            Ok(loaded) => (vec![], Some(loaded)),
            Err(e) => (shown(e), None),
        }
    }

    #[test]
    fn byte_order_mark_is_dropped_and_lines_stay_right() {
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), BASE.as_bytes()].concat();
        let (errs, loaded) = load_bytes(&with_bom);
        assert_eq!(errs, Vec::<String>::new());
        assert_eq!(loaded.unwrap().config.listeners[0].name, "public");
        let broken = BASE.replace(
            "        cluster: web-canary",
            "        cluster: web-canary\n        timout: 5s",
        );
        let (errs, _) = load_bytes(&[b"\xEF\xBB\xBF".as_slice(), broken.as_bytes()].concat());
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("/weft.yaml:7: listeners[0].routes[0]: unknown field `timout`"),
            "{errs:?}"
        );
    }

    #[test]
    fn invalid_utf8_names_file_line_and_column() {
        let text = BASE.replace("name: r0", "name: r\u{1}0");
        let bytes: Vec<u8> = text.bytes().map(|b| if b == 1 { 0xFF } else { b }).collect();
        let (errs, _) = load_bytes(&bytes);
        assert_eq!(
            errs,
            ["/weft.yaml:5: invalid UTF-8 at column 16 (byte 0xFF); save the file as UTF-8"]
        );
    }

    #[test]
    fn a_second_document_is_refused_at_its_line() {
        let (errs, _) = load_bytes(format!("---\n{BASE}---\nclusters: []\n").as_bytes());
        assert_eq!(
            errs,
            ["/weft.yaml:12: a second YAML document starts here; weft reads one document per file"]
        );
        let (errs, loaded) = load_bytes(format!("---\n{BASE}...\n").as_bytes());
        assert_eq!(errs, Vec::<String>::new());
        assert!(loaded.is_some());
    }

    #[test]
    fn advertising_http3_needs_an_http3_listener_on_a_fixed_port() {
        let advertising = BASE.replace("    routes:\n", "    advertise_http3: true\n    routes:\n");
        let expected = "weft.yaml:4: listeners[0].advertise_http3: there is no http3 listener to advertise";
        assert_eq!(errors(&advertising), [expected]);
        let quic = |port: u16| {
            let listener = format!("  - {{ name: quic, address: 127.0.0.1:{port}, protocol: http3, tls: {{ cert: c.pem, key: c.key }}, routes: [] }}\nclusters:");
            advertising.replace("clusters:", &listener)
        };
        assert_eq!(errors(&quic(4433)), Vec::<String>::new());
        let expected = "weft.yaml:4: listeners[0].advertise_http3: http3 listener \"quic\" has port 0; alt-svc needs the fixed port clients will reach";
        assert_eq!(errors(&quic(0)), [expected]);
    }

    #[test]
    fn values_that_cannot_run_are_refused_with_line_and_key() {
        let cases = [
            (
                "    routes:\n",
                "    limits: { max_connections: 18446744073709551615 }\n    routes:\n",
                "weft.yaml:4: listeners[0].limits.max_connections: must be between 1 and 1000000",
            ),
            (
                "    routes:\n",
                "    limits:\n      header_read_timeout: 500000000000y\n    routes:\n",
                "weft.yaml:5: listeners[0].limits.header_read_timeout: must be between 1ms and 1h",
            ),
            (
                "        cluster: web-canary\n",
                "        cluster: web-canary\n        timeout: 500000000000y\n        mirror: { cluster: web-canary }\n",
                "weft.yaml:7: listeners[0].routes[0].timeout: must be between 1ms and 1h",
            ),
            (
                "    routes:\n",
                "    quic: { idle_timeout: 500000000000y }\n    routes:\n",
                "weft.yaml:4: listeners[0].quic.idle_timeout: must be between 1ms and 1h",
            ),
            (
                "listeners:\n",
                "runtime: { worker_threads: 18446744073709551615 }\nlisteners:\n",
                "weft.yaml:1: runtime.worker_threads: must be between 1 and 1024",
            ),
            (
                "listeners:\n",
                "runtime: { worker_threads: 100000 }\nlisteners:\n",
                "weft.yaml:1: runtime.worker_threads: must be between 1 and 1024",
            ),
        ];
        for (from, to, expected) in cases {
            assert_eq!(errors(&BASE.replacen(from, to, 1)), [expected]);
        }
    }
}
