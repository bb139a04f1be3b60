//! Edge termination through a real gatewayd: HTTPS listeners with certificates generated
//! at run time, real rustls clients over HTTP/1.1 and HTTP/2 (ALPN), the Gateway API
//! conformance scenarios for HTTPS listeners, misdirected requests, invalid TLS
//! configuration, Secret references across namespaces and client certificates; plus
//! certificate rotation under traffic and the handshake timeout.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    echo::runtime,
    scenario::{listener_port, Infra, Reply, Req, APP, INFRA, WEB},
    tls::{
        self, connect, https_send, probe_client_hello, served_certificate, Ca, ClientTls,
        HttpsConn, Leaf, Refusal,
    },
};
use tokio::io::AsyncWriteExt as _;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The names every server certificate of these tests carries.
const NAMES: [&str; 4] = [
    "example.org",
    "second-example.org",
    "unknown-example.org",
    "*.wildcard.org",
];

/// The conformance `same-namespace-with-https-listener` Gateway: four HTTPS listeners on
/// one port (no hostname, `second-example.org`, `*.wildcard.org`,
/// `fourth-example.wildcard.org`), all with the Secret `tls-validity-checks-certificate`.
fn https_gateway(port: u16) -> String {
    let listener = |name: &str, hostname: Option<&str>| {
        let hostname = hostname.map_or(String::new(), |h| format!(", hostname: '{h}'"));
        format!("  - {{name: {name}, port: {port}, protocol: HTTPS{hostname}, allowedRoutes: {{namespaces: {{from: Same}}}}, tls: {{certificateRefs: [{{name: tls-validity-checks-certificate}}]}}}}\n")
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: same-namespace-with-https-listener, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n{}{}{}{}",
        listener("https", None),
        listener("https-with-hostname", Some("second-example.org")),
        listener("https-with-wildcard-hostname", Some("*.wildcard.org")),
        listener(
            "https-with-hostname-matching-wildcard",
            Some("fourth-example.wildcard.org")
        ),
    )
}

fn route(
    name: &str,
    gateway: &str,
    section: Option<&str>,
    hostnames: &[&str],
    rules: &str,
) -> String {
    let section = section.map_or(String::new(), |s| format!(", sectionName: {s}"));
    let hostnames = if hostnames.is_empty() {
        String::new()
    } else {
        format!("  hostnames: [{}]\n", hostnames.join(", "))
    };
    format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: {gateway}{section}}}]\n{hostnames}  rules:\n{rules}")
}

fn to(backend: &str) -> String {
    format!("  - backendRefs: [{{name: {backend}, port: 8080}}]\n")
}

