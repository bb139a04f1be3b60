//! TLSRoute through a real gatewayd: passthrough (the gateway reads only the SNI and
//! splices; the client talks TLS with the backend, which reports the SNI it saw),
//! Terminate mode (the gateway decrypts and forwards plain TCP), both modes on one port,
//! HTTPS next to passthrough on one port, and the Gateway API conformance scenarios
//! TLSRouteSimpleSameNamespace, TLSRouteHostnameIntersection, TLSRouteInvalid*,
//! TLSRouteListener*SupportedKinds, TLSRouteTerminateSimpleSameNamespace and
//! TLSRouteMixedTerminationSameNamespace.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::SocketAddr,
    time::Duration,
};

use gateway_tests::{
    echo::{runtime, Echo, TcpEcho},
    scenario::{self, condition_of, listener_port, listener_status, Infra, Req, INFRA, WEB},
    tls::{self, connect, https_send, probe_client_hello, Ca, ClientTls, Refusal},
};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A Gateway in the infra namespace on 127.0.0.1 with these listener lines.
fn gateway(name: &str, listeners: &[String]) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n{}",
        listeners.concat()
    )
}

fn passthrough(name: &str, port: u16, hostname: Option<&str>) -> String {
    let hostname = hostname.map_or(String::new(), |h| format!(", hostname: '{h}'"));
    format!("  - {{name: {name}, port: {port}, protocol: TLS{hostname}, allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}, tls: {{mode: Passthrough}}}}\n")
}

fn terminate(name: &str, port: u16, hostname: Option<&str>, secret: &str) -> String {
    let hostname = hostname.map_or(String::new(), |h| format!(", hostname: '{h}'"));
    format!("  - {{name: {name}, port: {port}, protocol: TLS{hostname}, allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}, tls: {{mode: Terminate, certificateRefs: [{{name: {secret}}}]}}}}\n")
}

