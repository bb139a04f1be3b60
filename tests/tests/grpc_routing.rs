//! GRPCRoute through a real gatewayd: service/method and header matching, listener
//! hostnames, over HTTP/2 (h2c) from the client and to the backend.

use std::net::SocketAddr;

use gateway_tests::scenario::{
    listener_port, same_namespace_gateway, send, Infra, Reply, Req, INFRA,
};

const SERVICE: &str = "gateway_api_conformance.grpc_echo.grpcecho.GrpcEcho";

fn grpc_route(name: &str, parents: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{parents}]\n{spec}"
    )
}

fn grpc_infra() -> Infra {
    let mut infra = Infra::new();
    for v in [
        "grpc-infra-backend-v1",
        "grpc-infra-backend-v2",
        "grpc-infra-backend-v3",
    ] {
        infra.add(INFRA, v, None);
    }
    infra
}

/// One unary call: an empty message framed as gRPC.
fn call(port: u16, authority: &str, method: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Req::get(&format!("/{SERVICE}/{method}"))
        .method("POST")
        .host(authority)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .h2();
    for (n, v) in headers {
        req = req.header(n, v);
    }
    send(SocketAddr::from(([127, 0, 0, 1], port)), &req)
        .unwrap_or_else(|e| panic!("{method}: {e:#}"))
}

/// (gRPC status, backend that answered).
type Outcome = (String, Option<String>);

fn outcome(r: &Reply) -> Outcome {
    (
        r.header("grpc-status").unwrap_or_default(),
        r.header("x-echo-backend"),
    )
}

fn ok(backend: &str) -> Outcome {
    ("0".to_string(), Some(backend.to_string()))
}

fn unimplemented() -> Outcome {
    ("12".to_string(), None)
}

/// GRPCExactMethodMatching: unmatched methods get UNIMPLEMENTED from the gateway.
#[test]
fn grpc_methods_route_by_exact_service_and_method() {
    let infra = grpc_infra();
    let port = listener_port();
    let spec = format!(
        "  rules:\n  - matches: [{{method: {{service: {SERVICE}, method: Echo}}}}]\n    backendRefs: [{{name: grpc-infra-backend-v1, port: 8080}}]\n  - matches: [{{method: {{service: {SERVICE}, method: EchoTwo}}}}]\n    backendRefs: [{{name: grpc-infra-backend-v2, port: 8080}}]\n"
    );
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &grpc_route("exact-matching", "{name: same-namespace}", &spec),
    ]);
    let host = "grpc.example";
    let echo = call(port, host, "Echo", &[]);
    assert_eq!(echo.status, 200);
    assert_eq!(outcome(&echo), ok("grpc-infra-backend-v1"));
    assert_eq!(echo.json_of_grpc()["proto"], "HTTP/2.0");
    assert_eq!(
        outcome(&call(port, host, "EchoTwo", &[])),
        ok("grpc-infra-backend-v2")
    );
    assert_eq!(
        outcome(&call(port, host, "EchoThree", &[])),
        unimplemented()
    );
}

/// GRPCRouteHeaderMatching.
#[test]
fn grpc_header_matches_follow_http_precedence() {
    let infra = grpc_infra();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{headers: [{name: version, value: one}]}]\n    backendRefs: [{name: grpc-infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}]}]\n    backendRefs: [{name: grpc-infra-backend-v2, port: 8080}]\n  - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]\n    backendRefs: [{name: grpc-infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]\n    backendRefs: [{name: grpc-infra-backend-v1, port: 8080}]\n  - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]\n    backendRefs: [{name: grpc-infra-backend-v2, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &grpc_route("grpc-header-matching", "{name: same-namespace}", spec),
    ]);
    let h = "grpc.example";
    let cases: [(&[(&str, &str)], Outcome); 11] = [
        (&[("version", "one")], ok("grpc-infra-backend-v1")),
        (&[("version", "two")], ok("grpc-infra-backend-v2")),
        (
            &[("version", "two"), ("color", "orange")],
            ok("grpc-infra-backend-v1"),
        ),
        (
            &[("version", "two"), ("color", "blue")],
            ok("grpc-infra-backend-v2"),
        ),
        (&[("color", "orange")], unimplemented()),
        (&[("some-other-header", "one")], unimplemented()),
        (&[("color", "blue")], ok("grpc-infra-backend-v1")),
        (&[("color", "green")], ok("grpc-infra-backend-v1")),
        (&[("color", "red")], ok("grpc-infra-backend-v2")),
        (&[("color", "yellow")], ok("grpc-infra-backend-v2")),
        (&[("color", "purple")], unimplemented()),
    ];
    for (headers, want) in cases {
        assert_eq!(
            outcome(&call(port, h, "Echo", headers)),
            want,
            "{headers:?}"
        );
    }
}

