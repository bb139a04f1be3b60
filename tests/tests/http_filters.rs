//! HTTPRoute filters through a real gatewayd: header modifiers (rule and backend level),
//! redirects, rewrites and mirrors, as the Gateway API conformance scenarios check them.

use std::{net::SocketAddr, time::Duration};

use gateway_tests::{
    echo::Misbehaviour,
    scenario::{listener_port, same_namespace_gateway, send, Infra, Reply, Req, INFRA},
};

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n{spec}"
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get(port: u16, req: Req) -> Reply {
    let r = send(addr(port), &req).unwrap_or_else(|e| panic!("{req:?}: {e:#}"));
    r
}

const HEADER_RULES: &str = "  - matches: [{path: {type: PathPrefix, value: /set}}]\n    filters:\n    - type: KIND\n      FIELD:\n        set: [{name: X-Header-Set, value: set-overwrites-values}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /add}}]\n    filters:\n    - type: KIND\n      FIELD:\n        add: [{name: X-Header-Add, value: add-appends-values}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /remove}}]\n    filters:\n    - type: KIND\n      FIELD:\n        remove: [X-Header-Remove]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /multiple}}]\n    filters:\n    - type: KIND\n      FIELD:\n        set: [{name: X-Header-Set-1, value: header-set-1}, {name: X-Header-Set-2, value: header-set-2}]\n        add: [{name: X-Header-Add-1, value: header-add-1}, {name: X-Header-Add-2, value: header-add-2}, {name: X-Header-Add-3, value: header-add-3}]\n        remove: [X-Header-Remove-1, X-Header-Remove-2]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /case-insensitivity}}]\n    filters:\n    - type: KIND\n      FIELD:\n        set: [{name: X-Header-Set, value: header-set}]\n        add: [{name: X-Header-Add, value: header-add}]\n        remove: [X-Header-Remove]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";

fn header_rules(kind: &str, field: &str) -> String {
    format!(
        "  rules:\n{}",
        HEADER_RULES.replace("KIND", kind).replace("FIELD", field)
    )
}

/// (path, request headers, expected headers, absent headers), from the conformance tests
/// HTTPRouteRequestHeaderModifier and HTTPRouteResponseHeaderModifier.
#[allow(clippy::type_complexity)]
fn header_cases() -> Vec<(
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
)> {
    vec![
        (
            "/set",
            vec![("Some-Other-Header", "val")],
            vec![
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            vec![],
        ),
        (
            "/set",
            vec![
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "some-other-value"),
            ],
            vec![
                ("Some-Other-Header", "val"),
                ("X-Header-Set", "set-overwrites-values"),
            ],
            vec![],
        ),
        (
            "/add",
            vec![("Some-Other-Header", "val")],
            vec![
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "add-appends-values"),
            ],
            vec![],
        ),
        (
            "/add",
            vec![
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "some-other-value"),
            ],
            vec![
                ("Some-Other-Header", "val"),
                ("X-Header-Add", "some-other-value,add-appends-values"),
            ],
            vec![],
        ),
        (
            "/remove",
            vec![("X-Header-Remove", "val")],
            vec![],
            vec!["X-Header-Remove"],
        ),
        (
            "/multiple",
            vec![
                ("X-Header-Set-2", "set-val-2"),
                ("X-Header-Add-2", "add-val-2"),
                ("X-Header-Remove-2", "remove-val-2"),
                ("Another-Header", "another-header-val"),
            ],
            vec![
                ("X-Header-Set-1", "header-set-1"),
                ("X-Header-Set-2", "header-set-2"),
                ("X-Header-Add-1", "header-add-1"),
                ("X-Header-Add-2", "add-val-2,header-add-2"),
                ("X-Header-Add-3", "header-add-3"),
                ("Another-Header", "another-header-val"),
            ],
            vec!["X-Header-Remove-1", "X-Header-Remove-2"],
        ),
        (
            "/case-insensitivity",
            vec![
                ("x-header-set", "original-val-set"),
                ("x-header-add", "original-val-add"),
                ("x-header-remove", "original-val-remove"),
                ("Another-Header", "another-header-val"),
            ],
            vec![
                ("X-Header-Set", "header-set"),
                ("X-Header-Add", "original-val-add,header-add"),
                ("Another-Header", "another-header-val"),
            ],
            vec!["X-Header-Remove"],
        ),
    ]
}