/// A TLSRoute (v1) in the infra namespace.
fn tls_route(
    name: &str,
    gw: &str,
    section: Option<&str>,
    hostnames: &[&str],
    backend: &str,
) -> String {
    let section = section.map_or(String::new(), |s| format!(", sectionName: {s}"));
    let hostnames = if hostnames.is_empty() {
        String::new()
    } else {
        format!(
            "  hostnames: [{}]\n",
            hostnames
                .iter()
                .map(|h| format!("'{h}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: {gw}{section}}}]\n{hostnames}  rules:\n  - backendRefs: [{{name: {backend}, port: 8080}}]\n")
}

/// Infra plus TLS echo backends `tls-backend` and `tls-backend-2` (their own CA, a
/// certificate for every name the tests use).
fn tls_infra() -> (Infra, Ca) {
    let backend_ca = Ca::new("backend CA");
    let leaf = backend_ca.server(&["*.example.com", "abc.example.com", "*.com", "*.example.org"]);
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "tls-backend", &leaf);
    infra.add_tls(INFRA, "tls-backend-2", &leaf);
    (infra, backend_ca)
}

/// An HTTPS request straight through a passthrough listener to a TLS echo backend:
/// (backend, SNI the backend saw).
fn through(gw: SocketAddr, sni: &str, backend_ca: &Ca) -> anyhow::Result<(String, String)> {
    let r = https_send(
        gw,
        sni,
        &ClientTls::new(backend_ca),
        &Req::get("/").host(sni),
    )?;
    anyhow::ensure!(r.status == 200, "status {}", r.status);
    let json = r.json();
    Ok((
        json["pod"].as_str().unwrap_or_default().to_string(),
        json["tls"]["serverName"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

/// The connection is refused at the TCP level: reset or closed, never a byte (no TLS
/// alert, no ServerHello).
fn assert_refused(gw: SocketAddr, sni: Option<&str>) {
    let outcome = probe_client_hello(gw, sni, Duration::from_secs(3));
    assert!(
        matches!(outcome, Refusal::Reset | Refusal::Closed),
        "SNI {sni:?}: {outcome:?}"
    );
}

/// `(status, reason)` of a TLSRoute's condition for its parent `gw`.
fn route_condition(
    status: &serde_json::Value,
    route: &str,
    gw: &str,
    type_: &str,
) -> (String, String) {
    let (s, reason, _) = scenario::route_condition(status, "TLSRoute", route, gw, type_);
    (s, reason)
}

/// `(status, reason)` of the condition `type_` of a status object (e.g. a listener's).
fn condition(obj: &serde_json::Value, type_: &str) -> (String, String) {
    let (s, reason, _) = condition_of(&obj["conditions"], type_);
    (s, reason)
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// TLSRouteSimpleSameNamespace: the client's TLS session is with the backend (its
/// certificate, verified by the client against the backend's CA; the SNI reaches it
/// untouched); an SNI no route matches, and a ClientHello without SNI, are reset
/// without a byte.
#[test]
fn passthrough_hands_the_tls_session_to_the_backend_the_sni_selects() {
    let (infra, backend_ca) = tls_infra();
    let port = listener_port();
    let _served = infra.serve(&[
        &gateway(
            "gateway-tlsroute",
            &[passthrough("https", port, Some("*.example.com"))],
        ),
        &tls_route(
            "gateway-conformance-infra-test",
            "gateway-tlsroute",
            None,
            &["abc.example.com"],
            "tls-backend",
        ),
    ]);
    let gw = addr(port);
    assert_eq!(
        through(gw, "abc.example.com", &backend_ca).expect("passthrough"),
        pair("tls-backend", "abc.example.com")
    );
    // ALPN is the backend's business too: it saw what the client offered.
    let r = https_send(
        gw,
        "abc.example.com",
        &ClientTls::new(&backend_ca),
        &Req::get("/").host("abc.example.com").h2(),
    )
    .expect("h2 to the backend");
    assert_eq!(r.json()["tls"]["negotiatedProtocol"], "h2");
    assert_eq!(r.json()["proto"], "HTTP/2.0");
    // No X-Forwarded-* : nothing was decrypted.
    assert!(r.seen_header("x-forwarded-for").is_none());

    assert_refused(gw, Some("other.example.com"));
    assert_refused(gw, Some("abc.example.org"));
    assert_refused(gw, None);
    // Not TLS at all.
    let outcome = runtime().block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(gw).await.expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: abc.example.com\r\n\r\n")
            .await
            .expect("write");
        tls::read_outcome(&mut tcp, Duration::from_secs(3)).await
    });
    assert!(
        matches!(outcome, Refusal::Reset | Refusal::Closed),
        "{outcome:?}"
    );
}

/// TLSRouteHostnameIntersection, all four Gateways: a route serves only the names in
/// the intersection of its hostnames with its listener's; everything else is reset.
#[test]
fn tls_routes_serve_the_intersection_of_their_hostnames_with_the_listeners() {
    let (infra, backend_ca) = tls_infra();
    let ports = [
        listener_port(),
        listener_port(),
        listener_port(),
        listener_port(),
    ];
    let docs = vec![
        gateway(
            "gw-tlsroute-exact-hostname-x-1",
            &[passthrough("listener", ports[0], Some("abc.example.com"))],
        ),
        tls_route(
            "tlsroute-more-specific-wc-hostname-x-1",
            "gw-tlsroute-exact-hostname-x-1",
            None,
            &["*.example.com"],
            "tls-backend",
        ),
        gateway(
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            &[passthrough("listener", ports[1], Some("*.example.com"))],
        ),
        tls_route(
            "tlsroute-exact-hostname-x-2",
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            None,
            &["abc.example.com"],
            "tls-backend",
        ),
        tls_route(
            "tlsroute-less-specific-wc-hostname-x-2",
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            None,
            &["*.com"],
            "tls-backend-2",
        ),
        gateway(
            "gw-tlsroute-less-specific-wc-hostname-x-3",
            &[passthrough("listener", ports[2], Some("*.com"))],
        ),
        tls_route(
            "tlsroute-exact-hostname-x-3",
            "gw-tlsroute-less-specific-wc-hostname-x-3",
            None,
            &["abc.example.com"],
            "tls-backend",
        ),
        tls_route(
            "tlsroute-more-specific-wc-hostname-x-3",
            "gw-tlsroute-less-specific-wc-hostname-x-3",
            None,
            &["*.example.com"],
            "tls-backend-2",
        ),
        gateway(
            "gw-tlsroute-empty-hostname-x-4",
            &[passthrough("listener", ports[3], None)],
        ),
        tls_route(
            "tlsroute-exact-hostname-x-4",
            "gw-tlsroute-empty-hostname-x-4",
            None,
            &["abc.example.com"],
            "tls-backend",
        ),
        tls_route(
            "tlsroute-less-specific-wc-hostname-x-4",
            "gw-tlsroute-empty-hostname-x-4",
            None,
            &["*.com"],
            "tls-backend-2",
        ),
    ];
    let served = infra.serve(&docs);
    let status = served.status();
    for (route, gw) in [
        (
            "tlsroute-more-specific-wc-hostname-x-1",
            "gw-tlsroute-exact-hostname-x-1",
        ),
        (
            "tlsroute-exact-hostname-x-2",
            "gw-tlsroute-more-specific-wc-hostname-x-2",
        ),
        (
            "tlsroute-less-specific-wc-hostname-x-2",
            "gw-tlsroute-more-specific-wc-hostname-x-2",
        ),
        (
            "tlsroute-exact-hostname-x-3",
            "gw-tlsroute-less-specific-wc-hostname-x-3",
        ),
        (
            "tlsroute-more-specific-wc-hostname-x-3",
            "gw-tlsroute-less-specific-wc-hostname-x-3",
        ),
        (
            "tlsroute-exact-hostname-x-4",
            "gw-tlsroute-empty-hostname-x-4",
        ),
        (
            "tlsroute-less-specific-wc-hostname-x-4",
            "gw-tlsroute-empty-hostname-x-4",
        ),
    ] {
        assert_eq!(
            route_condition(&status, route, gw, "Accepted").0,
            "True",
            "{route}"
        );
        assert_eq!(
            route_condition(&status, route, gw, "ResolvedRefs").0,
            "True",
            "{route}"
        );
    }
    let ok = |port: u16, sni: &str, backend: &str| {
        assert_eq!(
            through(addr(port), sni, &backend_ca)
                .unwrap_or_else(|e| panic!("{sni} on {port}: {e:#}")),
            pair(backend, sni),
            "{sni} on gateway {port}"
        );
    };
    ok(ports[0], "abc.example.com", "tls-backend");
    assert_refused(addr(ports[0]), Some("non.matching.com"));
    assert_refused(addr(ports[0]), Some("other.example.com"));

    ok(ports[1], "abc.example.com", "tls-backend");
    ok(ports[1], "other.example.com", "tls-backend-2");
    assert_refused(addr(ports[1]), Some("non.matching.com"));

    ok(ports[2], "abc.example.com", "tls-backend");
    ok(ports[2], "other.example.com", "tls-backend-2");
    assert_refused(addr(ports[2]), Some("non.matching.com"));

    ok(ports[3], "abc.example.com", "tls-backend");
    ok(ports[3], "other.example.com", "tls-backend-2");
    assert_refused(addr(ports[3]), Some("non.matching.org"));
}

/// Bytes pass through unchanged both ways, a ClientHello split over several TCP segments
/// is waited for, and a half-close travels: the client closes its side, the backend
/// still answers and then closes.
#[test]
fn passthrough_splices_byte_for_byte_with_half_close_and_split_client_hellos() {
    let backend_ca = Ca::new("backend CA");
    let leaf = backend_ca.server(&["tcp.example.com"]);
    let tcp_backend = TcpEcho::start("tcp-backend", Some(&leaf));
    let mut infra = Infra::new();
    infra.add_service(INFRA, "tcp-backend", tcp_backend.addr);
    let port = listener_port();
    let _served = infra.serve(&[
        &gateway("pass", &[passthrough("tls", port, None)]),
        &tls_route("tcp", "pass", None, &["tcp.example.com"], "tcp-backend"),
    ]);
    let gw = addr(port);
    let tls = ClientTls::new(&backend_ca);

    // 1 MiB up in 1,024 lines, every answer read, then a half-close.
    let (answers, eof) = runtime().block_on(async {
        let stream = connect(gw, "tcp.example.com", &tls)
            .await
            .expect("handshake with the backend");
        let (read, mut write) = tokio::io::split(stream);
        let writer = tokio::spawn(async move {
            let line = format!("{}\n", "x".repeat(1023));
            for _ in 0..1024 {
                write.write_all(line.as_bytes()).await.expect("write");
            }
            // close_notify + FIN: the backend must see the end, and may still answer.
            write.shutdown().await.expect("half-close");
        });
        let mut read = tokio::io::BufReader::new(read);
        let mut answers = 0;
        let mut eof = serde_json::Value::Null;
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await.expect("read") == 0 {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
            if v["eof"] == true {
                eof = v;
            } else {
                assert_eq!(v["tls"], true);
                assert_eq!(v["serverName"], "tcp.example.com");
                answers += 1;
            }
        }
        writer.await.expect("writer");
        (answers, eof)
    });
    assert_eq!(answers, 1024);
    assert_eq!(eof["bytes"], 1024 * 1024, "{eof}");

    // A ClientHello in three segments, 50 ms apart (blocking rustls over std TCP).
    let mut tcp = std::net::TcpStream::connect(gw).expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let name = rustls::pki_types::ServerName::try_from("tcp.example.com").expect("name");
    let mut conn = rustls::ClientConnection::new(tls.config().clone(), name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    for chunk in hello.chunks(hello.len().div_ceil(3)) {
        tcp.write_all(chunk).expect("segment");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream.write_all(b"split\n").expect("write");
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    reader.read_line(&mut answer).expect("answer");
    let v: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
    assert_eq!(v["line"], "split");
    assert_eq!(v["serverName"], "tcp.example.com");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
}

/// TLSRouteInvalidBackendRefNonexistent, TLSRouteInvalidReferenceGrant,
/// TLSRouteInvalidNoMatchingListenerHostname and TLSRouteInvalidNoMatchingListener: the
/// route's status says why, and a connection for its hostname is reset without a byte.
#[test]
fn invalid_tls_routes_report_why_and_their_connections_are_reset() {
    let (mut infra, _) = tls_infra();
    let web_backend = Echo::start_tls("web-tls", &Ca::new("x").server(&["web.example.com"]));
    infra.add_echo(WEB, "web-tls", web_backend);
    let (p_missing, p_grant, p_exact, p_wild, p_http, p_https) = (
        listener_port(),
        listener_port(),
        listener_port(),
        listener_port(),
        listener_port(),
        listener_port(),
    );
    let gateway_ca = Ca::new("gateway CA");
    let docs = [
        gateway(
            "gateway-tlsroute-invalid-backend-ref-nonexistent",
            &[passthrough("tls", p_missing, None)],
        ),
        tls_route(
            "invalid-backend-ref-nonexistent",
            "gateway-tlsroute-invalid-backend-ref-nonexistent",
            None,
            &["abc.example.com"],
            "nonexistent",
        ),
        gateway(
            "gateway-tlsroute-referencegrant",
            &[passthrough("tls", p_grant, None)],
        ),
        tls_route(
            "gateway-conformance-infra-test",
            "gateway-tlsroute-referencegrant",
            None,
            &["web.example.com"],
            "web-tls",
        )
        .replace("name: web-tls, port: 8080", &format!("name: web-tls, namespace: {WEB}, port: 8080")),
        gateway(
            "gateway-tls-exact-hostname",
            &[passthrough("tls", p_exact, Some("abc.example.com"))],
        ),
        tls_route(
            "tlsroute-hostname-mismatch-1",
            "gateway-tls-exact-hostname",
            None,
            &["def.example.com"],
            "tls-backend",
        ),
        gateway(
            "gateway-tls-wildcard-hostname",
            &[passthrough("tls", p_wild, Some("*.example.com"))],
        ),
        tls_route(
            "tlsroute-hostname-mismatch-2",
            "gateway-tls-wildcard-hostname",
            None,
            &["abc.example.org"],
            "tls-backend",
        ),
        gateway(
            "gateway-tlsroute-http-only",
            &[format!("  - {{name: http, port: {p_http}, protocol: HTTP}}\n")],
        ),
        tls_route(
            "tlsroute-not-allowed-protocol-http",
            "gateway-tlsroute-http-only",
            None,
            &["abc.example.com"],
            "tls-backend",
        ),
        gateway(
            "gateway-tlsroute-https-only",
            &[format!("  - {{name: https, port: {p_https}, protocol: HTTPS, tls: {{certificateRefs: [{{name: gw-cert}}]}}}}\n")],
        ),
        gateway_ca.server(&["abc.example.com"]).secret(INFRA, "gw-cert"),
        tls_route(
            "tlsroute-not-allowed-protocol-https",
            "gateway-tlsroute-https-only",
            None,
            &["abc.example.com"],
            "tls-backend",
        ),
    ];
    let served = infra.serve(&docs);
    let status = served.status();

    assert_eq!(
        route_condition(
            &status,
            "invalid-backend-ref-nonexistent",
            "gateway-tlsroute-invalid-backend-ref-nonexistent",
            "ResolvedRefs"
        ),
        pair("False", "BackendNotFound")
    );
    assert_refused(addr(p_missing), Some("abc.example.com"));

    assert_eq!(
        route_condition(
            &status,
            "gateway-conformance-infra-test",
            "gateway-tlsroute-referencegrant",
            "ResolvedRefs"
        ),
        pair("False", "RefNotPermitted")
    );
    assert_refused(addr(p_grant), Some("web.example.com"));

    for (route, gw, port, sni) in [
        (
            "tlsroute-hostname-mismatch-1",
            "gateway-tls-exact-hostname",
            p_exact,
            "def.example.com",
        ),
        (
            "tlsroute-hostname-mismatch-2",
            "gateway-tls-wildcard-hostname",
            p_wild,
            "abc.example.org",
        ),
    ] {
        assert_eq!(
            route_condition(&status, route, gw, "Accepted"),
            pair("False", "NoMatchingListenerHostname"),
            "{route}"
        );
        assert_eq!(listener_status(&status, gw, "tls")["attachedRoutes"], 0);
        assert_refused(addr(port), Some(sni));
    }
    assert_refused(addr(p_exact), Some("abc.example.com"));

    for (route, gw) in [
        (
            "tlsroute-not-allowed-protocol-http",
            "gateway-tlsroute-http-only",
        ),
        (
            "tlsroute-not-allowed-protocol-https",
            "gateway-tlsroute-https-only",
        ),
    ] {
        assert_eq!(
            route_condition(&status, route, gw, "Accepted"),
            pair("False", "NotAllowedByListeners"),
            "{route}"
        );
    }
    // The HTTP listener speaks HTTP only; the HTTPS listener serves its certificate and
    // no TLSRoute (no HTTPRoute either: 404).
    let r = gateway_tests::scenario::send(addr(p_http), &Req::get("/").host("abc.example.com"))
        .expect("plain HTTP");
    assert_eq!(r.status, 404);
    let r = https_send(
        addr(p_https),
        "abc.example.com",
        &ClientTls::new(&gateway_ca),
        &Req::get("/").host("abc.example.com"),
    )
    .expect("HTTPS");
    assert_eq!(r.status, 404);
}

/// TLSRouteListenerPassthroughSupportedKinds / TerminateSupportedKinds: a listener that
/// allows TCPRoute and TLSRoute supports TLSRoute only (ResolvedRefs False,
/// InvalidRouteKinds); with no route attached, nothing is served on either listener.
#[test]
fn tls_listeners_support_tls_routes_only_and_serve_nothing_without_one() {
    let infra = Infra::new();
    let ca = Ca::new("gateway CA");
    let (p_pass, p_term) = (listener_port(), listener_port());
    let gw = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: supported-kinds, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: tls-passthrough, port: {p_pass}, protocol: TLS, allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TCPRoute}}, {{kind: TLSRoute}}]}}, tls: {{mode: Passthrough}}}}\n  - {{name: tls-terminate, port: {p_term}, protocol: TLS, allowedRoutes: {{namespaces: {{from: Same}}, kinds: [{{kind: TLSRoute}}]}}, tls: {{mode: Terminate, certificateRefs: [{{name: cert}}]}}}}\n"
    );
    let served = infra.serve(&[&gw, &ca.server(&["abc.example.com"]).secret(INFRA, "cert")]);
    let status = served.status();
    let pass = listener_status(&status, "supported-kinds", "tls-passthrough");
    assert_eq!(
        pass["supportedKinds"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}])
    );
    assert_eq!(
        condition(pass, "ResolvedRefs"),
        pair("False", "InvalidRouteKinds")
    );
    assert_eq!(pass["attachedRoutes"], 0);
    let term = listener_status(&status, "supported-kinds", "tls-terminate");
    assert_eq!(
        term["supportedKinds"],
        serde_json::json!([{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}])
    );
    assert_eq!(condition(term, "Accepted"), pair("True", "Accepted"));
    assert_eq!(
        condition(term, "ResolvedRefs"),
        pair("True", "ResolvedRefs")
    );

    assert_refused(addr(p_pass), Some("abc.example.com"));
    // Terminate: the handshake completes (the certificate is valid), then the gateway
    // closes the connection, no byte of application data.
    assert!(tls::handshake(addr(p_term), "abc.example.com", &ClientTls::new(&ca)).is_ok());
    assert_refused_after_handshake(addr(p_term), "abc.example.com");
}

