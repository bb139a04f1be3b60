//! HTTP routing through a real gatewayd: the Gateway API conformance scenarios for
//! matching, precedence, hostnames and listener isolation, against echo backends.

use gateway_tests::scenario::{
    check_all, listener_port, same_namespace_gateway, send, Expect, Infra, Req, INFRA, WEB,
};
use Expect::{Backend, Status};

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n{spec}"
    )
}

fn addr(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// HTTPRouteSimpleSameNamespace.
#[test]
fn a_route_in_the_gateway_namespace_reaches_its_backend() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "gateway-conformance-infra-test",
            "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    let reply = send(addr(port), &Req::get("/")).expect("request");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend().as_deref(), Some("infra-backend-v1"));
    assert_eq!(reply.seen_path().as_deref(), Some("/"));
}

/// HTTPRouteCrossNamespace: a route in the backend's namespace attaches to a Gateway that
/// admits routes from all namespaces.
#[test]
fn a_route_from_another_namespace_attaches_when_the_listener_allows_it() {
    let infra = Infra::new();
    let port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: backend-namespaces, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: http, port: {port}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: All}}}}}}\n"
    );
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: cross-namespace, namespace: {WEB}}}\nspec:\n  parentRefs: [{{name: backend-namespaces, namespace: {INFRA}}}]\n  rules:\n  - backendRefs: [{{name: web-backend, port: 8080}}]\n"
    );
    let _gw = infra.serve(&[&gateway, &route]);
    check_all(addr(port), &[(Req::get("/"), Backend("web-backend"))]);
}

/// HTTPRouteExactPathMatching.
#[test]
fn exact_paths_match_only_themselves() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "exact-matching",
            "  rules:\n  - matches: [{path: {type: Exact, value: /one}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: Exact, value: /two}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
        ),
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/one"), Backend("infra-backend-v1")),
            (Req::get("/two"), Backend("infra-backend-v2")),
            (Req::get("/"), Status(404)),
            (Req::get("/one/example"), Status(404)),
            (Req::get("/two/"), Status(404)),
            (Req::get("/One"), Status(404)),
        ],
    );
}

/// HTTPRoutePathMatchOrder: exact beats prefix, longer prefixes beat shorter ones.
#[test]
fn exact_beats_prefix_and_longer_prefixes_win() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "path-matching-order",
            "  rules:\n  - {matches: [{path: {type: Exact, value: /match}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n  - {matches: [{path: {type: Exact, value: /match/exact}}], backendRefs: [{name: infra-backend-v2, port: 8080}]}\n  - {matches: [{path: {type: Exact, value: /match/exact/one}}], backendRefs: [{name: infra-backend-v3, port: 8080}]}\n  - {matches: [{path: {type: PathPrefix, value: /match/}}], backendRefs: [{name: infra-backend-v3, port: 8080}]}\n  - {matches: [{path: {type: PathPrefix, value: /match/prefix/}}], backendRefs: [{name: infra-backend-v1, port: 8080}]}\n  - {matches: [{path: {type: PathPrefix, value: /match/prefix/one}}], backendRefs: [{name: infra-backend-v2, port: 8080}]}\n",
        ),
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/match/exact/one"), Backend("infra-backend-v3")),
            (Req::get("/match/exact"), Backend("infra-backend-v2")),
            (Req::get("/match"), Backend("infra-backend-v1")),
            (
                Req::get("/match/prefix/one/any"),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/match/prefix/any"), Backend("infra-backend-v1")),
            (Req::get("/match/any"), Backend("infra-backend-v3")),
        ],
    );
}

const MATCHING: &str = "  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches:\n    - path: {type: PathPrefix, value: /v2}\n    - headers: [{name: version, value: two}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n";