/// HTTPRouteRequestHeaderModifier.
#[test]
fn request_header_modifier_sets_adds_and_removes_headers_the_backend_sees() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "request-header-modifier",
            &header_rules("RequestHeaderModifier", "requestHeaderModifier"),
        ),
    ]);
    for (path, sent, want, absent) in header_cases() {
        let mut req = Req::get(path);
        for (n, v) in &sent {
            req = req.header(n, v);
        }
        let reply = get(port, req);
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.backend().as_deref(), Some("infra-backend-v1"));
        for (n, v) in &want {
            assert_eq!(reply.seen_header(n).as_deref(), Some(*v), "{path}: {n}");
        }
        for n in &absent {
            assert_eq!(reply.seen_header(n), None, "{path}: {n} should be absent");
        }
    }
}

/// HTTPRouteResponseHeaderModifier: the backend sets headers (X-Echo-Set-Header), the
/// filter modifies what the client gets.
#[test]
fn response_header_modifier_sets_adds_and_removes_headers_the_client_sees() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "response-header-modifier",
            &header_rules("ResponseHeaderModifier", "responseHeaderModifier"),
        ),
    ]);
    for (path, sent, want, absent) in header_cases() {
        let set: Vec<String> = sent.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let reply = get(
            port,
            Req::get(path).header("X-Echo-Set-Header", &set.join(",")),
        );
        assert_eq!(reply.status, 200, "{path}");
        for (n, v) in &want {
            assert_eq!(reply.header(n).as_deref(), Some(*v), "{path}: {n}");
        }
        for n in &absent {
            assert_eq!(reply.header(n), None, "{path}: {n} should be absent");
        }
    }
    // `add` appends a second field; it does not fold the value into the first one.
    let reply = get(
        port,
        Req::get("/add").header("X-Echo-Set-Header", "X-Header-Add: from-backend"),
    );
    let fields: Vec<_> = reply
        .headers
        .get_all("x-header-add")
        .iter()
        .map(|v| v.to_str().expect("ascii"))
        .collect();
    assert_eq!(fields, ["from-backend", "add-appends-values"]);
}

/// HTTPRouteBackendRequestHeaderModifier: `backendRefs[].filters` apply to requests sent
/// to that backend only, after the rule's filters.
#[test]
fn backend_level_header_filters_apply_to_their_backend_only() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /v1}}]\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {set: [{name: X-Rule, value: rule}]}\n    backendRefs:\n    - name: infra-backend-v1\n      port: 8080\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {set: [{name: X-Rule, value: backend}], add: [{name: X-Backend, value: v1}]}\n  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("backend-filters", spec),
    ]);
    let one = get(port, Req::get("/v1"));
    assert_eq!(one.backend().as_deref(), Some("infra-backend-v1"));
    assert_eq!(one.seen_header("X-Rule").as_deref(), Some("backend"));
    assert_eq!(one.seen_header("X-Backend").as_deref(), Some("v1"));
    let two = get(port, Req::get("/v2"));
    assert_eq!(two.backend().as_deref(), Some("infra-backend-v2"));
    assert_eq!(two.seen_header("X-Backend"), None);
}

