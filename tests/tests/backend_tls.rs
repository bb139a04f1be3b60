//! Re-encrypt with BackendTLSPolicy: the real gatewayd opens verified TLS to real TLS
//! backends (certificates made at run time) that report the SNI, ALPN and client
//! certificate they saw.

use gateway_tests::{
    echo::Echo,
    scenario::{listener_port, same_namespace_gateway, send, Infra, Req, INFRA},
    tls::Ca,
};

fn policy(name: &str, service: &str, ca_map: &str, hostname: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: {service}}}]\n  validation:\n    caCertificateRefs: [{{group: '', kind: ConfigMap, name: {ca_map}}}]\n    hostname: {hostname}\n"
    )
}

fn route(name: &str, service: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n  - backendRefs: [{{name: {service}, port: 8080}}]\n"
    )
}

#[test]
fn http_to_a_tls_backend_sends_the_policy_hostname_as_sni_and_verifies_it() {
    let ca = Ca::new("backend-ca");
    let leaf = ca.server(&["backend.example.test"]);
    let mut infra = Infra::new();
    infra.add_echo(INFRA, "tls-backend", Echo::start_tls("tls-backend", &leaf));
    let port = listener_port();
    let served = infra.serve(&[
        &same_namespace_gateway(port),
        &route("r", "tls-backend"),
        &ca.config_map(INFRA, "backend-ca"),
        &policy("p", "tls-backend", "backend-ca", "backend.example.test"),
    ]);
    let gw = format!("127.0.0.1:{port}").parse().expect("addr");
    let reply = send(gw, &Req::get("/")).expect("request");
    assert_eq!(reply.status, 200, "{}", served.gw.stderr());
    let json = reply.json();
    assert_eq!(json["pod"], "tls-backend");
    assert_eq!(json["tls"]["serverName"], "backend.example.test");
    assert_eq!(json["tls"]["negotiatedProtocol"], "http/1.1");
}
