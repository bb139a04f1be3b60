//! Route table: compile 10,000 HTTPRoutes (5 rules each) across 100 hostnames, and route
//! lookups at that size. Targets: compile < 1 s, lookup p50 < 500 ns.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway_config::{compile, parse_str, CompileOptions, Manifests};

const ROUTES: usize = 10_000;
const HOSTS: usize = 100;

fn manifests() -> Manifests {
    let mut s = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: x\n  addresses: [{value: 127.0.0.1}]\n  listeners:\n  - {name: http, protocol: HTTP, port: 80, hostname: '*.example.com'}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: svc-1, labels: {kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]\n",
    );
    for i in 0..ROUTES {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [h{}.example.com]\n  rules:\n  - {{matches: [{{path: {{type: Exact, value: /r{i}/exact}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/api}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/h}}, headers: [{{name: x-v, value: '1'}}]}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/q}}, method: POST, queryParams: [{{name: a, value: b}}]}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/static}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n",
            i % HOSTS
        );
    }
    parse_str("bench.yaml", &s)
        .expect("bench manifests parse")
        .0
}

fn bench(c: &mut Criterion) {
    let m = manifests();
    let opts = CompileOptions::default();
    let mut g = c.benchmark_group("route_table");
    g.sample_size(10);
    g.bench_function("compile_10k_routes_5_rules_100_hosts", |b| {
        b.iter(|| compile(black_box(&m), &opts))
    });
    g.finish();

    let compiled = compile(&m, &opts);
    let table = compiled.table.clone();
    let bind = table
        .bind_for("127.0.0.1:80".parse().expect("addr"))
        .expect("bind");
    let headers = |n: &str| (n == "x-v").then_some("1");
    let mut g = c.benchmark_group("route_lookup_10k");
    for (name, host, method, path, query) in [
        ("exact", "h42.example.com", "GET", "/r4242/exact", ""),
        (
            "prefix_deep",
            "h42.example.com:8080",
            "GET",
            "/r9942/api/v1/users/7",
            "",
        ),
        ("header", "h42.example.com", "GET", "/r42/h", ""),
        (
            "method_query",
            "H42.Example.COM",
            "POST",
            "/r142/q/x",
            "z=1&a=b",
        ),
        ("miss", "h42.example.com", "GET", "/nope/nope", ""),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                table
                    .route_http(
                        bind,
                        black_box(host),
                        black_box(method),
                        black_box(path),
                        black_box(query),
                        headers,
                    )
                    .is_some()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
