//! Request matching: path (prefix, exact or whole-path regex), method,
//! headers, client identity, host (`authority`) and the connection's
//! original destination, compiled once per config so a request costs string
//! compares only (and, for `original_destination`, a look at one cluster's
//! endpoints).

use http::{header, HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::config::schema::{HeaderMatchConfig, MatchConfig, StringMatchConfig};

/// A compile error: the key below `match` that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchError {
    pub key: String,
    pub message: String,
}

/// A [`MatchError`] at `key`.
pub(super) fn err(key: impl Into<String>, message: impl Into<String>) -> MatchError {
    MatchError {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone)]
enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present(bool),
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    name: HeaderName,
    value: ValueMatch,
}

#[derive(Debug, Clone)]
pub struct Matcher {
    path: PathMatch,
    method: Option<Method>,
    headers: Vec<HeaderMatch>,
    client_identity: Option<ValueMatch>,
    /// Against the host, lowercased, without its port.
    authority: Option<ValueMatch>,
    /// The cluster (index) whose endpoints the original destination must be among.
    pub(super) endpoint_of: Option<usize>,
}

/// Whether the connection's original destination is an endpoint of the
/// cluster with this index (false for connections without one).
pub type EndpointOf<'a> = &'a dyn Fn(usize) -> bool;

/// For requests on connections without an original destination.
pub fn no_original_destination(_: usize) -> bool {
    false
}

/// Anchors a regex so it must match the whole input, as Envoy's `safe_regex` does.
fn whole(pattern: &str, key: &str) -> Result<Regex, MatchError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| err(key, format!("invalid regex: {e}")))
}

impl Matcher {
    pub fn compile(config: &MatchConfig) -> Result<Self, MatchError> {
        let path = match (&config.path_prefix, &config.path_exact, &config.path_regex) {
            (None, None, None) => PathMatch::Any,
            (Some(p), None, None) => PathMatch::Prefix(p.clone()),
            (None, Some(p), None) => PathMatch::Exact(p.clone()),
            (None, None, Some(r)) => PathMatch::Regex(whole(r, "path_regex")?),
            _ => {
                return Err(err(
                    "path_prefix",
                    "set at most one of path_prefix, path_exact, path_regex",
                ))
            }
        };
        let method = match &config.method {
            None => None,
            Some(m) => Some(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| err("method", format!("invalid method {m:?}")))?,
            ),
        };
        let headers = config
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| compile_header(h).map_err(|e| err(format!("headers[{i}].{}", e.key), e.message)))
            .collect::<Result<_, _>>()?;
        let client_identity = match &config.client_identity {
            None => None,
            Some(StringMatchConfig { exact, prefix, regex }) => Some(
                compile_value(exact, prefix, regex, None)
                    .map_err(|e| err(format!("client_identity.{}", e.key), e.message))?,
            ),
        };
        let authority = match &config.authority {
            None => None,
            Some(StringMatchConfig { exact, prefix, regex }) => Some(
                compile_value(
                    &exact.as_ref().map(|e| e.to_ascii_lowercase()),
                    &prefix.as_ref().map(|p| p.to_ascii_lowercase()),
                    regex,
                    None,
                )
                .map_err(|e| err(format!("authority.{}", e.key), e.message))?,
            ),
        };
        Ok(Self {
            path,
            method,
            headers,
            client_identity,
            authority,
            endpoint_of: None,
        })
    }

    /// `identity` is the verified client certificate identity, if any.
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        identity: Option<&str>,
        endpoint_of: EndpointOf,
    ) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && self.method.as_ref().is_none_or(|m| m == method)
            && self.headers.iter().all(|h| h.matches(headers))
            && self
                .client_identity
                .as_ref()
                .is_none_or(|m| identity.is_some_and(|id| m.matches_str(id)))
            && self
                .authority
                .as_ref()
                .is_none_or(|m| host(headers).is_some_and(|h| m.matches_str(&h)))
            && self.endpoint_of.is_none_or(endpoint_of)
    }
}