/// GRPCRouteListenerHostnameMatching.
#[test]
fn grpc_routes_follow_listener_hostnames() {
    let infra = grpc_infra();
    let port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: grpcroute-listener-hostname-matching, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: listener-1, port: {port}, protocol: HTTP, hostname: bar.com}}\n  - {{name: listener-2, port: {port}, protocol: HTTP, hostname: foo.bar.com}}\n  - {{name: listener-3, port: {port}, protocol: HTTP, hostname: '*.bar.com'}}\n  - {{name: listener-4, port: {port}, protocol: HTTP, hostname: '*.foo.com'}}\n"
    );
    let parent =
        |s: &str| format!("{{name: grpcroute-listener-hostname-matching, sectionName: {s}}}");
    let rule = |b: &str| format!("  rules:\n  - backendRefs: [{{name: {b}, port: 8080}}]\n");
    let _gw = infra.serve(&[
        &gateway,
        &grpc_route(
            "backend-v1",
            &parent("listener-1"),
            &rule("grpc-infra-backend-v1"),
        ),
        &grpc_route(
            "backend-v2",
            &parent("listener-2"),
            &rule("grpc-infra-backend-v2"),
        ),
        &grpc_route(
            "backend-v3",
            &format!("{}, {}", parent("listener-3"), parent("listener-4")),
            &rule("grpc-infra-backend-v3"),
        ),
    ]);
    for (host, want) in [
        ("bar.com", ok("grpc-infra-backend-v1")),
        ("foo.bar.com", ok("grpc-infra-backend-v2")),
        ("baz.bar.com", ok("grpc-infra-backend-v3")),
        ("boo.bar.com", ok("grpc-infra-backend-v3")),
        ("multiple.prefixes.bar.com", ok("grpc-infra-backend-v3")),
        ("multiple.prefixes.foo.com", ok("grpc-infra-backend-v3")),
        ("foo.com", unimplemented()),
        ("no.matching.host", unimplemented()),
    ] {
        assert_eq!(outcome(&call(port, host, "Echo", &[])), want, "{host}");
    }
}

/// Conditions `(type, status, reason, message)` of GRPCRoute `name`'s first parent in
/// `/status`.
fn route_conditions(
    served: &gateway_tests::scenario::Served,
    name: &str,
) -> Vec<(String, String, String, String)> {
    let r = served.gw.get("/status").expect("/status");
    let status: serde_json::Value = serde_json::from_str(&r.body).expect("/status is JSON");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    status["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["kind"] == "GRPCRoute" && i["metadata"]["name"] == name)
        .and_then(|i| i["status"]["parents"][0]["conditions"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            (
                text(&c["type"]),
                text(&c["status"]),
                text(&c["reason"]),
                text(&c["message"]),
            )
        })
        .collect()
}

/// Filters on a GRPCRoute's `backendRefs[]` apply only to requests sent to that backend,
/// and a RequestMirror copies a gRPC call over HTTP/2, as the call itself goes.
#[test]
fn grpc_backend_filters_follow_their_backend_and_mirrors_speak_http2() {
    let infra = grpc_infra();
    let port = listener_port();
    let spec = format!(
        "  rules:\n  - matches: [{{method: {{service: {SERVICE}, method: Echo}}}}]\n    filters:\n    - type: RequestMirror\n      requestMirror: {{backendRef: {{name: grpc-infra-backend-v3, port: 8080}}}}\n    backendRefs:\n    - name: grpc-infra-backend-v1\n      port: 8080\n      filters:\n      - type: RequestHeaderModifier\n        requestHeaderModifier: {{set: [{{name: x-picked, value: v1}}]}}\n    - {{name: grpc-infra-backend-v2, port: 8080}}\n"
    );
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &grpc_route("backend-filters", "{name: same-namespace}", &spec),
    ]);
    let calls = 20;
    let mut by_backend = std::collections::HashMap::<String, usize>::new();
    for _ in 0..calls {
        let r = call(port, "grpc.example", "Echo", &[]);
        assert_eq!(r.status, 200);
        let (status, backend) = outcome(&r);
        assert_eq!(status, "0");
        let backend = backend.expect("a backend answered");
        let picked = r.json_of_grpc()["headers"]["x-picked"].clone();
        match backend.as_str() {
            "grpc-infra-backend-v1" => assert_eq!(picked, serde_json::json!(["v1"])),
            "grpc-infra-backend-v2" => assert!(picked.is_null(), "v2 saw {picked}"),
            other => panic!("answered by {other}"),
        }
        *by_backend.entry(backend).or_default() += 1;
    }
    assert_eq!(
        by_backend.len(),
        2,
        "both backends answered: {by_backend:?}"
    );
    let mirror = infra.echo("grpc-infra-backend-v3");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mirror.seen().len() < calls && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let seen = mirror.seen();
    assert_eq!(seen.len(), calls, "one copy per call");
    for s in seen {
        assert_eq!(s.version, "HTTP/2.0", "the copy of a gRPC call");
        assert!(s.target.ends_with(&format!("/{SERVICE}/Echo")), "{s:?}");
        assert_eq!(s.body, Some(5), "the whole message, ended cleanly: {s:?}");
    }
}

