//! The one place where failures become responses (linkerd's `ServerRescue`): every stage
//! returns a typed [`ProxyError`], and only [`respond`] chooses a status code.

use bytes::Bytes;
use gateway_config::UnresolvedBackend;
use hyper::{header, HeaderMap, Response, StatusCode};

use super::body::RespBody;
use crate::upstream::UpstreamError;

/// Why the gateway answers a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No listener or no rule accepts the request.
    #[error("no route")]
    NoRoute,
    /// HTTPS: the Host selects another listener than the SNI of the connection did (or
    /// none), so its certificate and client validation were not the ones negotiated.
    #[error("misdirected request: the Host is not served on this TLS connection")]
    Misdirected,
    /// The request URI is longer than DESIGN §6 allows.
    #[error("URI longer than {max} bytes")]
    UriTooLong { max: usize },
    /// The request head has more header fields or bytes than DESIGN §6 allows.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The chosen backendRef cannot be used (not found, invalid kind, not permitted).
    #[error("backend {backend} cannot be used: {reason:?}")]
    UnresolvedBackend {
        backend: String,
        reason: UnresolvedBackend,
    },
    /// The rule has no backend to send to (none, or every weight is zero).
    #[error("the rule has no backend to send to")]
    NoBackend,
    /// The rule uses something gatewayd does not support.
    #[error("the rule cannot be served: {reason}")]
    InvalidRule { reason: Box<str> },
    /// The Service has no ready endpoint.
    #[error("backend {backend} has no ready endpoints")]
    NoEndpoints { backend: String },
    /// A BackendTLSPolicy targets the backend but is invalid: fail closed.
    #[error("backend {backend} has an invalid BackendTLSPolicy")]
    BackendTlsInvalid { backend: String },
    /// The backend's BackendTLSPolicy is valid but its TLS client config could not be
    /// built (e.g. an empty system trust store): fail closed, never plaintext.
    #[error("backend {backend} requires TLS, which is not available: {reason}")]
    BackendTlsUnavailable { backend: String, reason: String },
    /// Connecting to or talking with the endpoint failed before a response head.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// `timeouts.request` elapsed.
    #[error("request timeout")]
    RequestTimeout,
    /// `timeouts.backendRequest` elapsed.
    #[error("backend request timeout")]
    BackendTimeout,
    /// A request the gateway cannot forward (e.g. an invalid rewritten URI).
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
}

impl ProxyError {
    /// The HTTP status a client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UnresolvedBackend { .. }
            | ProxyError::NoBackend
            | ProxyError::InvalidRule { .. }
            | ProxyError::BackendTlsInvalid { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoEndpoints { .. }
            | ProxyError::Upstream(UpstreamError::PoolFull { .. })
            | ProxyError::Upstream(UpstreamError::Retired { .. }) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::BackendTlsUnavailable { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Upstream(e) if e.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::RequestTimeout | ProxyError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status code for a gRPC client (HTTP to gRPC mapping of the gRPC spec).
    fn grpc_status(&self) -> &'static str {
        match self.status() {
            StatusCode::NOT_FOUND => "12", // UNIMPLEMENTED
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => "14", // UNAVAILABLE
            StatusCode::GATEWAY_TIMEOUT => "4", // DEADLINE_EXCEEDED
            StatusCode::BAD_REQUEST => "3", // INVALID_ARGUMENT
            _ => "13",                     // INTERNAL
        }
    }
}

/// The response for an error. gRPC requests get a trailers-only gRPC response (HTTP 200,
/// `grpc-status`) so that gRPC clients see a proper status code.
pub fn respond(err: &ProxyError, grpc: bool) -> Response<RespBody> {
    tracing::debug!(error = %err, status = err.status().as_u16(), "answering with an error");
    // A 421 stays an HTTP status for gRPC clients too: it asks the client's connection
    // layer, not the application, to retry on a new connection.
    if grpc && !matches!(err, ProxyError::Misdirected) {
        let mut resp = Response::new(RespBody::empty());
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(
            "grpc-status",
            header::HeaderValue::from_static(err.grpc_status()),
        );
        if let Ok(msg) = header::HeaderValue::from_str(&err.to_string()) {
            headers.insert("grpc-message", msg);
        }
        return resp;
    }
    let mut resp = Response::new(RespBody::full(Bytes::from(format!("{err}\n"))));
    *resp.status_mut() = err.status();
    set_text(resp.headers_mut());
    if matches!(
        err,
        ProxyError::HeadersTooLarge | ProxyError::UriTooLong { .. }
    ) {
        // The client broke a limit: do not wait for its next request on this connection.
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

fn set_text(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_the_documented_status_codes() {
        let addr = "127.0.0.1:1".parse().expect("addr");
        let cases = [
            (ProxyError::NoRoute, 404),
            (ProxyError::Misdirected, 421),
            (ProxyError::UriTooLong { max: 8192 }, 414),
            (ProxyError::HeadersTooLarge, 431),
            (
                ProxyError::UnresolvedBackend {
                    backend: "a/b".into(),
                    reason: UnresolvedBackend::NotFound,
                },
                500,
            ),
            (ProxyError::NoBackend, 500),
            (
                ProxyError::NoEndpoints {
                    backend: "a/b".into(),
                },
                503,
            ),
            (
                ProxyError::Upstream(UpstreamError::ConnectRefused {
                    addr,
                    source: std::io::ErrorKind::ConnectionRefused.into(),
                }),
                502,
            ),
            (
                ProxyError::Upstream(UpstreamError::ConnectTimeout { addr }),
                504,
            ),
            (ProxyError::RequestTimeout, 504),
            (ProxyError::BackendTimeout, 504),
            (
                ProxyError::Upstream(UpstreamError::PoolFull { addr, max: 2 }),
                503,
            ),
            (ProxyError::Upstream(UpstreamError::Retired { addr }), 503),
        ];
        for (err, status) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(respond(&err, false).status().as_u16(), status, "{err}");
        }
    }

    #[test]
    fn grpc_clients_get_a_grpc_status() {
        let resp = respond(&ProxyError::NoRoute, true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"12"[..])
        );
    }
}