/// The request's host, lowercased and without its port: from `Host`,
/// which the front sets from `:authority` for HTTP/2 and HTTP/3.
fn host(headers: &HeaderMap) -> Option<String> {
    let authority = headers.get(header::HOST)?.to_str().ok()?;
    let host = match authority.rsplit_once(':') {
        // A port follows the last colon, unless that colon is inside an IPv6 literal.
        Some((host, port)) if !port.contains(']') && (!host.contains(':') || host.ends_with(']')) => host,
        _ => authority,
    };
    Some(host.to_ascii_lowercase())
}

fn compile_header(config: &HeaderMatchConfig) -> Result<HeaderMatch, MatchError> {
    let name = HeaderName::from_bytes(config.name.as_bytes())
        .map_err(|_| err("name", format!("invalid header name {:?}", config.name)))?;
    let value = compile_value(&config.exact, &config.prefix, &config.regex, config.present)?;
    Ok(HeaderMatch { name, value })
}

fn compile_value(
    exact: &Option<String>,
    prefix: &Option<String>,
    regex: &Option<String>,
    present: Option<bool>,
) -> Result<ValueMatch, MatchError> {
    Ok(match (exact, prefix, regex, present) {
        (Some(v), None, None, None) => ValueMatch::Exact(v.clone()),
        (None, Some(v), None, None) => ValueMatch::Prefix(v.clone()),
        (None, None, Some(r), None) => ValueMatch::Regex(whole(r, "regex")?),
        (None, None, None, Some(p)) => ValueMatch::Present(p),
        _ => {
            let keys = if present.is_some() {
                "exact, prefix, regex, present"
            } else {
                "exact, prefix, regex"
            };
            return Err(err("exact", format!("set exactly one of {keys}")));
        }
    })
}

