//! What a proxy does to every request and response head regardless of routes: hop-by-hop
//! headers, forwarding headers (`X-Forwarded-For/Proto/Host`), the Host and URI form each
//! backend protocol needs, and request classification (gRPC, Upgrade).

use hyper::{
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Request, Uri, Version,
};

use super::{conn::ConnInfo, error::ProxyError};
use crate::upstream::Protocol;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The host the request names: the URI authority (HTTP/2 `:authority`, HTTP/1.1
/// absolute-form), else the Host header.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok()),
    }
}

/// `host[:port]` -> `host` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

/// `application/grpc`, `application/grpc+proto`, ...
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `/package.Service/Method` -> (`package.Service`, `Method`).
pub fn grpc_service_method(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""))
}

fn has_token(v: &HeaderValue, token: &str) -> bool {
    v.to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// An HTTP/1.1 `Connection: upgrade` request with an `Upgrade` header: the future that
/// yields the client's upgraded stream.
pub fn client_upgrade(req: &mut Request<Incoming>) -> Option<hyper::upgrade::OnUpgrade> {
    if req.version() != Version::HTTP_11 || !req.headers().contains_key(header::UPGRADE) {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v, "upgrade"));
    wants.then(|| hyper::upgrade::on(req))
}

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// `keep_upgrade` keeps `Upgrade` and `Connection: upgrade` for a protocol switch.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the few names present is cheaper
    // than a hashed removal per hop-by-hop name.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if let Some(conn) = headers.remove(header::CONNECTION) {
        if let Ok(s) = conn.to_str() {
            for token in s.split(',').map(str::trim) {
                if token.is_empty() || (keep_upgrade && token.eq_ignore_ascii_case("upgrade")) {
                    continue;
                }
                // By `&str`: looked up without making a `HeaderName` (which allocates
                // for any name the `http` crate does not know, `keep-alive` included);
                // a token that is no valid name finds nothing.
                if !token.eq_ignore_ascii_case("te") {
                    headers.remove(token);
                }
            }
        }
        // Further Connection values are as hop-by-hop as the first.
        while headers.remove(header::CONNECTION).is_some() {}
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TRAILER);
    headers.remove(&HTTP2_SETTINGS);
    // `TE: trailers` is what gRPC needs end to end; any other TE is hop-by-hop.
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::TE
        || name == header::TRAILER
        || name == header::UPGRADE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == HTTP2_SETTINGS
}

/// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, and `X-Forwarded-Host` (the Host
/// the client asked for, unless an earlier proxy set it).
pub fn add_forwarded(headers: &mut HeaderMap, conn: &ConnInfo) {
    // Room for the three fields at once: a map sized for the client's few headers
    // would otherwise grow twice.
    headers.reserve(3);
    let ip = conn.peer_ip.as_str();
    let appended = headers.get(&X_FORWARDED_FOR).and_then(|prev| {
        let mut v = Vec::with_capacity(prev.len() + 2 + ip.len());
        v.extend_from_slice(prev.as_bytes());
        v.extend_from_slice(b", ");
        v.extend_from_slice(ip.as_bytes());
        HeaderValue::from_bytes(&v).ok()
    });
    if let Some(xff) = appended.or_else(|| HeaderValue::from_str(ip).ok()) {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(conn.scheme),
    );
    if !headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
}

/// The request target for the backend protocol: origin-form with a Host header for
/// HTTP/1.1; absolute form (`:scheme`, `:authority`) and no Host header for HTTP/2.
pub fn set_target(
    uri: &mut Uri,
    headers: &mut HeaderMap,
    protocol: Protocol,
) -> Result<(), ProxyError> {
    let bad = |reason| ProxyError::BadRequest { reason };
    match protocol {
        Protocol::Http1 => {
            if !headers.contains_key(header::HOST) {
                if let Some(a) = uri.authority() {
                    let host = HeaderValue::from_str(a.as_str())
                        .map_err(|_| bad("the authority is not a valid Host"))?;
                    headers.insert(header::HOST, host);
                }
            }
            if uri.scheme().is_some() || uri.authority().is_some() {
                let mut parts = hyper::http::uri::Parts::default();
                parts.path_and_query = uri.path_and_query().cloned();
                *uri = Uri::from_parts(parts).map_err(|_| bad("invalid request target"))?;
            }
        }
        Protocol::H2c => {
            let authority = match headers.remove(header::HOST) {
                Some(h) => hyper::http::uri::Authority::try_from(h.as_bytes())
                    .map_err(|_| bad("the Host header is not a valid authority"))?,
                None => uri
                    .authority()
                    .cloned()
                    .ok_or(bad("the request names no host"))?,
            };
            let mut parts = hyper::http::uri::Parts::default();
            parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
            parts.authority = Some(authority);
            parts.path_and_query = uri
                .path_and_query()
                .cloned()
                .or_else(|| Some(hyper::http::uri::PathAndQuery::from_static("/")));
            *uri = Uri::from_parts(parts).map_err(|_| bad("invalid request target"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_hosts_but_ipv6_brackets_stay() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        assert_eq!(grpc_service_method("/pkg.Svc/Echo"), ("pkg.Svc", "Echo"));
        assert_eq!(grpc_service_method("/nope"), ("", ""));
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-keep"]);
    }

    #[test]
    fn http2_targets_are_absolute_and_http1_targets_keep_a_host() {
        let mut uri: Uri = "/a?b=c".parse().expect("uri");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("example.com:8080"));
        set_target(&mut uri, &mut h, Protocol::H2c).expect("target");
        assert_eq!(uri.to_string(), "http://example.com:8080/a?b=c");
        assert!(!h.contains_key(header::HOST));
        set_target(&mut uri, &mut h, Protocol::Http1).expect("target");
        assert_eq!(uri.to_string(), "/a?b=c");
        assert_eq!(
            h.get(header::HOST).map(|v| v.as_bytes()),
            Some(&b"example.com:8080"[..])
        );
    }
}