/// The other filters on `backendRefs[].filters` apply exactly to the requests their
/// backend gets: ResponseHeaderModifier (what the client sees), URLRewrite (what the
/// backend sees), RequestMirror (a copy per request of that backend) and RequestRedirect
/// (the backend is never asked).
#[test]
fn backend_level_response_rewrite_mirror_and_redirect_filters_follow_their_backend() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /orig}}]\n    backendRefs:\n    - name: infra-backend-v1\n      port: 8080\n      weight: 1\n      filters:\n      - type: ResponseHeaderModifier\n        responseHeaderModifier: {set: [{name: X-From, value: v1}]}\n      - type: URLRewrite\n        urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}\n      - type: RequestMirror\n        requestMirror: {backendRef: {name: infra-backend-v3, port: 8080}}\n    - {name: infra-backend-v2, port: 8080, weight: 1}\n  - matches: [{path: {type: PathPrefix, value: /moved}}]\n    backendRefs:\n    - name: infra-backend-v3\n      port: 8080\n      weight: 1\n      filters:\n      - type: RequestRedirect\n        requestRedirect: {hostname: moved.example, statusCode: 301}\n    - {name: infra-backend-v2, port: 8080, weight: 1}\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("backend-filters-all", spec),
    ]);
    let mut to_v1 = 0;
    for _ in 0..40 {
        let reply = get(port, Req::get("/orig/x"));
        assert_eq!(reply.status, 200);
        match reply.backend().as_deref() {
            Some("infra-backend-v1") => {
                to_v1 += 1;
                assert_eq!(reply.header("X-From").as_deref(), Some("v1"));
                assert_eq!(reply.seen_path().as_deref(), Some("/rewritten/x"));
            }
            Some("infra-backend-v2") => {
                assert_eq!(reply.header("X-From"), None);
                assert_eq!(reply.seen_path().as_deref(), Some("/orig/x"));
            }
            other => panic!("answered by {other:?}"),
        }
    }
    assert!(
        (17..=23).contains(&to_v1),
        "{to_v1} of 40 to v1 at weights 1:1"
    );
    // One mirror copy for each request v1 got, none for v2's.
    let mirror = infra.echo("infra-backend-v3");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mirror.requests() < to_v1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(mirror.requests(), to_v1);

    let mut redirected = 0;
    for _ in 0..40 {
        let reply = get(port, Req::get("/moved/y"));
        match reply.status {
            301 => {
                redirected += 1;
                // No scheme and no port in the filter: the listener's port stays.
                assert_eq!(
                    reply.header("location"),
                    Some(format!("http://moved.example:{port}/moved/y"))
                );
            }
            200 => assert_eq!(reply.backend().as_deref(), Some("infra-backend-v2")),
            other => panic!("status {other}"),
        }
    }
    assert!(
        (17..=23).contains(&redirected),
        "{redirected} of 40 redirected"
    );
    assert_eq!(
        mirror.requests(),
        to_v1,
        "the redirecting backend is never asked"
    );
}

/// HTTPRouteRequestHeaderModifierBackendWeights: each weighted backend's own filter runs
/// exactly for the requests that backend receives.
#[test]
fn weighted_backends_each_apply_their_own_header_filter() {
    let infra = Infra::new();
    let port = listener_port();
    let mut spec = String::from("  rules:\n  - backendRefs:\n");
    for v in ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"] {
        spec.push_str(&format!(
            "    - name: {v}\n      port: 8080\n      weight: 1\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {{set: [{{name: Backend, value: {v}}}]}}\n"
        ));
    }
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("request-header-modifier-backend-weights", &spec),
    ]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let reply = get(port, Req::get("/"));
        let pod = reply.backend().expect("an echo answered");
        assert_eq!(reply.seen_header("Backend"), Some(pod.clone()));
        seen.insert(pod);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

fn redirect_rule(path: &str, redirect: &str) -> String {
    format!(
        "  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {redirect}\n"
    )
}