impl ValueMatch {
    fn matches_str(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Prefix(p) => v.starts_with(p.as_str()),
            ValueMatch::Regex(r) => r.is_match(v),
            ValueMatch::Present(_) => true,
        }
    }
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        if let ValueMatch::Present(wanted) = self.value {
            return values.peek().is_some() == wanted;
        }
        values.any(|v| v.to_str().is_ok_and(|v| self.value.matches_str(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> Result<Matcher, MatchError> {
        let config: MatchConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Matcher::compile(&config)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        map
    }

    #[test]
    fn path_kinds() {
        let none = HeaderMap::new();
        let prefix = m("path_prefix: /api").unwrap();
        assert!(prefix.matches(&Method::GET, "/api/x", &none, None, &no_original_destination));
        assert!(!prefix.matches(&Method::GET, "/ap", &none, None, &no_original_destination));
        let exact = m("path_exact: /health").unwrap();
        assert!(exact.matches(&Method::GET, "/health", &none, None, &no_original_destination));
        assert!(!exact.matches(&Method::GET, "/health/x", &none, None, &no_original_destination));
        let regex = m("path_regex: /users/[0-9]+").unwrap();
        assert!(regex.matches(&Method::GET, "/users/42", &none, None, &no_original_destination));
        // The regex must match the whole path, not a part of it.
        assert!(!regex.matches(&Method::GET, "/users/42/edit", &none, None, &no_original_destination));
        assert!(!regex.matches(&Method::GET, "/x/users/42", &none, None, &no_original_destination));
        let any = m("{}").unwrap();
        assert!(any.matches(&Method::DELETE, "/anything", &none, None, &no_original_destination));
    }

    #[test]
    fn method_and_headers() {
        let matcher = m("{ method: get, headers: [ { name: x-canary, exact: '1' }, { name: x-user, prefix: adm }, { name: x-debug, present: false } ] }").unwrap();
        let good = headers(&[("x-canary", "1"), ("x-user", "admin")]);
        assert!(matcher.matches(&Method::GET, "/", &good, None, &no_original_destination));
        assert!(!matcher.matches(&Method::POST, "/", &good, None, &no_original_destination));
        assert!(!matcher.matches(
            &Method::GET,
            "/",
            &headers(&[("x-canary", "1")]),
            None,
            &no_original_destination
        ));
        let debug = headers(&[("x-canary", "1"), ("x-user", "admin"), ("x-debug", "")]);
        assert!(!matcher.matches(&Method::GET, "/", &debug, None, &no_original_destination));
        let regex = m("{ headers: [ { name: x-v, regex: 'v[12]' } ] }").unwrap();
        assert!(regex.matches(
            &Method::GET,
            "/",
            &headers(&[("x-v", "v2")]),
            None,
            &no_original_destination
        ));
        assert!(!regex.matches(
            &Method::GET,
            "/",
            &headers(&[("x-v", "v22")]),
            None,
            &no_original_destination
        ));
    }

    #[test]
    fn client_identity() {
        let matcher = m("{ client_identity: { prefix: 'spiffe://cluster.local/ns/x/' } }").unwrap();
        let h = HeaderMap::new();
        assert!(matcher.matches(
            &Method::GET,
            "/",
            &h,
            Some("spiffe://cluster.local/ns/x/sa/y"),
            &no_original_destination
        ));
        assert!(!matcher.matches(
            &Method::GET,
            "/",
            &h,
            Some("spiffe://cluster.local/ns/z/sa/y"),
            &no_original_destination
        ));
        assert!(!matcher.matches(&Method::GET, "/", &h, None, &no_original_destination));
        assert_eq!(m("{ client_identity: {} }").unwrap_err().key, "client_identity.exact");
    }

    #[test]
    fn authority_is_the_host_without_its_port_in_any_case() {
        let exact = m("{ authority: { exact: Payments.Default } }").unwrap();
        let with_host = |host: &str| headers(&[("host", host)]);
        for (host, expected) in [
            ("payments.default", true),
            ("PAYMENTS.default:8080", true),
            ("payments.default.svc", false),
            ("other", false),
        ] {
            let found = exact.matches(&Method::GET, "/", &with_host(host), None, &no_original_destination);
            assert_eq!(found, expected, "{host}");
        }
        assert!(!exact.matches(&Method::GET, "/", &HeaderMap::new(), None, &no_original_destination));
        let v6 = m("{ authority: { exact: '[fd00::1]' } }").unwrap();
        assert!(v6.matches(
            &Method::GET,
            "/",
            &with_host("[fd00::1]:80"),
            None,
            &no_original_destination
        ));
        assert!(v6.matches(
            &Method::GET,
            "/",
            &with_host("[FD00::1]"),
            None,
            &no_original_destination
        ));
        let suffix = m("{ authority: { regex: '.*[.]svc[.]cluster[.]local' } }").unwrap();
        let svc = with_host("web.ns.svc.cluster.local:80");
        assert!(suffix.matches(&Method::GET, "/", &svc, None, &no_original_destination));
        assert_eq!(m("{ authority: {} }").unwrap_err().key, "authority.exact");
    }

    #[test]
    fn original_destination_asks_about_its_cluster() {
        let mut matcher = m("{}").unwrap();
        matcher.endpoint_of = Some(3);
        let h = HeaderMap::new();
        assert!(matcher.matches(&Method::GET, "/", &h, None, &|c| c == 3));
        assert!(!matcher.matches(&Method::GET, "/", &h, None, &|c| c == 2));
        assert!(!matcher.matches(&Method::GET, "/", &h, None, &no_original_destination));
    }

    #[test]
    fn compile_errors_name_the_key() {
        assert_eq!(m("{ path_prefix: /, path_exact: /a }").unwrap_err().key, "path_prefix");
        assert_eq!(m("{ path_regex: '(' }").unwrap_err().key, "path_regex");
        assert_eq!(m("{ method: 'G T' }").unwrap_err().key, "method");
        let e = m("{ headers: [ { name: a }, { name: b, exact: x, prefix: y } ] }").unwrap_err();
        assert_eq!(e.key, "headers[0].exact");
    }
}
