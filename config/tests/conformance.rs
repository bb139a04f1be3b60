//! Table-driven scenarios mirroring the Gateway API conformance tests: every status
//! reason, hostname intersection, listener isolation and match precedence.

// Case tables are tuples, read row by row like the spec tables they mirror.
#![allow(clippy::type_complexity)]

mod common;

use common::{bind, build, cond, http_route, route, GW};
use gateway_config::{BackendTls, Compiled, TrustRoots};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

fn pem(name: &str) -> String {
    std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("test data")
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn tls_secret(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&pem("ec.crt"), 4),
        indent(&pem("ec.sec1.key"), 4)
    )
}

fn ca_config_map(ns: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata:\n  ca.crt: |\n{}",
        indent(body, 4)
    )
}

const INFRA: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: infra, labels: {shared: "yes"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {shared: "yes"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec:
  ports: [{name: http, port: 8080}, {name: https, port: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: infra, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9080}, {name: https, port: 9443}]
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: infra}
spec:
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  ports: [{port: 8080}]
"#;

fn listener_conds(c: &Compiled, gw: &str, listener: &str) -> (Vec<Condition>, i32, Vec<String>) {
    let (ns, name) = gw.split_once('/').expect("ns/name");
    let s = c.status.gateway(ns, name).expect("gateway status");
    let l = s
        .listeners
        .iter()
        .flatten()
        .find(|l| l.name == listener)
        .expect("listener status");
    let kinds = l
        .supported_kinds
        .iter()
        .flatten()
        .map(|k| k.kind.clone())
        .collect();
    (l.conditions.clone(), l.attached_routes, kinds)
}

fn assert_cond(conds: &[Condition], type_: &str, status: &str, reason: &str, generation: i64) {
    let c = cond(conds, type_);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.observed_generation),
        (status, reason, Some(generation)),
        "{type_}: {c:?}"
    );
}

#[test]
fn route_parent_reasons_mirror_the_conformance_scenarios() {
    // (scenario, route yaml, expected Accepted, expected ResolvedRefs)
    let grant = r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: g, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service}]"#;
    let cases: &[(&str, String, (&str, &str), (&str, &str), bool)] = &[
        ("HTTPRouteSimpleSameNamespace", http_route("infra", "r", "{name: gw}", "  rules: [{backendRefs: [{name: web, port: 8080}]}]\n"), ("True", "Accepted"), ("True", "ResolvedRefs"), false),
        ("HTTPRouteInvalidCrossNamespaceBackendRef", http_route("infra", "r", "{name: gw}", "  rules: [{backendRefs: [{name: web, namespace: apps, port: 8080}]}]\n"), ("True", "Accepted"), ("False", "RefNotPermitted"), false),
        ("HTTPRouteCrossNamespace backend with ReferenceGrant", http_route("infra", "r", "{name: gw}", "  rules: [{backendRefs: [{name: web, namespace: apps, port: 8080}]}]\n"), ("True", "Accepted"), ("True", "ResolvedRefs"), true),
        ("HTTPRouteInvalidNonExistentBackendRef", http_route("infra", "r", "{name: gw}", "  rules: [{backendRefs: [{name: nope, port: 8080}]}]\n"), ("True", "Accepted"), ("False", "BackendNotFound"), false),
        ("HTTPRouteInvalidBackendRefUnknownKind", http_route("infra", "r", "{name: gw}", "  rules: [{backendRefs: [{group: unknown.io, kind: Thing, name: web, port: 8080}]}]\n"), ("True", "Accepted"), ("False", "InvalidKind"), false),
        ("backendRef to a port the Service lacks", http_route("infra", "r", "{name: gw}", "  rules: [{backendRefs: [{name: web, port: 1}]}]\n"), ("True", "Accepted"), ("False", "BackendNotFound"), false),
        ("HTTPRouteInvalidCrossNamespaceParentRef", http_route("other", "r", "{name: gw, namespace: infra}", ""), ("False", "NotAllowedByListeners"), ("True", "ResolvedRefs"), false),
        ("HTTPRouteInvalidParentRefNotMatchingSectionName", http_route("infra", "r", "{name: gw, sectionName: nope}", ""), ("False", "NoMatchingParent"), ("True", "ResolvedRefs"), false),
        ("HTTPRouteInvalidParentRefNotMatchingListenerPort", http_route("infra", "r", "{name: gw, port: 81}", ""), ("False", "NoMatchingParent"), ("True", "ResolvedRefs"), false),
        ("parentRef to a Gateway that does not exist", http_route("infra", "r", "{name: gw, sectionName: http}", "").replace("name: gw,", "name: missing,"), ("False", "NoMatchingParent"), ("True", "ResolvedRefs"), false),
        ("HTTPRouteHostnameIntersection without a match", http_route("apps", "r", "{name: gw, namespace: infra, sectionName: wild}", "  hostnames: [foo.example.net]\n"), ("False", "NoMatchingListenerHostname"), ("True", "ResolvedRefs"), false),
        ("listener namespace Selector admits a labelled namespace", http_route("apps", "r", "{name: gw, namespace: infra, sectionName: wild}", "  hostnames: ['*.com']\n"), ("True", "Accepted"), ("True", "ResolvedRefs"), false),
        ("listener namespace Selector refuses an unlabelled namespace", http_route("other", "r", "{name: gw, namespace: infra, sectionName: wild}", ""), ("False", "NotAllowedByListeners"), ("True", "ResolvedRefs"), false),
        ("unsupported filter type on the only rule", http_route("infra", "r", "{name: gw}", "  rules: [{filters: [{type: CORS, cors: {allowOrigins: ['https://a.com']}}], backendRefs: [{name: web, port: 8080}]}]\n"), ("False", "UnsupportedValue"), ("True", "ResolvedRefs"), false),
        ("ExtensionRef to an unsupported filter kind", http_route("infra", "r", "{name: gw}", "  rules: [{filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: F, name: f}}], backendRefs: [{name: web, port: 8080}]}]\n"), ("True", "Accepted"), ("False", "InvalidKind"), false),
    ];
    for (scenario, r, accepted, resolved, with_grant) in cases {
        let mut docs = vec![INFRA, GW, r.as_str()];
        if *with_grant {
            docs.push(grant);
        }
        let c = build(&docs);
        let (ns, _) = if r.contains("namespace: apps}") {
            ("apps", ())
        } else if r.contains("namespace: other}") {
            ("other", ())
        } else {
            ("infra", ())
        };
        let gw = if r.contains("name: missing") {
            "missing"
        } else {
            "gw"
        };
        let conds = route(&c, "HTTPRoute", &format!("{ns}/r"), gw);
        let a = cond(&conds, "Accepted");
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            *accepted,
            "{scenario}: {a:?}"
        );
        assert_eq!(a.observed_generation, Some(1), "{scenario}");
        let rr = cond(&conds, "ResolvedRefs");
        assert_eq!(
            (rr.status.as_str(), rr.reason.as_str()),
            *resolved,
            "{scenario}: {rr:?}"
        );
    }
}

#[test]
fn gateway_and_listener_conditions_carry_the_gateway_generation() {
    let c = build(&[INFRA, GW, &http_route("infra", "r", "{name: gw}", "")]);
    let s = c.status.gateway("infra", "gw").expect("gw");
    let conds = s.conditions.clone().expect("conditions");
    assert_cond(&conds, "Accepted", "True", "Accepted", 3);
    assert_cond(&conds, "Programmed", "True", "Programmed", 3);
    let (l, attached, kinds) = listener_conds(&c, "infra/gw", "http");
    assert_cond(&l, "Accepted", "True", "Accepted", 3);
    assert_cond(&l, "Programmed", "True", "Programmed", 3);
    assert_cond(&l, "ResolvedRefs", "True", "ResolvedRefs", 3);
    assert_cond(&l, "Conflicted", "False", "NoConflicts", 3);
    assert_eq!(attached, 1);
    assert_eq!(kinds, vec!["HTTPRoute", "GRPCRoute"]);
    let (_, attached, _) = listener_conds(&c, "infra/gw", "wild");
    // No sectionName: the route also attaches to `wild`, whose Selector admits the
    // labelled namespace `infra`.
    assert_eq!(attached, 1);
}