/// `(sni, request, want status, want backend)` for every case; all mismatches at once.
fn check_https(gw: SocketAddr, tls: &ClientTls, cases: &[(&str, Req, u16, Option<&str>)]) {
    let mut failures = Vec::new();
    for (sni, req, status, backend) in cases {
        match https_send(gw, sni, tls, req) {
            Ok(r)
                if r.status == *status
                    && (backend.is_none() || r.backend().as_deref() == *backend) => {}
            Ok(r) => failures.push(format!(
                "sni {sni} host {:?} h2={}: want {status} {backend:?}, got {} {:?}",
                req.host,
                req.h2,
                r.status,
                r.backend()
            )),
            Err(e) => failures.push(format!(
                "sni {sni} host {:?} h2={}: {e:#}",
                req.host, req.h2
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn status_json(served: &gateway_tests::scenario::Served) -> serde_json::Value {
    let r = served.gw.get("/status").expect("/status");
    serde_json::from_str(&r.body).expect("/status is JSON")
}

/// `(status, reason)` of a listener condition in `/status`.
fn listener_condition(
    status: &serde_json::Value,
    gateway: &str,
    listener: &str,
    type_: &str,
) -> (String, String) {
    let items = status["items"].as_array().expect("items");
    let gw = items
        .iter()
        .find(|i| i["kind"] == "Gateway" && i["metadata"]["name"] == gateway)
        .unwrap_or_else(|| panic!("Gateway {gateway} in /status"));
    let l = gw["status"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("listener {listener} of {gateway}"));
    let c = l["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("condition {type_} of {gateway}/{listener}"));
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
    )
}

fn server_cert(ca: &Ca) -> Leaf {
    ca.server(&NAMES)
}

/// HTTPRouteHTTPSListener, over HTTP/1.1 and HTTP/2: the SNI picks the listener and its
/// certificate, the Host the route; the backend sees `X-Forwarded-Proto: https`.
#[test]
fn https_listeners_serve_their_routes_over_http1_and_h2() {
    let ca = Ca::new("conformance CA");
    let infra = Infra::new();
    let port = listener_port();
    let served = infra.serve(&[
        &https_gateway(port),
        &server_cert(&ca).secret(INFRA, "tls-validity-checks-certificate"),
        &route(
            "httproute-https-test",
            "same-namespace-with-https-listener",
            None,
            &["example.org"],
            &to("infra-backend-v1"),
        ),
        &route(
            "httproute-https-test-no-hostname",
            "same-namespace-with-https-listener",
            Some("https-with-hostname"),
            &[],
            &to("infra-backend-v2"),
        ),
    ]);
    let tls = ClientTls::new(&ca);
    let gw = addr(port);
    let mut cases = Vec::new();
    for h2 in [false, true] {
        let req = |host: &str| {
            let r = Req::get("/").host(host);
            if h2 {
                r.h2()
            } else {
                r
            }
        };
        cases.push((
            "example.org",
            req("example.org"),
            200,
            Some("infra-backend-v1"),
        ));
        cases.push(("unknown-example.org", req("unknown-example.org"), 404, None));
        cases.push((
            "second-example.org",
            req("second-example.org"),
            200,
            Some("infra-backend-v2"),
        ));
    }
    check_https(gw, &tls, &cases);

    let reply = https_send(
        gw,
        "example.org",
        &tls,
        &Req::get("/xfp").host("example.org"),
    )
    .expect("request");
    assert_eq!(
        reply.seen_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        reply.seen_header("x-forwarded-host").as_deref(),
        Some("example.org")
    );
    // ALPN: h2 preferred, http/1.1 when the client offers only that.
    assert_eq!(
        tls::handshake(gw, "example.org", &tls)
            .expect("handshake")
            .as_deref(),
        Some("h2")
    );
    assert_eq!(
        tls::handshake(gw, "example.org", &tls.alpn(&[b"http/1.1"]))
            .expect("handshake")
            .as_deref(),
        Some("http/1.1")
    );
    drop(served);
}

/// HTTPRouteHTTPSListenerDetectMisdirectedRequests: the 15 cases of the conformance
/// table, each on a new connection with SNI `serverName` and Host `host`, over HTTP/2
/// (as the suite sends them) and over HTTP/1.1.
#[test]
fn misdirected_requests_get_421_over_h2_and_http1() {
    let ca = Ca::new("conformance CA");
    let infra = Infra::new();
    let port = listener_port();
    let gw = "same-namespace-with-https-listener";
    let rules = |b: &str| {
        format!("  - matches: [{{path: {{type: PathPrefix, value: /detect-misdirected-requests}}}}]\n    backendRefs: [{{name: {b}, port: 8080}}]\n")
    };
    let _served = infra.serve(&[
        &https_gateway(port),
        &server_cert(&ca).secret(INFRA, "tls-validity-checks-certificate"),
        &route(
            "test-1",
            gw,
            None,
            &["example.org"],
            &rules("infra-backend-v1"),
        ),
        &route(
            "test-2",
            gw,
            Some("https-with-hostname"),
            &[],
            &rules("infra-backend-v2"),
        ),
        // No hostnames: the table expects `fith-example.wildcard.org` to reach it.
        &route(
            "test-3",
            gw,
            Some("https-with-wildcard-hostname"),
            &[],
            &rules("infra-backend-v3"),
        ),
        &route(
            "test-4",
            gw,
            Some("https-with-hostname-matching-wildcard"),
            &["third-example.wildcard.org", "fourth-example.wildcard.org"],
            &rules("infra-backend-v1"),
        ),
    ]);
    let table: [(&str, &str, u16, Option<&str>); 15] = [
        ("example.org", "example.org", 200, Some("infra-backend-v1")),
        ("example.org", "second-example.org", 421, None),
        ("example.org", "unknown-example.org", 404, None),
        (
            "second-example.org",
            "second-example.org",
            200,
            Some("infra-backend-v2"),
        ),
        ("second-example.org", "example.org", 421, None),
        ("second-example.org", "unknown-example.org", 421, None),
        (
            "third-example.wildcard.org",
            "third-example.wildcard.org",
            200,
            Some("infra-backend-v3"),
        ),
        (
            "third-example.wildcard.org",
            "fith-example.wildcard.org",
            200,
            Some("infra-backend-v3"),
        ),
        (
            "third-example.wildcard.org",
            "fourth-example.wildcard.org",
            421,
            None,
        ),
        (
            "third-example.wildcard.org",
            "second-example.org",
            421,
            None,
        ),
        (
            "third-example.wildcard.org",
            "unknown-example.org",
            421,
            None,
        ),
        (
            "fourth-example.wildcard.org",
            "fourth-example.wildcard.org",
            200,
            Some("infra-backend-v1"),
        ),
        (
            "fourth-example.wildcard.org",
            "fith-example.wildcard.org",
            421,
            None,
        ),
        (
            "unknown-example.org",
            "example.org",
            200,
            Some("infra-backend-v1"),
        ),
        ("unknown-example.org", "unknown-example.org", 404, None),
    ];
    let tls = ClientTls::any_server();
    for h2 in [true, false] {
        let cases: Vec<_> = table
            .iter()
            .map(|(sni, host, status, backend)| {
                let mut req = Req::get("/detect-misdirected-requests").host(host);
                if h2 {
                    req = req.h2();
                }
                (*sni, req, *status, *backend)
            })
            .collect();
        check_https(addr(port), &tls, &cases);
    }
}

/// HTTP/2 connection reuse: one connection (SNI `example.org`) carries a request for a
/// host its listener serves (200) and one for another listener's host (421), and stays
/// usable after the 421.
#[test]
fn one_h2_connection_gets_421_for_another_listeners_host_and_goes_on() {
    let ca = Ca::new("ca");
    let infra = Infra::new();
    let port = listener_port();
    let _served = infra.serve(&[
        &https_gateway(port),
        &server_cert(&ca).secret(INFRA, "tls-validity-checks-certificate"),
        &route(
            "a",
            "same-namespace-with-https-listener",
            None,
            &["example.org"],
            &to("infra-backend-v1"),
        ),
        &route(
            "b",
            "same-namespace-with-https-listener",
            Some("https-with-hostname"),
            &[],
            &to("infra-backend-v2"),
        ),
    ]);
    let tls = ClientTls::new(&ca);
    let statuses = runtime().block_on(async {
        let stream = connect(addr(port), "example.org", &tls.alpn(&[b"h2"]))
            .await
            .expect("connect");
        let mut conn = HttpsConn::handshake(stream, true).await.expect("h2");
        let mut out = Vec::new();
        for host in [
            "example.org",
            "second-example.org",
            "example.org:443",
            "example.org",
        ] {
            let r = conn.send(&Req::get("/").host(host)).await.expect("request");
            out.push(r.status);
        }
        out
    });
    assert_eq!(statuses, [200, 421, 200, 200]);
}

/// RequestRedirect `scheme: https` on an HTTP listener: the Location names https and
/// leaves the default port out (or keeps a given one), and following it over TLS
/// reaches the backend.
#[test]
fn http_to_https_redirects_use_the_https_default_port_and_can_be_followed() {
    let ca = Ca::new("ca");
    let infra = Infra::new();
    let http_port = listener_port();
    let https_port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: redirect, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: http, port: {http_port}, protocol: HTTP}}\n  - {{name: https, port: {https_port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}\n"
    );
    let redirect = |scheme_port: &str| {
        format!("  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    filters: [{{type: RequestRedirect, requestRedirect: {{{scheme_port} statusCode: 301}}}}]\n")
    };
    let _served = infra.serve(&[
        &gateway,
        &ca.server(&["example.org", "secure.example.org"])
            .secret(INFRA, "cert"),
        &route(
            "to-default",
            "redirect",
            Some("http"),
            &["example.org"],
            &redirect("scheme: https,"),
        ),
        &route(
            "to-port",
            "redirect",
            Some("http"),
            &["secure.example.org"],
            &redirect(&format!("scheme: https, port: {https_port},")),
        ),
        &route(
            "served",
            "redirect",
            Some("https"),
            &[],
            &to("infra-backend-v1"),
        ),
    ]);
    let location = |host: &str| {
        let r = gateway_tests::scenario::send(addr(http_port), &Req::get("/a/b?c=d").host(host))
            .expect("request");
        assert_eq!(r.status, 301, "{host}");
        r.header("location").expect("Location")
    };
    assert_eq!(location("example.org"), "https://example.org/a/b?c=d");
    let to_port = location("secure.example.org");
    assert_eq!(
        to_port,
        format!("https://secure.example.org:{https_port}/a/b?c=d")
    );
    // Follow it.
    let rest = to_port.strip_prefix("https://").expect("https");
    let (authority, path) = rest.split_at(rest.find('/').expect("path"));
    let host = authority.split(':').next().expect("host");
    let reply = https_send(
        addr(https_port),
        host,
        &ClientTls::new(&ca),
        &Req::get(path).host(authority),
    )
    .expect("followed");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.backend().as_deref(), Some("infra-backend-v1"));
    assert_eq!(reply.seen_path().as_deref(), Some("/a/b?c=d"));
}

/// `leaf`'s certificate chain with the key of another certificate: a Secret that parses
/// but whose key does not sign for its certificate.
fn with_another_key(ca: &Ca, leaf: &Leaf) -> Leaf {
    let other = ca.server(&["other.example.com"]);
    Leaf {
        chain: leaf.chain.clone(),
        chain_pem: leaf.chain_pem.clone(),
        key: other.key,
        key_pem: other.key_pem,
    }
}

/// GatewayInvalidTLSConfiguration: a nonexistent Secret, a wrong group, a wrong kind and
/// a malformed Secret each leave the HTTPS listener unprogrammed (nothing listens on
/// its port, no handshake succeeds) while the Gateway's HTTP listener serves; and a key
/// that does not match its certificate, which only building the TLS config finds, is
/// reported the same way (InvalidCertificateRef) and fails every handshake.
#[test]
fn invalid_certificate_references_leave_the_https_listener_unserved() {
    let ca = Ca::new("ca");
    let infra = Infra::new();
    let good = ca.server(&["example.com", "*.example.com"]);
    let mismatched = with_another_key(&ca, &good);
    let cases = [
        (
            "nonexistent-secret",
            "{group: '', kind: Secret, name: nonexistent-certificate}",
        ),
        (
            "unsupported-group",
            "{group: wrong.group.company.io, kind: Secret, name: tls-validity-checks-certificate}",
        ),
        (
            "unsupported-kind",
            "{group: '', kind: WrongKind, name: tls-validity-checks-certificate}",
        ),
        (
            "malformed-secret",
            "{group: '', kind: Secret, name: malformed-certificate}",
        ),
        (
            "mismatched-key",
            "{group: '', kind: Secret, name: mismatched-certificate}",
        ),
    ];
    let mut docs = vec![
        good.secret(INFRA, "tls-validity-checks-certificate"),
        mismatched.secret(INFRA, "mismatched-certificate"),
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: malformed-certificate, namespace: {INFRA}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: SGVsbG8gd29ybGQK\n  tls.key: SGVsbG8gd29ybGQK\n"),
    ];
    let mut ports = Vec::new();
    for (name, cert_ref) in cases {
        let (http, https) = (listener_port(), listener_port());
        let gw = format!("gateway-certificate-{name}");
        docs.push(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {gw}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: http, port: {http}, protocol: HTTP, allowedRoutes: {{namespaces: {{from: Same}}}}}}\n  - {{name: https, port: {https}, protocol: HTTPS, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{cert_ref}]}}}}\n"
        ));
        docs.push(route(
            &format!("{gw}-control"),
            &gw,
            Some("http"),
            &[&format!("{name}.example.com")],
            &to("infra-backend-v1"),
        ));
        ports.push((name, gw, http, https));
    }
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let served = infra.serve(&refs);
    let status = status_json(&served);
    let tls = ClientTls::new(&ca);
    for (name, gw, http, https) in &ports {
        let control = gateway_tests::scenario::send(
            addr(*http),
            &Req::get("/").host(&format!("{name}.example.com")),
        )
        .expect("control request");
        assert_eq!(control.status, 200, "{name}: the HTTP listener serves");
        assert_eq!(
            listener_condition(&status, gw, "https", "ResolvedRefs"),
            ("False".to_string(), "InvalidCertificateRef".to_string()),
            "{name}"
        );
        assert_eq!(
            listener_condition(&status, gw, "https", "Programmed").0,
            "False",
            "{name}"
        );
        let hs = tls::handshake(addr(*https), "example.com", &tls);
        assert!(hs.is_err(), "{name}: a TLS handshake succeeded: {hs:?}");
    }
}

