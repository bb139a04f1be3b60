//! Re-encrypt with BackendTLSPolicy: the real gatewayd opens verified TLS to real TLS
//! backends (certificates made at run time) that report the SNI, ALPN, handshake kind and
//! client certificate they saw. Conformance scenarios BackendTLSPolicy (HTTP and HTTPS
//! listeners), GatewayTLSBackendClientCertificate, the GRPCRoute and TLSRoute Terminate
//! variants, and what a user checks beyond them: refused certificates answer 502, a CA
//! ConfigMap that empties fails closed and recovers on reload, System trust, session
//! resumption, the verify cache and its invalidation by a CA change.
//!
//! Status-only conformance scenarios (SAN validation, conflicts, invalid references,
//! observedGeneration) are in `backend_tls_policy.rs`.

use std::{io::Write as _, net::SocketAddr, time::Duration};

use gateway_tests::{
    echo::{runtime, Echo, TcpEcho},
    reencrypt::{reencrypt, routed, trusting},
    scenario::{
        backend_tls_policy, gateway, gateway_condition, http_listener, http_route, https_listener,
        listener_port, policy_condition, route_condition, same_namespace_gateway, send,
        tls_terminate_listener, validate_with, wait_for, Infra, Reply, Req, ServeOptions, Served,
        INFRA,
    },
    tls::{connect, https_send, Ca, ClientTls, Leaf, ServerOptions},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long a reload may take to show in traffic and status (DESIGN: within one second;
/// some slack for a loaded CI machine).
const RELOAD_LIMIT: Duration = Duration::from_millis(2500);

const HOST: &str = "abc.example.com";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A request the echo answers with `Connection: close`: the next one needs a new backend
/// connection.
fn closing(path: &str) -> Req {
    Req::get(path).header("x-echo-set-header", "Connection: close")
}

fn get(gw: SocketAddr, req: &Req) -> Reply {
    send(gw, req).unwrap_or_else(|e| panic!("{} {}: {e:#}", req.method, req.path))
}

/// `(status, backend, SNI the backend saw)`.
fn outcome(r: &Reply) -> (u16, Option<String>, Option<String>) {
    (
        r.status,
        r.backend(),
        r.json()["tls"]["serverName"].as_str().map(str::to_string),
    )
}

fn ok_from(backend: &str, sni: &str) -> (u16, Option<String>, Option<String>) {
    (200, Some(backend.to_string()), Some(sni.to_string()))
}

/// Adds a TLS echo backend with `leaf` behind a Service whose port has `appProtocol:
/// kubernetes.io/h2c` (HTTP/2 to the backend; over TLS, negotiated by ALPN).
fn add_h2c_tls(infra: &mut Infra, name: &str, leaf: &Leaf) {
    infra.add_started(
        INFRA,
        name,
        Echo::start_tls(name, leaf),
        Some("kubernetes.io/h2c"),
    );
}

/// Rewrites the manifest with a new CA bundle and waits for the reload to replace the
/// verify cache (no chain cached).
fn reload_with_new_roots(served: &Served, manifest: &str) {
    served.rewrite(manifest);
    wait_for(RELOAD_LIMIT, || {
        match served.metric("gatewayd_backend_tls_verify_cache_chains") {
            0.0 => Ok(()),
            n => Err(format!("{n} chains cached")),
        }
    })
    .expect("the reload replaces the verify cache");
}

/// The conformance `BackendTLSPolicy` scenario over the HTTP listener: the backend sees
/// the policy's hostname as SNI and a verified TLS session (ALPN http/1.1), and the
/// policy is Accepted with its references resolved.
#[test]
fn http_to_a_tls_backend_sends_the_policy_hostname_as_sni_and_verifies_it() {
    let ca = Ca::new("backend-ca");
    let leaf = ca.server(&["backend.example.test"]);
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "tls-backend", &leaf);
    let port = listener_port();
    let served = infra.serve(&[reencrypt(
        port,
        &[("", "tls-backend")],
        &[&ca],
        "backend.example.test",
    )]);
    let reply = get(addr(port), &Req::get("/"));
    assert_eq!(reply.status, 200, "{}", served.gw.stderr());
    let json = reply.json();
    assert_eq!(json["pod"], "tls-backend");
    assert_eq!(json["tls"]["serverName"], "backend.example.test");
    assert_eq!(json["tls"]["negotiatedProtocol"], "http/1.1");
    assert_eq!(json["tls"]["clientCertificate"], serde_json::Value::Null);

    let status = served.status();
    for type_ in ["Accepted", "ResolvedRefs"] {
        let (s, reason, _) = policy_condition(&status, "p", "same-namespace", type_);
        assert_eq!((s.as_str(), reason.as_str()), ("True", type_), "{type_}");
    }
}

/// Re-encrypt: TLS from the client to an HTTPS listener, routing on the decrypted
/// request, TLS again to the backend under the policy; over HTTP/1.1 and HTTP/2 from the
/// client, and next to an HTTP listener of the same Gateway.
#[test]
fn https_listener_reencrypts_to_the_backend() {
    let gateway_ca = Ca::new("gateway CA");
    let backend_ca = Ca::new("backend CA");
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "tls-backend", &backend_ca.server(&[HOST]));
    let (https, http) = (listener_port(), listener_port());
    let served = infra.serve(&[
        &gateway(
            "gateway-backendtlspolicy",
            &[
                https_listener("https", https, "tls-checks-certificate"),
                http_listener("http", http),
            ],
            None,
        ),
        &gateway_ca
            .server(&[HOST])
            .secret(INFRA, "tls-checks-certificate"),
        &http_route(
            "gateway-conformance-infra-test",
            &["{name: gateway-backendtlspolicy}"],
            &[("/backendTLS", "tls-backend", 8080)],
        ),
        &backend_ca.config_map(INFRA, "tls-checks-ca-certificate"),
        &backend_tls_policy(
            "tls-policy",
            "",
            &["tls-backend"],
            &validate_with("tls-checks-ca-certificate", HOST),
        ),
    ]);
    let client = ClientTls::new(&gateway_ca);
    for h2 in [false, true] {
        let mut req = Req::get("/backendTLS").host(HOST);
        if h2 {
            req = req.h2();
        }
        let r = https_send(addr(https), HOST, &client, &req)
            .unwrap_or_else(|e| panic!("h2={h2}: {e:#}\n{}", served.gw.stderr()));
        assert_eq!(outcome(&r), ok_from("tls-backend", HOST), "h2={h2}");
        assert_eq!(r.seen_path().as_deref(), Some("/backendTLS"));
        // The backend's session is the gateway's, not the client's: HTTP/1.1 upstream.
        assert_eq!(r.json()["tls"]["negotiatedProtocol"], "http/1.1");
    }
    // Routing happened on the decrypted request: another path is the gateway's 404.
    let r = https_send(addr(https), HOST, &client, &Req::get("/other").host(HOST))
        .expect("HTTPS request");
    assert_eq!(r.status, 404);
    let r = get(addr(http), &Req::get("/backendTLS").host(HOST));
    assert_eq!(outcome(&r), ok_from("tls-backend", HOST));
    let (s, _, _) = route_condition(
        &served.status(),
        "HTTPRoute",
        "gateway-conformance-infra-test",
        "gateway-backendtlspolicy",
        "ResolvedRefs",
    );
    assert_eq!(s, "True");
}

