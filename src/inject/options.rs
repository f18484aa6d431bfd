//! Injection options: defaults from the command line, overridden per pod by
//! `weft.io/*` annotations on the pod (template). The annotation wins. Every
//! value is checked before anything is injected; a bad one (or an unknown
//! `weft.io/` annotation, likely a typo) is a reason to skip the pod.

use serde_yaml_ng::Mapping;

use crate::capture::options::{join, CaptureOptions, PortRange, Subnet};

/// Annotation prefix of every option.
pub const PREFIX: &str = "weft.io/";
/// `enabled` (the default) or `disabled`.
pub const INJECT_ANNOTATION: &str = "weft.io/inject";
/// weft's record of what it added (see `patch::Status`).
pub const STATUS_ANNOTATION: &str = "weft.io/status";

/// Where weft's zone (`WEFT_ZONE`) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Zone {
    /// The pod's `topology.kubernetes.io/zone` label through the downward
    /// API (set where the cluster copies the node's topology labels to pods;
    /// empty otherwise, and weft then keeps `node.zone` from its config).
    Downward,
    /// A fixed zone name.
    Fixed(String),
    /// No `WEFT_ZONE`: the config file (or discovery) decides.
    Unset,
}

impl Zone {
    fn parse(value: &str) -> Result<Zone, String> {
        match value {
            "downward" => Ok(Zone::Downward),
            "none" => Ok(Zone::Unset),
            v if is_label_value(v) && !v.is_empty() => Ok(Zone::Fixed(v.to_string())),
            v => Err(format!("{v:?} is not downward, none, or a zone name")),
        }
    }
}

/// Everything one injection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectOptions {
    pub image: String,
    pub config_map: String,
    pub capture: CaptureOptions,
    pub cpu_request: String,
    pub memory_request: String,
    pub zone: Zone,
    pub native_sidecar: bool,
}

impl Default for InjectOptions {
    fn default() -> Self {
        InjectOptions {
            image: "weft:latest".into(),
            config_map: "weft".into(),
            capture: CaptureOptions::default(),
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            zone: Zone::Downward,
            native_sidecar: true,
        }
    }
}

/// The option keys, as annotation suffixes and (with `--`) as flags.
pub const KEYS: [&str; 13] = [
    "image",
    "config-map",
    "inbound-port",
    "outbound-port",
    "admin-port",
    "proxy-uid",
    "skip-inbound-ports",
    "skip-outbound-ports",
    "skip-subnets",
    "cpu-request",
    "memory-request",
    "zone",
    "native-sidecar",
];

impl InjectOptions {
    /// Sets one option from its text form; the error says what is wrong
    /// with the value (the caller names the flag or annotation).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let port = |v: &str| {
            v.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{v:?} is not a port"))
        };
        match key {
            "image" if !value.is_empty() && !value.contains(char::is_whitespace) => self.image = value.into(),
            "image" => return Err(format!("{value:?} is not an image reference")),
            "config-map" if is_dns_subdomain(value) => self.config_map = value.into(),
            "config-map" => return Err(format!("{value:?} is not a ConfigMap name")),
            "inbound-port" => self.capture.inbound_port = port(value)?,
            "outbound-port" => self.capture.outbound_port = port(value)?,
            "admin-port" => self.capture.admin_port = port(value)?,
            "proxy-uid" => self.capture.proxy_uid = value.parse().map_err(|_| format!("{value:?} is not a uid"))?,
            "skip-inbound-ports" => self.capture.skip_inbound_ports = PortRange::parse_list(value)?,
            "skip-outbound-ports" => self.capture.skip_outbound_ports = PortRange::parse_list(value)?,
            "skip-subnets" => self.capture.skip_subnets = Subnet::parse_list(value)?,
            "cpu-request" | "memory-request" if !is_quantity(value) => {
                return Err(format!("{value:?} is not a Kubernetes quantity"))
            }
            "cpu-request" => self.cpu_request = value.into(),
            "memory-request" => self.memory_request = value.into(),
            "zone" => self.zone = Zone::parse(value)?,
            "native-sidecar" => {
                self.native_sidecar = value.parse().map_err(|_| format!("{value:?} is not true or false"))?
            }
            other => return Err(format!("unknown option {other:?}")),
        }
        Ok(())
    }

    /// These options with the pod's `weft.io/*` annotations applied.
    pub fn with_annotations(&self, annotations: Option<&Mapping>) -> Result<InjectOptions, String> {
        let mut opts = self.clone();
        for (key, value) in annotations.into_iter().flatten() {
            let Some(key) = key.as_str() else { continue };
            let Some(name) = key.strip_prefix(PREFIX) else { continue };
            if key == INJECT_ANNOTATION || key == STATUS_ANNOTATION {
                continue;
            }
            if !KEYS.contains(&name) {
                return Err(format!("unknown annotation {key}"));
            }
            let text = scalar_text(value).ok_or_else(|| format!("{key}: not a string"))?;
            opts.set(name, &text).map_err(|e| format!("{key}: {e}"))?;
        }
        Ok(opts)
    }

    /// The `weft init-iptables` arguments for these options: the ports and
    /// uid always, the skip lists when not empty.
    pub fn init_args(&self) -> Vec<String> {
        let c = &self.capture;
        let mut args = vec![
            "init-iptables".to_string(),
            format!("--inbound-port={}", c.inbound_port),
            format!("--outbound-port={}", c.outbound_port),
            format!("--proxy-uid={}", c.proxy_uid),
            format!("--admin-port={}", c.admin_port),
        ];
        let lists = [
            ("skip-inbound-ports", join(&c.skip_inbound_ports)),
            ("skip-outbound-ports", join(&c.skip_outbound_ports)),
            ("skip-subnets", join(&c.skip_subnets)),
        ];
        args.extend(
            lists
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| format!("--{k}={v}")),
        );
        args
    }
}

