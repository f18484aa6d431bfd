//! The answer weft sends: the one rescue step, where an error becomes the
//! response it maps to (for a gRPC request, a gRPC trailers-only answer),
//! and the response headers set for the downstream.

use std::net::SocketAddr;

use http::{HeaderValue, Response, Version};

use crate::core::body::Body;
use crate::core::error::{ErrorKind, ProxyError};

/// Why weft answered a request itself.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    /// The error's text, when asked for (only the access log shows it).
    pub text: Option<String>,
    /// The HTTP status the error maps to; metrics and logs count this one
    /// even when a gRPC client was answered 200 with a `grpc-status`.
    pub status: u16,
    /// The `grpc-status` a gRPC client was answered with.
    pub grpc_status: Option<u8>,
    /// The endpoint the request went to, when one was picked.
    pub endpoint: Option<SocketAddr>,
}

/// The response for `result`: the upstream's, or the one its error maps to
/// (with the error's text only when `describe`: formatting it costs). A
/// gRPC request (`grpc`) gets its error as a gRPC status.
pub fn rescue(
    result: Result<Response<Body>, ProxyError>,
    describe: bool,
    grpc: bool,
) -> (Response<Body>, Option<Failure>) {
    match result {
        Ok(response) => (response, None),
        Err(e) => {
            let failure = Failure {
                kind: e.kind(),
                text: describe.then(|| e.to_string()),
                status: e.status().as_u16(),
                grpc_status: grpc.then(|| e.grpc_status()),
                endpoint: e.endpoint(),
            };
            let response = if grpc {
                e.into_grpc_response()
            } else {
                e.into_response()
            };
            (response, Some(failure))
        }
    }
}

/// The downstream connection's version, whatever the upstream spoke
/// (hyper's HTTP/1 encoder refuses an HTTP/3 response), and the
/// listener's `alt-svc`.
pub fn finish_headers(response: &mut Response<Body>, version: Version, alt_svc: Option<&HeaderValue>) {
    *response.version_mut() = version;
    if let Some(alt_svc) = alt_svc {
        response.headers_mut().insert(http::header::ALT_SVC, alt_svc.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::body;

    #[test]
    fn errors_become_their_responses_and_say_why() {
        let (response, failure) = rescue(Ok(Response::new(body::empty())), true, false);
        assert_eq!(response.status(), 200);
        assert!(failure.is_none());
        let timeout = || Err(ProxyError::new(ErrorKind::Timeout, "route timeout 1s"));
        let (response, failure) = rescue(timeout(), true, false);
        assert_eq!(response.status(), 504);
        let failure = failure.unwrap();
        assert_eq!(failure.kind, ErrorKind::Timeout);
        assert!(failure.text.unwrap().contains("route timeout 1s"));
        let (_, failure) = rescue(timeout(), false, false);
        assert!(failure.unwrap().text.is_none());
    }

    #[test]
    fn grpc_requests_get_trailers_only_answers_with_their_grpc_status() {
        let unavailable =
            ProxyError::new(ErrorKind::ConnectFailed, "100% refused").at_endpoint("127.0.0.1:9".parse().unwrap());
        let (response, failure) = rescue(Err(unavailable), false, true);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(
            response.headers()["grpc-message"],
            "upstream connect error: 100%25 refused"
        );
        let failure = failure.unwrap();
        assert_eq!((failure.status, failure.grpc_status), (503, Some(14)));
        assert_eq!(failure.endpoint, Some("127.0.0.1:9".parse().unwrap()));
        for (kind, grpc_status) in [
            (ErrorKind::NoRoute, "12"),
            (ErrorKind::Timeout, "4"),
            (ErrorKind::UpstreamReset, "13"),
            (ErrorKind::Overloaded(crate::core::error::Overload::Circuit), "14"),
        ] {
            let (response, _) = rescue(Err(ProxyError::new(kind, "")), false, true);
            assert_eq!(response.headers()["grpc-status"], grpc_status, "{kind:?}");
        }
    }

    #[test]
    fn responses_take_the_downstream_version_and_alt_svc() {
        let mut response = Response::new(body::empty());
        *response.version_mut() = Version::HTTP_3;
        finish_headers(&mut response, Version::HTTP_11, None);
        assert_eq!(response.version(), Version::HTTP_11);
        assert!(response.headers().get("alt-svc").is_none());
        let alt_svc = HeaderValue::from_static("h3=\":443\"; ma=86400");
        finish_headers(&mut response, Version::HTTP_2, Some(&alt_svc));
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.headers()["alt-svc"], alt_svc);
    }
}