/// HTTPRouteRedirectPath, HTTPRouteRedirectHostAndStatus and the 301/302/303/307/308
/// cases: Location and status, the backend never sees the request.
#[test]
fn redirects_rewrite_path_host_and_status() {
    let infra = Infra::new();
    let port = listener_port();
    let mut spec = String::from("  rules:\n");
    for (path, redirect) in [
        ("/original-prefix", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
        ("/full", "{path: {type: ReplaceFullPath, replaceFullPath: /full-path-replacement}}"),
        ("/path-and-host", "{hostname: example.org, path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}}"),
        ("/path-and-status", "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /replacement-prefix}, statusCode: 301}"),
        ("/full-path-and-host", "{hostname: example.org, path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}}"),
        ("/full-path-and-status", "{path: {type: ReplaceFullPath, replaceFullPath: /replacement-full}, statusCode: 301}"),
        ("/hostname-redirect", "{hostname: example.org}"),
        ("/host-and-status", "{hostname: example.org, statusCode: 301}"),
        ("/s303", "{statusCode: 303}"),
        ("/s307", "{statusCode: 307}"),
        ("/s308", "{statusCode: 308}"),
    ] {
        spec.push_str(&redirect_rule(path, redirect));
    }
    spec.push_str("  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n");
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("redirect-path", &spec),
    ]);
    let host = "gw.example.com";
    for (path, status, location) in [
        (
            "/original-prefix/lemon",
            302,
            format!("http://{host}:{port}/replacement-prefix/lemon"),
        ),
        (
            "/full/path/original",
            302,
            format!("http://{host}:{port}/full-path-replacement"),
        ),
        (
            "/path-and-host",
            302,
            format!("http://example.org:{port}/replacement-prefix"),
        ),
        (
            "/path-and-status",
            301,
            format!("http://{host}:{port}/replacement-prefix"),
        ),
        (
            "/full-path-and-host",
            302,
            format!("http://example.org:{port}/replacement-full"),
        ),
        (
            "/full-path-and-status",
            301,
            format!("http://{host}:{port}/replacement-full"),
        ),
        (
            "/hostname-redirect",
            302,
            format!("http://example.org:{port}/hostname-redirect"),
        ),
        (
            "/host-and-status",
            301,
            format!("http://example.org:{port}/host-and-status"),
        ),
        ("/s303?a=b", 303, format!("http://{host}:{port}/s303?a=b")),
        ("/s307", 307, format!("http://{host}:{port}/s307")),
        ("/s308", 308, format!("http://{host}:{port}/s308")),
    ] {
        let reply = get(port, Req::get(path).host(&format!("{host}:{port}")));
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("location"), Some(location), "{path}");
        assert_eq!(reply.backend(), None, "{path}: the backend must not answer");
    }
    assert_eq!(infra.echo("infra-backend-v1").requests(), 0);
}

/// HTTPRouteRedirectPortAndScheme on a listener that is not on port 80 (the conformance
/// test's :8080 listener): no port and no scheme keep the listener's port; a scheme brings
/// its well-known port, which is then left out.
#[test]
fn redirect_ports_and_schemes_on_a_non_default_listener_port() {
    let infra = Infra::new();
    let port = listener_port();
    let mut spec = String::from("  rules:\n");
    for (path, redirect) in [
        ("/scheme-nil-and-port-nil", "{hostname: example.org}"),
        (
            "/scheme-nil-and-port-80",
            "{hostname: example.org, port: 80}",
        ),
        (
            "/scheme-nil-and-port-8080",
            "{hostname: example.org, port: 8080}",
        ),
        (
            "/scheme-https-and-port-nil",
            "{hostname: example.org, scheme: https}",
        ),
        (
            "/scheme-https-and-port-443",
            "{hostname: example.org, scheme: https, port: 443}",
        ),
        (
            "/scheme-https-and-port-8443",
            "{hostname: example.org, scheme: https, port: 8443}",
        ),
    ] {
        spec.push_str(&redirect_rule(path, redirect));
    }
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("http-route-for-listener-on-port-8080", &spec),
    ]);
    for (path, location) in [
        (
            "/scheme-nil-and-port-nil",
            format!("http://example.org:{port}/scheme-nil-and-port-nil"),
        ),
        (
            "/scheme-nil-and-port-80",
            "http://example.org/scheme-nil-and-port-80".to_string(),
        ),
        (
            "/scheme-nil-and-port-8080",
            "http://example.org:8080/scheme-nil-and-port-8080".to_string(),
        ),
        (
            "/scheme-https-and-port-nil",
            "https://example.org/scheme-https-and-port-nil".to_string(),
        ),
        (
            "/scheme-https-and-port-443",
            "https://example.org/scheme-https-and-port-443".to_string(),
        ),
        (
            "/scheme-https-and-port-8443",
            "https://example.org:8443/scheme-https-and-port-8443".to_string(),
        ),
    ] {
        let reply = get(port, Req::get(path));
        assert_eq!(reply.status, 302, "{path}");
        assert_eq!(reply.header("location"), Some(location), "{path}");
    }
}

