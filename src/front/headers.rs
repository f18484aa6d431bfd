//! Header rewriting at the proxy boundary: `Host` is settled (the
//! request's authority wins; HTTP/1.1 needs exactly one), hop-by-hop headers are removed (RFC 9110 section 7.6.1),
//! `x-forwarded-for`/`x-forwarded-proto` are set and `x-request-id` is
//! generated when absent.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

use crate::core::error::{ErrorKind, ProxyError};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// `Host` by RFC 9112 section 3.2 and RFC 9113 section 8.3.1: the
/// request's authority (an HTTP/1.1 absolute-form target, or HTTP/2's and
/// HTTP/3's `:authority`) wins over a `Host` header and becomes the one
/// `Host` an HTTP/1.1 upstream sees. An HTTP/1.1 request with neither, or
/// any request with two `Host` lines, is refused (400). An absolute-form
/// target names its host, so it needs no `Host` line of its own.
pub fn settle_host<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    let lines = req.headers().get_all(header::HOST).iter().count();
    let from_http1 = req.version() <= Version::HTTP_11;
    if from_http1 && lines > 1 {
        return Err(ProxyError::new(ErrorKind::BadRequest, "more than one Host header"));
    }
    let authority = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    match authority {
        Some(host) => {
            req.headers_mut().insert(header::HOST, host);
        }
        None if lines == 0 && req.version() == Version::HTTP_11 => {
            return Err(ProxyError::new(ErrorKind::BadRequest, "HTTP/1.1 request without Host"));
        }
        None => {}
    }
    Ok(())
}

/// Removes hop-by-hop headers and those named in `Connection`. With
/// `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive so a WebSocket
/// handshake can reach the upstream. `TE: trailers` always survives: gRPC
/// needs it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry no hop-by-hop header at all: one pass over the names
    // (no hashing) instead of a removal per listed name. `Connection` is in the
    // list, so without any of them no other header is named for removal.
    if !keep_upgrade && !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    });
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// True for an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Which of the headers weft rewrites a request already carries. One pass
/// over the few names present costs less than a hashed lookup per name that
/// would mostly find nothing.
#[derive(Clone, Copy, Default)]
struct Present {
    forwarded_for: bool,
    request_id: bool,
    client_cert: bool,
}

fn scan(headers: &HeaderMap) -> Present {
    let mut present = Present::default();
    for name in headers.keys() {
        if name == X_FORWARDED_FOR {
            present.forwarded_for = true;
        } else if name == X_REQUEST_ID {
            present.request_id = true;
        } else if name == X_FORWARDED_CLIENT_CERT {
            present.client_cert = true;
        }
    }
    present
}

/// Appends the client address to `x-forwarded-for`, sets
/// `x-forwarded-proto` and `x-forwarded-client-cert` (see
/// [`set_client_cert`]); returns the request id, generating one if absent.
pub fn set_forwarding(
    headers: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    client_cert: Option<&str>,
) -> HeaderValue {
    let present = scan(headers);
    let xff = if present.forwarded_for {
        // Several lines are one list (RFC 9110 section 5.3): keep every hop.
        let mut list = String::new();
        for prev in headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()) {
            list.push_str(prev);
            list.push_str(", ");
        }
        list.push_str(&client.to_string());
        HeaderValue::try_from(list)
    } else {
        Ok(client_value(client))
    };
    if let Ok(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if present.client_cert || client_cert.is_some() {
        set_client_cert(headers, client_cert);
    }
    match headers.get(&X_REQUEST_ID).filter(|_| present.request_id) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    }
}

/// Sets `x-forwarded-client-cert` to the verified client certificate, and
/// removes any the client sent itself so it cannot be forged (Envoy's
/// `SANITIZE_SET`).
fn set_client_cert(headers: &mut HeaderMap, xfcc: Option<&str>) {
    headers.remove(&X_FORWARDED_CLIENT_CERT);
    if let Some(value) = xfcc.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(X_FORWARDED_CLIENT_CERT.clone(), value);
    }
}

/// A random UUID (version 4) in its usual text form, written without
/// allocating intermediate strings (this runs on most requests).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits: u128 = rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
    // 8-4-4-4-12 hex digits: a dash before bytes 4, 6, 8 and 10.
    let mut text = [b'-'; 36];
    let mut pos = 0;
    for (i, byte) in bits.to_be_bytes().into_iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            pos += 1;
        }
        text[pos] = HEX[usize::from(byte >> 4)];
        text[pos + 1] = HEX[usize::from(byte & 0xf)];
        pos += 2;
    }
    let mut id = HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("0"));
    // Unique per request: "never indexed" keeps it out of HTTP/2's HPACK
    // table, as the trace headers (see `telemetry::propagation`).
    id.set_sensitive(true);
    id
}

