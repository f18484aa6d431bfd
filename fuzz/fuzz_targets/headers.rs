//! Header rewriting at the proxy boundary on arbitrary header maps: no
//! hop-by-hop header survives (but `TE: trailers` and, for an upgrade,
//! `Connection: upgrade`), the forwarding headers are set once, never a panic.
#![no_main]

use std::net::IpAddr;

use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use weft::front::headers::{is_upgrade, set_forwarding, strip_hop_by_hop};

#[derive(Arbitrary, Debug)]
struct Input {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    keep_upgrade: bool,
    client: IpAddr,
    https: bool,
    client_cert: Option<String>,
}

const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "trailer",
    "upgrade",
];

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    let had_upgrade = headers.contains_key("upgrade");
    let _ = is_upgrade(&headers);
    strip_hop_by_hop(&mut headers, input.keep_upgrade);
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(name) || (name == "upgrade" && input.keep_upgrade && had_upgrade));
    }
    let te: Vec<_> = headers.get_all("te").iter().collect();
    assert!(te.is_empty() || te == ["trailers"]);
    let connection: Vec<_> = headers.get_all("connection").iter().collect();
    assert!(connection.is_empty() || (input.keep_upgrade && connection == ["upgrade"]));

    let proto = if input.https { "https" } else { "http" };
    let id = set_forwarding(&mut headers, input.client, proto, input.client_cert.as_deref());
    assert_eq!(headers.get_all("x-forwarded-proto").iter().collect::<Vec<_>>(), [proto]);
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    assert!(headers.get_all("x-request-id").iter().any(|v| *v == id));
    assert!(headers.get_all("x-forwarded-client-cert").iter().count() <= 1);
});
