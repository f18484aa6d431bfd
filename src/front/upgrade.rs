//! HTTP/1.1 `Upgrade` (WebSocket) and hop-by-hop headers: a request's
//! hop-by-hop headers go, except an upgrade handshake's; once the upstream
//! answers 101, both connections are handed over and bytes are copied both
//! ways until both sides closed, or until no bytes moved either way for the
//! listener's `limits.stream_idle_timeout` (Envoy applies it to upgraded
//! streams too): then both connections are closed and the expiry counted in
//! `weft_stream_idle_timeouts_total{listener}`.

use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::headers;
use super::idle::{self, IdleLimit};
use super::limits::StreamLimits;
use crate::core::body::Body;

/// Strips the request's hop-by-hop headers, keeping those of an HTTP/1.1
/// upgrade handshake, and for such a request takes the downstream
/// connection's upgrade.
pub fn prepare<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    upgrade.then(|| hyper::upgrade::on(req))
}

/// A 101 to an upgrade request joins the two connections (on a spawned
/// task) under `limits`' stream idle timeout; any other response loses its
/// hop-by-hop headers. `limits` is absent only for a listener gone from the
/// request's snapshot, which has no route, so no 101 either.
pub fn finish(response: &mut Response<Body>, downstream: Option<OnUpgrade>, limits: Option<&StreamLimits>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(response.headers_mut(), false);
    } else if let (Some(downstream), Some(limits)) = (downstream, limits) {
        let upstream = hyper::upgrade::on(response);
        let idle = IdleLimit {
            timeout: limits.stream_idle_timeout,
            expired: limits.idle_timeouts.clone(),
        };
        tokio::spawn(tunnel(downstream, upstream, idle));
    }
}

async fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade, idle: IdleLimit) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (down, up) = (TokioIo::new(down), TokioIo::new(up));
    if let Err(end) = idle::copy_until_idle(down, up, &idle).await {
        tracing::debug!(why = end.as_str(), "upgraded connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::body;

    fn request(version: Version, pairs: &[(&str, &str)]) -> Request<Body> {
        let mut req = Request::new(body::empty());
        *req.version_mut() = version;
        for (name, value) in pairs {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        req
    }

    #[test]
    fn only_an_http11_upgrade_keeps_its_handshake() {
        let handshake = [("connection", "upgrade"), ("upgrade", "websocket"), ("keep-alive", "5")];
        let mut req = request(Version::HTTP_11, &handshake);
        // Taken even without hyper's connection behind it (awaiting it then fails).
        assert!(prepare(&mut req).is_some());
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "upgrade");
        assert!(req.headers().get("keep-alive").is_none());
        let mut h2 = request(Version::HTTP_2, &handshake);
        assert!(prepare(&mut h2).is_none());
        assert!(h2.headers().get("upgrade").is_none());
        assert!(h2.headers().get("connection").is_none());
    }

    #[test]
    fn responses_lose_hop_by_hop_headers_unless_switching() {
        let mut ok = Response::new(body::empty());
        ok.headers_mut().insert("connection", "close, x-hop".parse().unwrap());
        ok.headers_mut().insert("x-hop", "1".parse().unwrap());
        ok.headers_mut().insert("x-app", "1".parse().unwrap());
        finish(&mut ok, None, None);
        assert!(ok.headers().get("connection").is_none());
        assert!(ok.headers().get("x-hop").is_none());
        assert_eq!(ok.headers()["x-app"], "1");
        let mut switching = Response::new(body::empty());
        *switching.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        switching.headers_mut().insert("upgrade", "websocket".parse().unwrap());
        finish(&mut switching, None, None);
        assert_eq!(switching.headers()["upgrade"], "websocket");
    }
}
