//! gRPC over HTTP/2 as the proxy needs it: recognising a gRPC request, reading
//! `grpc-status`, mapping it to HTTP for outlier detection, and answering with a
//! trailers-only error when the proxy itself must fail a call.

use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::body::{ProxyBody, empty};

pub const UNAVAILABLE: u32 = 14;
pub const DEADLINE_EXCEEDED: u32 = 4;

pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The `grpc-status` in these headers or trailers.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The HTTP status Envoy maps a gRPC status to, so outlier detection treats gRPC and
/// HTTP failures alike (UNAVAILABLE → 503, DEADLINE_EXCEEDED → 504, …).
pub fn http_equivalent(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// A trailers-only gRPC response: the call fails with `code` and `message`, and the
/// message says it came from sockeye.
pub fn error(code: u32, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::OK;
    *response.headers_mut() = status_headers(code, message);
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// `grpc-status: code` and a `grpc-message` saying it came from sockeye: the headers
/// of a trailers-only answer, or the trailers that end a stream.
pub fn status_headers(code: u32, message: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", HeaderValue::from(code));
    let encoded = percent_encode(&format!("sockeye: {message}"));
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    headers
}

/// The percent-encoding of `grpc-message` (gRPC over HTTP/2, "Responses").
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_trailers_only_with_an_encoded_message() {
        let response = error(UNAVAILABLE, "no ready endpoint for greeter (100%)");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(status(response.headers()), Some(14));
        assert!(is_grpc(response.headers()));
        assert_eq!(
            response.headers()["grpc-message"],
            "sockeye: no ready endpoint for greeter (100%25)"
        );
        assert_eq!(http_equivalent(UNAVAILABLE), 503);
        assert_eq!(http_equivalent(0), 200);
    }
}
