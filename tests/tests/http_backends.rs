//! Backends through a real gatewayd: weights, timeouts, retries, invalid references, the
//! exact failure codes (500/502/503/504), responses cut by a dying backend, h2c and
//! WebSocket backends, forwarding headers, pooling, DESIGN §6 limits, and listeners
//! following reloads.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use gateway_tests::{
    echo::Misbehaviour,
    free_port, http_get, read_responses,
    scenario::{
        check_all, listener_port, same_namespace_gateway, send, service, Expect, Infra, Req,
        ServeOptions, Served, APP, INFRA, WEB,
    },
};
use Expect::{Backend, Status};

fn route(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n{spec}"
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// HTTPRouteWeight: 70/30/0 over 500 requests, each share within 5 points.
#[test]
fn weights_split_traffic_70_30_0() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - backendRefs:\n    - {name: infra-backend-v1, port: 8080, weight: 70}\n    - {name: infra-backend-v2, port: 8080, weight: 30}\n    - {name: infra-backend-v3, port: 8080, weight: 0}\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("weighted-backends", spec),
    ]);
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..500 {
        let reply = send(addr(port), &Req::get("/")).expect("request");
        assert_eq!(reply.status, 200);
        *counts.entry(reply.backend().expect("backend")).or_default() += 1;
    }
    let share = |b: &str| f64::from(counts.get(b).copied().unwrap_or(0)) / 5.0;
    assert!(
        (share("infra-backend-v1") - 70.0).abs() <= 5.0,
        "{counts:?}"
    );
    assert!(
        (share("infra-backend-v2") - 30.0).abs() <= 5.0,
        "{counts:?}"
    );
    assert_eq!(counts.get("infra-backend-v3"), None, "{counts:?}");
}

/// HTTPRouteTimeoutRequest and HTTPRouteTimeoutBackendRequest: 504 past the timeout;
/// `0s` disables it.
#[test]
fn request_and_backend_request_timeouts_answer_504() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /request-timeout}}]\n    timeouts: {request: 500ms}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /backend-timeout}}]\n    timeouts: {request: 5s, backendRequest: 500ms}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /disabled}}]\n    timeouts: {request: 0s}\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("request-timeout", spec),
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/request-timeout"), Backend("infra-backend-v1")),
            (Req::get("/request-timeout?delay=1s"), Status(504)),
            (Req::get("/backend-timeout"), Backend("infra-backend-v1")),
            (Req::get("/backend-timeout?delay=1s"), Status(504)),
            (
                Req::get("/disabled?delay=600ms"),
                Backend("infra-backend-v1"),
            ),
        ],
    );
}

/// A response framed by both Content-Length and chunked: chunked wins (RFC 9112 §6.3),
/// the client gets the whole body without the stale Content-Length, over HTTP/1.1 and
/// HTTP/2, and the suspect connection is not reused.
#[test]
fn chunked_framing_wins_over_a_content_length_that_is_not_passed_on() {
    let mut infra = Infra::new();
    let both = infra.add_raw(INFRA, "both", Misbehaviour::ChunkedWithLength);
    let port = listener_port();
    let spec = "  rules:\n  - backendRefs: [{name: both, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("framing", spec)]);
    for req in [Req::get("/"), Req::get("/").h2(), Req::get("/")] {
        let reply = send(addr(port), &req).expect("response");
        assert_eq!(reply.status, 200, "{req:?}");
        assert_eq!(reply.body_error, None, "{req:?}");
        assert_eq!(&reply.body[..], b"0123456789", "{req:?}");
        assert_ne!(
            reply.header("content-length").as_deref(),
            Some("3"),
            "{req:?}"
        );
    }
    assert_eq!(both.requests(), 3);
}

/// Both timeouts run until the whole response has been received: a backend that sends
/// its head and then stalls mid-body has the client's response cut off (truncated, never
/// a clean end) at `timeouts.request` or at `timeouts.backendRequest`.
#[test]
fn timeouts_cut_off_a_body_that_stalls_after_the_head() {
    let mut infra = Infra::new();
    let _stalls = infra.add_raw(INFRA, "stalls", Misbehaviour::StallAfterHead);
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /request}}]\n    timeouts: {request: 700ms}\n    backendRefs: [{name: stalls, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /backend}}]\n    timeouts: {request: 30s, backendRequest: 700ms}\n    backendRefs: [{name: stalls, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("stalls", spec)]);
    for req in [
        Req::get("/request"),
        Req::get("/backend"),
        Req::get("/request").h2(),
        Req::get("/backend").h2(),
    ] {
        let started = std::time::Instant::now();
        let reply = send(addr(port), &req).expect("response head, then an end");
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{req:?}");
        assert!(reply.body_error.is_some(), "{req:?}: ended cleanly");
        assert_eq!(reply.body.len(), 1000, "{req:?}: what the backend sent");
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(10),
            "{req:?}: cut off after {took:?}"
        );
    }
}

