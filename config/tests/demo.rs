//! The shipped demo manifests load, the route is accepted and requests route.

use std::net::SocketAddr;
use std::path::PathBuf;

use gateway_config::{load, CompileOptions};

fn demo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/demo.yaml")
}

#[test]
fn demo_manifests_load_with_the_route_accepted_and_routed_to_the_echo_endpoint() {
    let c = load(&[demo()], &CompileOptions::default()).expect("demo loads");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.inputs, vec![demo()]);
    let conds = c
        .status
        .route_parent_conditions("HTTPRoute", "demo", "app", "demo")
        .expect("route has a parent status");
    let accepted = conds
        .iter()
        .find(|c| c.type_ == "Accepted")
        .expect("Accepted");
    assert_eq!(
        (accepted.status.as_str(), accepted.reason.as_str()),
        ("True", "Accepted")
    );
    assert_eq!(accepted.observed_generation, Some(1));

    let bind_addr: SocketAddr = "127.0.0.1:18080".parse().expect("addr");
    let bind = c.table.bind_for(bind_addr).expect("bind");
    assert!(!bind.tls);
    let m = c
        .table
        .route_http(bind, "app.demo.test:18080", "GET", "/x", "", |_| None)
        .expect("route");
    let target = m.rule.backends[0].target.as_ref().expect("resolved");
    assert_eq!(
        &target.endpoints[..],
        &["127.0.0.1:18081".parse::<SocketAddr>().expect("addr")]
    );
    assert!(c
        .table
        .route_http(bind, "other.test", "GET", "/", "", |_| None)
        .is_none());
    assert_eq!(c.table.ebpf_plan().len(), 1);

    let json = serde_json::to_value(&c.status).expect("serialises");
    assert_eq!(json["items"][0]["kind"], "Gateway");
    assert_eq!(
        json["items"][0]["status"]["listeners"][0]["attachedRoutes"],
        1
    );
}

#[test]
fn a_directory_is_read_recursively_and_every_problem_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: x}]}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("sub/b.yml"), "kind: [\n").expect("write");
    std::fs::write(dir.path().join("ignored.txt"), "kind: [\n").expect("write");
    let err = load(&[dir.path().to_path_buf()], &CompileOptions::default())
        .expect_err("ill-formed input");
    assert_eq!(err.problems.len(), 2, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("a.yaml:4: v1 Service default/a: field spec.ports[0].port"),
        "{text}"
    );
    assert!(text.contains("b.yml:"), "{text}");
}

/// demo-tls.yaml with the Secret and CA ConfigMap `cargo xtask demo` generates (here from
/// test data): edge, re-encrypt and passthrough share 127.0.0.1:19443 and the SNI
/// chooses; the HTTP listener of demo.yaml redirects secure.demo.test there.
#[test]
fn the_tls_demo_serves_edge_reencrypt_and_passthrough_on_one_port_and_redirects_to_it() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let data = |f: &str| {
        std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("testdata")
                .join(f),
        )
        .expect("test data")
    };
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = dir.path().join("demo-secrets.yaml");
    std::fs::write(
        &secrets,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: demo-tls, namespace: demo}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: demo-ca, namespace: demo}}\ndata:\n  ca.crt: |\n{}",
            indent(&data("ec.crt")),
            indent(&data("ec.sec1.key")),
            indent(&data("ec.crt"))
        ),
    )
    .expect("write");
    let c = load(
        &[demo(), examples.join("demo-tls.yaml"), secrets],
        &CompileOptions::default(),
    )
    .expect("demo loads");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    for (kind, name, gw) in [
        ("HTTPRoute", "app-tls", "demo-tls"),
        ("HTTPRoute", "to-https", "demo"),
        ("HTTPRoute", "reencrypt", "demo-tls"),
        ("TLSRoute", "pass", "demo-tls"),
    ] {
        let conds = c
            .status
            .route_parent_conditions(kind, "demo", name, gw)
            .unwrap_or_else(|| panic!("{kind} {name} has a parent status"));
        for t in ["Accepted", "ResolvedRefs"] {
            let cond = conds.iter().find(|c| c.type_ == t).expect("condition");
            assert_eq!(cond.status, "True", "{kind} {name} {t}: {}", cond.message);
        }
    }
    let tls: SocketAddr = "127.0.0.1:19443".parse().expect("addr");
    let bind = c.table.bind_for(tls).expect("the TLS bind");
    assert!(bind.tls);
    assert_eq!(bind.listeners.len(), 2);
    let pass = c
        .table
        .select_listener(bind, Some("pass.demo.test"))
        .expect("passthrough listener");
    assert_eq!(&*pass.name, "passthrough");
    let target = c.table.route_tls(pass, "pass.demo.test").expect("TLSRoute");
    let backend = target.backends[0].target.as_ref().expect("resolved");
    assert_eq!(
        &backend.endpoints[..],
        &["127.0.0.1:19444".parse::<SocketAddr>().expect("addr")]
    );
    let edge = c
        .table
        .select_listener(bind, Some("app.demo.test"))
        .expect("HTTPS listener");
    assert_eq!(&*edge.name, "https");
    assert!(!edge.certificates.is_empty());
    assert!(c
        .table
        .route_http(bind, "app.demo.test", "GET", "/", "", |_| None)
        .is_some());
    let reencrypt = c
        .table
        .route_http(bind, "reencrypt.demo.test", "GET", "/", "", |_| None)
        .expect("the re-encrypt route");
    match &reencrypt.rule.backends[0].tls {
        gateway_config::BackendTls::Profile(p) => {
            assert_eq!(&*p.hostname, "backend.demo.test");
            assert_eq!(p.policy.to_string(), "demo/reencrypt");
        }
        other => panic!("re-encrypt backend without a TLS profile: {other:?}"),
    }
    let http = c
        .table
        .bind_for("127.0.0.1:18080".parse().expect("addr"))
        .expect("HTTP bind");
    let m = c
        .table
        .route_http(http, "secure.demo.test:18080", "GET", "/", "", |_| None)
        .expect("the redirect route");
    assert!(matches!(
        m.rule.filters[0],
        gateway_config::HttpFilter::RequestRedirect(_)
    ));
}
