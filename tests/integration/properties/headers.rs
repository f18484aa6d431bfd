//! Header rewriting at the proxy boundary, on arbitrary header maps: what
//! `weft::front::headers` promises about hop-by-hop headers, forwarding
//! headers and the request id holds for every input.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use weft::front::headers::{is_upgrade, set_forwarding, strip_hop_by_hop};

use super::cases;

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

/// Names a request may carry: hop-by-hop ones in any case, the rewritten
/// ones, ordinary ones, and whatever else is a valid name.
fn name() -> impl Strategy<Value = HeaderName> {
    let known = prop::sample::select(vec![
        "Connection",
        "connection",
        "Keep-Alive",
        "proxy-connection",
        "Transfer-Encoding",
        "TE",
        "trailer",
        "Upgrade",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
        "x-forwarded-client-cert",
        "x-app",
        "x-secret",
    ]);
    prop_oneof![
        4 => known.prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()),
        1 => "[!-~]{1,8}".prop_filter_map("not a header name", |n| HeaderName::from_bytes(n.as_bytes()).ok()),
    ]
}

/// Values, with `Connection`-like lists of names and bytes beyond ASCII.
fn value() -> impl Strategy<Value = HeaderValue> {
    let listed = prop::collection::vec(
        prop::sample::select(vec![
            "keep-alive",
            "Upgrade",
            "close",
            "x-secret",
            "X-App",
            "te",
            "trailers",
            "x-forwarded-for",
            "x-request-id",
            "bad name",
            "",
            "chunked",
            "websocket",
        ]),
        0..4,
    )
    .prop_map(|names| names.join(", "));
    prop_oneof![
        3 => listed.prop_map(|v| HeaderValue::from_str(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_filter_map("not a header value", |v| HeaderValue::from_bytes(&v).ok()),
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec((name(), value()), 0..8).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    })
}

/// The header names a `Connection` value lists, when it is text.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a HeaderValue> {
    headers.get_all(name).iter().collect()
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn hop_by_hop_headers_never_pass(before in headers(), keep_upgrade in any::<bool>()) {
        let mut after = before.clone();
        strip_hop_by_hop(&mut after, keep_upgrade);
        let listed = connection_listed(&before);
        let te_trailers = !listed.iter().any(|n| n == "te")
            && values(&before, "te").iter().filter_map(|v| v.to_str().ok()).any(|v| {
                v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        for name in HOP_BY_HOP {
            let left = values(&after, name);
            match name {
                "te" if te_trailers => prop_assert_eq!(left, vec!["trailers"]),
                "connection" if keep_upgrade => prop_assert_eq!(left, vec!["upgrade"]),
                "upgrade" if keep_upgrade => prop_assert_eq!(left, values(&before, "upgrade")),
                _ => prop_assert!(left.is_empty(), "{} survived: {:?}", name, after),
            }
        }
        for (name, _) in &before {
            let hop = HOP_BY_HOP.contains(&name.as_str());
            let named = listed.contains(name) && !(keep_upgrade && name == "upgrade");
            if named && !hop {
                prop_assert!(!after.contains_key(name), "{} is listed in Connection: {:?}", name, after);
            } else if !hop {
                prop_assert_eq!(values(&after, name.as_str()), values(&before, name.as_str()));
            }
        }
        prop_assert!(!keep_upgrade || is_upgrade(&after) == before.contains_key("upgrade"));
    }

    #[test]
    fn forwarding_headers_are_set_once_and_the_id_is_kept(
        before in headers(),
        client in any::<IpAddr>(),
        https in any::<bool>(),
        cert in prop::option::of("[ -~é]{0,12}"),
    ) {
        let proto = if https { "https" } else { "http" };
        let mut after = before.clone();
        let id = set_forwarding(&mut after, client, proto, cert.as_deref());

        prop_assert_eq!(values(&after, "x-forwarded-proto"), vec![proto]);
        let xff = values(&after, "x-forwarded-for");
        prop_assert_eq!(xff.len(), 1);
        let xff = xff[0].to_str().unwrap();
        // Several `x-forwarded-for` lines are one list (RFC 9110 section 5.3).
        let sent: Vec<&str> = values(&before, "x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
        if sent.len() == values(&before, "x-forwarded-for").len() {
            let expected = sent.iter().map(|s| s.to_string()).chain([client.to_string()]).collect::<Vec<_>>().join(", ");
            prop_assert_eq!(xff, expected);
        } else {
            prop_assert!(xff.ends_with(&client.to_string()), "{}", xff);
        }

        let ids = values(&after, "x-request-id");
        let sent_ids = values(&before, "x-request-id");
        match sent_ids.first() {
            Some(sent) if !sent.is_empty() => {
                prop_assert_eq!(&id, *sent);
                prop_assert_eq!(ids, sent_ids);
            }
            _ => {
                prop_assert_eq!(ids, vec![&id]);
                prop_assert_eq!(id.len(), 36);
            }
        }

        let xfcc = values(&after, "x-forwarded-client-cert");
        let expected: Vec<HeaderValue> = cert.iter().filter_map(|c| HeaderValue::from_str(c).ok()).collect();
        prop_assert_eq!(xfcc, expected.iter().collect::<Vec<_>>());

        for (name, _) in &before {
            if !["x-forwarded-for", "x-forwarded-proto", "x-request-id", "x-forwarded-client-cert"].contains(&name.as_str()) {
                prop_assert_eq!(values(&after, name.as_str()), values(&before, name.as_str()));
            }
        }
    }
}