/// HTTPRouteRetry: retries on the listed codes up to `attempts` retries, then the last
/// answer; codes that are not listed are not retried.
#[test]
fn retries_follow_codes_and_attempts() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /retry/code-500-attempts-3}}]\n    retry: {codes: [500], attempts: 3, backoff: 1ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /retry/code-all-attempts-2}}]\n    retry: {codes: [500, 502, 503, 504], attempts: 2}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /retry/code-all-attempts-0}}]\n    retry: {codes: [500, 502, 503, 504], attempts: 0}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("retries", spec)]);
    let cases = [
        ("/retry/code-500-attempts-3", 500, 2, 200),
        ("/retry/code-500-attempts-3", 500, 4, 500),
        ("/retry/code-500-attempts-3", 503, 2, 503),
        ("/retry/code-all-attempts-2", 500, 1, 200),
        ("/retry/code-all-attempts-2", 500, 3, 500),
        ("/retry/code-all-attempts-2", 502, 1, 200),
        ("/retry/code-all-attempts-2", 502, 3, 502),
        ("/retry/code-all-attempts-2", 503, 1, 200),
        ("/retry/code-all-attempts-2", 503, 3, 503),
        ("/retry/code-all-attempts-2", 504, 1, 200),
        ("/retry/code-all-attempts-2", 504, 3, 504),
        ("/retry/code-all-attempts-0", 500, 1, 500),
    ];
    for (i, (path, code, after, want)) in cases.into_iter().enumerate() {
        let uri = format!("{path}?responseCode={code}&succeedAfter={after}&uuid=case-{i}");
        let reply = send(addr(port), &Req::get(&uri)).expect("request");
        assert_eq!(reply.status, want, "{uri}");
        assert_eq!(
            reply.backend().as_deref(),
            Some("infra-backend-v3"),
            "{uri}"
        );
    }
}

/// Retries happen only where repeating the request is safe: a request with a body is
/// never repeated; a request that reached a backend (it answered a listed code, or the
/// connection broke after the request was written) is repeated only when its method is
/// idempotent; one that never left (connection refused) is repeated whatever its method.
/// Connection failures are retried whether or not 502 is among the codes.
#[test]
fn retries_repeat_only_what_is_safe_to_repeat() {
    let mut infra = Infra::new();
    let reset = infra.add_raw(INFRA, "resetting", Misbehaviour::ResetBeforeResponse);
    let refused: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    infra
        .yaml
        .push_str(&service(INFRA, "refusing", &[refused], None));
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /codes}}]\n    retry: {codes: [500], attempts: 2, backoff: 1ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /reset}}]\n    retry: {codes: [503], attempts: 2, backoff: 1ms}\n    backendRefs: [{name: resetting, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /refused}}]\n    retry: {codes: [502], attempts: 2, backoff: 1ms}\n    backendRefs: [{name: refusing, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("safe-retries", spec)]);

    // A listed code: the echo backend fails the first two requests of each uuid.
    let code = |method: &str, body: &str, uuid: &str| {
        let uri = format!("/codes?responseCode=500&succeedAfter=2&uuid={uuid}");
        let mut req = Req::get(&uri).method(method);
        if !body.is_empty() {
            req = req.body(body.to_owned());
        }
        send(addr(port), &req).expect("request").status
    };
    assert_eq!(code("GET", "", "get"), 200, "GET is retried");
    assert_eq!(code("PUT", "", "put"), 200, "PUT is idempotent");
    assert_eq!(code("DELETE", "", "delete"), 200, "DELETE is idempotent");
    assert_eq!(code("POST", "", "post"), 500, "POST is not retried");
    assert_eq!(code("PATCH", "", "patch"), 500, "PATCH is not retried");
    assert_eq!(
        code("PUT", "x=1", "put-body"),
        500,
        "a body is never repeated"
    );
    // The second request of each uuid tells how many the backend saw before.
    assert_eq!(
        code("POST", "", "post"),
        500,
        "POST: one request reached the backend"
    );
    assert_eq!(
        code("POST", "", "post"),
        200,
        "POST: the third request succeeds"
    );

    // The connection reset after the request was written: the backend had it.
    let before = reset.requests();
    let got = send(addr(port), &Req::get("/reset")).expect("request");
    assert_eq!(got.status, 502);
    assert_eq!(
        reset.requests() - before,
        3,
        "GET tried once and retried twice"
    );
    let before = reset.requests();
    let got = send(addr(port), &Req::get("/reset").method("POST")).expect("request");
    assert_eq!(got.status, 502);
    assert_eq!(
        reset.requests() - before,
        1,
        "POST after a reset is not retried"
    );

    // Refused: nothing was sent, so even POST is retried (and fails the same way).
    let got = send(addr(port), &Req::get("/refused").method("POST")).expect("request");
    assert_eq!(got.status, 502);
}

/// `retry.backoff` is the least time between attempts: two retries after 400 ms each take
/// at least 800 ms.
#[test]
fn retries_wait_for_the_backoff_between_attempts() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /slow}}]\n    retry: {codes: [503], attempts: 2, backoff: 400ms}\n    backendRefs: [{name: infra-backend-v3, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("backoff", spec)]);
    let started = std::time::Instant::now();
    let reply = send(
        addr(port),
        &Req::get("/slow?responseCode=503&succeedAfter=2&uuid=backoff"),
    )
    .expect("request");
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "the third attempt succeeds");
    assert!(
        took >= Duration::from_millis(800),
        "two retries 400 ms apart took {took:?}"
    );
}

