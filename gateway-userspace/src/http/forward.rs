//! What a proxy does to every request and response head regardless of routes: hop-by-hop
//! headers, forwarding headers (`X-Forwarded-For/Proto/Host` or RFC 7239 `Forwarded`), the
//! Host and URI form each backend protocol needs, and request classification (gRPC,
//! Upgrade).

use std::{fmt, str::FromStr};

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

/// `--forwarded-headers`: what gatewayd tells backends about the client and the request
/// it received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`.
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded: for=...;host=...;proto=...`, appended to the client's list.
    Forwarded,
    /// Both of the above.
    Both,
    /// Neither: whatever forwarding headers the client sent pass through unchanged.
    None,
}

impl FromStr for ForwardedHeaders {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x-forwarded" => Ok(Self::XForwarded),
            "forwarded" => Ok(Self::Forwarded),
            "both" => Ok(Self::Both),
            "none" => Ok(Self::None),
            other => Err(format!(
                "invalid --forwarded-headers value {other:?}: expected x-forwarded, forwarded, both or none"
            )),
        }
    }
}

impl fmt::Display for ForwardedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::XForwarded => "x-forwarded",
            Self::Forwarded => "forwarded",
            Self::Both => "both",
            Self::None => "none",
        })
    }
}

/// The forwarding headers `conn.forwarded` asks for. Call it before any filter rewrites
/// the Host: both forms name the host the client asked for (the HTTP/2 `:authority` or
/// absolute-form authority, else the Host header).
pub fn add_forwarded<B>(req: &mut Request<B>, conn: &ConnInfo) {
    if conn.forwarded == ForwardedHeaders::None {
        return;
    }
    let host = asked_host(req);
    let headers = req.headers_mut();
    let (ip, scheme) = (conn.peer_ip.as_str(), conn.scheme);
    match conn.forwarded {
        ForwardedHeaders::XForwarded => add_x_forwarded(headers, ip, scheme, host),
        ForwardedHeaders::Forwarded => add_rfc7239(headers, ip, scheme, host.as_ref()),
        ForwardedHeaders::Both => {
            add_rfc7239(headers, ip, scheme, host.as_ref());
            add_x_forwarded(headers, ip, scheme, host);
        }
        ForwardedHeaders::None => {}
    }
}

/// The host the client asked for: the target's authority (HTTP/2 `:authority`,
/// absolute form) as host and port only, since it may carry `user:password@`; else the
/// Host header.
fn asked_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(a) => match a.port() {
            Some(port) => HeaderValue::from_str(&format!("{}:{port}", a.host())).ok(),
            None => HeaderValue::from_str(a.host()).ok(),
        },
        // Shares the bytes hyper read: no copy.
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, and `X-Forwarded-Host` (`host`,
/// unless an earlier proxy set it).
fn add_x_forwarded(
    headers: &mut HeaderMap,
    ip: &str,
    scheme: &'static str,
    host: Option<HeaderValue>,
) {
    // Room for the three fields at once: a map sized for the client's few headers
    // would otherwise grow twice.
    headers.reserve(3);
    // Every field the request came with, in order, as one list.
    let appended = if headers.contains_key(&X_FORWARDED_FOR) {
        let mut v = Vec::with_capacity(64);
        for field in headers.get_all(&X_FORWARDED_FOR) {
            v.extend_from_slice(field.as_bytes());
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(ip.as_bytes());
        HeaderValue::from_bytes(&v).ok()
    } else {
        None
    };
    if let Some(xff) = appended.or_else(|| HeaderValue::from_str(ip).ok()) {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Some(host) = host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
    }
}

/// RFC 7239: this hop's `for=<client>;host=<Host>;proto=<scheme>` appended to the list of
/// the `Forwarded` fields the request came with, as one field. A list that does not parse
/// (an unclosed quote would swallow this hop's element into the client's) is replaced,
/// not extended.
fn add_rfc7239(headers: &mut HeaderMap, ip: &str, scheme: &str, host: Option<&HeaderValue>) {
    let mut v = Vec::with_capacity(96);
    let prev = headers.get_all(header::FORWARDED);
    if prev.iter().all(|f| is_forwarded_list(f.as_bytes())) {
        for field in prev {
            v.extend_from_slice(field.as_bytes());
            v.extend_from_slice(b", ");
        }
    }
    v.extend_from_slice(b"for=");
    if ip.contains(':') {
        // An IPv6 node is bracketed, and so not a token (RFC 7239 §6).
        v.extend_from_slice(b"\"[");
        v.extend_from_slice(ip.as_bytes());
        v.extend_from_slice(b"]\"");
    } else {
        v.extend_from_slice(ip.as_bytes());
    }
    if let Some(host) = host {
        v.extend_from_slice(b";host=");
        push_token_or_quoted(&mut v, host.as_bytes());
    }
    v.extend_from_slice(b";proto=");
    v.extend_from_slice(scheme.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&v) {
        headers.insert(header::FORWARDED, value);
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `value` is a `Forwarded` field value (RFC 7239 §4): elements separated by `,`, each
/// `token=value` pairs separated by `;`, a value a token or a quoted-string; optional
/// whitespace around the commas, and empty elements, as list syntax allows.
fn is_forwarded_list(value: &[u8]) -> bool {
    let mut i = 0;
    let n = value.len();
    let skip_ows = |i: &mut usize| {
        while *i < n && (value[*i] == b' ' || value[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ows(&mut i);
        if i < n && value[i] == b',' {
            i += 1;
            continue;
        }
        if i == n {
            return true;
        }
        // One element: pairs separated by `;`, any of them empty.
        loop {
            if i < n && is_tchar(value[i]) {
                while i < n && is_tchar(value[i]) {
                    i += 1;
                }
                if i == n || value[i] != b'=' {
                    return false;
                }
                i += 1;
                if i < n && value[i] == b'"' {
                    i += 1;
                    loop {
                        match value.get(i) {
                            None => return false,
                            Some(b'"') => break,
                            Some(b'\\') => i += 2,
                            Some(_) => i += 1,
                        }
                    }
                    i += 1;
                } else {
                    let start = i;
                    while i < n && is_tchar(value[i]) {
                        i += 1;
                    }
                    if i == start {
                        return false;
                    }
                }
            }
            if i < n && value[i] == b';' {
                i += 1;
                continue;
            }
            break;
        }
        skip_ows(&mut i);
        if i == n {
            return true;
        }
        if value[i] != b',' {
            return false;
        }
        i += 1;
    }
}

/// `value` as an RFC 9110 token when it is one, else as a quoted-string (a Host with a
/// port is not a token: `:` is no token character).
fn push_token_or_quoted(out: &mut Vec<u8>, value: &[u8]) {
    if !value.is_empty() && value.iter().copied().all(is_tchar) {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
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

    fn rfc7239(prev: &[&'static str], ip: &str, scheme: &str, host: Option<&str>) -> String {
        let mut h = HeaderMap::new();
        for p in prev {
            h.append(header::FORWARDED, HeaderValue::from_static(p));
        }
        let host = host.map(|x| HeaderValue::from_str(x).expect("host"));
        add_rfc7239(&mut h, ip, scheme, host.as_ref());
        let all: Vec<_> = h.get_all(header::FORWARDED).iter().collect();
        assert_eq!(all.len(), 1, "one Forwarded field: {all:?}");
        all[0].to_str().expect("ascii").to_string()
    }

    #[test]
    fn forwarded_names_the_client_host_and_scheme_quoting_what_is_no_token() {
        assert_eq!(
            rfc7239(&[], "192.0.2.60", "http", Some("example.com")),
            "for=192.0.2.60;host=example.com;proto=http"
        );
        // RFC 7239 §6: an IPv6 node is bracketed and quoted; a host with a port is quoted.
        assert_eq!(
            rfc7239(&[], "2001:db8:cafe::17", "https", Some("example.com:8443")),
            "for=\"[2001:db8:cafe::17]\";host=\"example.com:8443\";proto=https"
        );
        assert_eq!(
            rfc7239(&[], "192.0.2.60", "http", None),
            "for=192.0.2.60;proto=http"
        );
        let mut quoted = Vec::new();
        push_token_or_quoted(&mut quoted, br#"a"b\c"#);
        assert_eq!(quoted, br#""a\"b\\c""#);
    }

    #[test]
    fn forwarded_appends_this_hop_to_the_elements_the_client_sent() {
        assert_eq!(
            rfc7239(
                &["for=198.51.100.17;proto=https", "for=203.0.113.5"],
                "192.0.2.60",
                "http",
                Some("a.example")
            ),
            "for=198.51.100.17;proto=https, for=203.0.113.5, for=192.0.2.60;host=a.example;proto=http"
        );
    }

    #[test]
    fn a_forwarded_list_that_does_not_parse_is_replaced_not_extended() {
        // An unclosed quote would make this hop's element part of the client's value.
        assert_eq!(
            rfc7239(&["for=\"x"], "192.0.2.60", "http", None),
            "for=192.0.2.60;proto=http"
        );
        for bad in ["for", "for=", "=x", "for=a b", "for=\"a\\\"", "for=a;=b"] {
            assert!(!is_forwarded_list(bad.as_bytes()), "{bad:?}");
        }
        for good in [
            "for=a",
            "for=\"[2001:db8::1]:80\";proto=https",
            "for=a , for=b",
            "for=a;;proto=http;",
            ", for=a,,for=\"x\\\"y\"",
            "",
        ] {
            assert!(is_forwarded_list(good.as_bytes()), "{good:?}");
        }
    }

    #[test]
    fn the_asked_host_keeps_the_port_and_drops_userinfo() {
        let asked = |uri: &str, host: Option<&'static str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            let req = b.body(()).expect("request");
            asked_host(&req).map(|v| v.to_str().expect("ascii").to_string())
        };
        assert_eq!(
            asked("http://user:pw@app.example:8080/a", Some("other")).as_deref(),
            Some("app.example:8080")
        );
        assert_eq!(
            asked("http://[2001:db8::1]/", None).as_deref(),
            Some("[2001:db8::1]")
        );
        assert_eq!(
            asked("/a", Some("b.example:81")).as_deref(),
            Some("b.example:81")
        );
        assert_eq!(asked("/a", None), None);
    }

    #[test]
    fn x_forwarded_for_is_appended_and_an_earlier_host_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.17"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.5"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("first.example"));
        add_x_forwarded(
            &mut h,
            "192.0.2.60",
            "https",
            Some(HeaderValue::from_static("b.example")),
        );
        let get = |n: &HeaderName| h.get(n).and_then(|v| v.to_str().ok());
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            get(&X_FORWARDED_FOR),
            Some("198.51.100.17, 203.0.113.5, 192.0.2.60")
        );
        assert_eq!(get(&X_FORWARDED_PROTO), Some("https"));
        assert_eq!(get(&X_FORWARDED_HOST), Some("first.example"));
    }

    #[test]
    fn forwarded_header_modes_parse_from_their_flag_values() {
        for mode in [
            ForwardedHeaders::XForwarded,
            ForwardedHeaders::Forwarded,
            ForwardedHeaders::Both,
            ForwardedHeaders::None,
        ] {
            assert_eq!(mode.to_string().parse::<ForwardedHeaders>(), Ok(mode));
        }
        let err = "xff".parse::<ForwardedHeaders>().expect_err("invalid");
        assert!(
            err.contains("--forwarded-headers") && err.contains("\"xff\""),
            "{err}"
        );
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