/// HTTPRouteMatching: matches of one rule are ORed; precedence across rules.
#[test]
fn matches_of_a_rule_are_alternatives() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("matching", MATCHING)]);
    check_all(
        addr(port),
        &[
            (Req::get("/"), Backend("infra-backend-v1")),
            (Req::get("/example"), Backend("infra-backend-v1")),
            (
                Req::get("/").header("Version", "one"),
                Backend("infra-backend-v1"),
            ),
            (Req::get("/v2"), Backend("infra-backend-v2")),
            (Req::get("/v2/example"), Backend("infra-backend-v2")),
            (
                Req::get("/").header("Version", "two"),
                Backend("infra-backend-v2"),
            ),
        ],
    );
}

/// HTTPRouteMatchingAcrossRoutes: rules of several routes merge by precedence per host.
#[test]
fn rules_of_several_routes_merge_per_hostname() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "matching-part1",
            "  hostnames: [example.com, example.net]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
        &route(
            "matching-part2",
            "  hostnames: [example.com]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n",
        ),
    ]);
    check_all(
        addr(port),
        &[
            (
                Req::get("/").host("example.com"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/").host("example.net"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/example").host("example.com"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/example").host("example.net"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/example")
                    .host("example.com")
                    .header("Version", "one"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/v2").host("example.com"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/v2").host("example.net"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/v2/example").host("example.com"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/").host("example.com").header("Version", "two"),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/").host("example.org"), Status(404)),
        ],
    );
}

const HEADER_MATCHING: &str = "  rules:\n  - matches: [{headers: [{name: version, value: one}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n";

/// HTTPRouteHeaderMatching.
#[test]
fn header_matches_are_exact_and_more_headers_win() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("header-matching", HEADER_MATCHING),
    ]);
    check_all(
        addr(port),
        &[
            (
                Req::get("/").header("Version", "one"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/").header("Version", "two"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/")
                    .header("Version", "two")
                    .header("Color", "orange"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/")
                    .header("Version", "two")
                    .header("Color", "blue"),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/").header("Color", "orange"), Status(404)),
            (
                Req::get("/").header("Some-Other-Header", "one"),
                Status(404),
            ),
            (
                Req::get("/").header("Color", "blue"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/").header("Color", "green"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/").header("Color", "red"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/").header("Color", "yellow"),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/").header("Color", "purple"), Status(404)),
        ],
    );
}

/// RegularExpression path and header matches (Implementation-specific support, RE2
/// syntax): a full match of the path or the header value; a regex path ranks after Exact
/// and PathPrefix matches.
#[test]
fn regular_expression_paths_and_headers_match_in_full() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: RegularExpression, value: '/re/[0-9]+'}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: Exact, value: /re/42}}]\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /hdr}, headers: [{type: RegularExpression, name: X-Version, value: 'v[12]\\.[0-9]+'}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("regex-matching", spec),
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/re/123"), Backend("infra-backend-v1")),
            (Req::get("/re/7?q=1"), Backend("infra-backend-v1")),
            (Req::get("/re/42"), Backend("infra-backend-v3")),
            (Req::get("/re/123/x"), Status(404)),
            (Req::get("/re/abc"), Status(404)),
            (Req::get("/xre/123"), Status(404)),
            (Req::get("/re/"), Status(404)),
            (
                Req::get("/hdr").header("X-Version", "v1.10"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/hdr").header("X-Version", "v2.0"),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/hdr").header("X-Version", "v3.0"), Status(404)),
            (Req::get("/hdr").header("X-Version", "v1.0-rc"), Status(404)),
            (Req::get("/hdr").header("X-Version", "xv1.0"), Status(404)),
            (Req::get("/hdr"), Status(404)),
        ],
    );
}