#[test]
fn listener_reasons_mirror_the_conformance_scenarios() {
    let secret_ok = tls_secret("infra", "cert");
    let secret_other_ns = tls_secret("apps", "cert");
    let malformed = "apiVersion: v1\nkind: Secret\nmetadata: {name: bad, namespace: infra}\ntype: kubernetes.io/tls\nstringData: {tls.crt: nope, tls.key: nope}";
    let grant = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: apps}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}]\n  to: [{group: \"\", kind: Secret, name: cert}]";
    let gw = |listener: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: t, namespace: infra}}\nspec:\n  gatewayClassName: x\n  addresses: [{{value: 127.0.0.1}}]\n  listeners:\n{listener}")
    };
    let https = |refs: &str| {
        format!("  - {{name: l, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{refs}]}}}}\n")
    };
    // (scenario, gateway listeners, extra docs, listener name, [(type, status, reason)])
    let cases: Vec<(&str, String, Vec<&str>, &str, Vec<(&str, &str, &str)>)> = vec![
        ("HTTPS listener with a valid Secret", gw(&https("{name: cert}")), vec![&secret_ok], "l", vec![("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs"), ("Programmed", "True", "Programmed")]),
        ("GatewayInvalidTLSConfiguration nonexistent secret", gw(&https("{name: nope}")), vec![], "l", vec![("ResolvedRefs", "False", "InvalidCertificateRef"), ("Programmed", "False", "Invalid")]),
        ("GatewayInvalidTLSConfiguration unsupported group", gw(&https("{group: wrong.io, kind: Secret, name: cert}")), vec![&secret_ok], "l", vec![("ResolvedRefs", "False", "InvalidCertificateRef")]),
        ("GatewayInvalidTLSConfiguration unsupported kind", gw(&https("{kind: WrongKind, name: cert}")), vec![&secret_ok], "l", vec![("ResolvedRefs", "False", "InvalidCertificateRef")]),
        ("GatewayInvalidTLSConfiguration malformed secret", gw(&https("{name: bad}")), vec![malformed], "l", vec![("ResolvedRefs", "False", "InvalidCertificateRef"), ("Programmed", "False", "Invalid")]),
        ("GatewaySecretMissingReferenceGrant", gw(&https("{name: cert, namespace: apps}")), vec![&secret_other_ns], "l", vec![("ResolvedRefs", "False", "RefNotPermitted")]),
        ("GatewaySecretReferenceGrantSpecific", gw(&https("{name: cert, namespace: apps}")), vec![&secret_other_ns, grant], "l", vec![("ResolvedRefs", "True", "ResolvedRefs"), ("Programmed", "True", "Programmed")]),
        ("GatewayInvalidRouteKind", gw("  - {name: l, protocol: HTTP, port: 80, allowedRoutes: {kinds: [{kind: FooRoute}]}}\n"), vec![], "l", vec![("ResolvedRefs", "False", "InvalidRouteKinds")]),
        ("unsupported protocol", gw("  - {name: l, protocol: UDP, port: 53}\n"), vec![], "l", vec![("Accepted", "False", "UnsupportedProtocol"), ("Programmed", "False", "Invalid")]),
        ("HostnameConflict on a shared port", gw("  - {name: l, protocol: HTTP, port: 80, hostname: a.com}\n  - {name: m, protocol: HTTP, port: 80, hostname: a.com}\n"), vec![], "l", vec![("Conflicted", "True", "HostnameConflict"), ("Programmed", "False", "Invalid")]),
        ("ProtocolConflict on a shared port", gw(&format!("  - {{name: l, protocol: HTTP, port: 443}}\n{}", https("{name: cert}").replace("name: l", "name: m"))), vec![&secret_ok], "l", vec![("Conflicted", "True", "ProtocolConflict")]),
        ("TLS passthrough needs no certificate", gw("  - {name: l, protocol: TLS, port: 443, tls: {mode: Passthrough}}\n"), vec![], "l", vec![("Accepted", "True", "Accepted"), ("Programmed", "True", "Programmed")]),
    ];
    for (scenario, g, extra, lname, want) in cases {
        let mut docs = vec![INFRA, g.as_str()];
        docs.extend(extra);
        let c = build(&docs);
        let (conds, _, _) = listener_conds(&c, "infra/t", lname);
        for (t, s, r) in want {
            let got = cond(&conds, t);
            assert_eq!(
                (got.status.as_str(), got.reason.as_str()),
                (s, r),
                "{scenario}: {t}: {got:?}"
            );
        }
    }
}

#[test]
fn gateway_level_reasons_cover_addresses_backend_client_certificate_and_frontend_validation() {
    let base = |spec_extra: &str, listeners: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: t, namespace: infra}}\nspec:\n  gatewayClassName: x\n{spec_extra}  listeners:\n{listeners}")
    };
    let http = "  - {name: l, protocol: HTTP, port: 80}\n";
    let secret = tls_secret("infra", "cert");
    let secret_apps = tls_secret("apps", "client");
    let c = build(&[
        INFRA,
        &base("  addresses: [{type: Hostname, value: foo.com}]\n", http),
    ]);
    let g = c
        .status
        .gateway("infra", "t")
        .expect("gw")
        .conditions
        .clone()
        .expect("c");
    assert_cond(&g, "Accepted", "False", "UnsupportedAddress", 1);

    for (scenario, tls, docs, reason) in [
        (
            "GatewayInvalidTLSBackendConfiguration nonexistent secret",
            "  tls: {backend: {clientCertificateRef: {name: nope}}}\n",
            vec![],
            ("False", "InvalidClientCertificateRef"),
        ),
        (
            "GatewayInvalidTLSBackendConfiguration unsupported kind",
            "  tls: {backend: {clientCertificateRef: {kind: ConfigMap, name: cert}}}\n",
            vec![secret.as_str()],
            ("False", "InvalidClientCertificateRef"),
        ),
        (
            "GatewayInvalidTLSBackendConfiguration missing grant",
            "  tls: {backend: {clientCertificateRef: {name: client, namespace: apps}}}\n",
            vec![secret_apps.as_str()],
            ("False", "RefNotPermitted"),
        ),
        (
            "GatewayTLSBackendClientCertificate",
            "  tls: {backend: {clientCertificateRef: {name: cert}}}\n",
            vec![secret.as_str()],
            ("True", "ResolvedRefs"),
        ),
    ] {
        let g = base(tls, http);
        let mut all = vec![INFRA, g.as_str()];
        all.extend(docs);
        let c = build(&all);
        let conds = c
            .status
            .gateway("infra", "t")
            .expect("gw")
            .conditions
            .clone()
            .expect("c");
        let r = cond(&conds, "ResolvedRefs");
        assert_eq!((r.status.as_str(), r.reason.as_str()), reason, "{scenario}");
        assert_cond(&conds, "Accepted", "True", "Accepted", 1);
    }

    // GatewayWithInvalidClientCertificateValidation: wrong CA kind on the default.
    let g = base(
        "  tls: {frontend: {default: {validation: {caCertificateRefs: [{group: '', kind: Service, name: x}]}}}}\n",
        "  - {name: l, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: cert}]}}\n",
    );
    let c = build(&[INFRA, &g, &secret]);
    let (l, _, _) = listener_conds(&c, "infra/t", "l");
    assert_cond(&l, "ResolvedRefs", "False", "InvalidCACertificateKind", 1);
    assert_cond(&l, "Accepted", "False", "NoValidCACertificate", 1);
    assert_cond(&l, "Programmed", "False", "Invalid", 1);
}

#[test]
fn a_gateway_with_no_programmable_listener_is_not_programmed() {
    let gw = |name: &str, spec_extra: &str, listeners: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra, generation: 2, creationTimestamp: \"2021-01-01T00:00:00Z\"}}\nspec:\n  gatewayClassName: x\n{spec_extra}  listeners:\n{listeners}")
    };
    let here = "  addresses: [{value: 127.0.0.1}]\n";
    // An older Gateway holding 127.0.0.1:9000 for plain HTTP.
    let holder = gw(
        "holder",
        here,
        "  - {name: l, protocol: HTTP, port: 9000}\n",
    )
    .replace("2021-01-01", "2020-01-01");
    // (scenario, Gateway, Accepted, Programmed, listed addresses)
    let cases: Vec<(&str, String, (&str, &str), (&str, &str), bool)> = vec![
        ("an unsupported address type", gw("t", "  addresses: [{type: Hostname, value: foo.com}]\n", "  - {name: l, protocol: HTTP, port: 80}\n"), ("False", "UnsupportedAddress"), ("False", "Invalid"), false),
        ("an address that is not an IP", gw("t", "  addresses: [{type: IPAddress, value: not-an-ip}]\n", "  - {name: l, protocol: HTTP, port: 80}\n"), ("False", "UnsupportedAddress"), ("False", "Invalid"), false),
        ("its only listener has an unsupported protocol", gw("t", here, "  - {name: l, protocol: UDP, port: 53}\n"), ("True", "ListenersNotValid"), ("False", "Invalid"), false),
        ("its only listener's certificate Secret is missing", gw("t", here, "  - {name: l, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: nope}]}}\n"), ("True", "Accepted"), ("False", "Invalid"), false),
        ("its only listener's port is held by an older Gateway for another protocol", gw("t", here, "  - {name: l, protocol: HTTPS, port: 9000, tls: {certificateRefs: [{name: cert}]}}\n"), ("True", "ListenersNotValid"), ("False", "Invalid"), false),
        ("one valid listener is enough", gw("t", here, "  - {name: l, protocol: UDP, port: 53}\n  - {name: m, protocol: HTTP, port: 80}\n"), ("True", "ListenersNotValid"), ("True", "Programmed"), true),
    ];
    let secret = tls_secret("infra", "cert");
    for (scenario, g, accepted, programmed, addresses) in cases {
        let c = build(&[INFRA, &holder, &g, &secret]);
        let status = c.status.gateway("infra", "t").expect("gateway status");
        let conds = status.conditions.clone().expect("conditions");
        let a = cond(&conds, "Accepted");
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            accepted,
            "{scenario}: {a:?}"
        );
        let p = cond(&conds, "Programmed");
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            programmed,
            "{scenario}: {p:?}"
        );
        assert_eq!(p.observed_generation, Some(2), "{scenario}");
        assert_eq!(
            status.addresses.is_some(),
            addresses,
            "{scenario}: {:?}",
            status.addresses
        );
        let served = c.table.listeners().iter().any(|l| &*l.gateway.name == "t");
        assert_eq!(served, addresses, "{scenario}: a listener in the table");
    }
}