/// Every condition of every item, as `(kind/namespace/name, where, type, status, reason)`.
fn conditions(status: &serde_json::Value) -> Vec<(String, String, String, String, String)> {
    let mut out = Vec::new();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    for item in status["items"].as_array().into_iter().flatten() {
        let id = format!(
            "{}/{}/{}",
            text(&item["kind"]),
            text(&item["metadata"]["namespace"]),
            text(&item["metadata"]["name"])
        );
        let st = &item["status"];
        let mut groups = vec![("self".to_string(), &st["conditions"])];
        for l in st["listeners"].as_array().into_iter().flatten() {
            groups.push((format!("listener {}", text(&l["name"])), &l["conditions"]));
        }
        for (i, p) in st["parents"].as_array().into_iter().flatten().enumerate() {
            groups.push((format!("parent {i}"), &p["conditions"]));
        }
        for (at, conds) in groups {
            for c in conds.as_array().into_iter().flatten() {
                out.push((
                    id.clone(),
                    at.clone(),
                    text(&c["type"]),
                    text(&c["status"]),
                    text(&c["reason"]),
                ));
            }
        }
    }
    out.sort();
    out
}

/// `gatewayd check` makes the certificate checks `run` makes: a key that does not match
/// its certificate (found only by building the TLS config) is reported by `check` as by
/// `/status`, condition for condition, and named on stderr.
#[test]
fn check_reports_a_mismatched_key_as_the_running_daemon_does() {
    let ca = Ca::new("ca");
    let infra = Infra::new();
    let mismatched = with_another_key(&ca, &ca.server(&["example.com"]));
    let (http, https) = (listener_port(), listener_port());
    let docs = [
        mismatched.secret(INFRA, "mismatched-certificate"),
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: mismatched, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: http, port: {http}, protocol: HTTP}}\n  - {{name: https, port: {https}, protocol: HTTPS, tls: {{certificateRefs: [{{name: mismatched-certificate}}]}}}}\n"),
        route("mismatched-route", "mismatched", None, &["example.com"], &to("infra-backend-v1")),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gw.yaml");
    std::fs::write(&path, infra.manifest(&docs)).expect("write manifest");
    let out = std::process::Command::new(gateway_tests::gatewayd_bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run gatewayd check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("mismatched listener https"),
        "check names the Gateway and listener whose key fails: {stderr}"
    );
    let checked: serde_json::Value =
        serde_yaml_ng::from_slice(&out.stdout).expect("check prints YAML");
    assert_eq!(
        listener_condition(&checked, "mismatched", "https", "ResolvedRefs"),
        ("False".to_string(), "InvalidCertificateRef".to_string())
    );
    assert_eq!(
        listener_condition(&checked, "mismatched", "https", "Programmed").0,
        "False"
    );
    let served = infra.serve(&docs);
    let running = status_json(&served);
    assert_eq!(conditions(&checked), conditions(&running));
}