/// HTTPRouteInvalidNonExistentBackendRef, HTTPRouteInvalidBackendRefUnknownKind,
/// HTTPRouteInvalidCrossNamespaceBackendRef, HTTPRouteInvalidReferenceGrant,
/// HTTPRouteReferenceGrant, HTTPRoutePartiallyInvalidViaInvalidReferenceGrant and
/// HTTPRouteAllBackendsWeightZero: unusable backends answer 500, usable rules keep working.
#[test]
fn invalid_backend_references_answer_500_and_valid_ones_keep_working() {
    let infra = Infra::new();
    let port = listener_port();
    let spec = format!(
        "  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /nonexistent}}}}]\n    backendRefs: [{{name: nonexistent, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /unknown-kind}}}}]\n    backendRefs: [{{group: unknown.example.com, kind: UnknownKind, name: infra-backend-v1, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /no-grant}}}}]\n    backendRefs: [{{name: web-backend, namespace: {WEB}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /wrong-grant}}}}]\n    backendRefs: [{{name: app-backend-v1, namespace: {APP}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /granted}}}}]\n    backendRefs: [{{name: app-backend-v2, namespace: {APP}, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /all-zero}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080, weight: 0}}, {{name: infra-backend-v2, port: 8080, weight: 0}}]\n  - matches: [{{path: {{type: PathPrefix, value: /unsupported-filter}}}}]\n    filters: [{{type: ExtensionRef, extensionRef: {{group: example.com, kind: Foo, name: bar}}}}]\n    backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n  - backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"
    );
    // A grant for app-backend-v2 only, and one from the wrong namespace for v1.
    let grants = format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: specific, namespace: {APP}}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {INFRA}}}]\n  to: [{{group: '', kind: Service, name: app-backend-v2}}]\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: wrong-from, namespace: {APP}}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: {WEB}}}]\n  to: [{{group: '', kind: Service, name: app-backend-v1}}]\n"
    );
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("invalid-backends", &spec),
        &grants,
    ]);
    check_all(
        addr(port),
        &[
            (Req::get("/nonexistent"), Status(500)),
            (Req::get("/unknown-kind"), Status(500)),
            (Req::get("/no-grant"), Status(500)),
            (Req::get("/wrong-grant"), Status(500)),
            (Req::get("/granted"), Backend("app-backend-v2")),
            (Req::get("/all-zero"), Status(500)),
            (Req::get("/unsupported-filter"), Status(500)),
            (Req::get("/"), Backend("infra-backend-v1")),
        ],
    );
}

/// Failure codes: no ready endpoint 503, connection refused 502, reset before a response
/// 502.
#[test]
fn endpoint_failures_map_to_503_and_502() {
    let mut infra = Infra::new();
    // Nothing listens there: a port from below the ephemeral range, so no other socket
    // of the test run can be using it as its source port.
    let refused: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    infra
        .yaml
        .push_str(&service(INFRA, "refusing", &[refused], None));
    let _reset = infra.add_raw(INFRA, "resetting", Misbehaviour::ResetBeforeResponse);
    infra.yaml.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: no-endpoints, namespace: {INFRA}}}\nspec: {{ports: [{{name: http, port: 8080}}]}}\n"
    ));
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /refused}}]\n    backendRefs: [{name: refusing, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /reset}}]\n    backendRefs: [{name: resetting, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /empty}}]\n    backendRefs: [{name: no-endpoints, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("failures", spec)]);
    check_all(
        addr(port),
        &[
            (Req::get("/refused"), Status(502)),
            (Req::get("/reset"), Status(502)),
            (Req::get("/empty"), Status(503)),
        ],
    );
}

/// A backend that dies in the middle of its body: the client's response must end in an
/// error (truncated), never as a clean, complete body; over HTTP/1.1 and HTTP/2.
#[test]
fn a_backend_dying_mid_body_truncates_the_client_response() {
    let mut infra = Infra::new();
    let _with_length = infra.add_raw(
        INFRA,
        "dies-with-length",
        Misbehaviour::DieMidBodyWithLength,
    );
    let _chunked = infra.add_raw(INFRA, "dies-chunked", Misbehaviour::DieMidBodyChunked);
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /length}}]\n    backendRefs: [{name: dies-with-length, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /chunked}}]\n    backendRefs: [{name: dies-chunked, port: 8080}]\n";
    let _gw = infra.serve(&[&same_namespace_gateway(port), &route("dying", spec)]);
    for req in [
        Req::get("/length"),
        Req::get("/chunked"),
        Req::get("/length").h2(),
        Req::get("/chunked").h2(),
    ] {
        let reply = send(addr(port), &req).expect("response head");
        assert_eq!(reply.status, 200, "{req:?}");
        assert!(
            reply.body_error.is_some(),
            "{req:?}: clean body of {} bytes",
            reply.body.len()
        );
        assert!(reply.body.len() < 100_000, "{req:?}");
    }
    // On the wire: a chunked response without its last chunk.
    let mut s = TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /chunked HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the response must not end cleanly"
    );
}