#[test]
fn route_conditions_carry_the_route_generation_after_a_bump() {
    let manifest = |generation: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: infra{generation}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: nope, port: 8080}}]}}]")
    };
    for (generation, want) in [("", 1), (", generation: 1", 1), (", generation: 7", 7)] {
        let c = build(&[INFRA, GW, &manifest(generation)]);
        let conds = route(&c, "HTTPRoute", "infra/r", "gw");
        // The Gateway's own generation (3) is not the route's.
        assert_cond(&conds, "Accepted", "True", "Accepted", want);
        assert_cond(&conds, "ResolvedRefs", "False", "BackendNotFound", want);
        let item = c.status.find("HTTPRoute", "infra", "r").expect("item");
        assert_eq!(item.metadata.generation, want);
    }
}

#[test]
fn gateways_of_another_controller_are_ignored_and_without_classes_all_are_served() {
    let class = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: gatewayd}\nspec: {controllerName: someone.else/controller}";
    let c = build(&[
        INFRA,
        GW,
        class,
        &http_route("infra", "r", "{name: gw}", ""),
    ]);
    assert!(c.status.gateway("infra", "gw").is_none());
    assert!(c.table.binds().is_empty());
    let r = c
        .status
        .find("HTTPRoute", "infra", "r")
        .expect("route item");
    let json = serde_json::to_value(&r.status).expect("json");
    assert_eq!(json["parents"], serde_json::json!([]));
    let c = build(&[INFRA, GW]);
    assert!(c.status.gateway("infra", "gw").is_some());
}

#[test]
fn hostname_intersection_and_listener_isolation_select_the_right_rules() {
    let gw = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: iso, namespace: infra}
spec:
  gatewayClassName: x
  addresses: [{value: 127.0.0.1}]
  listeners:
  - {name: empty, protocol: HTTP, port: 80}
  - {name: wild, protocol: HTTP, port: 80, hostname: "*.example.com"}
  - {name: abc, protocol: HTTP, port: 80, hostname: abc.example.com}"#;
    let r_wild = http_route("infra", "wild", "{name: iso, sectionName: wild}", "  hostnames: ['*.com']\n  rules: [{matches: [{path: {type: PathPrefix, value: /wild}}], backendRefs: [{name: web, port: 8080}]}]\n");
    let r_abc = http_route("infra", "abc", "{name: iso, sectionName: abc}", "  rules: [{matches: [{path: {type: PathPrefix, value: /abc}}], backendRefs: [{name: web2, port: 8080}]}]\n");
    let r_empty = http_route(
        "infra",
        "empty",
        "{name: iso, sectionName: empty}",
        "  hostnames: [very.specific.com]\n  rules: [{backendRefs: [{name: web, port: 8080}]}]\n",
    );
    let c = build(&[INFRA, gw, &r_wild, &r_abc, &r_empty]);
    let b = bind(&c, 80);
    let hit = |host: &str, path: &str| {
        c.table
            .route_http(b, host, "GET", path, "", |_| None)
            .map(|m| {
                (
                    m.listener.name.to_string(),
                    m.rule.source.route.name.to_string(),
                )
            })
    };
    // *.example.com ∩ *.com = *.example.com
    assert_eq!(
        hit("foo.example.com", "/wild/x"),
        Some(("wild".into(), "wild".into()))
    );
    assert_eq!(
        hit("a.b.example.com", "/wild"),
        Some(("wild".into(), "wild".into()))
    );
    // GatewayHTTPListenerIsolation: abc.example.com is served by the abc listener only.
    assert_eq!(
        hit("abc.example.com", "/abc"),
        Some(("abc".into(), "abc".into()))
    );
    assert_eq!(hit("abc.example.com", "/wild"), None);
    assert_eq!(
        hit("ABC.example.com:8080", "/abc/d"),
        Some(("abc".into(), "abc".into()))
    );
    // very.specific.com:1234 matches very.specific.com on the catch-all listener.
    assert_eq!(
        hit("very.specific.com:1234", "/"),
        Some(("empty".into(), "empty".into()))
    );
    assert_eq!(hit("example.com", "/wild"), None);
    assert_eq!(hit("nothing.net", "/"), None);
}

fn m_name(m: &gateway_config::RouteMatch<'_>) -> String {
    m.rule.source.route.to_string()
}

