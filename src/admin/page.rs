//! `GET /` on the admin address: one self-contained HTML page (inline CSS and
//! JavaScript, no external assets, no build step) that polls `/config`,
//! `/clusters` and `/stats` every two seconds and shows listeners, routes with
//! request and error rates, and clusters with their endpoints. Rates are
//! differences between two polls, computed in the browser, so the server
//! keeps no history. Fields that only some builds report (concurrency limits,
//! retry budgets, tap mismatches) are shown when the JSON has them.

use bytes::Bytes;
use http::{header, HeaderValue, Response};

use crate::core::body::{self, Body};

static PAGE: &str = include_str!("page.html");

pub fn response() -> Response<Body> {
    let mut response = Response::new(body::full(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page is the only thing allowed to run; it fetches from its own origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_is_self_contained() {
        let page = super::PAGE;
        assert!(page.starts_with("<!doctype html>"));
        for external in ["src=\"http", "href=\"http", "@import", "<link"] {
            assert!(!page.contains(external), "external asset: {external}");
        }
        for source in ["/config", "/clusters", "/stats"] {
            assert!(page.contains(&format!("'{source}'")), "{source}");
        }
    }
}
