//! HTTPRoute filters: header modifiers, URL rewrites and redirect locations, as the
//! Gateway API defines them.

use gateway_config::{
    HeaderModifier, HttpMatch, PathMatch, PathModifier, RequestRedirect, UrlRewrite,
};
use hyper::{
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Request, Uri,
};

use super::error::ProxyError;

/// `set` replaces every value, `add` appends one more value, `remove` drops the header;
/// names are case-insensitive (the table holds them lowercased).
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        headers.remove(&**name);
    }
}

/// `ReplacePrefixMatch`: the matched prefix (whole segments) is replaced; the rest of the
/// path is kept, following the spec's table (`/foo/bar`, prefix `/foo`, replacement `/xyz/`
/// -> `/xyz/bar`; replacement `` -> `/bar`; `/foo` with `/` -> `/`).
pub fn replace_prefix(path: &str, matched: Option<&HttpMatch>, replacement: &str) -> String {
    let prefix = match matched.map(|m| &m.path) {
        Some(PathMatch::Prefix(p)) if path.starts_with(&**p) => p.len(),
        // The spec only allows ReplacePrefixMatch with a PathPrefix match.
        _ => path.len(),
    };
    let rest = &path[prefix..];
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement.trim_end_matches('/'));
    if rest.is_empty() && out.is_empty() {
        out.push('/');
    } else if !rest.is_empty() && !rest.starts_with('/') {
        out.push('/');
        out.push_str(rest);
    } else {
        out.push_str(rest);
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

fn new_path(path: &str, modifier: &PathModifier, matched: Option<&HttpMatch>) -> String {
    match modifier {
        PathModifier::ReplaceFullPath(p) => p.to_string(),
        PathModifier::ReplacePrefixMatch(p) => replace_prefix(path, matched, p),
    }
}

/// `URLRewrite`: the Host the backend sees and/or the path (the query is kept).
pub fn rewrite<B>(
    req: &mut Request<B>,
    rw: &UrlRewrite,
    matched: Option<&HttpMatch>,
) -> Result<(), ProxyError> {
    if let Some(host) = &rw.hostname {
        let value = HeaderValue::from_str(host).map_err(|_| ProxyError::BadRequest {
            reason: "the rewritten hostname is not a valid Host",
        })?;
        req.headers_mut().insert(header::HOST, value);
        if req.uri().authority().is_some() {
            // The authority wins over Host; drop it so the rewritten Host is used.
            let mut parts = hyper::http::uri::Parts::default();
            parts.path_and_query = req.uri().path_and_query().cloned();
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest {
                reason: "invalid request target",
            })?;
        }
    }
    if let Some(modifier) = &rw.path {
        let path = new_path(req.uri().path(), modifier, matched);
        let target = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = req.uri().scheme().cloned();
        parts.authority = req.uri().authority().cloned();
        parts.path_and_query = Some(target.parse().map_err(|_| ProxyError::BadRequest {
            reason: "the rewritten path is not valid",
        })?);
        *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest {
            reason: "invalid request target",
        })?;
    }
    Ok(())
}

/// The `Location` of a `RequestRedirect`. Unset fields keep the request's value; the port
/// is the one given, else the well-known port of a given scheme, else the listener's port;
/// and it is left out when it is the default port of the scheme (80 for http, 443 for
/// https).
pub fn redirect_location(
    rd: &RequestRedirect,
    request_scheme: &str,
    request_host: &str,
    listener_port: u16,
    uri: &Uri,
    matched: Option<&HttpMatch>,
) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or(request_scheme);
    let host = rd.hostname.as_deref().unwrap_or(request_host);
    let port = match (rd.port, rd.scheme.as_deref()) {
        (Some(p), _) => p,
        (None, Some("https")) => 443,
        (None, Some("http")) => 80,
        (None, _) => listener_port,
    };
    let path = match &rd.path {
        Some(m) => new_path(uri.path(), m, matched),
        None => uri.path().to_string(),
    };
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let mut out = format!("{scheme}://{host}");
    if !default_port {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(&path);
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> HttpMatch {
        HttpMatch {
            path: PathMatch::Prefix(p.trim_end_matches('/').into()),
            method: None,
            headers: Box::new([]),
            query: Box::new([]),
        }
    }

    /// The ReplacePrefixMatch table of the Gateway API spec (HTTPPathModifier).
    #[test]
    fn replace_prefix_match_follows_the_spec_table() {
        let cases = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
        ];
        for (path, matched, replacement, want) in cases {
            assert_eq!(
                replace_prefix(path, Some(&prefix(matched)), replacement),
                want,
                "{path} {matched} {replacement}"
            );
        }
    }

    fn redirect(scheme: Option<&str>, port: Option<u16>) -> RequestRedirect {
        RequestRedirect {
            scheme: scheme.map(Into::into),
            hostname: Some("example.org".into()),
            port,
            path: None,
            status_code: 302,
        }
    }

    /// HTTPRouteRedirectPortAndScheme: listeners on 80 and 8080.
    #[test]
    fn redirect_ports_follow_scheme_and_listener_defaults() {
        let uri: Uri = "/p?q=1".parse().expect("uri");
        let cases = [
            (80, None, None, "http://example.org/p?q=1"),
            (80, None, Some(80), "http://example.org/p?q=1"),
            (80, None, Some(8080), "http://example.org:8080/p?q=1"),
            (80, Some("https"), None, "https://example.org/p?q=1"),
            (80, Some("https"), Some(443), "https://example.org/p?q=1"),
            (
                80,
                Some("https"),
                Some(8443),
                "https://example.org:8443/p?q=1",
            ),
            (8080, None, None, "http://example.org:8080/p?q=1"),
            (8080, None, Some(80), "http://example.org/p?q=1"),
            (8080, Some("https"), None, "https://example.org/p?q=1"),
        ];
        for (listener, scheme, port, want) in cases {
            let rd = redirect(scheme, port);
            assert_eq!(
                redirect_location(&rd, "http", "gw.test", listener, &uri, None),
                want
            );
        }
    }

    #[test]
    fn header_modifiers_set_add_and_remove_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert("x-header-set", HeaderValue::from_static("old"));
        h.insert("x-header-add", HeaderValue::from_static("first"));
        h.insert("x-header-remove", HeaderValue::from_static("gone"));
        let m = HeaderModifier {
            set: vec![("x-header-set".into(), "new".into())],
            add: vec![("x-header-add".into(), "second".into())],
            remove: vec!["x-header-remove".into()],
        };
        modify_headers(&mut h, &m);
        assert_eq!(h.get_all("x-header-set").iter().count(), 1);
        assert_eq!(
            h.get("x-header-set").map(|v| v.as_bytes()),
            Some(&b"new"[..])
        );
        let added: Vec<&[u8]> = h
            .get_all("x-header-add")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(added, [&b"first"[..], &b"second"[..]]);
        assert!(!h.contains_key("x-header-remove"));
    }
}