#[test]
fn rules_follow_gateway_api_precedence() {
    let older = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: z-older, namespace: infra, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /same}}]
    backendRefs: [{name: web, port: 8080}]"#;
    let newer = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-newer, namespace: infra, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /same}}]
    backendRefs: [{name: web, port: 8080}]
  - name: exact
    matches: [{path: {type: Exact, value: /foo/bar}}]
    backendRefs: [{name: web, port: 8080}]
  - name: long-prefix
    matches: [{path: {type: PathPrefix, value: /foo/}}]
    backendRefs: [{name: web, port: 8080}]
  - name: short-prefix
    matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: web, port: 8080}]
  - name: method
    matches: [{path: {type: PathPrefix, value: /foo}, method: POST}]
    backendRefs: [{name: web, port: 8080}]
  - name: one-header
    matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: X-A, value: a}]}]
    backendRefs: [{name: web, port: 8080}]
  - name: two-headers
    matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: x-a, value: a}, {name: x-b, type: RegularExpression, value: "b+"}]}]
    backendRefs: [{name: web, port: 8080}]
  - name: query
    matches: [{path: {type: PathPrefix, value: /h}, queryParams: [{name: q, value: "1"}]}]
    backendRefs: [{name: web, port: 8080}]
  - name: regex
    matches: [{path: {type: RegularExpression, value: "/re/[0-9]+"}}]
    backendRefs: [{name: web, port: 8080}]
  - name: two-headers-no-method
    matches: [{path: {type: PathPrefix, value: /mh}, headers: [{name: x-a, value: a}, {name: x-b, value: b}]}]
    backendRefs: [{name: web, port: 8080}]
  - name: method-no-headers
    matches: [{path: {type: PathPrefix, value: /mh}, method: GET}]
    backendRefs: [{name: web, port: 8080}]
  - name: two-queries
    matches: [{path: {type: PathPrefix, value: /hq}, queryParams: [{name: q, value: "1"}, {name: r, value: "2"}]}]
    backendRefs: [{name: web, port: 8080}]
  - name: one-header-no-query
    matches: [{path: {type: PathPrefix, value: /hq}, headers: [{name: x-a, value: a}]}]
    backendRefs: [{name: web, port: 8080}]
  - name: first-of-two
    matches: [{path: {type: PathPrefix, value: /dup}}]
    backendRefs: [{name: web, port: 8080}]
  - name: second-of-two
    matches: [{path: {type: PathPrefix, value: /dup}}]
    backendRefs: [{name: web, port: 8080}]"#;
    // Equal creationTimestamps: `namespace/name` decides. Listed in the input in the
    // opposite order so that input order cannot be what decides.
    let same_time = |ns: &str, name: &str, section: &str, path: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"2022-01-01T00:00:00Z\"}}\nspec:\n  parentRefs: [{{name: gw, namespace: infra, sectionName: {section}}}]\n  rules: [{{matches: [{{path: {{type: PathPrefix, value: {path}}}}}], backendRefs: [{{name: web, namespace: infra, port: 8080}}]}}]")
    };
    let tie_b = same_time("infra", "b-same-time", "http", "/tie");
    let tie_a = same_time("infra", "a-same-time", "http", "/tie");
    // On the `wild` listener, which admits both namespaces: `apps/z-ns` comes before
    // `infra/a-ns` (namespace first), though `a-ns` comes before `z-ns` by name alone.
    let ns_infra = same_time("infra", "a-ns", "wild", "/ns-tie");
    let ns_apps = same_time("apps", "z-ns", "wild", "/ns-tie");
    let grant = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: infra}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: apps}]\n  to: [{group: \"\", kind: Service}]";
    let c = build(&[
        INFRA, GW, older, newer, &tie_b, &tie_a, &ns_infra, &ns_apps, grant,
    ]);
    let b = bind(&c, 80);
    let headers = |pairs: &'static [(&'static str, &'static str)]| {
        move |n: &str| pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
    };
    let cases: &[(
        &str,
        &str,
        &str,
        &str,
        &'static [(&'static str, &'static str)],
        &str,
    )] = &[
        (
            "exact path beats longer prefix",
            "GET",
            "/foo/bar",
            "",
            &[],
            "exact",
        ),
        (
            "longest prefix wins",
            "GET",
            "/foo/baz",
            "",
            &[],
            "long-prefix",
        ),
        (
            "prefix matches whole segments only",
            "GET",
            "/foobar",
            "",
            &[],
            "short-prefix",
        ),
        (
            "trailing slash prefix matches the bare segment",
            "GET",
            "/foo",
            "",
            &[],
            "long-prefix",
        ),
        (
            "more header matches win",
            "GET",
            "/h",
            "",
            &[("x-a", "a"), ("x-b", "bbb")],
            "two-headers",
        ),
        (
            "header regex is a full match",
            "GET",
            "/h",
            "",
            &[("x-a", "a"), ("x-b", "bbc")],
            "one-header",
        ),
        ("query param match", "GET", "/h", "q=1&q=2", &[], "query"),
        (
            "only the first query value counts",
            "GET",
            "/h",
            "q=2&q=1",
            &[],
            "short-prefix",
        ),
        ("regex path", "GET", "/re/123", "", &[], "regex"),
        (
            "oldest route wins a tie",
            "GET",
            "/same",
            "",
            &[],
            "z-older",
        ),
        (
            "a method match beats more header matches",
            "GET",
            "/mh",
            "",
            &[("x-a", "a"), ("x-b", "b")],
            "method-no-headers",
        ),
        (
            "header matches still apply when the method does not match",
            "POST",
            "/mh",
            "",
            &[("x-a", "a"), ("x-b", "b")],
            "two-headers-no-method",
        ),
        (
            "one header match beats more query param matches",
            "GET",
            "/hq",
            "q=1&r=2",
            &[("x-a", "a")],
            "one-header-no-query",
        ),
        (
            "query param matches still apply without the header",
            "GET",
            "/hq",
            "q=1&r=2",
            &[],
            "two-queries",
        ),
        (
            "equal creationTimestamp: namespace/name decides",
            "GET",
            "/tie",
            "",
            &[],
            "a-same-time",
        ),
        (
            "same route, identical matches: the first rule wins",
            "GET",
            "/dup",
            "",
            &[],
            "first-of-two",
        ),
    ];
    for (scenario, method, path, query, hs, want) in cases {
        let m = c
            .table
            .route_http(b, "any.host", method, path, query, headers(hs))
            .unwrap_or_else(|| panic!("{scenario}: no match"));
        let got = m
            .rule
            .source
            .rule_name
            .as_deref()
            .map_or_else(|| m.rule.source.route.name.to_string(), str::to_string);
        assert_eq!(&got, want, "{scenario}");
    }
    let ns_tie = c
        .table
        .route_http(
            bind(&c, 8000),
            "x.example.com",
            "GET",
            "/ns-tie",
            "",
            |_| None,
        )
        .expect("ns-tie match");
    assert_eq!(
        m_name(&ns_tie),
        "apps/z-ns",
        "equal creationTimestamp: the namespace is compared before the name"
    );
    // `/foo/` and `/foo` are the same prefix (trailing slash ignored): the method match
    // breaks the tie for POST, GET falls back to the plain prefix.
    let m = c
        .table
        .route_http(b, "h", "POST", "/foo/x", "", |_| None)
        .expect("match");
    assert_eq!(m.rule.source.rule_name.as_deref(), Some("method"));
    let m = c
        .table
        .route_http(b, "h", "GET", "/foo/x", "", |_| None)
        .expect("match");
    assert_eq!(m.rule.source.rule_name.as_deref(), Some("long-prefix"));
}

#[test]
fn backends_carry_endpoints_weights_and_unresolved_reasons() {
    let r = http_route("infra", "r", "{name: gw}", "  rules:\n  - backendRefs: [{name: web, port: 8080, weight: 70}, {name: web2, port: 8080, weight: 30}, {name: nope, port: 1, weight: 0}]\n    timeouts: {request: 10s, backendRequest: 0s}\n    retry: {codes: [503], attempts: 2, backoff: 100ms}\n");
    let c = build(&[INFRA, GW, &r]);
    let m = c
        .table
        .route_http(bind(&c, 80), "h", "GET", "/", "", |_| None)
        .expect("match");
    let rule = m.rule;
    assert_eq!(rule.total_weight, 100);
    let web = rule.backends[0].target.as_ref().expect("web resolved");
    assert_eq!(
        &web.endpoints[..],
        &["10.0.0.1:9080".parse().expect("addr")]
    );
    assert_eq!(web.port_name.as_deref(), Some("http"));
    let web2 = rule.backends[1].target.as_ref().expect("web2 resolved");
    assert!(web2.endpoints.is_empty(), "no slices: 503");
    assert_eq!(
        rule.backends[2].target.as_ref().err(),
        Some(&gateway_config::UnresolvedBackend::NotFound)
    );
    assert_eq!(
        rule.timeouts.request,
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(rule.timeouts.backend_request, None);
    let retry = rule.retry.as_ref().expect("retry");
    assert_eq!((&retry.codes[..], retry.attempts), (&[503u16][..], 2));
}

fn policy(name: &str, created: &str, target: &str, validation: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: [{target}]\n  validation: {validation}"
    )
}