/// `appProtocol: kubernetes.io/h2c` backends get HTTP/2 with prior knowledge; others
/// HTTP/1.1, whatever the client spoke.
#[test]
fn h2c_app_protocol_backends_are_spoken_to_over_http2() {
    let mut infra = Infra::new();
    infra.add(INFRA, "h2c-backend", Some("kubernetes.io/h2c"));
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /h2c}}]\n    backendRefs: [{name: h2c-backend, port: 8080}]\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("backend-protocol-h2c", spec),
    ]);
    let h2 = send(addr(port), &Req::get("/h2c")).expect("request");
    assert_eq!(h2.backend().as_deref(), Some("h2c-backend"));
    assert_eq!(h2.json()["proto"], "HTTP/2.0");
    let h1 = send(addr(port), &Req::get("/").h2()).expect("request");
    assert_eq!(h1.backend().as_deref(), Some("infra-backend-v1"));
    assert_eq!(h1.json()["proto"], "HTTP/1.1");
}

/// WebSocket (`appProtocol: kubernetes.io/ws`): the Upgrade passes through and bytes flow
/// both ways after the 101.
#[test]
fn websocket_upgrades_pass_through() {
    let mut infra = Infra::new();
    infra.add(INFRA, "ws-backend", Some("kubernetes.io/ws"));
    infra.add(INFRA, "h2c-backend", Some("kubernetes.io/h2c"));
    let port = listener_port();
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /ws}}]\n    backendRefs: [{name: ws-backend, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /h2c}}]\n    backendRefs: [{name: h2c-backend, port: 8080}]\n";
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route("backend-protocol-ws", spec),
    ]);
    // An Upgrade goes over HTTP/1.1 with its Host, also to a Service that speaks HTTP/2.
    for (path, backend) in [("/ws", "ws-backend"), ("/h2c", "h2c-backend")] {
        upgrade_through(port, path);
        let seen = infra.echo(backend).seen();
        let last = seen.last().expect("the backend got the upgrade");
        assert_eq!(last.version, "HTTP/1.1", "{path}");
        assert_eq!(last.host.as_deref(), Some("ws.example"), "{path}");
        assert_eq!(last.target, path, "{path}: origin form");
    }
}

/// A WebSocket handshake to `path`, then bytes echoed through the tunnel.
fn upgrade_through(port: u16, path: &str) {
    let mut s = TcpStream::connect(addr(port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: ws.example\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .as_bytes(),
    )
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{path}: {head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping over the tunnel").expect("write");
    let mut echoed = [0u8; 20];
    s.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"ping over the tunnel");
}

/// X-Forwarded-For (appended), X-Forwarded-Proto and X-Forwarded-Host reach the backend;
/// hop-by-hop headers do not.
#[test]
fn forwarding_headers_are_added_and_hop_by_hop_headers_removed() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "forwarded",
            "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    let reply = send(
        addr(port),
        &Req::get("/")
            .host("app.example:8080")
            .header("x-forwarded-for", "192.0.2.7")
            .header("connection", "x-private")
            .header("x-private", "secret")
            .header("proxy-connection", "keep-alive"),
    )
    .expect("request");
    assert_eq!(
        reply.seen_header("x-forwarded-for").as_deref(),
        Some("192.0.2.7, 127.0.0.1")
    );
    assert_eq!(
        reply.seen_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        reply.seen_header("x-forwarded-host").as_deref(),
        Some("app.example:8080")
    );
    assert_eq!(reply.json()["host"], "app.example:8080");
    assert_eq!(reply.seen_header("x-private"), None);
    assert_eq!(reply.seen_header("proxy-connection"), None);
    // No RFC 7239 field unless asked for.
    assert_eq!(reply.seen_header("forwarded"), None);

    // HTTP/2 names the host in `:authority`, not in a Host header.
    let reply = send(addr(port), &Req::get("/").host("h2.example").h2()).expect("h2 request");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.seen_header("x-forwarded-host").as_deref(),
        Some("h2.example")
    );
    assert_eq!(
        reply.seen_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

/// `--forwarded-headers`: RFC 7239 `Forwarded` instead of (`forwarded`) or next to
/// (`both`) the X-Forwarded fields, or nothing added at all (`none`).
#[test]
fn forwarded_headers_follow_the_flag() {
    let infra = Infra::new();
    let start = |mode: &str| {
        let port = listener_port();
        let gw = infra.serve_with(
            &[
                &same_namespace_gateway(port),
                &route(
                    "forwarded",
                    "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
                ),
            ],
            &ServeOptions {
                workers: 1,
                args: vec!["--forwarded-headers".into(), mode.into()],
                ..ServeOptions::default()
            },
        );
        (gw, port)
    };
    let client_sent = |port: u16| {
        send(
            addr(port),
            &Req::get("/")
                .host("app.example:8080")
                .header("forwarded", "for=198.51.100.17;proto=https")
                .header("x-forwarded-for", "192.0.2.7"),
        )
        .expect("request")
    };

    // What the backend saw: Forwarded, X-Forwarded-For, -Proto, -Host. The client's own
    // fields of the form not chosen pass through as they came.
    let appended =
        "for=198.51.100.17;proto=https, for=127.0.0.1;host=\"app.example:8080\";proto=http";
    let cases: [(&str, [Option<&str>; 4]); 3] = [
        ("forwarded", [Some(appended), Some("192.0.2.7"), None, None]),
        (
            "both",
            [
                Some(appended),
                Some("192.0.2.7, 127.0.0.1"),
                Some("http"),
                Some("app.example:8080"),
            ],
        ),
        (
            "none",
            [
                Some("for=198.51.100.17;proto=https"),
                Some("192.0.2.7"),
                None,
                None,
            ],
        ),
    ];
    let names = [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    for (mode, want) in cases {
        let (_gw, port) = start(mode);
        let reply = client_sent(port);
        for (name, want) in names.iter().zip(want) {
            assert_eq!(reply.seen_header(name).as_deref(), want, "{mode}: {name}");
        }
        if mode == "forwarded" {
            // A client list with an unclosed quote is replaced, so this hop's element
            // cannot end up inside the client's quoted string.
            let reply = send(
                addr(port),
                &Req::get("/")
                    .host("app.example")
                    .header("forwarded", "for=\"198.51.100.17"),
            )
            .expect("request");
            assert_eq!(
                reply.seen_header("forwarded").as_deref(),
                Some("for=127.0.0.1;host=app.example;proto=http")
            );
        }
    }

    // A value the flag does not know is refused, naming the flag and the value.
    let out = std::process::Command::new(gateway_tests::gatewayd_bin())
        .args([
            "run",
            "--config",
            "/nonexistent",
            "--forwarded-headers",
            "xff",
        ])
        .output()
        .expect("run gatewayd");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--forwarded-headers") && err.contains("xff"),
        "{err}"
    );
}

/// HTTP/1.1 pipelining: requests written back to back in one write are answered in
/// their order, each by its own whole response, also when the first is the slowest and
/// one is answered by gatewayd itself; the connection then serves the next request.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "pipelined",
            "  rules:\n  - matches: [{path: {type: PathPrefix, value: /p}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    let mut stream = TcpStream::connect(addr(port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            b"GET /p/first?delay=300ms HTTP/1.1\r\nhost: app.example\r\n\r\n\
              POST /p/second HTTP/1.1\r\nhost: app.example\r\ncontent-length: 5\r\n\r\nhello\
              GET /elsewhere HTTP/1.1\r\nhost: app.example\r\n\r\n\
              GET /p/fourth HTTP/1.1\r\nhost: app.example\r\n\r\n",
        )
        .expect("write");
    let replies = read_responses(&mut stream, 4).expect("four responses");
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 404, 200]);
    let seen = |i: usize| -> serde_json::Value {
        serde_json::from_str(&replies[i].body).expect("echo JSON")
    };
    assert_eq!(seen(0)["path"], "/p/first?delay=300ms");
    assert_eq!(seen(1)["path"], "/p/second");
    assert_eq!(seen(1)["method"], "POST");
    assert_eq!(seen(1)["bodyLength"], 5);
    assert_eq!(seen(3)["path"], "/p/fourth");

    // Still open: the next request on it is answered too.
    stream
        .write_all(b"GET /p/fifth HTTP/1.1\r\nhost: app.example\r\n\r\n")
        .expect("write");
    let replies = read_responses(&mut stream, 1).expect("fifth response");
    assert_eq!(replies[0].status, 200);
    let fifth: serde_json::Value = serde_json::from_str(&replies[0].body).expect("echo JSON");
    assert_eq!(fifth["path"], "/p/fifth");
}