/// HTTPRouteQueryParamMatching.
#[test]
fn query_parameters_match_by_exact_name_and_value() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{queryParams: [{name: animal, value: dolphin}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{queryParams: [{name: animal, value: dolphin}, {name: color, value: blue}]}, {queryParams: [{name: ANIMAL, value: Whale}]}]\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path1}, queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: one}], queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], queryParams: [{name: animal, value: whale}]}]\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path3}, queryParams: [{name: animal, value: shark}]}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], queryParams: [{name: animal, value: kraken}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: four}], queryParams: [{name: animal, value: hydra}]}]\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path5}, queryParams: [{name: animal, value: hydra}]}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("query-param-matching", spec),
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/?animal=whale"), Backend("infra-backend-v1")),
            (Req::get("/?animal=dolphin"), Backend("infra-backend-v2")),
            (
                Req::get("/?animal=dolphin&color=blue"),
                Backend("infra-backend-v3"),
            ),
            (Req::get("/?ANIMAL=Whale"), Backend("infra-backend-v3")),
            (
                Req::get("/?animal=whale&otherparam=irrelevant"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/?animal=dolphin&color=yellow"),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/?color=blue"), Status(404)),
            (Req::get("/?animal=dog"), Status(404)),
            (Req::get("/?animal=whaledolphin"), Status(404)),
            (Req::get("/"), Status(404)),
            (Req::get("/path1?animal=whale"), Backend("infra-backend-v1")),
            (
                Req::get("/?animal=whale").header("version", "one"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/path2?animal=whale").header("version", "two"),
                Backend("infra-backend-v3"),
            ),
            (Req::get("/path3?animal=shark"), Backend("infra-backend-v1")),
            (
                Req::get("/path4?animal=kraken").header("version", "three"),
                Backend("infra-backend-v1"),
            ),
            (Req::get("/?animal=shark"), Status(404)),
            (Req::get("/path4?animal=kraken"), Status(404)),
            (Req::get("/path5?animal=hydra"), Backend("infra-backend-v1")),
            (
                Req::get("/?animal=hydra").header("version", "four"),
                Backend("infra-backend-v3"),
            ),
            // A longer path prefix outranks header matches (spec precedence).
            (
                Req::get("/path5?animal=hydra").header("version", "four"),
                Backend("infra-backend-v1"),
            ),
        ],
    );
}

/// HTTPRouteMethodMatching.
#[test]
fn methods_match_exactly_and_combine_with_other_matches() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{method: POST}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{method: GET}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path1}, method: GET}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: one}], method: PUT}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], method: POST}]\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path3}, method: PATCH}, {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], method: DELETE}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: four}], method: PATCH}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /path5}, method: PATCH}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("method-matching", spec),
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/").method("POST"), Backend("infra-backend-v1")),
            (Req::get("/").method("GET"), Backend("infra-backend-v2")),
            (Req::get("/").method("HEAD"), Status(404)),
            (
                Req::get("/path1").method("GET"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/").method("PUT").header("version", "one"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/path2").method("POST").header("version", "two"),
                Backend("infra-backend-v3"),
            ),
            (
                Req::get("/path3").method("PATCH"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/path4")
                    .method("DELETE")
                    .header("version", "three"),
                Backend("infra-backend-v1"),
            ),
            (Req::get("/").method("PUT"), Status(404)),
            (Req::get("/path4").method("DELETE"), Status(404)),
            (
                Req::get("/path5").method("PATCH"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/").method("PATCH").header("version", "four"),
                Backend("infra-backend-v2"),
            ),
        ],
    );
}