#[test]
fn backend_tls_policy_reasons_conflicts_and_profiles() {
    let ca = ca_config_map("infra", "ca", &pem("ec.crt"));
    let bad_ca = ca_config_map("infra", "bad-ca", "not a certificate");
    let route = http_route("infra", "r", "{name: gw}", "  rules: [{backendRefs: [{name: web, port: 8443}]}, {matches: [{path: {value: /two}}], backendRefs: [{name: web2, port: 8080}]}]\n");
    let svc = "{group: '', kind: Service, name: web}";
    let ca_secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: ca-secret, namespace: infra}}\ntype: Opaque\nstringData:\n  ca.crt: |\n{}",
        indent(&pem("ec.crt"), 4)
    );
    const T: &str = "2020-01-01T00:00:00Z";
    // (scenario, policies, policy to check, Accepted, ResolvedRefs, text the message of
    // the False condition must hold)
    let cases: Vec<(&str, Vec<String>, &str, (&str, &str), (&str, &str), &str)> = vec![
        ("BackendTLSPolicy valid ConfigMap CA", vec![policy("p", "2020-01-01T00:00:00Z", svc, "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: abc.example.com}")], "p", ("True", "Accepted"), ("True", "ResolvedRefs"), ""),
        ("BackendTLSPolicyInvalidCACertificateRef nonexistent", vec![policy("p", "2020-01-01T00:00:00Z", svc, "{caCertificateRefs: [{group: '', kind: ConfigMap, name: nope}], hostname: abc.example.com}")], "p", ("False", "NoValidCACertificate"), ("False", "InvalidCACertificateRef"), "ConfigMap infra/nope not found"),
        ("BackendTLSPolicyInvalidCACertificateRef malformed", vec![policy("p", "2020-01-01T00:00:00Z", svc, "{caCertificateRefs: [{group: '', kind: ConfigMap, name: bad-ca}], hostname: abc.example.com}")], "p", ("False", "NoValidCACertificate"), ("False", "InvalidCACertificateRef"), "ConfigMap infra/bad-ca"),
        ("BackendTLSPolicyInvalidKind", vec![policy("p", "2020-01-01T00:00:00Z", svc, "{caCertificateRefs: [{group: '', kind: Service, name: ca}], hostname: abc.example.com}")], "p", ("False", "NoValidCACertificate"), ("False", "InvalidKind"), "/Service is not a ConfigMap or Secret"),
        ("BackendTLSPolicyConflictResolution older wins", vec![policy("old", "2020-01-01T00:00:00Z", svc, "{wellKnownCACertificates: System, hostname: a.com}"), policy("new", "2021-01-01T00:00:00Z", svc, "{wellKnownCACertificates: System, hostname: b.com}")], "new", ("False", "Conflicted"), ("True", "ResolvedRefs"), "BackendTLSPolicy infra/old targets Service infra/web too and takes precedence"),
        ("BackendTLSPolicyConflictResolution name breaks a tie", vec![policy("a", "2020-01-01T00:00:00Z", svc, "{wellKnownCACertificates: System, hostname: a.com}"), policy("b", "2020-01-01T00:00:00Z", svc, "{wellKnownCACertificates: System, hostname: b.com}")], "b", ("False", "Conflicted"), ("True", "ResolvedRefs"), "BackendTLSPolicy infra/a targets Service infra/web too"),
        ("section-specific and whole-Service policies do not conflict", vec![policy("whole", "2020-01-01T00:00:00Z", svc, "{wellKnownCACertificates: System, hostname: a.com}"), policy("port", "2021-01-01T00:00:00Z", "{group: '', kind: Service, name: web, sectionName: https}", "{wellKnownCACertificates: System, hostname: b.com}")], "port", ("True", "Accepted"), ("True", "ResolvedRefs"), ""),
        ("BackendTLSPolicy wellKnownCACertificates value not recognised", vec![policy("p", T, svc, "{wellKnownCACertificates: Custom, hostname: a.com}")], "p", ("False", "Invalid"), ("True", "ResolvedRefs"), "\"Custom\" is not supported"),
        ("BackendTLSPolicy caCertificateRefs and wellKnownCACertificates both given", vec![policy("p", T, svc, "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], wellKnownCACertificates: System, hostname: a.com}")], "p", ("False", "Invalid"), ("True", "ResolvedRefs"), "exclusive"),
        ("BackendTLSPolicy neither caCertificateRefs nor wellKnownCACertificates", vec![policy("p", T, svc, "{hostname: a.com}")], "p", ("False", "Invalid"), ("True", "ResolvedRefs"), "required"),
        ("BackendTLSPolicy Secret ca.crt as the CA (extension)", vec![policy("p", T, svc, "{caCertificateRefs: [{group: '', kind: Secret, name: ca-secret}], hostname: abc.example.com}")], "p", ("True", "Accepted"), ("True", "ResolvedRefs"), ""),
        ("BackendTLSPolicy one valid and one nonexistent CA ref: not ALL invalid, still accepted, but its traffic fails", vec![policy("p", T, svc, "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}, {group: '', kind: ConfigMap, name: nope}], hostname: abc.example.com}")], "p", ("True", "Accepted"), ("False", "InvalidCACertificateRef"), "ConfigMap infra/nope not found"),
        ("BackendTLSPolicy a subjectAltNames entry without its value", vec![policy("p", T, svc, "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: abc.example.com, subjectAltNames: [{type: URI, hostname: abc.example.com}]}")], "p", ("False", "Invalid"), ("True", "ResolvedRefs"), "subjectAltNames[0]: type URI without its uri"),
        ("BackendTLSPolicy an empty wellKnownCACertificates is unspecified (extension)", vec![policy("p", T, svc, "{caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], wellKnownCACertificates: '', hostname: abc.example.com}")], "p", ("True", "Accepted"), ("True", "ResolvedRefs"), ""),
        ("BackendTLSPolicy one valid and one wrong-kind CA ref: its traffic fails", vec![policy("p", T, svc, "{caCertificateRefs: [{group: '', kind: Service, name: web}, {group: '', kind: Secret, name: ca-secret}], hostname: abc.example.com}")], "p", ("True", "Accepted"), ("False", "InvalidKind"), "/Service is not a ConfigMap or Secret"),
    ];
    for (scenario, policies, which, accepted, resolved, message) in cases {
        let mut docs: Vec<&str> = vec![INFRA, GW, &route, &ca, &bad_ca, &ca_secret];
        docs.extend(policies.iter().map(String::as_str));
        let c = build(&docs);
        let item = c
            .status
            .find("BackendTLSPolicy", "infra", which)
            .expect("policy item");
        let json = serde_json::to_value(&item.status).expect("json");
        let anc = &json["ancestors"][0];
        assert_eq!(anc["ancestorRef"]["name"], "gw", "{scenario}: {json}");
        let get = |t: &str| {
            let c = anc["conditions"]
                .as_array()
                .expect("conds")
                .iter()
                .find(|c| c["type"] == t)
                .expect("cond")
                .clone();
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        };
        assert_eq!(
            get("Accepted"),
            (accepted.0.to_string(), accepted.1.to_string()),
            "{scenario}"
        );
        assert_eq!(
            get("ResolvedRefs"),
            (resolved.0.to_string(), resolved.1.to_string()),
            "{scenario}"
        );
        // The False condition says which reference or field is wrong and why.
        let false_message = anc["conditions"]
            .as_array()
            .expect("conds")
            .iter()
            .filter(|c| c["status"] == "False")
            .filter_map(|c| c["message"].as_str())
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(
            false_message.contains(message),
            "{scenario}: {false_message:?} lacks {message:?}"
        );
        for c in anc["conditions"].as_array().expect("conds") {
            assert_eq!(c["observedGeneration"], 1, "{scenario}: {c}");
        }
        // The backend's TLS follows the governing policy; invalid ones fail closed.
        let m = c
            .table
            .route_http(bind(&c, 80), "h", "GET", "/", "", |_| None)
            .expect("match");
        match (&m.rule.backends[0].tls, accepted.0, scenario) {
            (BackendTls::Profile(p), _, s) if s.starts_with("section") => {
                assert_eq!(&*p.hostname, "b.com")
            }
            (BackendTls::Profile(p), _, s) if s.contains("Conflict") => {
                assert_eq!(&*p.hostname, "a.com")
            }
            (BackendTls::Profile(p), "True", _) => {
                assert_eq!(&*p.hostname, "abc.example.com");
                assert!(matches!(&p.roots, TrustRoots::Certificates(c) if c.len() == 1));
            }
            (BackendTls::Invalid, "False", _) => {}
            // Accepted, but a CA reference is invalid: connections fail (5xx).
            (BackendTls::Invalid, "True", s) if s.ends_with("its traffic fails") => {}
            (other, _, _) => panic!("{scenario}: unexpected backend TLS {other:?}"),
        }
    }
    // A policy whose target does not exist.
    let p = policy(
        "p",
        "2020-01-01T00:00:00Z",
        "{group: '', kind: Service, name: gone}",
        "{wellKnownCACertificates: System, hostname: a.com}",
    );
    let c = build(&[INFRA, GW, &route, &p]);
    let item = c
        .status
        .find("BackendTLSPolicy", "infra", "p")
        .expect("item");
    let json = serde_json::to_value(&item.status).expect("json");
    assert_eq!(
        json["ancestors"],
        serde_json::json!([]),
        "no Gateway uses a missing Service"
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("BackendTLSPolicy infra/p: Service infra/gone not found")),
        "{:?}",
        c.warnings
    );
}

/// The `ancestors` of a BackendTLSPolicy's status: (Gateway name, [(type, status, reason,
/// message)]).
fn policy_ancestors(
    c: &Compiled,
    name: &str,
) -> Vec<(String, Vec<(String, String, String, String)>)> {
    let item = c
        .status
        .find("BackendTLSPolicy", "infra", name)
        .expect("policy item");
    let json = serde_json::to_value(&item.status).expect("json");
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    json["ancestors"]
        .as_array()
        .expect("ancestors")
        .iter()
        .map(|a| {
            assert_eq!(a["ancestorRef"]["kind"], "Gateway", "{a}");
            assert_eq!(a["controllerName"], gateway_config::DEFAULT_CONTROLLER_NAME);
            let conds = a["conditions"]
                .as_array()
                .expect("conditions")
                .iter()
                .map(|c| {
                    (
                        s(&c["type"]),
                        s(&c["status"]),
                        s(&c["reason"]),
                        s(&c["message"]),
                    )
                })
                .collect();
            (s(&a["ancestorRef"]["name"]), conds)
        })
        .collect()
}

/// The load warned about BackendTLSPolicies exactly once, and that warning starts with
/// `prefix` (the line number that follows depends on the document's place).
fn assert_one_policy_warning(c: &Compiled, prefix: &str) {
    let warned: Vec<&String> = c
        .warnings
        .iter()
        .filter(|w| w.contains("BackendTLSPolicy"))
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", c.warnings);
    assert!(warned[0].starts_with(prefix), "{}", warned[0]);
}