/// Backend connections are pooled: many sequential requests reuse a few connections.
#[test]
fn backend_connections_are_reused_across_requests() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "pooled",
            "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    for _ in 0..50 {
        // A new client connection each time: connections land on either worker.
        let r = http_get(addr(port), "/").expect("request");
        assert_eq!(r.status, 200);
    }
    let echo = infra.echo("infra-backend-v1");
    assert_eq!(echo.requests(), 50);
    assert!(
        echo.connections() <= 4,
        "{} backend connections for 50 requests",
        echo.connections()
    );
}

/// Sends `n` copies of `req` at once (one thread each) and returns the replies.
fn send_at_once(port: u16, req: &Req, n: usize) -> Vec<gateway_tests::scenario::Reply> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    send(addr(port), req).expect("request")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    })
}

/// Serves `spec` as the route `name` with one worker and the extra `gatewayd run` `args`;
/// the listener's port and the process.
fn serve_on_one_worker(infra: &Infra, name: &str, spec: &str, args: &[&str]) -> (u16, Served) {
    let port = listener_port();
    let mut options = ServeOptions::with_workers(1);
    options.args = args.iter().map(|a| a.to_string()).collect();
    let gw = infra.serve_with(
        &[&same_namespace_gateway(port), &route(name, spec)],
        &options,
    );
    (port, gw)
}