/// TLSRouteTerminateSimpleSameNamespace: the gateway terminates with its own certificate
/// and the backend receives the plain bytes (no TLS, no SNI); half-close travels both
/// ways through the TLS session.
#[test]
fn terminate_mode_forwards_the_decrypted_stream_over_plain_tcp() {
    let gateway_ca = Ca::new("gateway CA");
    let tcp_backend = TcpEcho::start("tcp-backend", None);
    let mut infra = Infra::new();
    infra.add_service(INFRA, "tcp-backend", tcp_backend.addr);
    let port = listener_port();
    let _served = infra.serve(&[
        &gateway(
            "gateway-tlsroute-terminate",
            &[terminate("tls", port, None, "tls-checks-certificate")],
        ),
        &gateway_ca
            .server(&["abc.example.com"])
            .secret(INFRA, "tls-checks-certificate"),
        &tls_route(
            "tlsroute-terminated-test",
            "gateway-tlsroute-terminate",
            None,
            &["abc.example.com"],
            "tcp-backend",
        ),
    ]);
    let lines = runtime().block_on(async {
        let mut s = connect(addr(port), "abc.example.com", &ClientTls::new(&gateway_ca))
            .await
            .expect("handshake with the gateway");
        s.write_all(b"one\ntwo\n").await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut all = String::new();
        s.read_to_string(&mut all).await.expect("read to the end");
        all
    });
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (l, text) in lines.iter().zip(["one", "two"]) {
        assert_eq!(l["pod"], "tcp-backend");
        assert_eq!(l["tls"], false, "the backend got TLS: {l}");
        assert_eq!(l["serverName"], serde_json::Value::Null);
        assert_eq!(l["line"], text);
    }
    assert_eq!(lines[2]["eof"], true);
    assert_eq!(lines[2]["bytes"], 8);
    // No route for this name (the listener has no hostname, so its certificate is
    // shown): the gateway closes after the handshake.
    assert_refused_after_handshake(addr(port), "zzz.example.com");
}