#[test]
fn a_backend_tls_policy_without_a_target_reports_target_not_found_under_the_gateways_using_the_service(
) {
    // Two Gateways; only `gw`'s route uses Service `web` (port 8443, named `https`), and
    // only `gw`'s route names the missing Service `gone`.
    let gw2 = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw2, namespace: infra}\nspec:\n  gatewayClassName: gatewayd\n  addresses: [{type: IPAddress, value: 127.0.0.1}]\n  listeners:\n  - {name: http, protocol: HTTP, port: 81}";
    let r = http_route("infra", "r", "{name: gw, sectionName: http}", "  rules:\n  - backendRefs: [{name: web, port: 8443}]\n  - matches: [{path: {value: /gone}}]\n    backendRefs: [{name: gone, port: 80}]\n");
    let route2 = http_route(
        "infra",
        "r2",
        "{name: gw2}",
        "  rules: [{backendRefs: [{name: web2, port: 8080}]}]\n",
    );
    let system = "{wellKnownCACertificates: System, hostname: a.com}";
    // (a) The Service exists and is used, but has no port named `nope`.
    let no_port = policy(
        "no-port",
        "2020-01-01T00:00:00Z",
        "{group: '', kind: Service, name: web, sectionName: nope}",
        system,
    );
    // (b) The Service does not exist; a route of `gw` names it (BackendNotFound).
    let gone = policy(
        "gone",
        "2020-01-01T00:00:00Z",
        "{group: '', kind: Service, name: gone}",
        system,
    );
    // (b) The Service does not exist and no route names it.
    let unused = policy(
        "unused",
        "2020-01-01T00:00:00Z",
        "{group: '', kind: Service, name: unused}",
        system,
    );
    let c = build(&[INFRA, GW, gw2, &r, &route2, &no_port, &gone, &unused]);

    for (policy, why) in [
        ("no-port", "Service infra/web has no port named nope"),
        ("gone", "Service infra/gone not found"),
    ] {
        let ancestors = policy_ancestors(&c, policy);
        assert_eq!(
            ancestors.len(),
            1,
            "{policy}: only gw uses the Service: {ancestors:?}"
        );
        let (gw, conds) = &ancestors[0];
        assert_eq!(gw, "gw", "{policy}");
        let accepted = conds.iter().find(|c| c.0 == "Accepted").expect("Accepted");
        assert_eq!(
            (
                accepted.1.as_str(),
                accepted.2.as_str(),
                accepted.3.as_str()
            ),
            ("False", "TargetNotFound", why),
            "{policy}"
        );
    }
    // The route's own status names the missing backend.
    let rr = route(&c, "HTTPRoute", "infra/r", "gw");
    assert_cond(&rr, "ResolvedRefs", "False", "BackendNotFound", 1);

    // A policy that failed to attach does not govern the port: plain TCP to the backend.
    let m = c
        .table
        .route_http(bind(&c, 80), "h", "GET", "/", "", |_| None)
        .expect("match");
    assert_eq!(m.rule.backends[0].target.as_ref().map(|t| t.port), Ok(8443));
    assert!(
        matches!(m.rule.backends[0].tls, BackendTls::None),
        "{:?}",
        m.rule.backends[0].tls
    );

    // No Gateway uses `unused`: no ancestor to report under (an empty list is "not
    // relevant to any ancestor"), so the load says why in a warning.
    assert!(policy_ancestors(&c, "unused").is_empty());
    assert_one_policy_warning(
        &c,
        "BackendTLSPolicy infra/unused: Service infra/unused not found (file test.yaml, line ",
    );
}

#[test]
fn a_target_ref_to_another_kind_or_group_is_named_as_group_and_kind() {
    let p = policy(
        "elsewhere",
        "2020-01-01T00:00:00Z",
        "{group: '', kind: ConfigMap, name: web}, {group: example.com, kind: Service, name: web}",
        "{wellKnownCACertificates: System, hostname: a.com}",
    );
    let c = build(&[INFRA, GW, &p]);
    assert_one_policy_warning(
        &c,
        "BackendTLSPolicy infra/elsewhere: targetRef ConfigMap web is not a core Service; targetRef example.com/Service web is not a core Service (file test.yaml, line ",
    );
}

#[test]
fn tls_routes_attach_to_tls_listeners_only_and_route_by_sni() {
    let gw = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: infra}
spec:
  gatewayClassName: x
  addresses: [{value: 127.0.0.1}]
  listeners:
  - {name: pass, protocol: TLS, port: 443, tls: {mode: Passthrough}}
  - {name: http, protocol: HTTP, port: 80}"#;
    let tls_route = |name: &str, host: &str, svc: &str, section: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: {name}, namespace: infra}}\nspec:\n  parentRefs: [{{name: tls, sectionName: {section}}}]\n  hostnames: ['{host}']\n  rules: [{{backendRefs: [{{name: {svc}, port: 8443}}]}}]")
    };
    let exact = tls_route("exact", "abc.example.com", "web", "pass");
    let wild = tls_route("wild", "*.example.com", "web", "pass");
    let wrong = tls_route("wrong", "abc.example.com", "web", "http");
    let c = build(&[INFRA, gw, &exact, &wild, &wrong]);
    assert_cond(
        &route(&c, "TLSRoute", "infra/exact", "tls"),
        "Accepted",
        "True",
        "Accepted",
        1,
    );
    assert_cond(
        &route(&c, "TLSRoute", "infra/wrong", "tls"),
        "Accepted",
        "False",
        "NotAllowedByListeners",
        1,
    );
    let b = bind(&c, 443);
    assert!(b.tls);
    let l = c
        .table
        .select_listener(b, Some("abc.example.com"))
        .expect("listener");
    assert_eq!(&*l.name, "pass");
    assert_eq!(
        c.table
            .route_tls(l, "abc.example.com")
            .expect("exact")
            .source
            .route
            .name
            .as_ref(),
        "exact"
    );
    assert_eq!(
        c.table
            .route_tls(l, "x.example.com")
            .expect("wild")
            .source
            .route
            .name
            .as_ref(),
        "wild"
    );
    assert!(c.table.route_tls(l, "example.org").is_none());
    let (_, attached, kinds) = listener_conds(&c, "infra/tls", "pass");
    assert_eq!((attached, kinds), (2, vec!["TLSRoute".to_string()]));
}

#[test]
fn certificates_are_chosen_by_sni_across_listeners_of_a_port() {
    let secret = tls_secret("infra", "cert");
    let gw = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: s, namespace: infra}
spec:
  gatewayClassName: x
  addresses: [{value: 127.0.0.1}]
  listeners:
  - {name: any, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: cert}]}}
  - {name: foo, protocol: HTTPS, port: 443, hostname: foo.example.com, tls: {certificateRefs: [{name: cert}]}}
  - {name: pass, protocol: TLS, port: 443, hostname: pass.example.com, tls: {mode: Passthrough}}"#;
    let c = build(&[INFRA, gw, &secret]);
    let b = bind(&c, 443);
    let name = |sni: Option<&str>| c.table.select_listener(b, sni).map(|l| l.name.to_string());
    assert_eq!(name(Some("foo.example.com")).as_deref(), Some("foo"));
    assert_eq!(name(Some("bar.example.com")).as_deref(), Some("any"));
    assert_eq!(name(None).as_deref(), Some("any"));
    assert_eq!(name(Some("pass.example.com")).as_deref(), Some("pass"));
    let certs = c
        .table
        .certificates_for(b, Some("foo.example.com"))
        .expect("certs");
    assert_eq!(certs[0].source, "infra/cert");
    assert!(c
        .table
        .certificates_for(b, Some("pass.example.com"))
        .is_none());
    assert_eq!(c.table.ebpf_plan().len(), 1);
    assert!(c.table.ebpf_plan()[0].tls);
}

#[test]
fn listener_tls_options_are_kept_for_the_dataplane() {
    let secret = tls_secret("infra", "cert");
    let gw = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: s, namespace: infra}
spec:
  gatewayClassName: x
  addresses: [{value: 127.0.0.1}]
  listeners:
  - name: https
    protocol: HTTPS
    port: 443
    tls:
      certificateRefs: [{name: cert}]
      options: {bench.example.test/tls-session-resumption: "off", a.example/x: "1"}
  - {name: plain, protocol: HTTPS, port: 443, hostname: foo.example.com, tls: {certificateRefs: [{name: cert}]}}"#;
    let c = build(&[INFRA, gw, &secret]);
    let b = bind(&c, 443);
    let l = c.table.select_listener(b, None).expect("catch-all");
    assert_eq!(
        l.tls_option("bench.example.test/tls-session-resumption"),
        Some("off")
    );
    assert_eq!(l.tls_option("a.example/x"), Some("1"));
    assert_eq!(l.tls_option("missing"), None);
    let foo = c
        .table
        .select_listener(b, Some("foo.example.com"))
        .expect("foo");
    assert!(foo.tls_options.is_empty());
}

#[test]
fn grpc_routes_match_service_and_method() {
    let r = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - name: any-in-service
    matches: [{method: {service: echo.Echo}}]
    backendRefs: [{name: web, port: 8080}]
  - name: exact
    matches: [{method: {service: echo.Echo, method: Ping}}]
    backendRefs: [{name: web, port: 8080}]"#;
    let c = build(&[INFRA, GW, r]);
    assert_cond(
        &route(&c, "GRPCRoute", "infra/g", "gw"),
        "Accepted",
        "True",
        "Accepted",
        1,
    );
    let b = bind(&c, 80);
    let hit = |s: &str, m: &str| {
        c.table
            .route_grpc(b, "h", s, m, |_| None)
            .and_then(|x| x.rule.source.rule_name.as_deref().map(str::to_string))
    };
    assert_eq!(hit("echo.Echo", "Ping").as_deref(), Some("exact"));
    assert_eq!(hit("echo.Echo", "Other").as_deref(), Some("any-in-service"));
    assert_eq!(hit("other.Svc", "Ping"), None);
}