/// HTTPRouteHostnameIntersection.
#[test]
fn route_hostnames_intersect_with_listener_hostnames() {
    let infra = Infra::new();
    let port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: httproute-hostname-intersection, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: listener-1, port: {port}, protocol: HTTP, hostname: very.specific.com}}\n  - {{name: listener-2, port: {port}, protocol: HTTP, hostname: '*.wildcard.io'}}\n  - {{name: listener-3, port: {port}, protocol: HTTP, hostname: '*.anotherwildcard.io'}}\n"
    );
    let r = |name: &str, hosts: &str, path: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: httproute-hostname-intersection}}]\n  hostnames: [{hosts}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n"
        )
    };
    let _gw = infra.serve(&[
        &gateway,
        &r(
            "specific-host-matches-listener-specific-host",
            "non.matching.com, '*.nonmatchingwildcard.io', very.specific.com",
            "/s1",
            "infra-backend-v1",
        ),
        &r(
            "specific-host-matches-listener-wildcard-host",
            "non.matching.com, wildcard.io, foo.wildcard.io, bar.wildcard.io, foo.bar.wildcard.io",
            "/s2",
            "infra-backend-v2",
        ),
        &r(
            "wildcard-host-matches-listener-specific-host",
            "non.matching.com, '*.specific.com'",
            "/s3",
            "infra-backend-v3",
        ),
        &r(
            "wildcard-host-matches-listener-wildcard-host",
            "'*.anotherwildcard.io'",
            "/s4",
            "infra-backend-v1",
        ),
        &r(
            "no-intersecting-hosts",
            "specific.but.wrong.com, wildcard.io",
            "/s5",
            "infra-backend-v2",
        ),
    ]);
    check_all(
        addr(port),
        &[
            (
                Req::get("/s1").host("very.specific.com"),
                Backend("infra-backend-v1"),
            ),
            (Req::get("/s1").host("non.matching.com"), Status(404)),
            (
                Req::get("/s1").host("foo.nonmatchingwildcard.io"),
                Status(404),
            ),
            (
                Req::get("/s2").host("foo.wildcard.io"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/s2").host("bar.wildcard.io"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/s2").host("foo.bar.wildcard.io"),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/s2").host("wildcard.io"), Status(404)),
            (Req::get("/s2").host("non.matching.com"), Status(404)),
            (
                Req::get("/s3").host("very.specific.com"),
                Backend("infra-backend-v3"),
            ),
            (Req::get("/s3").host("non.matching.com"), Status(404)),
            (Req::get("/s3").host("foo.specific.com"), Status(404)),
            (
                Req::get("/s4").host("foo.anotherwildcard.io"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/s4").host("bar.anotherwildcard.io"),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/s4").host("foo.bar.anotherwildcard.io"),
                Backend("infra-backend-v1"),
            ),
            (Req::get("/s4").host("anotherwildcard.io"), Status(404)),
            (Req::get("/s5").host("specific.but.wrong.com"), Status(404)),
            (Req::get("/s5").host("wildcard.io"), Status(404)),
            // A Host with a port matches the hostname without it.
            (
                Req::get("/s1").host("very.specific.com:1234"),
                Backend("infra-backend-v1"),
            ),
        ],
    );
}

/// HTTPRouteListenerHostnameMatching: the most specific listener hostname wins.
#[test]
fn the_most_specific_listener_hostname_serves_the_request() {
    let infra = Infra::new();
    let port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: httproute-listener-hostname-matching, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: listener-1, port: {port}, protocol: HTTP, hostname: bar.com}}\n  - {{name: listener-2, port: {port}, protocol: HTTP, hostname: foo.bar.com}}\n  - {{name: listener-3, port: {port}, protocol: HTTP, hostname: '*.bar.com'}}\n  - {{name: listener-4, port: {port}, protocol: HTTP, hostname: '*.foo.com'}}\n"
    );
    let r = |name: &str, sections: &[&str], backend: &str| {
        let parents: Vec<String> = sections
            .iter()
            .map(|s| format!("{{name: httproute-listener-hostname-matching, sectionName: {s}}}"))
            .collect();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{}]\n  rules:\n  - backendRefs: [{{name: {backend}, port: 8080}}]\n",
            parents.join(", ")
        )
    };
    let _gw = infra.serve(&[
        &gateway,
        &r("backend-v1", &["listener-1"], "infra-backend-v1"),
        &r("backend-v2", &["listener-2"], "infra-backend-v2"),
        &r(
            "backend-v3",
            &["listener-3", "listener-4"],
            "infra-backend-v3",
        ),
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/").host("bar.com"), Backend("infra-backend-v1")),
            (
                Req::get("/").host("foo.bar.com"),
                Backend("infra-backend-v2"),
            ),
            (
                Req::get("/").host("baz.bar.com"),
                Backend("infra-backend-v3"),
            ),
            (
                Req::get("/").host("boo.bar.com"),
                Backend("infra-backend-v3"),
            ),
            (
                Req::get("/").host("multiple.prefixes.bar.com"),
                Backend("infra-backend-v3"),
            ),
            (
                Req::get("/").host("multiple.prefixes.foo.com"),
                Backend("infra-backend-v3"),
            ),
            (Req::get("/").host("foo.com"), Status(404)),
            (Req::get("/").host("no.matching.host"), Status(404)),
        ],
    );
}

