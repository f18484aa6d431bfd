//! Request matching: path (prefix, exact or whole-path regex), method and
//! headers, compiled once per config so a request costs string compares only.

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::config::schema::{HeaderMatchConfig, MatchConfig};

/// A compile error: the key below `match` that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchError {
    pub key: String,
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> MatchError {
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
        Ok(Self { path, method, headers })
    }

    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok && self.method.as_ref().is_none_or(|m| m == method) && self.headers.iter().all(|h| h.matches(headers))
    }
}

fn compile_header(config: &HeaderMatchConfig) -> Result<HeaderMatch, MatchError> {
    let name = HeaderName::from_bytes(config.name.as_bytes())
        .map_err(|_| err("name", format!("invalid header name {:?}", config.name)))?;
    let value = match (&config.exact, &config.prefix, &config.regex, config.present) {
        (Some(v), None, None, None) => ValueMatch::Exact(v.clone()),
        (None, Some(v), None, None) => ValueMatch::Prefix(v.clone()),
        (None, None, Some(r), None) => ValueMatch::Regex(whole(r, "regex")?),
        (None, None, None, Some(p)) => ValueMatch::Present(p),
        _ => return Err(err("exact", "set exactly one of exact, prefix, regex, present")),
    };
    Ok(HeaderMatch { name, value })
}

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        if let ValueMatch::Present(wanted) = self.value {
            return values.peek().is_some() == wanted;
        }
        values.any(|v| {
            let Ok(v) = v.to_str() else { return false };
            match &self.value {
                ValueMatch::Exact(e) => v == e,
                ValueMatch::Prefix(p) => v.starts_with(p.as_str()),
                ValueMatch::Regex(r) => r.is_match(v),
                ValueMatch::Present(_) => true,
            }
        })
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
        assert!(prefix.matches(&Method::GET, "/api/x", &none));
        assert!(!prefix.matches(&Method::GET, "/ap", &none));
        let exact = m("path_exact: /health").unwrap();
        assert!(exact.matches(&Method::GET, "/health", &none));
        assert!(!exact.matches(&Method::GET, "/health/x", &none));
        let regex = m("path_regex: /users/[0-9]+").unwrap();
        assert!(regex.matches(&Method::GET, "/users/42", &none));
        // The regex must match the whole path, not a part of it.
        assert!(!regex.matches(&Method::GET, "/users/42/edit", &none));
        assert!(!regex.matches(&Method::GET, "/x/users/42", &none));
        let any = m("{}").unwrap();
        assert!(any.matches(&Method::DELETE, "/anything", &none));
    }

    #[test]
    fn method_and_headers() {
        let matcher = m("{ method: get, headers: [ { name: x-canary, exact: '1' }, { name: x-user, prefix: adm }, { name: x-debug, present: false } ] }").unwrap();
        let good = headers(&[("x-canary", "1"), ("x-user", "admin")]);
        assert!(matcher.matches(&Method::GET, "/", &good));
        assert!(!matcher.matches(&Method::POST, "/", &good));
        assert!(!matcher.matches(&Method::GET, "/", &headers(&[("x-canary", "1")])));
        let debug = headers(&[("x-canary", "1"), ("x-user", "admin"), ("x-debug", "")]);
        assert!(!matcher.matches(&Method::GET, "/", &debug));
        let regex = m("{ headers: [ { name: x-v, regex: 'v[12]' } ] }").unwrap();
        assert!(regex.matches(&Method::GET, "/", &headers(&[("x-v", "v2")])));
        assert!(!regex.matches(&Method::GET, "/", &headers(&[("x-v", "v22")])));
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