/// GatewaySecretReferenceGrantSpecific / AllInNamespace, GatewaySecretMissingReferenceGrant
/// and GatewaySecretInvalidReferenceGrant: a certificate in another namespace is served
/// only when a ReferenceGrant there allows this Gateway to use it.
#[test]
fn secrets_in_other_namespaces_are_served_only_with_a_reference_grant() {
    let ca = Ca::new("ca");
    let infra = Infra::new();
    let cert = ca.server(&["example.org"]);
    let grant = |ns: &str, name: &str, to: &str, from_ns: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: {from_ns}}}]\n  to: [{to}]\n")
    };
    let mut docs = vec![
        cert.secret(WEB, "certificate"),
        cert.secret(WEB, "certificate-missing"),
        cert.secret(WEB, "certificate-invalid"),
        cert.secret(APP, "any-certificate"),
        grant(
            WEB,
            "specific",
            "{group: '', kind: Secret, name: certificate}",
            INFRA,
        ),
        // From another namespace: grants nothing to the infra Gateways.
        grant(
            WEB,
            "invalid",
            "{group: '', kind: Secret, name: certificate-invalid}",
            "other-namespace",
        ),
        // Every Secret of the app namespace.
        grant(APP, "all", "{group: '', kind: Secret}", INFRA),
    ];
    let mut gateways = Vec::new();
    for (gw, ns, secret, ok) in [
        (
            "gateway-secret-reference-grant-specific",
            WEB,
            "certificate",
            true,
        ),
        (
            "gateway-secret-reference-grant-all-in-namespace",
            APP,
            "any-certificate",
            true,
        ),
        (
            "gateway-secret-missing-reference-grant",
            WEB,
            "certificate-missing",
            false,
        ),
        (
            "gateway-secret-invalid-reference-grant",
            WEB,
            "certificate-invalid",
            false,
        ),
    ] {
        let port = listener_port();
        docs.push(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {gw}, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: https, port: {port}, protocol: HTTPS, allowedRoutes: {{namespaces: {{from: All}}}}, tls: {{certificateRefs: [{{group: '', kind: Secret, name: {secret}, namespace: {ns}}}]}}}}\n"
        ));
        docs.push(route(
            &format!("{gw}-route"),
            gw,
            None,
            &[],
            &to("infra-backend-v1"),
        ));
        gateways.push((gw, port, ok));
    }
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let served = infra.serve(&refs);
    let status = status_json(&served);
    let tls = ClientTls::new(&ca);
    for (gw, port, ok) in gateways {
        let resolved = listener_condition(&status, gw, "https", "ResolvedRefs");
        if ok {
            let r = https_send(
                addr(port),
                "example.org",
                &tls,
                &Req::get("/").host("example.org"),
            )
            .unwrap_or_else(|e| panic!("{gw}: {e:#}"));
            assert_eq!(r.status, 200, "{gw}");
            assert_eq!(resolved.0, "True", "{gw}");
        } else {
            assert_eq!(
                resolved,
                ("False".to_string(), "RefNotPermitted".to_string()),
                "{gw}"
            );
            assert!(
                tls::handshake(addr(port), "example.org", &tls).is_err(),
                "{gw}: served a certificate it may not use"
            );
        }
    }
}