/// An annotation's value as text (YAML may have parsed `"9901"` written
/// without quotes as a number).
pub fn scalar_text(value: &serde_yaml_ng::Value) -> Option<String> {
    match value {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(ok)
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn is_label_value(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    s.len() <= 63
        && s.chars().all(ok)
        && (s.is_empty()
            || (s.starts_with(|c: char| c.is_ascii_alphanumeric()) && s.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

/// A Kubernetes resource quantity: a decimal number with an optional binary
/// (Ki..Ei), decimal (m, k, M..E) or exponent suffix.
fn is_quantity(s: &str) -> bool {
    let digits_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| !e.is_empty() && e.trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(yaml: &str) -> Mapping {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn annotation_wins_over_flag_and_numbers_without_quotes_are_read() {
        let mut flags = InjectOptions::default();
        flags.set("inbound-port", "16000").unwrap();
        flags.set("image", "flag/weft:1").unwrap();
        let a = annotations("{ weft.io/inbound-port: 17000, weft.io/native-sidecar: false, other.io/x: y }");
        let opts = flags.with_annotations(Some(&a)).unwrap();
        assert_eq!(opts.capture.inbound_port, 17000);
        assert!(!opts.native_sidecar);
        assert_eq!(opts.image, "flag/weft:1");
    }

    #[test]
    fn bad_values_and_unknown_annotations_are_named() {
        let d = InjectOptions::default();
        for (yaml, needle) in [
            (
                "{ weft.io/admin-port: http }",
                "weft.io/admin-port: \"http\" is not a port",
            ),
            ("{ weft.io/skip-port: 22 }", "unknown annotation weft.io/skip-port"),
            ("{ weft.io/cpu-request: lots }", "not a Kubernetes quantity"),
            ("{ weft.io/zone: 'zone a' }", "not downward, none, or a zone name"),
            ("{ weft.io/skip-subnets: 10.0.0.0/40 }", "weft.io/skip-subnets"),
            ("{ weft.io/config-map: Web_Config }", "not a ConfigMap name"),
        ] {
            let err = d.with_annotations(Some(&annotations(yaml))).unwrap_err();
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "64Mi", "1Gi", "2", "1e3", "1.5G"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "64MB", "1.2.3", "-1", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn init_args_carry_ports_and_only_non_empty_lists() {
        let mut o = InjectOptions::default();
        assert_eq!(
            o.init_args(),
            [
                "init-iptables",
                "--inbound-port=15006",
                "--outbound-port=15001",
                "--proxy-uid=10001",
                "--admin-port=9901"
            ]
        );
        o.set("skip-outbound-ports", "3306, 25").unwrap();
        assert_eq!(o.init_args().last().unwrap(), "--skip-outbound-ports=3306,25");
    }
}
