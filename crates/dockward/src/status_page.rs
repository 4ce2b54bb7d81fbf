//! The status page: `GET /` on the admin API answers one self-contained HTML page
//! (`status_page.html`, built into the binary) that shows what `dockward routes` shows, with
//! throughput and connection sparklines, and `GET /history` answers the samples behind them.
//!
//! The page asks nothing of any other server: its CSS and script are inline, and the
//! `Content-Security-Policy` sent with it lets it fetch only from the admin API that served
//! it. It polls `GET /routes` every 2 s and, once at load, `GET /history` (see
//! [`crate::history`]) so that a freshly opened page shows the last ten minutes at once. Every
//! value from a route (aliases, errors) is put into the page as text, never as markup.
//! Both paths are read-only and served wherever the rest of the admin API is.

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode};

use crate::history::History;

/// The page, as served.
pub const PAGE: &str = include_str!("status_page.html");

/// What the page may load: nothing but itself and the admin API's own JSON.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The paths this module answers.
pub const PATHS: [&str; 2] = ["/", "/history"];

/// Answers `GET /` (the page) and `GET /history`; `None` for any other path. Methods other
/// than GET and HEAD get 405, as on the rest of the admin API.
pub fn respond(method: &Method, path: &str, history: &History) -> Option<Response<Full<Bytes>>> {
    if !PATHS.contains(&path) {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", b"only GET\n".to_vec());
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(resp);
    }
    if path == "/" {
        let mut resp = plain(StatusCode::OK, "text/html; charset=utf-8", PAGE.as_bytes().to_vec());
        let headers = resp.headers_mut();
        headers.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        headers.insert(HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY"));
        headers.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
        return Some(resp);
    }
    Some(match serde_json::to_vec(&history.to_json(SystemTime::now())) {
        Ok(mut body) => {
            body.push(b'\n');
            plain(StatusCode::OK, "application/json", body)
        }
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("encoding history: {e}\n").into_bytes(),
        ),
    })
}

fn plain(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        // Only the SVG namespace name may look like a URL; it is never fetched.
        let page = PAGE.replace("'http://www.w3.org/2000/svg'", "");
        for needle in ["http://", "https://", "src=", "@import", "url(", "href=\"/", "//cdn", "<iframe"] {
            assert!(!page.contains(needle), "the page contains {needle:?}");
        }
        assert!(PAGE.contains("<meta name=\"viewport\""), "readable on a phone");
    }

    #[test]
    fn route_data_never_reaches_the_page_as_markup() {
        for needle in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!PAGE.contains(needle), "the page uses {needle}");
        }
    }

    #[test]
    fn the_page_and_history_answer_get_and_refuse_other_methods() {
        let history = History::new();
        let page = respond(&Method::GET, "/", &history).expect("/ is answered");
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(page.headers()["content-security-policy"], CONTENT_SECURITY_POLICY);
        let json = respond(&Method::HEAD, "/history", &history).expect("/history is answered");
        assert_eq!(json.headers()[CONTENT_TYPE], "application/json");
        let post = respond(&Method::POST, "/", &history).expect("/ is answered");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        assert!(respond(&Method::GET, "/routes", &history).is_none());
        assert!(respond(&Method::GET, "/index.html", &history).is_none());
    }
}