/// Every certificate the policy does not vouch for is refused with a 502: issued for
/// another name, by another CA, expired, not yet valid, or by a CA certificate that has
/// itself expired (a CA outside its validity is no trust anchor); the good one next to
/// them answers, and each refusal is counted. A plaintext backend gets 502 too, and no
/// request.
#[test]
fn backend_certificates_the_policy_does_not_vouch_for_get_502() {
    let ca = Ca::new("backend CA");
    let stranger = Ca::new("another CA");
    let mut infra = Infra::new();
    let backends = [
        ("good", ca.server(&[HOST])),
        ("other-name", ca.server(&["other.example.com"])),
        ("other-ca", stranger.server(&[HOST])),
        ("expired", ca.server_valid(&[HOST], 2015, 2020)),
        ("not-yet-valid", ca.server_valid(&[HOST], 2090, 2095)),
    ];
    let expired_ca = Ca::valid("expired CA", 2015, 2020);
    infra.add_tls(
        INFRA,
        "expired-ca",
        &expired_ca.server_valid(&[HOST], 2016, 2090),
    );
    let mut docs = vec![
        ca.config_map(INFRA, "backend-ca"),
        expired_ca.config_map(INFRA, "expired-ca"),
        backend_tls_policy(
            "policy-expired-ca",
            "",
            &["expired-ca"],
            &validate_with("expired-ca", HOST),
        ),
    ];
    // A plaintext HTTP backend under a policy: the gateway's ClientHello gets an HTTP
    // error back, never a plaintext request.
    infra.add(INFRA, "plaintext", None);
    docs.push(backend_tls_policy(
        "policy-plaintext",
        "",
        &["plaintext"],
        &validate_with("backend-ca", HOST),
    ));
    let mut rules = vec![
        ("/expired-ca".to_string(), "expired-ca", 8080),
        ("/plaintext".to_string(), "plaintext", 8080),
    ];
    for (name, leaf) in &backends {
        infra.add_tls(INFRA, name, leaf);
        docs.push(backend_tls_policy(
            &format!("policy-{name}"),
            "",
            &[name],
            &validate_with("backend-ca", HOST),
        ));
        rules.push((format!("/{name}"), name, 8080));
    }
    let port = listener_port();
    docs.push(same_namespace_gateway(port));
    docs.push(http_route("r", &["{name: same-namespace}"], &rules));
    let served = infra.serve(&docs);
    let refused_before =
        served.metric(r#"gatewayd_backend_tls_certificate_checks_total{result="refused"}"#);
    let mut failures = Vec::new();
    let names = backends
        .iter()
        .map(|(n, _)| *n)
        .chain(["expired-ca", "plaintext"]);
    for name in names {
        let r = get(addr(port), &Req::get(&format!("/{name}")));
        let want = if name == "good" { 200 } else { 502 };
        if r.status != want {
            failures.push(format!("{name}: want {want}, got {}", r.status));
        }
        if want == 502 && infra.echo(name).requests() != 0 {
            failures.push(format!("{name}: the refused backend got a request"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}\n{}", served.gw.stderr());
    let refused =
        served.metric(r#"gatewayd_backend_tls_certificate_checks_total{result="refused"}"#);
    assert!(
        refused - refused_before >= 5.0,
        "refused checks went from {refused_before} to {refused}"
    );
    assert!(served.metric("gatewayd_backend_tls_handshake_failures_total") >= 5.0);
}

/// A CA ConfigMap rewritten empty: within a second of the file changing the policy is
/// no longer Accepted (NoValidCACertificate, ResolvedRefs InvalidCACertificateRef) and
/// requests fail closed (5xx; the backend sees no request); restored, traffic and status
/// come back as fast.
#[test]
fn an_emptied_ca_config_map_fails_closed_and_its_restoration_recovers_within_a_second() {
    let ca = Ca::new("backend CA");
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "tls-backend", &ca.server(&[HOST]));
    let port = listener_port();
    let manifest =
        |cas: &[&Ca]| infra.manifest(&[reencrypt(port, &[("", "tls-backend")], cas, HOST)]);
    let served = Served::start(&manifest(&[&ca])).expect("gatewayd starts");
    assert_eq!(get(addr(port), &Req::get("/")).status, 200);
    let accepted = |served: &Served| {
        let st = served.status();
        (
            policy_condition(&st, "p", "same-namespace", "Accepted"),
            policy_condition(&st, "p", "same-namespace", "ResolvedRefs"),
        )
    };

    served.rewrite(&manifest(&[]));
    let (status, took) = wait_for(RELOAD_LIMIT, || {
        let r = get(addr(port), &Req::get("/"));
        if (500..=503).contains(&r.status) {
            Ok(r.status)
        } else {
            Err(format!("status {}", r.status))
        }
    })
    .unwrap_or_else(|e| panic!("emptied CA: {e}\n{}", served.gw.stderr()));
    let ((a, a_reason, _), (rr, rr_reason, _)) = accepted(&served);
    assert_eq!(
        (a.as_str(), a_reason.as_str()),
        ("False", "NoValidCACertificate"),
        "after {took:?} (status {status})"
    );
    assert_eq!(
        (rr.as_str(), rr_reason.as_str()),
        ("False", "InvalidCACertificateRef")
    );
    // Fail closed from then on: the backend sees no request.
    let answered = infra.echo("tls-backend").requests();
    for _ in 0..3 {
        assert!((500..=503).contains(&get(addr(port), &Req::get("/")).status));
    }
    assert_eq!(infra.echo("tls-backend").requests(), answered);

    served.rewrite(&manifest(&[&ca]));
    let (_, took) = wait_for(RELOAD_LIMIT, || {
        let r = get(addr(port), &Req::get("/"));
        match outcome(&r) {
            o if o == ok_from("tls-backend", HOST) => Ok(()),
            o => Err(format!("{o:?}")),
        }
    })
    .unwrap_or_else(|e| panic!("restored CA: {e}\n{}", served.gw.stderr()));
    let ((a, a_reason, _), (rr, _, _)) = accepted(&served);
    assert_eq!(
        (a.as_str(), a_reason.as_str(), rr.as_str()),
        ("True", "Accepted", "True"),
        "after {took:?}"
    );
}

/// GatewayTLSBackendClientCertificate: a Gateway's `spec.tls.backend.clientCertificateRef`
/// is presented to backends that ask; the backend (requiring certificates of the client
/// CA) sees exactly that certificate. The same route through a Gateway without one gets a
/// 502: the backend refused the handshake.
#[test]
fn gateway_backend_client_certificate_is_presented_to_the_backend() {
    let ca = Ca::new("backend CA");
    let client_ca = Ca::new("client CA");
    let client = client_ca.client("gateway.example.com");
    let mut infra = Infra::new();
    infra.add_echo(
        INFRA,
        "mtls-backend",
        Echo::start_tls_with(
            "mtls-backend",
            &ca.server(&[HOST]),
            &ServerOptions {
                client_ca: Some(&client_ca),
                ..ServerOptions::default()
            },
        ),
    );
    let (with, without) = (listener_port(), listener_port());
    let served = infra.serve(&[
        &gateway(
            "gateway-with-client-cert",
            &[http_listener("http", with)],
            Some("{backend: {clientCertificateRef: {group: '', kind: Secret, name: client-cert}}}"),
        ),
        &gateway(
            "gateway-without-client-cert",
            &[http_listener("http", without)],
            None,
        ),
        &client.secret(INFRA, "client-cert"),
        &http_route(
            "r",
            &[
                "{name: gateway-with-client-cert}",
                "{name: gateway-without-client-cert}",
            ],
            &[("", "mtls-backend", 8080)],
        ),
        &trusting(&[&ca], &["mtls-backend"], HOST),
    ]);
    let r = get(addr(with), &Req::get("/"));
    assert_eq!(
        outcome(&r),
        ok_from("mtls-backend", HOST),
        "{}",
        served.gw.stderr()
    );
    assert_eq!(
        r.json()["tls"]["clientCertificate"].as_str(),
        Some(client.fingerprint().as_str()),
        "the backend saw another client certificate"
    );
    assert_eq!(get(addr(without), &Req::get("/")).status, 502);
    let (s, reason, _) =
        gateway_condition(&served.status(), "gateway-with-client-cert", "ResolvedRefs");
    assert_eq!((s.as_str(), reason.as_str()), ("True", "ResolvedRefs"));
}

/// The GRPCRoute variant, and an HTTPRoute to an `appProtocol: kubernetes.io/h2c`
/// Service: over TLS the gateway offers h2 by ALPN and speaks HTTP/2 to the backend.
#[test]
fn grpc_and_h2_backends_get_http2_over_tls_by_alpn() {
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&[HOST]);
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "grpc-tls-backend", &leaf);
    add_h2c_tls(&mut infra, "h2-tls-backend", &leaf);
    // GRPCRoutes and HTTPRoutes with intersecting hostnames conflict on one listener.
    let (port, h2_port) = (listener_port(), listener_port());
    let grpc_route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: grpc-r, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n  - backendRefs: [{{name: grpc-tls-backend, port: 8080}}]\n"
    );
    let served = infra.serve(&[
        &same_namespace_gateway(port),
        &grpc_route,
        &gateway("h2-gateway", &[http_listener("http", h2_port)], None),
        &http_route(
            "h2-r",
            &["{name: h2-gateway}"],
            &[("/h2", "h2-tls-backend", 8080)],
        ),
        &trusting(&[&ca], &["grpc-tls-backend", "h2-tls-backend"], HOST),
    ]);
    let call = Req::get("/gateway_api_conformance.grpc_echo.grpcecho.GrpcEcho/Echo")
        .method("POST")
        .host(HOST)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 0])
        .h2();
    let r = get(addr(port), &call);
    assert_eq!(r.status, 200, "{}", served.gw.stderr());
    assert_eq!(r.header("grpc-status").as_deref(), Some("0"));
    let json = r.json_of_grpc();
    assert_eq!(json["pod"], "grpc-tls-backend");
    assert_eq!(json["tls"]["serverName"], HOST);
    assert_eq!(json["tls"]["negotiatedProtocol"], "h2");
    assert_eq!(json["proto"], "HTTP/2.0");

    let r = get(addr(h2_port), &Req::get("/h2"));
    assert_eq!(outcome(&r), ok_from("h2-tls-backend", HOST));
    assert_eq!(r.json()["tls"]["negotiatedProtocol"], "h2");
    assert_eq!(r.json()["proto"], "HTTP/2.0");
}

