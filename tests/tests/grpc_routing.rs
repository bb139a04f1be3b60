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