// ------------------------------------------------------------------ spec review
// Each test below pins one place where an earlier build differed from the Gateway API
// v1 spec or its conformance suite (the scenario or spec field is named in the test).

fn gateway_conditions(c: &Compiled, ns: &str, name: &str) -> Vec<Condition> {
    c.status
        .gateway(ns, name)
        .expect("gateway status")
        .conditions
        .clone()
        .expect("conditions")
}

#[test]
fn https_and_tls_listeners_on_one_port_and_hostname_are_a_protocol_conflict_and_not_accepted() {
    // GatewayListenerProtocolAndRouteKindConflicts: HTTPS and TLS listeners on one port
    // with the same (empty) hostname are both Conflicted/ProtocolConflict, Accepted
    // False (reason Invalid) and not Programmed; the distinct listener is unaffected.
    let gw = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tlsroutes-only, namespace: infra}
spec:
  gatewayClassName: x
  addresses: [{value: 127.0.0.1}]
  listeners:
  - {name: tls, port: 443, protocol: TLS, hostname: abc.example.com, tls: {mode: Passthrough}}
  - {name: conflicted-https, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
  - {name: conflicted-tls, port: 8443, protocol: TLS, tls: {mode: Passthrough}}
  - {name: same-a, port: 80, protocol: HTTP, hostname: a.com}
  - {name: same-b, port: 80, protocol: HTTP, hostname: a.com}"#;
    let secret = tls_secret("infra", "cert");
    let c = build(&[INFRA, gw, &secret]);
    for l in ["conflicted-https", "conflicted-tls"] {
        let (conds, attached, _) = listener_conds(&c, "infra/tlsroutes-only", l);
        assert_cond(&conds, "Conflicted", "True", "ProtocolConflict", 1);
        assert_cond(&conds, "Accepted", "False", "Invalid", 1);
        assert_cond(&conds, "Programmed", "False", "Invalid", 1);
        assert_eq!(attached, 0, "{l}");
    }
    for l in ["same-a", "same-b"] {
        let (conds, _, _) = listener_conds(&c, "infra/tlsroutes-only", l);
        assert_cond(&conds, "Conflicted", "True", "HostnameConflict", 1);
        assert_cond(&conds, "Accepted", "False", "Invalid", 1);
    }
    let (conds, _, _) = listener_conds(&c, "infra/tlsroutes-only", "tls");
    assert_cond(&conds, "Conflicted", "False", "NoConflicts", 1);
    assert_cond(&conds, "Accepted", "True", "Accepted", 1);
    assert_cond(&conds, "Programmed", "True", "Programmed", 1);
    let g = gateway_conditions(&c, "infra", "tlsroutes-only");
    assert_cond(&g, "Accepted", "True", "ListenersNotValid", 1);
    // Neither conflicted listener serves port 8443.
    assert!(c
        .table
        .bind_for("127.0.0.1:8443".parse().expect("addr"))
        .is_none());
}

#[test]
fn https_listeners_with_overlapping_hostnames_on_one_port_report_overlapping_tls_config() {
    // GatewayOverlappingTLSConfigHostnames (ListenerConditionOverlappingTLSConfig:
    // "Controllers MUST detect the presence of overlapping hostnames"; negative
    // polarity, never set False).
    let gw = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway-overlapping-hostnames, namespace: infra}
spec:
  gatewayClassName: x
  addresses: [{value: 127.0.0.1}]
  listeners:
  - {name: foo-https, port: 443, protocol: HTTPS, hostname: foo.example.com, tls: {certificateRefs: [{name: cert}]}}
  - {name: bar-https, port: 443, protocol: HTTPS, hostname: bar.bar.example.com, tls: {certificateRefs: [{name: cert}]}}
  - {name: wildcard-https, port: 443, protocol: HTTPS, hostname: "*.example.com", tls: {certificateRefs: [{name: cert}]}}
  - {name: not-overlapping-https, port: 443, protocol: HTTPS, hostname: example.com, tls: {certificateRefs: [{name: cert}]}}
  - {name: not-overlapping-other-port, port: 9443, protocol: HTTPS, hostname: foo.example.com, tls: {certificateRefs: [{name: cert}]}}"#;
    let secret = tls_secret("infra", "cert");
    let c = build(&[INFRA, gw, &secret]);
    let gwname = "infra/gateway-overlapping-hostnames";
    for l in ["foo-https", "bar-https", "wildcard-https"] {
        let (conds, _, _) = listener_conds(&c, gwname, l);
        assert_cond(
            &conds,
            "OverlappingTLSConfig",
            "True",
            "OverlappingHostnames",
            1,
        );
        assert_cond(&conds, "Accepted", "True", "Accepted", 1);
    }
    for l in ["not-overlapping-https", "not-overlapping-other-port"] {
        let (conds, _, _) = listener_conds(&c, gwname, l);
        assert!(
            conds.iter().all(|c| c.type_ != "OverlappingTLSConfig"),
            "{l}: {conds:?}"
        );
    }
}

#[test]
fn routes_that_are_not_accepted_are_not_counted_in_attached_routes() {
    // ListenerStatus.attachedRoutes: "Routes with any other value for the Accepted
    // condition MUST NOT be included in this count."
    let bad = http_route(
        "infra",
        "bad",
        "{name: gw, sectionName: http}",
        "  rules: [{filters: [{type: CORS, cors: {allowOrigins: ['https://a.com']}}], backendRefs: [{name: web, port: 8080}]}]\n",
    );
    let unresolved = http_route(
        "infra",
        "unresolved",
        "{name: gw, sectionName: http}",
        "  rules: [{backendRefs: [{name: nope, port: 8080}]}]\n",
    );
    let c = build(&[INFRA, GW, &bad, &unresolved]);
    assert_cond(
        &route(&c, "HTTPRoute", "infra/bad", "gw"),
        "Accepted",
        "False",
        "UnsupportedValue",
        1,
    );
    // A route with unresolved refs is still Accepted, so it counts.
    assert_cond(
        &route(&c, "HTTPRoute", "infra/unresolved", "gw"),
        "Accepted",
        "True",
        "Accepted",
        1,
    );
    let (_, attached, _) = listener_conds(&c, "infra/gw", "http");
    assert_eq!(attached, 1);
}

#[test]
fn a_route_with_valid_and_invalid_rules_is_accepted_partially_invalid_and_serves_the_valid_rules() {
    // RouteConditionPartiallyInvalid ("Drop Rule(s)": message starts with "Dropped
    // Rule", Accepted stays True) and RouteParentStatus.conditions: "A Route MUST be
    // considered Accepted if at least one of the Route's rules is implemented".
    let r = http_route(
        "infra",
        "r",
        "{name: gw, sectionName: http}",
        "  rules:\n  - matches: [{path: {type: PathPrefix, value: /good}}]\n    backendRefs: [{name: web, port: 8080}]\n  - matches: [{path: {type: RegularExpression, value: '/bad/(['}}]\n    backendRefs: [{name: web, port: 8080}]\n  - matches: [{path: {type: PathPrefix, value: /cors}}]\n    filters: [{type: CORS, cors: {allowOrigins: ['https://a.com']}}]\n    backendRefs: [{name: web, port: 8080}]\n",
    );
    let c = build(&[INFRA, GW, &r]);
    let conds = route(&c, "HTTPRoute", "infra/r", "gw");
    assert_cond(&conds, "Accepted", "True", "Accepted", 1);
    assert_cond(&conds, "PartiallyInvalid", "True", "UnsupportedValue", 1);
    let p = cond(&conds, "PartiallyInvalid");
    assert!(p.message.starts_with("Dropped Rule"), "{p:?}");
    assert!(p.message.contains('1') && p.message.contains('2'), "{p:?}");
    let (_, attached, _) = listener_conds(&c, "infra/gw", "http");
    assert_eq!(attached, 1);
    let b = bind(&c, 80);
    let m = c
        .table
        .route_http(b, "h", "GET", "/good/x", "", |_| None)
        .expect("valid rule served");
    assert_eq!(m.rule.source.rule_index, 0);
    assert!(c
        .table
        .route_http(b, "h", "GET", "/cors", "", |_| None)
        .is_none());
    // A fully valid route never carries PartiallyInvalid.
    let ok = http_route("infra", "ok", "{name: gw}", "");
    let c = build(&[INFRA, GW, &ok]);
    let conds = route(&c, "HTTPRoute", "infra/ok", "gw");
    assert!(conds.iter().all(|c| c.type_ != "PartiallyInvalid"));
}