/// One line through a TLS listener in Terminate mode, then a half-close; every line the
/// backend answered.
fn terminate_lines(gw: SocketAddr, ca: &Ca) -> Vec<serde_json::Value> {
    let text = runtime().block_on(async {
        let mut s = connect(gw, HOST, &ClientTls::new(ca))
            .await
            .expect("handshake with the gateway");
        // The gateway may already have closed (a refused backend): the lines read tell.
        let _ = s.write_all(b"one\n").await;
        let _ = s.shutdown().await;
        let mut all = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut all)).await;
        all
    });
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// The TLSRoute Terminate variant: the gateway decrypts the client's stream and
/// encrypts it again to the backend (which sees TLS with the policy's hostname as SNI);
/// a backend whose certificate the policy refuses gets no byte and the client's
/// connection ends without data.
#[test]
fn tls_route_in_terminate_mode_reencrypts_to_the_backend() {
    let gateway_ca = Ca::new("gateway CA");
    let ca = Ca::new("backend CA");
    let stranger = Ca::new("another CA");
    let good = TcpEcho::start("tcp-tls-backend", Some(&ca.server(&[HOST])));
    let bad = TcpEcho::start("tcp-stranger-backend", Some(&stranger.server(&[HOST])));
    let mut infra = Infra::new();
    infra.add_service(INFRA, "tcp-tls-backend", good.addr);
    infra.add_service(INFRA, "tcp-stranger-backend", bad.addr);
    let (port_good, port_bad) = (listener_port(), listener_port());
    let tls_route = |name: &str, gw: &str, backend: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: {gw}}}]\n  hostnames: ['{HOST}']\n  rules:\n  - backendRefs: [{{name: {backend}, port: 8080}}]\n")
    };
    let served = infra.serve(&[
        &gateway(
            "gateway-tlsroute-terminate",
            &[tls_terminate_listener("tls", port_good, "gw-cert")],
            None,
        ),
        &gateway(
            "gateway-tlsroute-terminate-2",
            &[tls_terminate_listener("tls", port_bad, "gw-cert")],
            None,
        ),
        &gateway_ca.server(&[HOST]).secret(INFRA, "gw-cert"),
        &tls_route("good", "gateway-tlsroute-terminate", "tcp-tls-backend"),
        &tls_route(
            "bad",
            "gateway-tlsroute-terminate-2",
            "tcp-stranger-backend",
        ),
        &trusting(&[&ca], &["tcp-tls-backend", "tcp-stranger-backend"], HOST),
    ]);
    let lines = terminate_lines(addr(port_good), &gateway_ca);
    assert_eq!(lines.len(), 2, "{lines:?}\n{}", served.gw.stderr());
    assert_eq!(lines[0]["pod"], "tcp-tls-backend");
    assert_eq!(
        lines[0]["tls"], true,
        "the backend got plaintext: {}",
        lines[0]
    );
    assert_eq!(lines[0]["serverName"], HOST);
    assert_eq!(lines[0]["line"], "one");
    assert_eq!(lines[1]["eof"], true);
    assert_eq!(lines[1]["bytes"], 4);

    let lines = terminate_lines(addr(port_bad), &gateway_ca);
    assert!(lines.is_empty(), "refused backend answered: {lines:?}");
    assert!(bad.connections() >= 1, "the backend was never tried");
}