fn frontend_gateway(default_port: u16, per_port: u16, mode: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: client-validation-default, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  tls:\n    frontend:\n      default:\n        validation:\n          caCertificateRefs: [{{group: '', kind: ConfigMap, name: default-ca}}]\n{mode}      perPort:\n      - port: {per_port}\n        tls:\n          validation:\n            caCertificateRefs: [{{group: '', kind: ConfigMap, name: per-port-ca}}]\n  listeners:\n  - {{name: https-default, port: {default_port}, protocol: HTTPS, hostname: example.org, tls: {{certificateRefs: [{{name: cert}}]}}}}\n  - {{name: https-per-port, port: {per_port}, protocol: HTTPS, hostname: second-example.org, tls: {{certificateRefs: [{{name: cert}}]}}}}\n"
    )
}

/// GatewayFrontendClientCertificateValidation: the default CA applies to the first port,
/// the per-port CA to the second; a client certificate from the other CA, or none, fails
/// the handshake. With `AllowInsecureFallback`, a client without a certificate (or with
/// one from an unknown CA) is served.
#[test]
fn client_certificates_are_validated_per_port() {
    let server_ca = Ca::new("server CA");
    let default_ca = Ca::new("default client CA");
    let per_port_ca = Ca::new("per-port client CA");
    let infra = Infra::new();
    let (p1, p2) = (listener_port(), listener_port());
    let common = [
        server_ca.server(&NAMES).secret(INFRA, "cert"),
        default_ca.config_map(INFRA, "default-ca"),
        per_port_ca.config_map(INFRA, "per-port-ca"),
        route(
            "client-certificate-validation-https-test",
            "client-validation-default",
            Some("https-default"),
            &[],
            &to("infra-backend-v1"),
        ),
        route(
            "per-port",
            "client-validation-default",
            Some("https-per-port"),
            &[],
            &to("infra-backend-v2"),
        ),
    ];
    let mut docs = vec![frontend_gateway(p1, p2, "")];
    docs.extend(common.iter().cloned());
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let served = infra.serve(&refs);
    let default_client = ClientTls::with_client_cert(&server_ca, &default_ca.client("client"));
    let per_port_client = ClientTls::with_client_cert(&server_ca, &per_port_ca.client("client"));
    let anonymous = ClientTls::new(&server_ca);
    let ok = |port: u16, sni: &str, tls: &ClientTls| {
        https_send(addr(port), sni, tls, &Req::get("/").host(sni))
            .map(|r: Reply| (r.status, r.backend()))
    };
    assert_eq!(
        ok(p1, "example.org", &default_client).expect("default"),
        (200, Some("infra-backend-v1".to_string()))
    );
    assert!(ok(p2, "second-example.org", &default_client).is_err());
    assert_eq!(
        ok(p2, "second-example.org", &per_port_client).expect("per port"),
        (200, Some("infra-backend-v2".to_string()))
    );
    assert!(ok(p1, "example.org", &per_port_client).is_err());
    assert!(ok(p1, "example.org", &anonymous).is_err());
    assert!(ok(p2, "second-example.org", &anonymous).is_err());
    drop(served);

    // AllowInsecureFallback on the default: anyone gets in on the first port; the
    // per-port validation is unchanged.
    let mut docs = vec![frontend_gateway(
        p1,
        p2,
        "          mode: AllowInsecureFallback\n",
    )];
    docs.extend(common.iter().cloned());
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let _served = infra.serve(&refs);
    for tls in [&anonymous, &per_port_client, &default_client] {
        assert_eq!(ok(p1, "example.org", tls).expect("fallback").0, 200);
    }
    assert!(ok(p2, "second-example.org", &anonymous).is_err());
}