#[test]
fn an_unresolvable_extension_ref_filter_is_not_skipped_and_its_rule_answers_with_an_error() {
    // HTTPRouteFilter.type: "If a reference to a custom filter type cannot be resolved,
    // the filter MUST NOT be skipped. Instead, requests that would have been processed
    // by that filter MUST receive a HTTP error response." The reference names a
    // Group/Kind gatewayd does not support: ResolvedRefs False, InvalidKind.
    let r = http_route(
        "infra",
        "r",
        "{name: gw, sectionName: http}",
        "  rules: [{matches: [{path: {value: /ext}}], filters: [{type: ExtensionRef, extensionRef: {group: x.io, kind: F, name: f}}], backendRefs: [{name: web, port: 8080}]}]\n",
    );
    let fallback = http_route(
        "infra",
        "fallback",
        "{name: gw, sectionName: http}",
        "  rules: [{backendRefs: [{name: web, port: 8080}]}]\n",
    );
    let c = build(&[INFRA, GW, &r, &fallback]);
    let conds = route(&c, "HTTPRoute", "infra/r", "gw");
    assert_cond(&conds, "Accepted", "True", "Accepted", 1);
    assert_cond(&conds, "ResolvedRefs", "False", "InvalidKind", 1);
    let m = c
        .table
        .route_http(bind(&c, 80), "h", "GET", "/ext/a", "", |_| None)
        .expect("the rule is programmed");
    assert_eq!(&*m.rule.source.route.name, "r");
    assert!(m.rule.invalid.is_some(), "the dataplane answers 500");
}

#[test]
fn request_mirror_backend_refs_count_for_resolved_refs() {
    // HTTPRequestMirrorFilter.backendRef: "If the referent cannot be found ... the
    // controller must ensure the ResolvedRefs condition on the Route status is set to
    // status: False"; cross-namespace without a grant: RefNotPermitted.
    for (mirror, reason) in [
        ("{name: nope, port: 8080}", "BackendNotFound"),
        (
            "{name: web, namespace: apps, port: 8080}",
            "RefNotPermitted",
        ),
    ] {
        let r = http_route(
            "infra",
            "r",
            "{name: gw, sectionName: http}",
            &format!("  rules: [{{filters: [{{type: RequestMirror, requestMirror: {{backendRef: {mirror}}}}}], backendRefs: [{{name: web, port: 8080}}]}}]\n"),
        );
        let c = build(&[INFRA, GW, &r]);
        let conds = route(&c, "HTTPRoute", "infra/r", "gw");
        assert_cond(&conds, "ResolvedRefs", "False", reason, 1);
        assert_cond(&conds, "Accepted", "True", "Accepted", 1);
    }
}

#[test]
fn insecure_fallback_client_validation_sets_the_insecure_frontend_validation_mode_condition() {
    // GatewayFrontendClientCertificateValidationInsecureFallback: the Gateway has
    // InsecureFrontendValidationMode True, reason ConfigurationChanged.
    let ca = ca_config_map("infra", "ca", &pem("ec.crt"));
    let secret = tls_secret("infra", "cert");
    let gw = |mode: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: t, namespace: infra}}\nspec:\n  gatewayClassName: x\n  addresses: [{{value: 127.0.0.1}}]\n  tls: {{frontend: {{default: {{validation: {{mode: {mode}, caCertificateRefs: [{{group: '', kind: ConfigMap, name: ca}}]}}}}}}}}\n  listeners:\n  - {{name: l, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: cert}}]}}}}\n")
    };
    let g = gw("AllowInsecureFallback");
    let c = build(&[INFRA, &g, &ca, &secret]);
    assert_cond(
        &gateway_conditions(&c, "infra", "t"),
        "InsecureFrontendValidationMode",
        "True",
        "ConfigurationChanged",
        1,
    );
    let g = gw("AllowValidOnly");
    let c = build(&[INFRA, &g, &ca, &secret]);
    assert!(gateway_conditions(&c, "infra", "t")
        .iter()
        .all(|c| c.type_ != "InsecureFrontendValidationMode"));
}

#[test]
fn gateway_resolved_refs_summarises_the_listeners_resolved_refs() {
    // GatewayConditionResolvedRefs: "also provides a positive-polarity summary of
    // Listener's ResolvedRefs condition" (reason ListenersNotResolved).
    let gw = |listener: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: t, namespace: infra}}\nspec:\n  gatewayClassName: x\n  listeners:\n{listener}")
    };
    let bad =
        gw("  - {name: l, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: nope}]}}\n");
    let c = build(&[INFRA, &bad]);
    assert_cond(
        &gateway_conditions(&c, "infra", "t"),
        "ResolvedRefs",
        "False",
        "ListenersNotResolved",
        1,
    );
    let good = gw("  - {name: l, protocol: HTTP, port: 80}\n");
    let c = build(&[INFRA, &good]);
    assert_cond(
        &gateway_conditions(&c, "infra", "t"),
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
        1,
    );
}

#[test]
fn an_httproute_and_a_grpcroute_with_intersecting_hostnames_on_one_listener_accept_only_the_older()
{
    // GRPCRoute.spec.hostnames ("cross serving"): the implementation MUST accept exactly
    // one of the two routes, the oldest (then namespace/name); the other is
    // Accepted=False for that parent.
    let grpc = |name: &str, created: &str, hosts: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{{name: gw, sectionName: http}}]\n  hostnames: {hosts}\n  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]")
    };
    let http = |name: &str, created: &str, hosts: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\nspec:\n  parentRefs: [{{name: gw, sectionName: http}}]\n  hostnames: {hosts}\n  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]")
    };
    let old_http = http("old-http", "2020-01-01T00:00:00Z", "['*.example.com']");
    let new_grpc = grpc("new-grpc", "2021-01-01T00:00:00Z", "[api.example.com]");
    let other_grpc = grpc("other-grpc", "2021-01-01T00:00:00Z", "[api.example.net]");
    let c = build(&[INFRA, GW, &old_http, &new_grpc, &other_grpc]);
    assert_cond(
        &route(&c, "HTTPRoute", "infra/old-http", "gw"),
        "Accepted",
        "True",
        "Accepted",
        1,
    );
    let conds = route(&c, "GRPCRoute", "infra/new-grpc", "gw");
    assert_eq!(cond(&conds, "Accepted").status, "False", "{conds:?}");
    assert_cond(
        &route(&c, "GRPCRoute", "infra/other-grpc", "gw"),
        "Accepted",
        "True",
        "Accepted",
        1,
    );
    let b = bind(&c, 80);
    assert!(c
        .table
        .route_grpc(b, "api.example.com", "svc", "M", |_| None)
        .is_none());
    assert!(c
        .table
        .route_grpc(b, "api.example.net", "svc", "M", |_| None)
        .is_some());
    let (_, attached, _) = listener_conds(&c, "infra/gw", "http");
    assert_eq!(attached, 2);
}

#[test]
fn gateway_status_lists_the_addresses_its_listeners_are_bound_to() {
    // GatewaySpec.addresses: "The implementation MUST bind all Listeners to every
    // GatewayAddress that it assigns to the Gateway and add a corresponding entry in
    // GatewayStatus.Addresses" - also when it assigns them itself (no spec.addresses).
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: t, namespace: infra}\nspec:\n  gatewayClassName: x\n  listeners:\n  - {name: l, protocol: HTTP, port: 80}\n";
    let c = build(&[INFRA, gw]);
    let s = c.status.gateway("infra", "t").expect("gw");
    let addrs: Vec<String> = s
        .addresses
        .iter()
        .flatten()
        .map(|a| a.value.clone())
        .collect();
    assert_eq!(addrs, vec!["0.0.0.0".to_string(), "::".to_string()]);
}

#[test]
fn a_younger_gateway_listener_that_another_gateway_already_serves_on_the_same_address_port_and_hostname_is_not_programmed(
) {
    // Gateway.spec.listeners "Compatible Listeners": Gateways MAY be merged onto one
    // address only if all their listeners are compatible. The younger listener can
    // never receive a request, so it must not report Programmed=True.
    let gw = |name: &str, created: &str, host: &str| {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\nspec:\n  gatewayClassName: x\n  addresses: [{{value: 127.0.0.1}}]\n  listeners:\n  - {{name: l, protocol: HTTP, port: 80, hostname: {host}}}\n")
    };
    let old = gw("old", "2020-01-01T00:00:00Z", "a.example.com");
    let new = gw("new", "2021-01-01T00:00:00Z", "a.example.com");
    let other = gw("other", "2021-01-01T00:00:00Z", "b.example.com");
    let c = build(&[INFRA, &old, &new, &other]);
    let (conds, _, _) = listener_conds(&c, "infra/old", "l");
    assert_cond(&conds, "Programmed", "True", "Programmed", 1);
    let (conds, _, _) = listener_conds(&c, "infra/new", "l");
    assert_cond(&conds, "Accepted", "False", "PortUnavailable", 1);
    assert_cond(&conds, "Programmed", "False", "Invalid", 1);
    let (conds, _, _) = listener_conds(&c, "infra/other", "l");
    assert_cond(&conds, "Programmed", "True", "Programmed", 1);
}