/// `wellKnownCACertificates: System` trusts the system store, which `SSL_CERT_FILE`
/// replaces: a backend of that CA answers, one of another CA gets 502.
#[test]
fn system_trust_comes_from_ssl_cert_file() {
    let ca = Ca::new("system-trusted CA");
    let stranger = Ca::new("another CA");
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "trusted", &ca.server(&[HOST]));
    infra.add_tls(INFRA, "untrusted", &stranger.server(&[HOST]));
    let mut bundle = tempfile::NamedTempFile::new().expect("temp file");
    bundle.write_all(ca.pem().as_bytes()).expect("write bundle");
    let port = listener_port();
    let served = infra.serve_with(
        &[
            &routed(
                port,
                &[("/trusted", "trusted"), ("/untrusted", "untrusted")],
            ),
            &backend_tls_policy(
                "p",
                "",
                &["trusted", "untrusted"],
                &format!("{{wellKnownCACertificates: System, hostname: {HOST}}}"),
            ),
        ],
        &ServeOptions {
            env: vec![(
                "SSL_CERT_FILE".to_string(),
                bundle.path().to_string_lossy().into_owned(),
            )],
            ..ServeOptions::default()
        },
    );
    let (s, reason, _) = policy_condition(&served.status(), "p", "same-namespace", "Accepted");
    assert_eq!((s.as_str(), reason.as_str()), ("True", "Accepted"));
    let r = get(addr(port), &Req::get("/trusted"));
    assert_eq!(
        outcome(&r),
        ok_from("trusted", HOST),
        "{}",
        served.gw.stderr()
    );
    assert_eq!(get(addr(port), &Req::get("/untrusted")).status, 502);
}