/// A GRPCRoute rule with an ExtensionRef filter answers with an error rather than skip
/// the filter; a rule whose regular expression does not compile is dropped (named in
/// `PartiallyInvalid`), not widened to match every call.
#[test]
fn grpc_rules_with_unsupported_filters_or_bad_patterns_do_not_route() {
    let infra = grpc_infra();
    let port = listener_port();
    let spec = format!(
        "  rules:\n  - matches: [{{method: {{service: {SERVICE}, method: Echo}}}}]\n    filters: [{{type: ExtensionRef, extensionRef: {{group: example.com, kind: Plugin, name: auth}}}}]\n    backendRefs: [{{name: grpc-infra-backend-v1, port: 8080}}]\n  - matches: [{{method: {{type: RegularExpression, service: 'broken((', method: '.*'}}}}]\n    backendRefs: [{{name: grpc-infra-backend-v2, port: 8080}}]\n  - matches: [{{method: {{service: {SERVICE}, method: EchoTwo}}}}]\n    backendRefs: [{{name: grpc-infra-backend-v3, port: 8080}}]\n"
    );
    let served = infra.serve(&[
        &same_namespace_gateway(port),
        &grpc_route("unsupported", "{name: same-namespace}", &spec),
    ]);
    // The gateway's error as gRPC clients get it: INTERNAL, the HTTP 500 of the spec.
    let echo = call(port, "grpc.example", "Echo", &[]);
    assert_eq!(
        outcome(&echo),
        ("13".to_string(), None),
        "the ExtensionRef rule is not skipped"
    );
    assert!(
        echo.header("grpc-message")
            .is_some_and(|m| m.contains("ExtensionRef")),
        "{:?}",
        echo.header("grpc-message")
    );
    assert_eq!(infra.echo("grpc-infra-backend-v1").requests(), 0);
    assert_eq!(
        outcome(&call(port, "grpc.example", "EchoTwo", &[])),
        ok("grpc-infra-backend-v3")
    );
    assert_eq!(
        outcome(&call(port, "grpc.example", "EchoThree", &[])),
        unimplemented(),
        "the dropped rule matches nothing"
    );
    assert_eq!(infra.echo("grpc-infra-backend-v2").requests(), 0);
    let conds = route_conditions(&served, "unsupported");
    let find = |t: &str| {
        conds
            .iter()
            .find(|c| c.0 == t)
            .cloned()
            .unwrap_or_else(|| panic!("no {t} in {conds:?}"))
    };
    let partially = find("PartiallyInvalid");
    assert_eq!(partially.1, "True");
    assert!(
        partially
            .3
            .contains("1 (matches[0].method.service: invalid regular expression"),
        "{}",
        partially.3
    );
    let resolved = find("ResolvedRefs");
    assert_eq!(
        (resolved.1.as_str(), resolved.2.as_str()),
        ("False", "InvalidKind")
    );
    assert_eq!(find("Accepted").1, "True");
}
