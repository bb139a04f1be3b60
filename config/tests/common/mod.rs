//! Helpers shared by the config integration tests: compile manifests, read route status,
//! find a bind.

// Each test binary uses its own subset.
#![allow(dead_code)]

use gateway_config::{compile, parse_str, Bind, CompileOptions, Compiled};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Gateway `infra/gw` (generation 3): `http` (port 80) admits routes of `infra` only;
/// `wild` (port 8000, `*.example.com`) admits every namespace labelled `shared: "yes"`.
pub const GW: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 3}
spec:
  gatewayClassName: gatewayd
  addresses: [{type: IPAddress, value: 127.0.0.1}]
  listeners:
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes: {namespaces: {from: Same}}
  - name: wild
    protocol: HTTP
    port: 8000
    hostname: "*.example.com"
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {shared: "yes"}}}}
"#;

pub fn build(docs: &[&str]) -> Compiled {
    let text = docs.join("\n---\n");
    let (m, warnings) = parse_str("test.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    compile(&m, &CompileOptions::default())
}

pub fn cond<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {conds:?}"))
}

pub fn route(c: &Compiled, kind: &str, name: &str, gw: &str) -> Vec<Condition> {
    let (ns, name) = name.split_once('/').expect("ns/name");
    c.status
        .route_parent_conditions(kind, ns, name, gw)
        .unwrap_or_else(|| {
            panic!(
                "no parent status for {kind} {ns}/{name} -> {gw}: {:#?}",
                c.status
            )
        })
        .to_vec()
}

pub fn http_route(ns: &str, name: &str, parent: &str, extra: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{parent}]\n{extra}"
    )
}

pub fn bind(c: &Compiled, port: u16) -> &Bind {
    c.table
        .bind_for(format!("127.0.0.1:{port}").parse().expect("addr"))
        .expect("bind")
}