/// The handshake completes, then the gateway closes without a byte of data.
fn assert_refused_after_handshake(gw: SocketAddr, sni: &str) {
    let got = runtime().block_on(async {
        let mut s = connect(gw, sni, &ClientTls::any_server()).await?;
        let _ = s.write_all(b"hello\n").await;
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await??;
        anyhow::Ok(n)
    });
    assert!(matches!(got, Ok(0) | Err(_)), "{sni}: {got:?}");
}

/// TLSRouteMixedTerminationSameNamespace: a Terminate and a Passthrough listener on one
/// port; the SNI decides; both listeners are accepted with their route attached.
#[test]
fn terminate_and_passthrough_listeners_share_a_port_by_sni() {
    let gateway_ca = Ca::new("gateway CA");
    let backend_ca = Ca::new("backend CA");
    let tcp_backend = TcpEcho::start(
        "tcp-backend",
        Some(&backend_ca.server(&["abc.example.com"])),
    );
    let mut infra = Infra::new();
    infra.add_service(INFRA, "tcp-backend", tcp_backend.addr);
    let port = listener_port();
    let served = infra.serve(&[
        &gateway(
            "gateway-tlsroute-mixed-termination",
            &[
                terminate(
                    "tls-terminate",
                    port,
                    Some("terminate.example.org"),
                    "tls-checks-certificate",
                ),
                passthrough("tls-passthrough", port, Some("*.example.com")),
            ],
        ),
        &gateway_ca
            .server(&["terminate.example.org"])
            .secret(INFRA, "tls-checks-certificate"),
        &tls_route(
            "gateway-conformance-mixed-terminateroute",
            "gateway-tlsroute-mixed-termination",
            Some("tls-terminate"),
            &["terminate.example.org"],
            "tcp-backend",
        ),
        &tls_route(
            "gateway-conformance-mixed-passthroughroute",
            "gateway-tlsroute-mixed-termination",
            Some("tls-passthrough"),
            &["abc.example.com"],
            "tcp-backend",
        ),
    ]);
    let status = served.status();
    for l in ["tls-terminate", "tls-passthrough"] {
        let ls = listener_status(&status, "gateway-tlsroute-mixed-termination", l);
        assert_eq!(condition(ls, "Accepted"), pair("True", "Accepted"), "{l}");
        assert_eq!(ls["attachedRoutes"], 1, "{l}");
    }
    let line = |sni: &str, tls: ClientTls| {
        runtime().block_on(async {
            let mut s = connect(addr(port), sni, &tls).await.expect("handshake");
            s.write_all(b"mixed\n").await.expect("write");
            let mut r = tokio::io::BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.expect("read");
            serde_json::from_str::<serde_json::Value>(&line).expect("JSON")
        })
    };
    let terminated = line("terminate.example.org", ClientTls::new(&gateway_ca));
    assert_eq!(
        (terminated["tls"].clone(), terminated["serverName"].clone()),
        (serde_json::json!(false), serde_json::Value::Null)
    );
    let passed = line("abc.example.com", ClientTls::new(&backend_ca));
    assert_eq!(
        (passed["tls"].clone(), passed["serverName"].clone()),
        (
            serde_json::json!(true),
            serde_json::json!("abc.example.com")
        )
    );
    assert_refused(addr(port), Some("zzz.example.com"));
    assert_refused(addr(port), Some("nothing.example.net"));
}