/// HTTPRouteRewritePath.
#[test]
fn url_rewrite_replaces_the_prefix_or_the_full_path() {
    let infra = Infra::new();
    let port = listener_port();
    let mods = "    - type: RequestHeaderModifier\n      requestHeaderModifier:\n        set: [{name: X-Header-Set, value: set-overwrites-values}]\n        add: [{name: X-Header-Add, value: header-val-1}, {name: X-Header-Add-Append, value: header-val-2}]\n        remove: [X-Header-Remove]\n";
    let spec = format!(
        "  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /prefix/one}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /one}}}}\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /full/one}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /one}}}}\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /full/rewrite-path-and-modify-headers}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /test}}}}\n{mods}    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /prefix/rewrite-path-and-modify-headers}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /prefix}}}}\n{mods}    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"
    );
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("rewrite-path", &spec)]);
    for (path, seen) in [
        ("/prefix/one/two", "/one/two"),
        ("/full/one/two", "/one"),
        ("/prefix/one/two?q=1", "/one/two?q=1"),
    ] {
        let reply = get(port, Req::get(path));
        assert_eq!(reply.seen_path().as_deref(), Some(seen), "{path}");
    }
    for (path, seen) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let reply = get(
            port,
            Req::get(path)
                .header("X-Header-Remove", "remove-val")
                .header("X-Header-Add-Append", "append-val-1")
                .header("X-Header-Set", "set-val"),
        );
        assert_eq!(reply.seen_path().as_deref(), Some(seen), "{path}");
        assert_eq!(
            reply.seen_header("X-Header-Add").as_deref(),
            Some("header-val-1")
        );
        assert_eq!(
            reply.seen_header("X-Header-Add-Append").as_deref(),
            Some("append-val-1,header-val-2")
        );
        assert_eq!(
            reply.seen_header("X-Header-Set").as_deref(),
            Some("set-overwrites-values")
        );
        assert_eq!(reply.seen_header("X-Header-Remove"), None);
    }
}

/// HTTPRouteRewriteHost.
#[test]
fn url_rewrite_changes_the_host_the_backend_sees() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  hostnames: [rewrite.example]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /one}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {hostname: one.example.org}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - filters:\n    - type: URLRewrite\n      urlRewrite: {hostname: example.org}\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("rewrite-host", spec)]);
    let one = get(port, Req::get("/one").host("rewrite.example"));
    assert_eq!(one.backend().as_deref(), Some("infra-backend-v1"));
    assert_eq!(one.json()["host"], "one.example.org");
    assert_eq!(
        one.seen_header("X-Forwarded-Host").as_deref(),
        Some("rewrite.example")
    );
    let other = get(port, Req::get("/").host("rewrite.example").h2());
    assert_eq!(other.backend().as_deref(), Some("infra-backend-v2"));
    assert_eq!(other.json()["host"], "example.org");
}