/// Polls `f` every 50 ms for up to 15 s; true once it holds.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// `--backend-idle-timeout`: a pooled HTTP/1.1 connection and the shared HTTP/2
/// connection are closed once no request has used them for that long (the backend sees
/// them close, `/metrics` stops counting them), and the next request opens a new one.
#[test]
fn backend_connections_close_after_the_idle_timeout() {
    let mut infra = Infra::new();
    infra.add(INFRA, "h2c-backend", Some("kubernetes.io/h2c"));
    let spec = "  rules:\n  - matches: [{path: {type: PathPrefix, value: /h2c}}]\n    backendRefs: [{name: h2c-backend, port: 8080}]\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n";
    let (port, gw) = serve_on_one_worker(&infra, "idle", spec, &["--backend-idle-timeout", "3"]);
    let h1 = infra.echo("infra-backend-v1");
    let h2 = infra.echo("h2c-backend");
    for round in 1..=2 {
        // Twice each: the second request reuses the fresh connection.
        for path in ["/", "/h2c", "/", "/h2c"] {
            let reply = send(addr(port), &Req::get(path)).expect("request");
            assert_eq!(reply.status, 200, "{path}");
        }
        assert_eq!(
            h1.connections(),
            round,
            "HTTP/1.1 connections in round {round}"
        );
        assert_eq!(
            h2.connections(),
            round,
            "HTTP/2 connections in round {round}"
        );
        assert_eq!(gw.metric("gatewayd_backend_idle_connections"), 1.0);
        assert_eq!(gw.metric("gatewayd_backend_h2_connections"), 1.0);
        assert!(
            eventually(|| h1.open_connections() == 0 && h2.open_connections() == 0),
            "still open after the idle timeout: HTTP/1.1 {}, HTTP/2 {}",
            h1.open_connections(),
            h2.open_connections()
        );
        assert_eq!(gw.metric("gatewayd_backend_idle_connections"), 0.0);
        assert_eq!(gw.metric("gatewayd_backend_h2_connections"), 0.0);
    }
}

/// The HTTP/1.1 pool is bounded: after 140 requests in flight at once on one worker (140
/// backend connections), 128 connections stay pooled and the rest are closed.
#[test]
fn the_idle_pool_keeps_at_most_128_connections_per_endpoint() {
    let infra = Infra::new();
    let (port, gw) = serve_on_one_worker(
        &infra,
        "bounded",
        "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        &[],
    );
    let echo = infra.echo("infra-backend-v1");
    for reply in send_at_once(port, &Req::get("/?delay=3s"), 140) {
        assert_eq!(reply.status, 200);
    }
    assert_eq!(
        echo.connections(),
        140,
        "one connection per request in flight"
    );
    assert!(
        eventually(|| echo.open_connections() == 128),
        "{} backend connections left open",
        echo.open_connections()
    );
    assert_eq!(gw.metric("gatewayd_backend_idle_connections"), 128.0);
}

/// `--backend-max-connections`: an endpoint never has more HTTP/1.1 connections open per
/// worker; requests beyond it wait for one to come back to the pool.
#[test]
fn backend_connections_are_capped_and_requests_wait_for_one() {
    let infra = Infra::new();
    let args = ["--backend-max-connections", "2"];
    let (port, gw) = serve_on_one_worker(
        &infra,
        "capped",
        "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        &args,
    );
    let started = std::time::Instant::now();
    for reply in send_at_once(port, &Req::get("/?delay=500ms"), 6) {
        assert_eq!(reply.status, 200);
    }
    let took = started.elapsed();
    let echo = infra.echo("infra-backend-v1");
    assert_eq!(echo.requests(), 6);
    assert_eq!(echo.connections(), 2, "two connections for six requests");
    // Three turns of two.
    assert!(
        took >= Duration::from_millis(1400),
        "six requests took {took:?}"
    );
    assert_eq!(gw.metric("gatewayd_backend_idle_connections"), 2.0);
    // Up to four waited (fewer if one came after a connection was back); none in vain.
    let waits = gw.metric("gatewayd_backend_connection_waits_total");
    assert!((1.0..=4.0).contains(&waits), "{waits} waits");
    assert_eq!(
        gw.metric("gatewayd_backend_connection_overflows_total"),
        0.0
    );
}

/// A request that waits 5 s at an endpoint with every connection busy gets 503; the
/// busy request is unaffected and its connection serves the next one.
#[test]
fn a_request_that_finds_no_connection_free_within_5_s_gets_503() {
    let infra = Infra::new();
    let args = ["--backend-max-connections", "1"];
    let (port, gw) = serve_on_one_worker(
        &infra,
        "full",
        "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        &args,
    );
    let echo = infra.echo("infra-backend-v1");
    std::thread::scope(|scope| {
        let slow = scope.spawn(|| send(addr(port), &Req::get("/slow?delay=8s")).expect("request"));
        assert!(
            eventually(|| echo.connections() == 1),
            "the slow request never started"
        );
        let started = std::time::Instant::now();
        let reply = send(addr(port), &Req::get("/waits")).expect("request");
        let waited = started.elapsed();
        assert_eq!(reply.status, 503);
        assert!(
            waited >= Duration::from_millis(4500) && waited < Duration::from_secs(8),
            "answered after {waited:?}"
        );
        let slow = slow.join().expect("client thread");
        assert_eq!(slow.status, 200);
        assert_eq!(slow.seen_path().as_deref(), Some("/slow?delay=8s"));
    });
    let after = send(addr(port), &Req::get("/after")).expect("request");
    assert_eq!(after.status, 200);
    assert_eq!(
        echo.connections(),
        1,
        "the one connection served all that got through"
    );
    assert_eq!(echo.requests(), 2);
    assert_eq!(gw.metric("gatewayd_backend_connection_waits_total"), 1.0);
    assert_eq!(
        gw.metric("gatewayd_backend_connection_overflows_total"),
        1.0
    );
}