/// The client address as a header value. A sidecar sees very few distinct
/// clients (mostly its own pod over loopback), so the last one formatted is
/// kept per thread: formatting an address on every request cost more than
/// the rest of the header rewriting together.
fn client_value(client: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((ip, value)) if *ip == client => value.clone(),
            _ => {
                // An address always formats to a valid header value.
                let value =
                    HeaderValue::try_from(client.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
                *last = Some((client, value.clone()));
                value
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_authority_wins_over_host_and_http1_needs_exactly_one_host() {
        let mut h2 = Request::get("https://api.example:8443/x")
            .version(Version::HTTP_2)
            .header("host", "other.example")
            .body(())
            .unwrap();
        settle_host(&mut h2).unwrap();
        assert_eq!(h2.headers()["host"], "api.example:8443");
        let mut absolute = Request::get("http://a.example/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        settle_host(&mut absolute).unwrap();
        assert_eq!(absolute.headers()["host"], "a.example");
        let mut origin_form = Request::get("/x").header("host", "b.example").body(()).unwrap();
        settle_host(&mut origin_form).unwrap();
        assert_eq!(origin_form.headers()["host"], "b.example");
        let mut missing = Request::get("/x").body(()).unwrap();
        assert_eq!(settle_host(&mut missing).unwrap_err().kind(), ErrorKind::BadRequest);
        let mut http10 = Request::get("/x").version(Version::HTTP_10).body(()).unwrap();
        settle_host(&mut http10).unwrap();
        let mut twice = Request::get("/x")
            .header("host", "a.example")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(settle_host(&mut twice).unwrap_err().kind(), ErrorKind::BadRequest);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers, deflate"),
            ("x-app", "a"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-app").unwrap(), "a");
    }

    #[test]
    fn keeps_upgrade_for_websocket() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn forwarding_headers_and_request_id() {
        let mut h = map(&[("x-forwarded-for", "10.0.0.1")]);
        let id = set_forwarding(&mut h, "127.0.0.1".parse().unwrap(), "http", None);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        let text = id.to_str().unwrap();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4");
        // Unique per request: sent "never indexed" on HTTP/2.
        assert!(id.is_sensitive() && h.get("x-request-id").unwrap().is_sensitive());
        h.remove("x-request-id");
        let other = set_forwarding(&mut h, "127.0.0.1".parse().unwrap(), "http", None);
        assert_ne!(other, id);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.1, 127.0.0.1");
        for client in ["10.1.2.3", "::1", "10.1.2.3"] {
            let mut fresh = HeaderMap::new();
            set_forwarding(&mut fresh, client.parse().unwrap(), "https", None);
            assert_eq!(fresh.get("x-forwarded-for").unwrap(), client);
        }
        assert!(text.bytes().enumerate().all(|(i, b)| if matches!(i, 8 | 13 | 18 | 23) {
            b == b'-'
        } else {
            b.is_ascii_hexdigit()
        }));
        let mut given = map(&[("x-request-id", "abc")]);
        assert_eq!(set_forwarding(&mut given, "::1".parse().unwrap(), "http", None), "abc");
    }

    #[test]
    fn every_forwarded_for_line_is_kept() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
        ]);
        set_forwarding(&mut h, "127.0.0.1".parse().unwrap(), "http", None);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
        );
    }

    #[test]
    fn a_forged_client_certificate_header_never_passes() {
        let mut forged = map(&[("x-forwarded-client-cert", "By=spiffe://forged")]);
        set_forwarding(&mut forged, "::1".parse().unwrap(), "https", None);
        assert!(forged.get("x-forwarded-client-cert").is_none());
        let mut forged = map(&[("x-forwarded-client-cert", "By=spiffe://forged")]);
        set_forwarding(&mut forged, "::1".parse().unwrap(), "https", Some("Hash=ab"));
        assert_eq!(forged.get_all("x-forwarded-client-cert").iter().count(), 1);
        assert_eq!(forged.get("x-forwarded-client-cert").unwrap(), "Hash=ab");
    }
}