/// HTTPRouteRequestMirror: the mirror gets a copy (headers and body), the client gets the
/// primary backend's answer.
#[test]
fn request_mirror_sends_a_copy_and_answers_from_the_primary() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /mirror}}]\n    filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: infra-backend-v2, port: 8080}}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /never}}]\n    filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: infra-backend-v3, port: 8080}, percent: 0}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("request-mirror", spec),
    ]);
    let reply = get(
        port,
        Req::get("/mirror").method("POST").body(vec![b'a'; 100_000]),
    );
    assert_eq!(reply.backend().as_deref(), Some("infra-backend-v1"));
    assert_eq!(reply.json()["bodyLength"], 100_000);
    let over_h2 = get(
        port,
        Req::get("/mirror")
            .method("POST")
            .body(vec![b'b'; 50_000])
            .h2(),
    );
    assert_eq!(over_h2.json()["bodyLength"], 50_000);
    for _ in 0..3 {
        get(port, Req::get("/mirror"));
        get(port, Req::get("/never"));
    }
    let mirrored = infra.echo("infra-backend-v2");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mirrored.seen().len() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut bodies: Vec<Option<usize>> = mirrored.seen().iter().map(|s| s.body).collect();
    bodies.sort();
    // Every copy whole: both bodies, and the three bodiless GETs.
    assert_eq!(
        bodies,
        [Some(0), Some(0), Some(0), Some(50_000), Some(100_000)]
    );
    assert_eq!(infra.echo("infra-backend-v3").requests(), 0);
}

/// RequestMirror `fraction` and `percent`: each run of requests is mirrored within a few
/// of the fraction (1/4 and 50 % of 200 requests here).
#[test]
fn request_mirror_copies_its_fraction_of_the_requests() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /quarter}}]\n    filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: infra-backend-v2, port: 8080}, fraction: {numerator: 1, denominator: 4}}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /half}}]\n    filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: infra-backend-v3, port: 8080}, percent: 50}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("request-mirror-fraction", spec),
    ]);
    for _ in 0..200 {
        assert_eq!(get(port, Req::get("/quarter")).status, 200);
        assert_eq!(get(port, Req::get("/half")).status, 200);
    }
    assert_eq!(infra.echo("infra-backend-v1").requests(), 400);
    // Copies are sent after the answers: wait for the counts to settle.
    let mut last = (usize::MAX, usize::MAX);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let now = (
            infra.echo("infra-backend-v2").requests(),
            infra.echo("infra-backend-v3").requests(),
        );
        if now == last {
            break;
        }
        last = now;
    }
    let (quarter, half) = last;
    // Two workers, each within a few of its share.
    assert!((44..=56).contains(&quarter), "{quarter} of 200 at 1/4");
    assert!((94..=106).contains(&half), "{half} of 200 at 50 %");
}

/// A mirror that never answers holds up neither the client nor the primary: every
/// response arrives while the mirror still sits on its copies.
#[test]
fn a_mirror_that_never_answers_does_not_hold_up_the_client() {
    let mut infra = Infra::new();
    let hanging = infra.add_raw(INFRA, "hanging", Misbehaviour::NeverAnswer);
    let port = listener_port();
    let spec = "  rules:\n  - filters:\n    - type: RequestMirror\n      requestMirror: {backendRef: {name: hanging, port: 8080}}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("request-mirror-hanging", spec),
    ]);
    let started = std::time::Instant::now();
    for i in 0..5 {
        let reply = get(
            port,
            Req::get(&format!("/hang/{i}"))
                .method("POST")
                .body(vec![b'm'; 20_000]),
        );
        assert_eq!(reply.status, 200);
        assert_eq!(reply.backend().as_deref(), Some("infra-backend-v1"));
        assert_eq!(reply.json()["bodyLength"], 20_000);
    }
    // Far below the 30 s a mirror is given: nothing waited for it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hanging.requests() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(hanging.requests(), 5, "the mirror got every copy");
}