/// Requests in flight at once to an `appProtocol: kubernetes.io/h2c` backend share one
/// HTTP/2 connection per worker.
#[test]
fn concurrent_requests_share_one_http2_backend_connection() {
    let mut infra = Infra::new();
    infra.add(INFRA, "h2c-backend", Some("kubernetes.io/h2c"));
    let spec = "  rules:\n  - backendRefs: [{name: h2c-backend, port: 8080}]\n";
    let (port, _gw) = serve_on_one_worker(&infra, "multiplexed", spec, &[]);
    let replies = send_at_once(port, &Req::get("/?delay=500ms"), 20);
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["proto"], "HTTP/2.0");
    }
    let echo = infra.echo("h2c-backend");
    assert_eq!(echo.requests(), 20);
    assert_eq!(
        echo.connections(),
        1,
        "20 concurrent requests on one connection"
    );
}

/// `/metrics` counts the requests answered by status class (over HTTP/1.1 and HTTP/2,
/// proxied and answered by gatewayd itself) and how long they took.
#[test]
fn answered_requests_are_counted_by_status_class_with_their_durations() {
    let infra = Infra::new();
    let port = listener_port();
    let gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "counted",
            "  rules:\n  - matches: [{path: {type: Exact, value: /}}, {path: {type: PathPrefix, value: /status}}]\n    backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    let sample = |s: &str| gw.metric(&format!("gatewayd_http_{s}"));
    assert_eq!(sample("request_duration_seconds_count"), 0.0);
    let mut sent = Vec::new();
    for _ in 0..4 {
        sent.push((Req::get("/"), 200));
    }
    sent.push((Req::get("/").h2(), 200));
    sent.push((Req::get("/status/503"), 503));
    sent.push((Req::get("/status/302"), 302));
    for _ in 0..3 {
        // No rule matches: gatewayd answers itself.
        sent.push((Req::get("/nothing-here"), 404));
    }
    sent.push((Req::get("/?delay=300ms"), 200));
    for (req, status) in &sent {
        let reply = send(addr(port), req).expect("request");
        assert_eq!(reply.status, *status, "{}", req.path);
    }
    // A request is counted when its response's last byte has been handed over, which
    // can be just after the client has it.
    let total = sent.len() as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sample("request_duration_seconds_count") < total && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sample("request_duration_seconds_count"), total);
    assert_eq!(sample("requests_total{code_class=\"2xx\"}"), 6.0);
    assert_eq!(sample("requests_total{code_class=\"3xx\"}"), 1.0);
    assert_eq!(sample("requests_total{code_class=\"4xx\"}"), 3.0);
    assert_eq!(sample("requests_total{code_class=\"5xx\"}"), 1.0);
    assert_eq!(sample("requests_total{code_class=\"1xx\"}"), 0.0);
    // The delayed request took at least 300 ms, each of the others far less.
    let bucket = |le: &str| sample(&format!("request_duration_seconds_bucket{{le=\"{le}\"}}"));
    assert_eq!(bucket("0.25"), total - 1.0);
    assert_eq!(bucket("+Inf"), total);
    assert_eq!(bucket("10"), total);
    let sum = sample("request_duration_seconds_sum");
    assert!((0.3..total).contains(&sum), "sum of durations {sum} s");
}