/// Certificate rotation: rewriting the Secret reaches new handshakes within a second of
/// the file change, while requests keep flowing on connections opened before (none of
/// them fails) and new connections succeed throughout.
#[test]
fn a_rotated_certificate_is_served_within_a_second_without_dropping_connections() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let infra = Infra::new();
    let port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: rotate, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: https, port: {port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}\n"
    );
    let routes = route("rotate", "rotate", None, &[], &to("infra-backend-v1"));
    let old = old_ca.server(&["example.org"]);
    let new = new_ca.server(&["example.org"]);
    let manifest = |leaf: &Leaf| {
        format!(
            "{}---\n{gateway}---\n{routes}---\n{}",
            infra.yaml,
            leaf.secret(INFRA, "cert")
        )
    };
    let served = gateway_tests::scenario::Served::start(&manifest(&old)).expect("gatewayd");
    let gw = addr(port);
    assert_eq!(
        served_certificate(gw, "example.org").expect("cert"),
        old.chain[0]
    );

    // Traffic: 4 keep-alive connections (2 h2, 2 HTTP/1.1) opened on the old certificate,
    // sending requests until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let old_tls = ClientTls::new(&old_ca);
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, done, tls) = (stop.clone(), done.clone(), old_tls.clone());
        clients.push(runtime().spawn(async move {
            let h2 = i % 2 == 0;
            let stream = connect(gw, "example.org", &tls).await?;
            let mut conn = HttpsConn::handshake(stream, h2).await?;
            while !stop.load(Ordering::Relaxed) {
                let r = conn.send(&Req::get("/").host("example.org")).await?;
                anyhow::ensure!(r.status == 200, "status {}", r.status);
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = done.load(Ordering::Relaxed);
    assert!(before > 0, "no request went through before the rotation");

    let changed = Instant::now();
    std::fs::write(&served.config, manifest(&new)).expect("rewrite");
    let new_tls = ClientTls::new(&new_ca);
    let took = loop {
        // New connections keep working throughout: with the old or the new certificate.
        let cert = served_certificate(gw, "example.org").expect("a handshake during rotation");
        if cert == new.chain[0] {
            break changed.elapsed();
        }
        assert_eq!(cert, old.chain[0]);
        assert!(changed.elapsed() < Duration::from_secs(5), "not rotated");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(took < Duration::from_secs(1), "rotation took {took:?}");
    let r = https_send(
        gw,
        "example.org",
        &new_tls,
        &Req::get("/").host("example.org"),
    )
    .expect("new cert");
    assert_eq!(r.status, 200);

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        runtime()
            .block_on(c)
            .expect("client task")
            .expect("an established connection failed during rotation");
    }
    assert!(
        done.load(Ordering::Relaxed) > before,
        "established connections stopped serving after the rotation"
    );
}

/// A client that connects and sends nothing, and one that stalls in the middle of its
/// ClientHello, are closed after the 10 s handshake timeout (not before), with no TLS
/// alert; on a passthrough port too.
#[test]
fn silent_and_stalled_handshakes_are_closed_after_ten_seconds() {
    let ca = Ca::new("ca");
    let infra = Infra::new();
    let (https, pass) = (listener_port(), listener_port());
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: slow, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: https, port: {https}, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}\n  - {{name: pass, port: {pass}, protocol: TLS, tls: {{mode: Passthrough}}}}\n"
    );
    let _served = infra.serve(&[&gateway, &ca.server(&["example.org"]).secret(INFRA, "cert")]);
    let hello = tls::client_hello(Some("example.org"));
    let outcomes = runtime().block_on(async {
        let mut probes = Vec::new();
        for port in [https, pass] {
            for partial in [0, hello.len() / 2] {
                let hello = hello.clone();
                probes.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let mut tcp = tokio::net::TcpStream::connect(addr(port))
                        .await
                        .expect("connect");
                    tcp.write_all(&hello[..partial]).await.expect("write");
                    let outcome = tls::read_outcome(&mut tcp, Duration::from_secs(15)).await;
                    (port, partial, outcome, started.elapsed())
                }));
            }
        }
        let mut out = Vec::new();
        for p in probes {
            out.push(p.await.expect("probe"));
        }
        out
    });
    for (port, partial, outcome, took) in outcomes {
        assert!(
            matches!(outcome, Refusal::Closed | Refusal::Reset),
            "port {port}, {partial} bytes sent: {outcome:?}"
        );
        assert!(
            (Duration::from_millis(9_500)..Duration::from_millis(12_000)).contains(&took),
            "port {port}, {partial} bytes sent: closed after {took:?}"
        );
    }
}