/// An HTTPS listener next to a passthrough listener on one port: HTTP is served with the
/// gateway's certificate (and X-Forwarded-Proto https) for its hostname, the TLS stream
/// of the other name reaches its backend untouched.
#[test]
fn https_and_passthrough_listeners_share_a_port_by_sni() {
    let (infra, backend_ca) = tls_infra();
    let gateway_ca = Ca::new("gateway CA");
    let port = listener_port();
    let _served = infra.serve(&[
        &gateway(
            "gateway-https-and-passthrough",
            &[
                format!("  - {{name: https, port: {port}, protocol: HTTPS, hostname: https.example.org, tls: {{certificateRefs: [{{name: gw-cert}}]}}}}\n"),
                passthrough("tls", port, Some("*.example.com")),
            ],
        ),
        &gateway_ca.server(&["https.example.org"]).secret(INFRA, "gw-cert"),
        &format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: gateway-https-and-passthrough, sectionName: https}}]\n  rules:\n  - backendRefs: [{{name: infra-backend-v1, port: 8080}}]\n"),
        &tls_route(
            "pass",
            "gateway-https-and-passthrough",
            Some("tls"),
            &["abc.example.com"],
            "tls-backend",
        ),
    ]);
    for h2 in [false, true] {
        let mut req = Req::get("/").host("https.example.org");
        if h2 {
            req = req.h2();
        }
        let r = https_send(
            addr(port),
            "https.example.org",
            &ClientTls::new(&gateway_ca),
            &req,
        )
        .expect("HTTPS");
        assert_eq!(r.status, 200);
        assert_eq!(r.backend().as_deref(), Some("infra-backend-v1"));
        assert_eq!(r.seen_header("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(r.json()["tls"], serde_json::Value::Null);
    }
    assert_eq!(
        through(addr(port), "abc.example.com", &backend_ca).expect("passthrough"),
        pair("tls-backend", "abc.example.com")
    );
    assert_refused(addr(port), Some("other.example.net"));
}
