//! Route compilation and matching (path, method, headers, client identity,
//! sticky splits) on arbitrary routes and requests: compile errors name a
//! key, matching answers, never a panic.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use weft::route::{self, Action};

#[derive(Arbitrary, Debug)]
struct StringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    present: Option<bool>,
}

#[derive(Arbitrary, Debug)]
struct RouteIn {
    path_prefix: Option<String>,
    path_exact: Option<String>,
    path_regex: Option<String>,
    method: Option<String>,
    headers: Vec<(String, StringMatch)>,
    client_identity: Option<StringMatch>,
    cluster: Option<String>,
    split: Option<Vec<(String, u32)>>,
    direct_status: Option<u16>,
    sticky_header: Option<String>,
    sticky_cookie: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct RequestIn {
    method: Vec<u8>,
    path: String,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    identity: Option<String>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<RouteIn>,
    requests: Vec<RequestIn>,
}

fn string_match(m: &StringMatch, with_present: bool) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in [("exact", &m.exact), ("prefix", &m.prefix), ("regex", &m.regex)] {
        if let Some(v) = value {
            out.insert(key.into(), json!(v));
        }
    }
    if let (true, Some(p)) = (with_present, m.present) {
        out.insert("present".into(), json!(p));
    }
    out
}

fn route_config(r: &RouteIn, i: usize) -> Value {
    let mut matcher = Map::new();
    for (key, value) in [
        ("path_prefix", &r.path_prefix),
        ("path_exact", &r.path_exact),
        ("path_regex", &r.path_regex),
        ("method", &r.method),
    ] {
        if let Some(v) = value {
            matcher.insert(key.into(), json!(v));
        }
    }
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(name, m)| {
            let mut h = string_match(m, true);
            h.insert("name".into(), json!(name));
            Value::Object(h)
        })
        .collect();
    matcher.insert("headers".into(), Value::Array(headers));
    if let Some(id) = &r.client_identity {
        matcher.insert("client_identity".into(), Value::Object(string_match(id, false)));
    }
    let mut route = Map::new();
    route.insert("name".into(), json!(format!("r{i}")));
    route.insert("match".into(), Value::Object(matcher));
    if let Some(c) = &r.cluster {
        route.insert("cluster".into(), json!(c));
    }
    if let Some(split) = &r.split {
        let split: Vec<Value> = split
            .iter()
            .map(|(c, w)| json!({ "cluster": c, "weight": w }))
            .collect();
        route.insert("split".into(), Value::Array(split));
    }
    if let Some(status) = r.direct_status {
        route.insert("direct_response".into(), json!({ "status": status }));
    }
    if r.sticky_header.is_some() || r.sticky_cookie.is_some() {
        route.insert(
            "sticky".into(),
            json!({ "header": r.sticky_header, "cookie": r.sticky_cookie }),
        );
    }
    Value::Object(route)
}

fn request_headers(pairs: &[(Vec<u8>, Vec<u8>)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    headers
}

fuzz_target!(|input: Input| {
    let clusters = HashMap::from([("a", 0), ("b", 1), ("c", 2)]);
    let mut routes = Vec::new();
    for (i, r) in input.routes.iter().enumerate() {
        let Ok(config) = serde_json::from_value(route_config(r, i)) else {
            continue;
        };
        match route::compile(&config, &clusters) {
            Ok(route) => routes.push(route),
            Err(e) => assert!(!e.key.is_empty() && !e.message.is_empty(), "{e:?}"),
        }
    }
    for req in &input.requests {
        let Ok(method) = Method::from_bytes(&req.method) else {
            continue;
        };
        let headers = request_headers(&req.headers);
        let Some(found) = route::find(
            &routes,
            &method,
            &req.path,
            &headers,
            req.identity.as_deref(),
            &route::no_original_destination,
        ) else {
            continue;
        };
        if let (Some(sticky), Action::Split(split)) = (&found.sticky, &found.action) {
            if let Some(value) = sticky.value(&headers) {
                let total = split.total();
                let point = route::sticky::point(value, total);
                assert!(point < total);
                assert!(split.pick(point).is_some());
            }
        }
    }
});
