//! Lookups allocate nothing: a counting global allocator around every lookup kind of the
//! `RouteTable` (`select_listener`, `route_http`, `route_grpc`, `route_tls`,
//! `certificates_for`) on a table of the bench's size: 10,000 HTTPRoutes (5 rules each)
//! across 100 hostnames, plus GRPCRoutes, TLSRoutes and HTTPS listeners chosen by SNI.

// A GlobalAlloc impl is unsafe by definition; it only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;

use gateway_config::{compile, parse_str, CompileOptions};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator; the thread-local
// counter is const-initialised and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

const ROUTES: usize = 10_000;
const HOSTS: usize = 100;
const GRPC_ROUTES: usize = 100;
const TLS_ROUTES: usize = 100;

fn pem(name: &str) -> String {
    std::fs::read_to_string(format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("test data")
}

fn tls_secret(name: &str, crt: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&pem(crt)),
        indent(&pem(key))
    )
}

/// One Gateway: HTTP on :80 (`*.example.com`, the HTTPRoutes), HTTP on :81 (GRPCRoutes),
/// three HTTPS listeners on :443 told apart by SNI, and TLS passthrough on :8443.
fn manifests() -> String {
    let mut s = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: x\n  addresses: [{value: 127.0.0.1}]\n  listeners:\n  - {name: http, protocol: HTTP, port: 80, hostname: '*.example.com'}\n  - {name: grpc, protocol: HTTP, port: 81}\n  - {name: https-a, protocol: HTTPS, port: 443, hostname: a.example.com, tls: {certificateRefs: [{name: ec}]}}\n  - {name: https-wild, protocol: HTTPS, port: 443, hostname: '*.example.com', tls: {certificateRefs: [{name: rsa}]}}\n  - {name: https-any, protocol: HTTPS, port: 443, tls: {certificateRefs: [{name: ec}]}}\n  - {name: tls, protocol: TLS, port: 8443, tls: {mode: Passthrough}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {ports: [{port: 80}]}\n",
    );
    s.push_str(&tls_secret("ec", "ec.crt", "ec.sec1.key"));
    s.push_str(&tls_secret("rsa", "rsa.crt", "rsa.pkcs8.key"));
    for i in 0..ROUTES {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}}}\nspec:\n  parentRefs: [{{name: gw, sectionName: http}}]\n  hostnames: [h{}.example.com]\n  rules:\n  - {{matches: [{{path: {{type: Exact, value: /r{i}/exact}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/api}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/h}}, headers: [{{name: x-v, value: '1'}}]}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/q}}, method: POST, queryParams: [{{name: a, value: b}}]}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: RegularExpression, value: '/r{i}/re/[0-9]+'}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n",
            i % HOSTS
        );
    }
    for i in 0..GRPC_ROUTES {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g{i}}}\nspec:\n  parentRefs: [{{name: gw, sectionName: grpc}}]\n  hostnames: [g{}.grpc.example.com]\n  rules:\n  - {{matches: [{{method: {{service: pkg.Svc{i}, method: Get}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{method: {{service: pkg.Svc{i}}}, headers: [{{name: x-v, value: '1'}}]}}], backendRefs: [{{name: svc, port: 80}}]}}\n",
            i % 10
        );
    }
    for i in 0..TLS_ROUTES {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {{name: t{i}}}\nspec:\n  parentRefs: [{{name: gw, sectionName: tls}}]\n  hostnames: [t{i}.tls.example.com]\n  rules: [{{backendRefs: [{{name: svc, port: 80}}]}}]\n"
        );
    }
    s.push_str("---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t-wild}\nspec:\n  parentRefs: [{name: gw, sectionName: tls}]\n  hostnames: ['*.wild.example.com']\n  rules: [{backendRefs: [{name: svc, port: 80}]}]\n");
    s
}