/// Sends grouped by round (`GATEWAYD_PHASES=always`: every request to a backend and every
/// response to a client waits for its phase, as on a busy worker): many clients at once,
/// over HTTP/1.1 keep-alive and HTTP/2, each get the answer to their own request, whole.
#[test]
fn with_sends_grouped_by_round_every_concurrent_request_gets_its_own_whole_answer() {
    let infra = Infra::new();
    let port = listener_port();
    let mut options = ServeOptions::with_workers(1);
    options
        .env
        .push(("GATEWAYD_PHASES".to_string(), "always".to_string()));
    let _gw = infra.serve_with(
        &[
            &same_namespace_gateway(port),
            &route(
                "grouped",
                "  rules:\n  - backendRefs:\n    - {name: infra-backend-v1, port: 8080}\n    - {name: infra-backend-v2, port: 8080}\n",
            ),
        ],
        &options,
    );
    const CLIENTS: usize = 24;
    const EACH: usize = 30;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                for i in 0..EACH {
                    let path = format!("/client{c}/request{i}?i={i}");
                    let len = c * 100 + i;
                    let mut req = Req::get(&path).method("POST").body(vec![b'x'; len]);
                    if c % 2 == 1 {
                        req = req.h2();
                    }
                    let reply = match send(addr(port), &req) {
                        Ok(r) => r,
                        Err(e) => {
                            wrong.push(format!("{path}: {e:#}"));
                            continue;
                        }
                    };
                    let json = reply.json();
                    let backend = reply.backend().unwrap_or_default();
                    if reply.status != 200
                        || reply.body_error.is_some()
                        || json["path"] != path.as_str()
                        || json["bodyLength"] != len
                        || !backend.starts_with("infra-backend-v")
                    {
                        wrong.push(format!(
                            "{path} ({len} bytes): {} {:?} {json}",
                            reply.status, reply.body_error
                        ));
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {wrong:#?}",
        wrong.len()
    );
    let answered =
        infra.echo("infra-backend-v1").requests() + infra.echo("infra-backend-v2").requests();
    assert_eq!(answered, CLIENTS * EACH);
}

/// DESIGN §6: a header block over 64 KiB or more than 100 headers gets 431, a URI over
/// 8 KiB gets 414.
#[test]
fn oversized_requests_get_431_and_414() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "limits",
            "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    let raw = |request: &str| {
        let mut s = TcpStream::connect(addr(port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = s.write_all(request.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
    };
    let big = "a".repeat(70 * 1024);
    assert_eq!(
        raw(&format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n"
        )),
        Some(431)
    );
    let many: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    assert_eq!(
        raw(&format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n")),
        Some(431)
    );
    let long = "a".repeat(9 * 1024);
    assert_eq!(
        raw(&format!(
            "GET /{long} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )),
        Some(414)
    );
    let fine: String = (0..90).map(|i| format!("x-h{i}: v\r\n")).collect();
    assert_eq!(
        raw(&format!(
            "GET / HTTP/1.1\r\nhost: x\r\n{fine}connection: close\r\n\r\n"
        )),
        Some(200)
    );

    // Over HTTP/2 the stream gets the status and the connection goes on serving.
    let statuses = gateway_tests::echo::runtime().block_on(async {
        let stream = tokio::net::TcpStream::connect(addr(port))
            .await
            .expect("connect");
        let (mut tx, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        let mut statuses = Vec::new();
        for headers in [101, 1] {
            let mut req = hyper::Request::get("http://x/");
            for i in 0..headers {
                req = req.header(format!("x-h{i}"), "v");
            }
            let req = req
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let resp = tokio::time::timeout(Duration::from_secs(10), tx.send_request(req))
                .await
                .expect("answered in time")
                .expect("answered on the same connection");
            statuses.push(resp.status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [431, 200]);
}

/// `/readyz` is 503 while a listener cannot be bound, and listeners follow reloads: a new
/// listener is bound, a removed one is closed, and an established connection on the
/// removed listener keeps being served.
#[test]
fn listeners_follow_reloads_and_readiness_waits_for_them() {
    let infra = Infra::new();
    let (port_a, port_b) = (listener_port(), listener_port());
    let gateway = |ports: &[u16]| {
        let listeners: String = ports
            .iter()
            .map(|p| format!("  - {{name: l{p}, port: {p}, protocol: HTTP}}\n"))
            .collect();
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: same-namespace, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n{listeners}"
        )
    };
    let r = route(
        "reload",
        "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
    );
    let config = |ports: &[u16]| format!("{}---\n{}\n---\n{r}\n", infra.yaml, gateway(ports));
    let served = Served::start(&config(&[port_a])).expect("start");
    check_all(
        addr(port_a),
        &[(Req::get("/"), Backend("infra-backend-v1"))],
    );

    // A keep-alive connection on port A, then a reload that moves the listener to B.
    let mut kept = TcpStream::connect(addr(port_a)).expect("connect");
    kept.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let ask = |s: &mut TcpStream| {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("write");
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).expect("read");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&mut kept).starts_with("HTTP/1.1 200"));
    std::fs::write(&served.config, config(&[port_b])).expect("rewrite config");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr(port_b)).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    served.wait_ready().expect("ready after reload");
    check_all(
        addr(port_b),
        &[(Req::get("/"), Backend("infra-backend-v1"))],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr(port_a)).is_ok() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        TcpStream::connect(addr(port_a)).is_err(),
        "port A still accepts"
    );
    assert!(
        ask(&mut kept).starts_with("HTTP/1.1 200"),
        "the established connection was dropped"
    );

    // A port held by another socket: not ready, with the reason.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let held = holder.local_addr().expect("addr").port();
    std::fs::write(&served.config, config(&[port_b, held])).expect("rewrite config");
    // Right after the swap /readyz may say "listeners not bound yet"; it must settle on
    // a 503 naming the port it could not bind.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let r = http_get(served.gw.admin, "/readyz").expect("readyz");
        if r.status == 503 {
            let named = r.body.contains(&held.to_string());
            last = Some(r.body);
            if named {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let reason = last.expect("readyz stayed 200 with an unbound listener");
    assert!(reason.contains(&held.to_string()), "{reason}");
    drop(holder);
    served.wait_ready().expect("ready once the port is free");
    let _ = free_port();
}

/// DESIGN §6: a connection that sends nothing, or stops in the middle of a request head,
/// is closed once the 10 s header timeout has passed (and not before).
#[test]
fn silent_and_stalled_connections_are_closed_after_the_header_timeout() {
    let infra = Infra::new();
    let port = listener_port();
    let _gw = infra.serve(&[
        &same_namespace_gateway(port),
        &route(
            "slow",
            "  rules:\n  - backendRefs: [{name: infra-backend-v1, port: 8080}]\n",
        ),
    ]);
    let started = std::time::Instant::now();
    let mut silent = TcpStream::connect(addr(port)).expect("connect");
    let mut stalled = TcpStream::connect(addr(port)).expect("connect");
    stalled
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .expect("write");
    for s in [&mut silent, &mut stalled] {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        // EOF (or a reset), not a read timeout.
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the gateway to close the connection, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    // A connection that completed its request meanwhile is not affected.
    let r = send(addr(port), &Req::get("/")).expect("request");
    assert_eq!(r.status, 200);
}
