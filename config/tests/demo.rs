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
