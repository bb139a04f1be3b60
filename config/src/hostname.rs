//! Hostnames: Gateway API intersection rules and allocation-free normalisation of request
//! `Host`/SNI values.

/// Where a hostname pattern goes in a host index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostKey {
    /// `foo.example.com`
    Exact(Box<str>),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(Box<str>),
    /// No hostname: matches everything.
    Any,
}

impl HostKey {
    pub(crate) fn of(pattern: Option<&str>) -> Self {
        match pattern {
            None | Some("") | Some("*") => HostKey::Any,
            Some(p) => match p.strip_prefix('*') {
                Some(suffix) => HostKey::Wildcard(suffix.to_ascii_lowercase().into()),
                None => HostKey::Exact(p.to_ascii_lowercase().into()),
            },
        }
    }
}

/// Does `host` (already normalised) match the pattern? A wildcard matches one or more
/// labels, never the bare suffix (`*.example.com` does not match `example.com`).
pub(crate) fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Intersection of a listener hostname and a route hostname, as the Gateway API defines
/// it: the more specific of the two when one matches the other, else none.
///
/// `*.example.com` ∩ `*.com` = `*.example.com`; `*.example.com` ∩ `foo.example.com` =
/// `foo.example.com`; no listener hostname ∩ x = x.
pub fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(l) = listener else {
        return Some(route.to_ascii_lowercase());
    };
    let l = l.to_ascii_lowercase();
    let r = route.to_ascii_lowercase();
    match (l.strip_prefix('*'), r.strip_prefix('*')) {
        (None, None) => (l == r).then_some(l),
        (Some(_), None) => matches(&l, &r).then_some(r),
        (None, Some(_)) => matches(&r, &l).then_some(l),
        (Some(ls), Some(rs)) => {
            if ls.ends_with(rs) {
                Some(l)
            } else if rs.ends_with(ls) {
                Some(r)
            } else {
                None
            }
        }
    }
}

/// Longest hostname we index (RFC 1035: 253 characters).
pub(crate) const MAX_HOST: usize = 253;

/// Normalise a `Host` header or SNI value into `buf` without allocating: drop the port
/// (`very.specific.com:1234` -> `very.specific.com`), brackets of an IPv6 literal and a
/// trailing dot, and lowercase. `None` when it cannot be a hostname we index.
pub(crate) fn normalize<'b>(host: &str, buf: &'b mut [u8; MAX_HOST]) -> Option<&'b str> {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.split_once(':') {
            // one colon: host:port; more: a bare IPv6 literal.
            Some((h, port)) if !port.contains(':') => h,
            _ => host,
        }
    };
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    if bare.len() > MAX_HOST {
        return None;
    }
    let out = &mut buf[..bare.len()];
    out.copy_from_slice(bare.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_intersection_follows_the_spec_table() {
        let cases: &[(Option<&str>, &str, Option<&str>)] = &[
            (Some("*.example.com"), "*.com", Some("*.example.com")),
            (Some("*.com"), "*.example.com", Some("*.example.com")),
            (
                Some("*.example.com"),
                "foo.example.com",
                Some("foo.example.com"),
            ),
            (
                Some("*.example.com"),
                "a.b.example.com",
                Some("a.b.example.com"),
            ),
            (Some("*.example.com"), "example.com", None),
            (
                Some("foo.example.com"),
                "*.example.com",
                Some("foo.example.com"),
            ),
            (
                Some("foo.example.com"),
                "foo.example.com",
                Some("foo.example.com"),
            ),
            (Some("foo.example.com"), "bar.example.com", None),
            (Some("*.example.com"), "*.example.net", None),
            (None, "very.specific.com", Some("very.specific.com")),
            (
                Some("Foo.Example.com"),
                "foo.example.COM",
                Some("foo.example.com"),
            ),
        ];
        for (listener, route, want) in cases {
            assert_eq!(
                intersect(*listener, route).as_deref(),
                *want,
                "listener {listener:?} route {route}"
            );
        }
    }

    #[test]
    fn host_with_port_matches_the_hostname_without_it() {
        let mut buf = [0u8; MAX_HOST];
        assert_eq!(
            normalize("very.specific.com:1234", &mut buf),
            Some("very.specific.com")
        );
        assert_eq!(normalize("Foo.COM.", &mut buf), Some("foo.com"));
        assert_eq!(normalize("[::1]:8080", &mut buf), Some("::1"));
        assert_eq!(normalize("::1", &mut buf), Some("::1"));
        assert_eq!(normalize(&"a".repeat(300), &mut buf), None);
    }

    #[test]
    fn wildcard_matches_one_or_more_labels_but_not_the_bare_suffix() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "aexample.com"));
    }
}