/// An unknown SNI on an HTTPS port without a catch-all listener fails the handshake (the
/// gateway has no certificate to show); resumption works through the gateway.
#[test]
fn tls_sessions_resume_and_unknown_names_without_a_catch_all_are_refused() {
    let ca = Ca::new("ca");
    let infra = Infra::new();
    let port = listener_port();
    let gateway = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: named, namespace: {INFRA}}}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{{type: IPAddress, value: 127.0.0.1}}]\n  listeners:\n  - {{name: https, port: {port}, protocol: HTTPS, hostname: example.org, tls: {{certificateRefs: [{{name: cert}}]}}}}\n"
    );
    let _served = infra.serve(&[
        &gateway,
        &ca.server(&["example.org", "other.org"])
            .secret(INFRA, "cert"),
        &route("named", "named", None, &[], &to("infra-backend-v1")),
    ]);
    let tls = ClientTls::new(&ca);
    assert!(tls::handshake(addr(port), "other.org", &tls).is_err());
    let refused = probe_client_hello(addr(port), Some("other.org"), Duration::from_secs(2));
    // rustls answers a ClientHello it cannot serve with an alert: this is edge
    // termination, where the gateway speaks TLS (unlike passthrough).
    assert!(
        matches!(refused, Refusal::Answered(ref b) if b.first() == Some(&21))
            || refused == Refusal::Closed
            || refused == Refusal::Reset,
        "{refused:?}"
    );
    // The first connection gets tickets (read with its response); the next resumes.
    let resumed = runtime().block_on(async {
        let stream = connect(addr(port), "example.org", &tls)
            .await
            .expect("connect");
        assert_eq!(
            stream.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        let mut conn = HttpsConn::handshake(stream, false).await.expect("h1");
        let r = conn
            .send(&Req::get("/").host("example.org"))
            .await
            .expect("request");
        assert_eq!(r.status, 200);
        let s = connect(addr(port), "example.org", &tls)
            .await
            .expect("connect");
        s.get_ref().1.handshake_kind()
    });
    assert_eq!(resumed, Some(rustls::HandshakeKind::Resumed));
}
