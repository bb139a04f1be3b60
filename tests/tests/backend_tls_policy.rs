//! BackendTLSPolicy conformance scenarios through a real gatewayd, status and traffic
//! together: BackendTLSPolicySANValidation, BackendTLSPolicyConflictResolution,
//! BackendTLSPolicyInvalidCACertificateRef, BackendTLSPolicyInvalidKind,
//! BackendTLSPolicyObservedGenerationBump and GatewayInvalidTLSBackendConfiguration. The
//! backends are TLS echo servers that report the SNI they saw, which tells which policy
//! governed the connection.

use std::net::SocketAddr;

use gateway_tests::{
    reencrypt::routed,
    scenario::{
        backend_tls_policy, gateway, gateway_condition, http_listener, http_route, listener_port,
        policy_condition, route_condition, same_namespace_gateway, send, status_item,
        validate_with, wait_for, Infra, Reply, Req, Served, INFRA,
    },
    tls::{Ca, San},
};

const HOST: &str = "abc.example.com";
const GW: &str = "same-namespace";
const SPIFFE_ABC: &str = "spiffe://abc.example.com/test-identity";
const SPIFFE_DEF: &str = "spiffe://def.example.com/test-identity";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn get(gw: SocketAddr, path: &str) -> Reply {
    send(gw, &Req::get(path).host(HOST)).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// `(status, SNI the backend saw)`.
fn outcome(r: &Reply) -> (u16, Option<String>) {
    (
        r.status,
        r.json()["tls"]["serverName"].as_str().map(str::to_string),
    )
}

fn pair(a: &str, b: &str) -> (String, String) {
    (a.to_string(), b.to_string())
}

/// The policy's `(status, reason)` for `type_` under the `same-namespace` Gateway.
fn cond(status: &serde_json::Value, policy: &str, type_: &str) -> (String, String) {
    let (s, r, _) = policy_condition(status, policy, GW, type_);
    (s, r)
}

/// The status of an HTTPRoute's condition `type_` under the `same-namespace` Gateway.
fn route_status(status: &serde_json::Value, route: &str, type_: &str) -> String {
    route_condition(status, "HTTPRoute", route, GW, type_).0
}

/// The Service of a conformance case: `backendtlspolicy-{name}-test`.
fn case_service(name: &str) -> String {
    format!("backendtlspolicy-{name}-test")
}

/// The path HTTPRoute [`policy_per_case`] routes a case at: `/backendtlspolicy-{name}`.
fn case_path(name: &str) -> String {
    format!("/backendtlspolicy-{name}")
}

/// The conformance layout of one policy per case: the `same-namespace` Gateway on `port`,
/// for each `(name, validation)` a BackendTLSPolicy `name` with that `spec.validation` on
/// the Service [`case_service`] (the caller adds it), and HTTPRoute `route` sending
/// [`case_path`] to it.
fn policy_per_case(port: u16, route: &str, cases: &[(&str, String)]) -> Vec<String> {
    let mut docs = vec![same_namespace_gateway(port)];
    let mut rules = Vec::new();
    for (name, validation) in cases {
        let svc = case_service(name);
        docs.push(backend_tls_policy(name, "", &[&svc], validation));
        rules.push((case_path(name), svc, 8080));
    }
    docs.push(http_route(route, &[&format!("{{name: {GW}}}")], &rules));
    docs
}

/// BackendTLSPolicySANValidation, its six cases. With `subjectAltNames` set, the
/// certificate must carry one of them and `hostname` is the SNI only: a certificate
/// whose DNS names miss the hostname passes on its URI SAN, and one that matches the
/// hostname but none of the SANs is refused.
#[test]
fn subject_alt_names_replace_the_hostname_check() {
    let ca = Ca::new("tls-checks CA");
    let mut infra = Infra::new();
    // The conformance backend's certificate: the hostname as DNS SAN and a SPIFFE id.
    let both = infra.add_tls(
        INFRA,
        "tls-backend",
        &ca.server_sans(&[San::Dns(HOST), San::Uri(SPIFFE_ABC)]),
    );
    // The SPIFFE id only, with a DNS name that is not the hostname.
    let uri_only = infra.add_tls(
        INFRA,
        "spiffe-backend",
        &ca.server_sans(&[San::Dns("unrelated.example.net"), San::Uri(SPIFFE_ABC)]),
    );
    let cases: [(&str, SocketAddr, String, u16); 6] = [
        ("san-dns", both, format!("[{{type: Hostname, hostname: {HOST}}}]"), 200),
        (
            "san-dns-mismatch",
            both,
            "[{type: Hostname, hostname: dce.example.com}]".to_string(),
            502,
        ),
        ("san-uri", uri_only, format!("[{{type: URI, uri: '{SPIFFE_ABC}'}}]"), 200),
        (
            "san-uri-mismatch",
            both,
            format!("[{{type: URI, uri: '{SPIFFE_DEF}'}}]"),
            502,
        ),
        (
            "multiple-sans",
            uri_only,
            format!("[{{type: URI, uri: '{SPIFFE_ABC}'}}, {{type: Hostname, hostname: {HOST}}}]"),
            200,
        ),
        (
            "multiple-mismatch-sans",
            both,
            format!(
                "[{{type: URI, uri: '{SPIFFE_DEF}'}}, {{type: Hostname, hostname: def.example.com}}]"
            ),
            502,
        ),
    ];
    let mut policies = Vec::new();
    for (name, backend, sans, _) in &cases {
        infra.add_service(INFRA, &case_service(name), *backend);
        policies.push((*name, format!("{{caCertificateRefs: [{{group: '', kind: ConfigMap, name: tls-checks-ca-certificate}}], hostname: {HOST}, subjectAltNames: {sans}}}")));
    }
    let port = listener_port();
    let mut docs = policy_per_case(port, "backendtlspolicy-san-test", &policies);
    docs.push(ca.config_map(INFRA, "tls-checks-ca-certificate"));
    let served = infra.serve(&docs);
    let status = served.status();
    assert_eq!(
        route_status(&status, "backendtlspolicy-san-test", "ResolvedRefs"),
        "True"
    );
    let mut failures = Vec::new();
    for (name, _, _, want) in &cases {
        if cond(&status, name, "Accepted") != pair("True", "Accepted") {
            failures.push(format!("{name}: {:?}", cond(&status, name, "Accepted")));
        }
        let r = get(addr(port), &case_path(name));
        let expected = match want {
            200 => (200, Some(HOST.to_string())),
            s => (*s, None),
        };
        if outcome(&r) != expected {
            failures.push(format!("{name}: want {expected:?}, got {:?}", outcome(&r)));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", served.gw.stderr());
}

/// BackendTLSPolicyConflictResolution: of two policies on the same Service (or the same
/// section), the older wins and the other is Conflicted; with equal age, the name
/// decides; a section policy and a whole-Service policy do not conflict, the section one
/// governs its port. The SNI the backend saw names the governing policy (each policy has
/// its own hostname).
#[test]
fn conflicting_policies_resolve_by_age_then_name_and_sections_do_not_conflict() {
    let ca = Ca::new("tls-checks CA");
    let mut infra = Infra::new();
    let backend = infra.add_tls(
        INFRA,
        "tls-backend",
        &ca.server(&[
            HOST,
            "other.example.com",
            "older.example.com",
            "newer.example.com",
        ]),
    );
    infra.add_multi_port_service(
        INFRA,
        "backendtlspolicy-conflicted-without-section-name-test",
        &[("https", 443, backend)],
    );
    for svc in [
        "backendtlspolicy-conflicted-with-section-name-test",
        "backendtlspolicy-not-conflicted-test",
        "backendtlspolicy-conflicted-by-age-test",
    ] {
        infra.add_multi_port_service(
            INFRA,
            svc,
            &[("https-1", 443, backend), ("https-2", 8443, backend)],
        );
    }
    let validate = |hostname: &str| validate_with("tls-checks-ca-certificate", hostname);
    let port = listener_port();
    let served = infra.serve(&[
        &same_namespace_gateway(port),
        &ca.config_map(INFRA, "tls-checks-ca-certificate"),
        &http_route(
            "backendtlspolicy-conflict-resolution",
            &["{name: same-namespace}"],
            &[
                (
                    "/backendtlspolicy-conflicted-without-section-name",
                    "backendtlspolicy-conflicted-without-section-name-test",
                    443,
                ),
                (
                    "/backendtlspolicy-conflicted-with-section-name",
                    "backendtlspolicy-conflicted-with-section-name-test",
                    443,
                ),
                (
                    "/backendtlspolicy-not-conflicted-with-section-name",
                    "backendtlspolicy-not-conflicted-test",
                    443,
                ),
                (
                    "/backendtlspolicy-not-conflicted-without-section-name",
                    "backendtlspolicy-not-conflicted-test",
                    8443,
                ),
                (
                    "/backendtlspolicy-conflicted-by-age",
                    "backendtlspolicy-conflicted-by-age-test",
                    443,
                ),
            ],
        ),
        // Same age (none given): the name decides.
        &backend_tls_policy(
            "conflicted-without-section-name-1",
            "",
            &["backendtlspolicy-conflicted-without-section-name-test"],
            &validate("other.example.com"),
        ),
        &backend_tls_policy(
            "conflicted-without-section-name-2",
            "",
            &["backendtlspolicy-conflicted-without-section-name-test"],
            &validate(HOST),
        ),
        &backend_tls_policy(
            "conflicted-with-section-name-1",
            "creationTimestamp: '2024-01-01T00:00:00Z'",
            &["backendtlspolicy-conflicted-with-section-name-test#https-1"],
            &validate("other.example.com"),
        ),
        &backend_tls_policy(
            "conflicted-with-section-name-2",
            "creationTimestamp: '2024-06-01T00:00:00Z'",
            &["backendtlspolicy-conflicted-with-section-name-test#https-1"],
            &validate(HOST),
        ),
        &backend_tls_policy(
            "not-conflicted-with-section-name",
            "",
            &["backendtlspolicy-not-conflicted-test#https-1"],
            &validate("other.example.com"),
        ),
        &backend_tls_policy(
            "not-conflicted-without-section-name",
            "",
            &["backendtlspolicy-not-conflicted-test"],
            &validate(HOST),
        ),
        // Age beats name: the older one sorts last by name.
        &backend_tls_policy(
            "a-newer",
            "creationTimestamp: '2025-01-01T00:00:00Z'",
            &["backendtlspolicy-conflicted-by-age-test"],
            &validate("newer.example.com"),
        ),
        &backend_tls_policy(
            "z-older",
            "creationTimestamp: '2020-01-01T00:00:00Z'",
            &["backendtlspolicy-conflicted-by-age-test"],
            &validate("older.example.com"),
        ),
    ]);
    let status = served.status();
    let accepted = pair("True", "Accepted");
    let conflicted = pair("False", "Conflicted");
    let mut failures = Vec::new();
    for (policy, want) in [
        ("conflicted-without-section-name-1", &accepted),
        ("conflicted-without-section-name-2", &conflicted),
        ("conflicted-with-section-name-1", &accepted),
        ("conflicted-with-section-name-2", &conflicted),
        ("not-conflicted-with-section-name", &accepted),
        ("not-conflicted-without-section-name", &accepted),
        ("z-older", &accepted),
        ("a-newer", &conflicted),
    ] {
        let got = cond(&status, policy, "Accepted");
        if &got != want {
            failures.push(format!("{policy}: want {want:?}, got {got:?}"));
        }
    }
    for (path, sni) in [
        ("conflicted-without-section-name", "other.example.com"),
        ("conflicted-with-section-name", "other.example.com"),
        ("not-conflicted-with-section-name", "other.example.com"),
        ("not-conflicted-without-section-name", HOST),
        ("conflicted-by-age", "older.example.com"),
    ] {
        let r = get(addr(port), &format!("/backendtlspolicy-{path}"));
        let want = (200, Some(sni.to_string()));
        if outcome(&r) != want {
            failures.push(format!("{path}: want {want:?}, got {:?}", outcome(&r)));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", served.gw.stderr());
}

/// BackendTLSPolicyInvalidCACertificateRef (a missing ConfigMap, one without `ca.crt`)
/// and BackendTLSPolicyInvalidKind (a reference to another kind): Accepted False with
/// NoValidCACertificate, ResolvedRefs False with InvalidCACertificateRef or InvalidKind;
/// the route stays Accepted, and its requests fail closed with a 5xx. The backends speak
/// plaintext HTTP: a gateway falling back to plaintext would get a 200 from them.
#[test]
fn invalid_ca_certificate_refs_and_kinds_are_reported_and_fail_closed() {
    let mut infra = Infra::new();
    let cases = [
        (
            "nonexistent-ca-certificate-ref",
            "{group: '', kind: ConfigMap, name: nonexistent-ca-certificate}",
            "InvalidCACertificateRef",
        ),
        (
            "malformed-ca-certificate-ref",
            "{group: '', kind: ConfigMap, name: malformed-ca-certificate}",
            "InvalidCACertificateRef",
        ),
        (
            "invalid-kind",
            "{group: invalid.io, kind: InvalidKind, name: invalid-kind}",
            "InvalidKind",
        ),
    ];
    let mut policies = Vec::new();
    for (name, ca_ref, _) in &cases {
        infra.add(INFRA, &case_service(name), None);
        policies.push((
            *name,
            format!("{{caCertificateRefs: [{ca_ref}], hostname: {HOST}}}"),
        ));
    }
    let port = listener_port();
    let mut docs = policy_per_case(port, "backendtlspolicy-invalid-refs", &policies);
    docs.push(format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: malformed-ca-certificate, namespace: {INFRA}}}\ndata: {{}}\n"
    ));
    let served = infra.serve(&docs);
    let status = served.status();
    assert_eq!(
        route_status(&status, "backendtlspolicy-invalid-refs", "Accepted"),
        "True",
        "the route is Accepted"
    );
    let mut failures = Vec::new();
    for (name, _, reason) in &cases {
        let a = cond(&status, name, "Accepted");
        if a != pair("False", "NoValidCACertificate") {
            failures.push(format!("{name}: Accepted {a:?}"));
        }
        let rr = cond(&status, name, "ResolvedRefs");
        if rr != pair("False", reason) {
            failures.push(format!("{name}: ResolvedRefs {rr:?}, want {reason}"));
        }
        let r = get(addr(port), &case_path(name));
        if ![500, 502, 503].contains(&r.status) {
            failures.push(format!("{name}: status {}", r.status));
        }
        if infra.echo(&case_service(name)).connections() != 0 {
            failures.push(format!("{name}: the backend was connected to"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", served.gw.stderr());
}

/// BackendTLSPolicyObservedGenerationBump: every condition carries the policy's
/// generation; a spec change with a new generation (here the hostname) is reflected in
/// status and, on the wire, in the SNI.
#[test]
fn policy_conditions_follow_the_generation() {
    let ca = Ca::new("tls-checks CA");
    let mut infra = Infra::new();
    infra.add_tls(INFRA, "tls-backend", &ca.server(&[HOST, "foo.example.com"]));
    let port = listener_port();
    let manifest = |generation: i64, hostname: &str| {
        infra.manifest(&[
            &routed(port, &[("", "tls-backend")]),
            &ca.config_map(INFRA, "tls-checks-ca-certificate"),
            &backend_tls_policy(
                "observed-generation-bump",
                &format!("generation: {generation}"),
                &["tls-backend"],
                &validate_with("tls-checks-ca-certificate", hostname),
            ),
        ])
    };
    let generations = |served: &Served| {
        let st = served.status();
        ["Accepted", "ResolvedRefs"].map(|t| {
            let (s, _, g) = policy_condition(&st, "observed-generation-bump", GW, t);
            (s, g)
        })
    };
    let served = Served::start(&manifest(1, HOST)).expect("gatewayd starts");
    let t = |g| (String::from("True"), g);
    assert_eq!(generations(&served), [t(1), t(1)]);
    assert_eq!(
        outcome(&get(addr(port), "/")),
        (200, Some(HOST.to_string()))
    );

    served.rewrite(&manifest(2, "foo.example.com"));
    wait_for(
        std::time::Duration::from_millis(2500),
        || match generations(&served) {
            g if g == [t(2), t(2)] => Ok(()),
            g => Err(format!("{g:?}")),
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", served.gw.stderr()));
    assert_eq!(
        outcome(&get(addr(port), "/")),
        (200, Some("foo.example.com".to_string()))
    );
    let p = status_item(
        &served.status(),
        "BackendTLSPolicy",
        "observed-generation-bump",
    )
    .clone();
    assert_eq!(p["metadata"]["generation"], 2);
}

/// GatewayInvalidTLSBackendConfiguration: a `spec.tls.backend.clientCertificateRef`
/// that is missing, of another group or kind, malformed, or in another namespace without
/// a ReferenceGrant leaves the Gateway Accepted with ResolvedRefs False and the reason
/// the conformance suite expects.
#[test]
fn invalid_gateway_backend_client_certificate_refs_are_reported() {
    let client_ca = Ca::new("client CA");
    let infra = Infra::new();
    let cases = [
        (
            "gateway-client-certificate-nonexistent-secret",
            "{name: nonexistent-secret}",
            "InvalidClientCertificateRef",
        ),
        (
            "gateway-client-certificate-unsupported-group",
            "{group: wrong.group.company.io, kind: Secret, name: client-cert}",
            "InvalidClientCertificateRef",
        ),
        (
            "gateway-client-certificate-unsupported-kind",
            "{group: '', kind: WrongKind, name: client-cert}",
            "InvalidClientCertificateRef",
        ),
        (
            "gateway-client-certificate-malformed-secret",
            "{name: malformed-secret}",
            "InvalidClientCertificateRef",
        ),
        (
            "gateway-client-certificate-missing-reference-grant",
            "{namespace: gateway-conformance-web-backend, name: client-cert}",
            "RefNotPermitted",
        ),
    ];
    let mut docs = vec![
        client_ca.client("gw.example.com").secret(INFRA, "client-cert"),
        client_ca
            .client("gw.example.com")
            .secret("gateway-conformance-web-backend", "client-cert"),
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: malformed-secret, namespace: {INFRA}}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: not a certificate, tls.key: not a key}}\n"),
    ];
    for (name, r, _) in &cases {
        docs.push(gateway(
            name,
            &[http_listener("http", listener_port())],
            Some(&format!("{{backend: {{clientCertificateRef: {r}}}}}")),
        ));
    }
    let served = infra.serve(&docs);
    let status = served.status();
    let mut failures = Vec::new();
    for (name, _, reason) in &cases {
        let (s, r, _) = gateway_condition(&status, name, "ResolvedRefs");
        if (s.as_str(), r.as_str()) != ("False", *reason) {
            failures.push(format!("{name}: ResolvedRefs ({s}, {r}), want {reason}"));
        }
        let (s, r, _) = gateway_condition(&status, name, "Accepted");
        if (s.as_str(), r.as_str()) != ("True", "Accepted") {
            failures.push(format!("{name}: Accepted ({s}, {r})"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
