//! Route lookups allocate nothing: a counting global allocator around lookups on a
//! table of 1,000 HTTPRoutes (5 rules each) across 100 hostnames.

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

fn manifests(routes: usize, hosts: usize) -> String {
    let mut s = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\nspec:\n  gatewayClassName: x\n  addresses: [{value: 127.0.0.1}]\n  listeners:\n  - {name: http, protocol: HTTP, port: 80, hostname: '*.example.com'}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {ports: [{port: 80}]}\n",
    );
    for i in 0..routes {
        let _ = write!(
            s,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{i}}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [h{}.example.com]\n  rules:\n  - {{matches: [{{path: {{type: Exact, value: /r{i}/exact}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/api}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/h}}, headers: [{{name: x-v, value: '1'}}]}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: PathPrefix, value: /r{i}/q}}, method: POST, queryParams: [{{name: a, value: b}}]}}], backendRefs: [{{name: svc, port: 80}}]}}\n  - {{matches: [{{path: {{type: RegularExpression, value: '/r{i}/re/[0-9]+'}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n",
            i % hosts
        );
    }
    s
}

#[test]
fn route_lookups_allocate_nothing() {
    let (m, _) = parse_str("scale.yaml", &manifests(1000, 100)).expect("parses");
    let c = compile(&m, &CompileOptions::default());
    let bind = c
        .table
        .bind_for("127.0.0.1:80".parse().expect("addr"))
        .expect("bind");
    let headers = |n: &str| (n == "x-v").then_some("1");
    let lookups: &[(&str, &str, &str, &str)] = &[
        ("h7.example.com", "GET", "/r7/exact", ""),
        ("H7.Example.com:80", "GET", "/r707/api/v1/users", ""),
        ("h7.example.com", "GET", "/r107/h/x", ""),
        ("h7.example.com", "POST", "/r207/q", "x=1&a=b"),
        ("h7.example.com", "GET", "/r307/re/42", ""),
        ("h7.example.com", "GET", "/nothing/here", ""),
        ("unknown.example.org", "GET", "/", ""),
    ];
    // Warm up (the regex engine fills its per-thread cache on first use).
    for (h, m, p, q) in lookups {
        let _ = c.table.route_http(bind, h, m, p, q, headers);
    }
    let before = ALLOCS.with(Cell::get);
    let mut hits = 0;
    for _ in 0..100 {
        for (h, m, p, q) in lookups {
            hits += usize::from(c.table.route_http(bind, h, m, p, q, headers).is_some());
        }
        let l = c.table.select_listener(bind, Some("h1.example.com"));
        hits += usize::from(l.is_some());
    }
    let after = ALLOCS.with(Cell::get);
    assert_eq!(
        hits,
        100 * 6,
        "5 routed lookups + listener selection per round"
    );
    assert_eq!(after - before, 0, "allocations during {} lookups", 100 * 8);
}