#[test]
fn every_lookup_kind_allocates_nothing_at_10k_routes() {
    let (m, _) = parse_str("scale.yaml", &manifests()).expect("parses");
    let c = compile(&m, &CompileOptions::default());
    let t = &*c.table;
    let bind = |port: u16| {
        t.bind_for(format!("127.0.0.1:{port}").parse().expect("addr"))
            .expect("bind")
    };
    let (http, grpc, https, tls) = (bind(80), bind(81), bind(443), bind(8443));
    let headers = |n: &str| (n == "x-v").then_some("1");
    let no_headers = |_: &str| None;
    // Longer than any hostname (253): no listener, not even the catch-all.
    let too_long = format!("{}.example.com", "a".repeat(300));
    let too_long = too_long.as_str();
    let passthrough = t
        .select_listener(tls, Some("t1.tls.example.com"))
        .expect("passthrough listener");

    // Every lookup, its answer rendered as text, and the answer it must give.
    let http_rule = |host: &str, method: &str, path: &str, query: &str| {
        t.route_http(http, host, method, path, query, headers)
            .map(|m| format!("{}#{}", m.rule.source.route.name, m.rule.source.rule_index))
    };
    let grpc_rule = |authority: &str, service: &str, method: &str, with_header: bool| {
        let found = if with_header {
            t.route_grpc(grpc, authority, service, method, headers)
        } else {
            t.route_grpc(grpc, authority, service, method, no_headers)
        };
        found.map(|m| format!("{}#{}", m.rule.source.route.name, m.rule.source.rule_index))
    };
    let tls_target = |sni: &str| {
        t.route_tls(passthrough, sni)
            .map(|target| target.source.route.name.to_string())
    };
    let certificate = |sni: Option<&str>| {
        t.certificates_for(https, sni)
            .and_then(|c| c.first())
            .map(|k| k.source.clone())
    };
    let listener =
        |bind, host: Option<&str>| t.select_listener(bind, host).map(|l| l.name.to_string());
    let cases = [
        (
            "select_listener by Host",
            listener(http, Some("h7.example.com")),
            Some("http"),
        ),
        (
            "select_listener, no Host",
            listener(grpc, None),
            Some("grpc"),
        ),
        (
            "select_listener by SNI",
            listener(https, Some("A.Example.com")),
            Some("https-a"),
        ),
        (
            "route_http exact",
            http_rule("h7.example.com", "GET", "/r7/exact", ""),
            Some("r7#0"),
        ),
        (
            "route_http deep prefix, host:port",
            http_rule("H7.Example.com:80", "GET", "/r9907/api/v1/users", ""),
            Some("r9907#1"),
        ),
        (
            "route_http header",
            http_rule("h7.example.com", "GET", "/r107/h/x", ""),
            Some("r107#2"),
        ),
        (
            "route_http method + query",
            http_rule("h7.example.com", "POST", "/r207/q", "x=1&a=b"),
            Some("r207#3"),
        ),
        (
            "route_http regex",
            http_rule("h7.example.com", "GET", "/r307/re/42", ""),
            Some("r307#4"),
        ),
        (
            "route_http miss",
            http_rule("h7.example.com", "GET", "/nothing/here", ""),
            None,
        ),
        (
            "route_http unknown host",
            http_rule("unknown.example.org", "GET", "/", ""),
            None,
        ),
        (
            "route_grpc service + method",
            grpc_rule("g3.grpc.example.com", "pkg.Svc43", "Get", false),
            Some("g43#0"),
        ),
        (
            "route_grpc service + header",
            grpc_rule("g3.grpc.example.com:81", "pkg.Svc43", "List", true),
            Some("g43#1"),
        ),
        (
            "route_grpc miss",
            grpc_rule("g3.grpc.example.com", "pkg.Svc43", "List", false),
            None,
        ),
        (
            "route_tls exact SNI",
            tls_target("t42.tls.example.com"),
            Some("t42"),
        ),
        (
            "route_tls wildcard SNI",
            tls_target("x.wild.example.com"),
            Some("t-wild"),
        ),
        ("route_tls miss", tls_target("nope.example.com"), None),
        (
            "certificates_for exact SNI",
            certificate(Some("a.example.com")),
            Some("default/ec"),
        ),
        (
            "certificates_for wildcard SNI",
            certificate(Some("b.example.com")),
            Some("default/rsa"),
        ),
        (
            "certificates_for other SNI",
            certificate(Some("other.net")),
            Some("default/ec"),
        ),
        (
            "certificates_for no SNI",
            certificate(None),
            Some("default/ec"),
        ),
        (
            "certificates_for SNI too long",
            certificate(Some(too_long)),
            None,
        ),
        (
            "select_listener Host too long",
            listener(http, Some(too_long)),
            None,
        ),
    ];
    // Warm up (the regex engine fills its per-thread cache on first use) and check every
    // answer: a lookup that found nothing would allocate nothing for the wrong reason.
    for (what, got, want) in &cases {
        assert_eq!(got.as_deref(), *want, "{what}");
    }
    // The answers are rendered as text above, which allocates; here only the lookups run.
    let rounds = 100;
    let n = allocations(|| {
        for _ in 0..rounds {
            let hosts = ["h7.example.com", "H7.Example.com:80", "unknown.example.org"];
            for h in hosts {
                std::hint::black_box(t.select_listener(http, Some(h)));
                std::hint::black_box(t.route_http(http, h, "GET", "/r7/exact", "", headers));
                std::hint::black_box(t.route_http(
                    http,
                    h,
                    "GET",
                    "/r9907/api/v1/users",
                    "",
                    headers,
                ));
                std::hint::black_box(t.route_http(http, h, "GET", "/r107/h/x", "", headers));
                std::hint::black_box(t.route_http(http, h, "POST", "/r207/q", "x=1&a=b", headers));
                std::hint::black_box(t.route_http(http, h, "GET", "/r307/re/42", "", headers));
                std::hint::black_box(t.route_http(http, h, "GET", "/nothing/here", "", headers));
            }
            std::hint::black_box(t.select_listener(grpc, None));
            for (svc, method) in [("pkg.Svc43", "Get"), ("pkg.Svc43", "List"), ("x", "y")] {
                std::hint::black_box(t.route_grpc(
                    grpc,
                    "g3.grpc.example.com:81",
                    svc,
                    method,
                    headers,
                ));
                std::hint::black_box(t.route_grpc(
                    grpc,
                    "g3.grpc.example.com",
                    svc,
                    method,
                    no_headers,
                ));
            }
            for sni in [
                "t42.tls.example.com",
                "x.wild.example.com",
                "nope.example.com",
            ] {
                std::hint::black_box(t.route_tls(passthrough, sni));
            }
            for sni in [
                Some("a.example.com"),
                Some("B.example.com"),
                Some("other.net"),
                Some(too_long),
                None,
            ] {
                std::hint::black_box(t.select_listener(https, sni));
                std::hint::black_box(t.certificates_for(https, sni));
            }
        }
    });
    assert_eq!(
        n, 0,
        "allocations during {rounds} rounds of every lookup kind"
    );
}
