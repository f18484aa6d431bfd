//! The answer weft sends: the one rescue step, where an error becomes the
//! response it maps to, and the response headers set for the downstream.

use http::{HeaderValue, Response, Version};

use crate::core::body::Body;
use crate::core::error::{ErrorKind, ProxyError};

/// Why weft answered a request itself.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    /// The error's text, when asked for (only the access log shows it).
    pub text: Option<String>,
}

/// The response for `result`: the upstream's, or the one its error maps to
/// (with the error's text only when `describe`: formatting it costs).
pub fn rescue(result: Result<Response<Body>, ProxyError>, describe: bool) -> (Response<Body>, Option<Failure>) {
    match result {
        Ok(response) => (response, None),
        Err(e) => {
            let failure = Failure {
                kind: e.kind(),
                text: describe.then(|| e.to_string()),
            };
            (e.into_response(), Some(failure))
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
        let (response, failure) = rescue(Ok(Response::new(body::empty())), true);
        assert_eq!(response.status(), 200);
        assert!(failure.is_none());
        let timeout = || Err(ProxyError::new(ErrorKind::Timeout, "route timeout 1s"));
        let (response, failure) = rescue(timeout(), true);
        assert_eq!(response.status(), 504);
        let failure = failure.unwrap();
        assert_eq!(failure.kind, ErrorKind::Timeout);
        assert!(failure.text.unwrap().contains("route timeout 1s"));
        let (_, failure) = rescue(timeout(), false);
        assert!(failure.unwrap().text.is_none());
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