/// GatewayHTTPListenerIsolation: only the listener the Host selects serves the request,
/// even when a less specific listener has a matching route.
#[test]
fn only_the_selected_listener_routes_a_request() {
    let infra = Infra::new();
    let port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: http-listener-isolation, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: empty-hostname, port: {port}, protocol: HTTP}}\n  - {{name: wildcard-example-com, port: {port}, protocol: HTTP, hostname: '*.example.com'}}\n  - {{name: wildcard-foo-example-com, port: {port}, protocol: HTTP, hostname: '*.foo.example.com'}}\n  - {{name: abc-foo-example-com, port: {port}, protocol: HTTP, hostname: abc.foo.example.com}}\n"
    );
    let r = |name: &str, section: &str, path: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: http-listener-isolation, sectionName: {section}}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    backendRefs: [{{name: {backend}, port: 8080}}]\n"
        )
    };
    let _gw = infra.serve(&[
        &gateway,
        &r(
            "attaches-to-empty-hostname",
            "empty-hostname",
            "/empty-hostname",
            "infra-backend-v1",
        ),
        &r(
            "attaches-to-wildcard-example-com",
            "wildcard-example-com",
            "/wildcard-example-com",
            "infra-backend-v1",
        ),
        &r(
            "attaches-to-wildcard-foo-example-com",
            "wildcard-foo-example-com",
            "/wildcard-foo-example-com",
            "infra-backend-v1",
        ),
        &r(
            "attaches-to-abc-foo-example-com",
            "abc-foo-example-com",
            "/abc-foo-example-com",
            "infra-backend-v1",
        ),
    ]);
    let paths = [
        "/empty-hostname",
        "/wildcard-example-com",
        "/wildcard-foo-example-com",
        "/abc-foo-example-com",
    ];
    let mut cases = Vec::new();
    for (host, serving) in [
        ("bar.com", 0),
        ("bar.example.com", 1),
        ("bar.foo.example.com", 2),
        ("abc.foo.example.com", 3),
    ] {
        for (i, path) in paths.iter().enumerate() {
            let want = if i == serving {
                Backend("infra-backend-v1")
            } else {
                Status(404)
            };
            cases.push((Req::get(path).host(host), want));
        }
    }
    check_all(addr(port), &cases);
}

/// HTTP/2 with prior knowledge from the client is routed the same way.
#[test]
fn h2c_clients_are_routed_by_authority() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "matching-part1",
            "  hostnames: [example.com]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /v2}}]\n    backendRefs: [{name: infra-backend-v2, port: 8080}]\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    check_all(
        addr(port),
        &[
            (
                Req::get("/").host("example.com").h2(),
                Backend("infra-backend-v1"),
            ),
            (
                Req::get("/v2/x").host("example.com").h2(),
                Backend("infra-backend-v2"),
            ),
            (Req::get("/").host("example.org").h2(), Status(404)),
        ],
    );
    let reply = send(addr(port), &Req::get("/v2/x?a=b").host("example.com").h2()).expect("request");
    assert_eq!(reply.seen_header("host").as_deref(), Some("example.com"));
    assert_eq!(reply.seen_path().as_deref(), Some("/v2/x?a=b"));
}
