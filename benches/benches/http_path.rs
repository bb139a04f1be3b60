//! The per-request work of the HTTP data path that does not touch a socket: route lookup
//! in a 1,000-route table, the hop-by-hop and forwarding-header pass, a
//! RequestHeaderModifier (set, add, remove) and a ResponseHeaderModifier, and the
//! backend request target. What `http::proxy` does per request besides hyper's parsing
//! and the two socket round trips.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway_config::{compile, parse_str, CompileOptions, HttpFilter};
use gateway_userspace::{http::filter, http::forward, upstream::Protocol};
use hyper::{header::HeaderValue, HeaderMap, Request, Uri};

const ROUTES: usize = 1_000;
const HOSTS: usize = 100;

fn manifests() -> String {
    let mut s = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: x\n  addresses: [{value: 127.0.0.1}]\n  listeners:\n  - {name: http, protocol: HTTP, port: 80, hostname: '*.example.com'}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: svc-1, labels: {kubernetes.io/service-name: svc}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.0.0.1]}]\n",
    );
    for i in 0..ROUTES {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [h{}.example.com]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /r{i}/api}}}}]\n    filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{set: [{{name: X-Env, value: prod}}], add: [{{name: X-Route, value: r{i}}}], remove: [X-Debug]}}\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {{set: [{{name: Cache-Control, value: no-store}}], remove: [Server]}}\n    backendRefs: [{{name: svc, port: 80}}]\n  - matches: [{{path: {{type: PathPrefix, value: /r{i}/plain}}}}]\n    backendRefs: [{{name: svc, port: 80}}]\n",
            i % HOSTS
        );
    }
    s
}

fn request(path: &str) -> Request<()> {
    let mut req = Request::new(());
    *req.uri_mut() = path.parse::<Uri>().expect("uri");
    let h = req.headers_mut();
    h.insert("host", HeaderValue::from_static("h42.example.com"));
    h.insert("user-agent", HeaderValue::from_static("wrk/4.1"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("x-debug", HeaderValue::from_static("1"));
    req
}

fn response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("server", HeaderValue::from_static("nginx"));
    h.insert("content-type", HeaderValue::from_static("text/plain"));
    h.insert("content-length", HeaderValue::from_static("100"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h
}

fn bench(c: &mut Criterion) {
    let (m, _) = parse_str("bench.yaml", &manifests()).expect("manifests parse");
    let compiled = compile(&m, &CompileOptions::default());
    let table = compiled.table.clone();
    let bind = table
        .bind_for("127.0.0.1:80".parse().expect("addr"))
        .expect("bind");
    let mut g = c.benchmark_group("http_path");

    for (name, path) in [
        ("plain_route", "/r342/plain/users/7?x=1"),
        ("route_with_header_filters", "/r342/api/users/7?x=1"),
    ] {
        let template = request(path);
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut req = template.clone();
                let headers = req.headers();
                let lookup = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
                let m = table
                    .route_http(
                        bind,
                        black_box("h42.example.com"),
                        "GET",
                        req.uri().path(),
                        req.uri().query().unwrap_or(""),
                        lookup,
                    )
                    .expect("a route");
                forward::strip_hop_by_hop(req.headers_mut(), false);
                let mut resp = response_headers();
                for f in m.rule.filters.iter() {
                    match f {
                        HttpFilter::RequestHeaderModifier(h) => {
                            filter::modify_headers(req.headers_mut(), h)
                        }
                        HttpFilter::ResponseHeaderModifier(h) => {
                            filter::modify_headers(&mut resp, h)
                        }
                        _ => {}
                    }
                }
                let (mut parts, ()) = req.into_parts();
                forward::set_target(&mut parts.uri, &mut parts.headers, Protocol::Http1)
                    .expect("target");
                forward::strip_hop_by_hop(&mut resp, false);
                black_box((parts, resp))
            })
        });
    }

    // The lookup alone, for scale.
    let headers = request("/").headers().clone();
    g.bench_function("route_lookup_only", |b| {
        b.iter(|| {
            let lookup = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
            table
                .route_http(
                    bind,
                    black_box("h42.example.com"),
                    "GET",
                    black_box("/r342/api/users/7"),
                    "",
                    lookup,
                )
                .is_some()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