/// A second backend connection resumes the first one's session: the backend reports a
/// Resumed handshake, and `/metrics` counts it.
#[test]
fn a_new_backend_connection_resumes_the_previous_session() {
    let ca = Ca::new("backend CA");
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "tls-backend", &ca.server(&[HOST]));
    let port = listener_port();
    let served = infra.serve_with(
        &[reencrypt(port, &[("", "tls-backend")], &[&ca], HOST)],
        &ServeOptions::with_workers(1),
    );
    let first = get(addr(port), &closing("/"));
    let second = get(addr(port), &closing("/"));
    let third = get(addr(port), &Req::get("/"));
    for r in [&first, &second, &third] {
        assert_eq!(
            outcome(r),
            ok_from("tls-backend", HOST),
            "{}",
            served.gw.stderr()
        );
    }
    assert_eq!(
        infra.echo("tls-backend").connections(),
        3,
        "one connection per request"
    );
    let kinds: Vec<String> = [&first, &second, &third]
        .iter()
        .map(|r| {
            r.json()["tls"]["handshakeKind"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["Full", "Resumed", "Resumed"]);
    assert!(
        served.metric(r#"gatewayd_backend_tls_handshakes_total{kind="resumed"}"#) >= 2.0,
        "resumed handshakes not counted"
    );
    assert!(served.metric(r#"gatewayd_backend_tls_handshakes_total{kind="full"}"#) >= 1.0);
}

/// The verify cache: with a backend that never resumes (every connection a full
/// handshake with its certificate), the second check of the same chain is a cache hit;
/// a CA change starts a new cache (the next check is full again); and once the roots no
/// longer vouch for the backend, requests get 502 although a connection verified under
/// the old roots sat idle in the pool.
#[test]
fn the_verify_cache_serves_repeat_chains_until_the_roots_change() {
    let ca = Ca::new("backend CA");
    let second_ca = Ca::new("second CA");
    let mut infra = Infra::new();
    infra.add_echo(
        INFRA,
        "tls-backend",
        Echo::start_tls_with(
            "tls-backend",
            &ca.server(&[HOST]),
            &ServerOptions {
                no_resumption: true,
                ..ServerOptions::default()
            },
        ),
    );
    let port = listener_port();
    let manifest =
        |cas: &[&Ca]| infra.manifest(&[reencrypt(port, &[("", "tls-backend")], cas, HOST)]);
    let served = Served::start_with(&manifest(&[&ca]), &ServeOptions::with_workers(1))
        .expect("gatewayd starts");
    let checks = |served: &Served| {
        (
            served.metric(r#"gatewayd_backend_tls_certificate_checks_total{result="full"}"#),
            served.metric(r#"gatewayd_backend_tls_certificate_checks_total{result="cache_hit"}"#),
        )
    };
    let ok = |r: &Reply, when: &str| {
        assert_eq!(
            outcome(r),
            ok_from("tls-backend", HOST),
            "{when}\n{}",
            served.gw.stderr()
        );
        assert_eq!(r.json()["tls"]["handshakeKind"], "Full", "{when}: resumed");
    };

    ok(&get(addr(port), &closing("/")), "first");
    assert_eq!(checks(&served), (1.0, 0.0), "first connection");
    ok(&get(addr(port), &closing("/")), "second");
    assert_eq!(checks(&served), (1.0, 1.0), "second connection: same chain");
    assert_eq!(
        served.metric("gatewayd_backend_tls_verify_cache_chains"),
        1.0
    );

    // Another CA joins the bundle: new roots, new cache.
    reload_with_new_roots(&served, &manifest(&[&ca, &second_ca]));
    ok(&get(addr(port), &Req::get("/")), "after adding a CA");
    assert_eq!(
        checks(&served),
        (2.0, 1.0),
        "a new root set validates in full"
    );
    let connections = infra.echo("tls-backend").connections();

    // The backend's CA leaves the bundle while that connection sits idle in the pool.
    reload_with_new_roots(&served, &manifest(&[&second_ca]));
    for _ in 0..2 {
        let r = get(addr(port), &Req::get("/"));
        assert_eq!(
            r.status, 502,
            "served over a connection verified under removed roots"
        );
    }
    assert!(
        infra.echo("tls-backend").connections() > connections,
        "no new handshake was tried"
    );
    assert!(
        served.metric(r#"gatewayd_backend_tls_certificate_checks_total{result="refused"}"#) >= 1.0
    );
    let (s, _, _) = policy_condition(&served.status(), "p", "same-namespace", "Accepted");
    assert_eq!(s, "True", "the policy itself is valid");
}

/// Sessions and connections established under roots that a reload removed are not
/// used again: the next HTTP/1.1 connection does not resume the old session (a resumed
/// handshake shows no certificate, so it would skip verification), and the pooled HTTP/2
/// connection is not reused; both answer 502 once the backend's CA left the bundle.
#[test]
fn a_ca_change_neither_resumes_old_sessions_nor_reuses_old_connections() {
    let ca = Ca::new("backend CA");
    let other_ca = Ca::new("replacement CA");
    let leaf = ca.server(&[HOST]);
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "h1-backend", &leaf);
    add_h2c_tls(&mut infra, "h2-backend", &leaf);
    let port = listener_port();
    let manifest = |cas: &[&Ca]| {
        infra.manifest(&[reencrypt(
            port,
            &[("/h1", "h1-backend"), ("/h2", "h2-backend")],
            cas,
            HOST,
        )])
    };
    let served = Served::start_with(&manifest(&[&ca]), &ServeOptions::with_workers(1))
        .expect("gatewayd starts");
    // A session to resume, proven resumable under the current roots.
    for kind in ["Full", "Resumed"] {
        let r = get(addr(port), &closing("/h1"));
        assert_eq!(
            outcome(&r),
            ok_from("h1-backend", HOST),
            "{}",
            served.gw.stderr()
        );
        assert_eq!(r.json()["tls"]["handshakeKind"], kind);
    }
    let r = get(addr(port), &Req::get("/h2"));
    assert_eq!(outcome(&r), ok_from("h2-backend", HOST));
    assert_eq!(r.json()["tls"]["negotiatedProtocol"], "h2");
    let h2_connections = infra.echo("h2-backend").connections();

    reload_with_new_roots(&served, &manifest(&[&other_ca]));
    let h1 = get(addr(port), &closing("/h1"));
    assert_eq!(
        h1.status,
        502,
        "HTTP/1.1 under removed roots: {:?}",
        h1.json()["tls"]
    );
    let h2 = get(addr(port), &Req::get("/h2"));
    assert_eq!(h2.status, 502, "HTTP/2 under removed roots");
    assert!(
        infra.echo("h2-backend").connections() > h2_connections,
        "no new HTTP/2 connection was tried"
    );
}

/// Each endpoint of a Service resumes its own sessions: with two backends behind one
/// Service (each with its own session cache), every connection after an endpoint's
/// first is resumed; a session store shared by the endpoints would offer one backend the
/// other's session and fall back to full handshakes.
#[test]
fn each_endpoint_resumes_its_own_sessions() {
    let ca = Ca::new("backend CA");
    let leaf = ca.server(&[HOST]);
    let a = Echo::start_tls("endpoint-a", &leaf);
    let b = Echo::start_tls("endpoint-b", &leaf);
    let mut infra = Infra::new();
    infra.yaml.push_str(&gateway_tests::scenario::service(
        INFRA,
        "two-endpoints",
        &[a.addr, b.addr],
        None,
    ));
    let port = listener_port();
    let served = infra.serve_with(
        &[reencrypt(port, &[("", "two-endpoints")], &[&ca], HOST)],
        &ServeOptions::with_workers(1),
    );
    let mut kinds: Vec<(String, Vec<String>)> = Vec::new();
    for _ in 0..12 {
        let r = get(addr(port), &closing("/"));
        assert_eq!(r.status, 200, "{}", served.gw.stderr());
        let pod = r.backend().expect("an echo answered");
        let kind = r.json()["tls"]["handshakeKind"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        match kinds.iter_mut().find(|(p, _)| *p == pod) {
            Some((_, ks)) => ks.push(kind),
            None => kinds.push((pod, vec![kind])),
        }
    }
    for (pod, ks) in &kinds {
        assert_eq!(ks[0], "Full", "{pod}: {ks:?}");
        assert!(
            ks[1..].iter().all(|k| k == "Resumed"),
            "{pod} did not resume: {ks:?} (all: {kinds:?})"
        );
    }
    assert_eq!(a.connections() + b.connections(), 12);
}

/// A backend that accepts the connection but never answers the ClientHello: the
/// handshake times out (5 s) and the client gets a 504.
#[test]
fn a_backend_that_never_completes_the_handshake_gets_504() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let held = std::thread::spawn(move || {
        // Read (the ClientHello) and never answer, until the gateway gives up and closes.
        let (mut conn, _) = silent.accept().expect("the gateway connects");
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 1024];
        while matches!(std::io::Read::read(&mut conn, &mut buf), Ok(n) if n > 0) {}
    });
    let ca = Ca::new("backend CA");
    let mut infra = Infra::new();
    infra.add_service(INFRA, "silent", silent_addr);
    let port = listener_port();
    let served = infra.serve(&[reencrypt(port, &[("", "silent")], &[&ca], HOST)]);
    let start = std::time::Instant::now();
    let r = get(addr(port), &Req::get("/"));
    let took = start.elapsed();
    assert_eq!(r.status, 504, "after {took:?}\n{}", served.gw.stderr());
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "the handshake timeout is 5 s, took {took:?}"
    );
    assert!(served.metric("gatewayd_backend_tls_handshake_failures_total") >= 1.0);
    drop(served);
    let _ = held.join();
}
