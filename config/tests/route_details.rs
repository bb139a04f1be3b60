//! Route details a user checks after a compile: ReferenceGrant variants (status and the
//! compiled backend), `RequestMirror` fraction/percent, `retry` and RegularExpression
//! path matches in the compiled table.

mod common;

use common::{bind, build, cond, http_route, route, GW};
use gateway_config::{Compiled, HttpFilter, HttpRule, PathMatch, UnresolvedBackend};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use std::time::Duration;

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
metadata: {name: other, labels: {shared: "yes"}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec:
  ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: infra, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints:
- addresses: [10.0.0.1]
---
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: infra}
spec:
  ports: [{name: http, port: 8080}]
"#;

/// (status, reason) of a condition type.
fn sr<'a>(conds: &'a [Condition], type_: &str) -> (&'a str, &'a str) {
    let c = cond(conds, type_);
    (c.status.as_str(), c.reason.as_str())
}

/// The matched rule of `GET path` on the `http` listener (port 80).
fn rule_at<'c>(c: &'c Compiled, path: &str) -> &'c HttpRule {
    c.table
        .route_http(bind(c, 80), "any.host", "GET", path, "", |_| None)
        .unwrap_or_else(|| panic!("no match for {path}"))
        .rule
}

// ---------------------------------------------------------------------------------------
// ReferenceGrant
// ---------------------------------------------------------------------------------------

/// A ReferenceGrant; `to_name` `None` omits `to.name` (every object of the kind).
struct Grant<'a> {
    ns: &'a str,
    from_group: &'a str,
    from_kind: &'a str,
    from_ns: &'a str,
    to_group: &'a str,
    to_kind: &'a str,
    to_name: Option<&'a str>,
}

/// The grant that lets HTTPRoutes of `apps` reference Service `infra/web`.
const GOOD: Grant<'static> = Grant {
    ns: "infra",
    from_group: "gateway.networking.k8s.io",
    from_kind: "HTTPRoute",
    from_ns: "apps",
    to_group: "",
    to_kind: "Service",
    to_name: Some("web"),
};

impl Grant<'_> {
    fn yaml(&self) -> String {
        let name = self
            .to_name
            .map_or_else(String::new, |n| format!(", name: {n}"));
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: {}}}\nspec:\n  from: [{{group: '{}', kind: {}, namespace: {}}}]\n  to: [{{group: '{}', kind: {}{name}}}]",
            self.ns, self.from_group, self.from_kind, self.from_ns, self.to_group, self.to_kind
        )
    }
}

/// An HTTPRoute `apps/r` on the `wild` listener whose only backendRef is `infra/web`.
fn cross_ns_http_route() -> String {
    http_route(
        "apps",
        "r",
        "{name: gw, namespace: infra, sectionName: wild}",
        "  rules: [{backendRefs: [{name: web, namespace: infra, port: 8080}]}]\n",
    )
}

/// Route status and the compiled backend target of `apps/r` under an optional grant.
fn http_with_grant(grant: Option<&Grant<'_>>) -> (Compiled, Vec<Condition>) {
    let r = cross_ns_http_route();
    let g = grant.map(Grant::yaml);
    let mut docs = vec![INFRA, GW, r.as_str()];
    docs.extend(g.as_deref());
    let c = build(&docs);
    let conds = route(&c, "HTTPRoute", "apps/r", "gw");
    (c, conds)
}

fn http_backend_target(c: &Compiled) -> Result<(), UnresolvedBackend> {
    let m = c
        .table
        .route_http(bind(c, 8000), "x.example.com", "GET", "/", "", |_| None)
        .expect("the route is programmed on the wild listener");
    assert_eq!(m.rule.source.route.to_string(), "apps/r");
    first_target(&m.rule.backends)
}

/// Whether the first backend resolved, or why not.
fn first_target(backends: &[gateway_config::Backend]) -> Result<(), UnresolvedBackend> {
    backends[0].target.as_ref().map(|_| ()).map_err(|e| *e)
}

#[test]
fn reference_grant_that_matches_resolves_the_cross_namespace_backend() {
    let (c, conds) = http_with_grant(Some(&GOOD));
    assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"));
    assert_eq!(sr(&conds, "ResolvedRefs"), ("True", "ResolvedRefs"));
    assert_eq!(http_backend_target(&c), Ok(()));

    // Without `to.name`, the grant covers every Service of `infra`.
    let (c, conds) = http_with_grant(Some(&Grant {
        to_name: None,
        ..GOOD
    }));
    assert_eq!(sr(&conds, "ResolvedRefs"), ("True", "ResolvedRefs"));
    assert_eq!(http_backend_target(&c), Ok(()));
}

#[test]
fn cross_namespace_backend_without_any_grant_is_not_permitted() {
    let (c, conds) = http_with_grant(None);
    assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"));
    assert_eq!(sr(&conds, "ResolvedRefs"), ("False", "RefNotPermitted"));
    assert_eq!(
        http_backend_target(&c),
        Err(UnresolvedBackend::RefNotPermitted)
    );
}

#[test]
fn reference_grant_with_exactly_one_thing_wrong_is_not_permitted() {
    // HTTPRouteInvalidReferenceGrant and friends: one field off each time.
    let cases: &[(&str, Grant<'static>)] = &[
        (
            "grant in the route's namespace, not the target's",
            Grant { ns: "apps", ..GOOD },
        ),
        (
            "from.group wrong",
            Grant {
                from_group: "gateway.networking.k8s.io.example",
                ..GOOD
            },
        ),
        (
            "from.kind wrong",
            Grant {
                from_kind: "GRPCRoute",
                ..GOOD
            },
        ),
        (
            "from.namespace wrong",
            Grant {
                from_ns: "other",
                ..GOOD
            },
        ),
        (
            "to.group wrong",
            Grant {
                to_group: "apps",
                ..GOOD
            },
        ),
        (
            "to.kind wrong",
            Grant {
                to_kind: "Secret",
                ..GOOD
            },
        ),
        (
            "to.name names another Service",
            Grant {
                to_name: Some("web2"),
                ..GOOD
            },
        ),
    ];
    for (scenario, g) in cases {
        let (c, conds) = http_with_grant(Some(g));
        assert_eq!(
            sr(&conds, "Accepted"),
            ("True", "Accepted"),
            "{scenario}: {conds:?}"
        );
        assert_eq!(
            sr(&conds, "ResolvedRefs"),
            ("False", "RefNotPermitted"),
            "{scenario}: {conds:?}"
        );
        assert_eq!(
            http_backend_target(&c),
            Err(UnresolvedBackend::RefNotPermitted),
            "{scenario}"
        );
    }
}

#[test]
fn reference_grant_to_group_core_is_the_core_group() {
    // resolve.rs `permitted` folds `core` into "" on both sides.
    let (c, conds) = http_with_grant(Some(&Grant {
        to_group: "core",
        ..GOOD
    }));
    assert_eq!(sr(&conds, "ResolvedRefs"), ("True", "ResolvedRefs"));
    assert_eq!(http_backend_target(&c), Ok(()));
}

fn grpc_route_apps() -> String {
    "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: apps}\nspec:\n  parentRefs: [{name: gw, namespace: infra, sectionName: wild}]\n  rules: [{backendRefs: [{name: web, namespace: infra, port: 8080}]}]".to_string()
}

fn grpc_backend_target(c: &Compiled) -> Result<(), UnresolvedBackend> {
    let m = c
        .table
        .route_grpc(bind(c, 8000), "x.example.com", "echo.Echo", "Ping", |_| {
            None
        })
        .expect("the GRPCRoute is programmed on the wild listener");
    assert_eq!(m.rule.source.route.to_string(), "apps/g");
    first_target(&m.rule.backends)
}

#[test]
fn grpc_route_is_not_permitted_by_a_grant_from_http_routes() {
    let r = grpc_route_apps();
    let http_only = GOOD.yaml();
    let c = build(&[INFRA, GW, &r, &http_only]);
    let conds = route(&c, "GRPCRoute", "apps/g", "gw");
    assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"));
    assert_eq!(sr(&conds, "ResolvedRefs"), ("False", "RefNotPermitted"));
    assert_eq!(
        grpc_backend_target(&c),
        Err(UnresolvedBackend::RefNotPermitted)
    );

    // Control: the same grant from GRPCRoute does permit it.
    let grpc = Grant {
        from_kind: "GRPCRoute",
        ..GOOD
    }
    .yaml();
    let c = build(&[INFRA, GW, &r, &grpc]);
    let conds = route(&c, "GRPCRoute", "apps/g", "gw");
    assert_eq!(sr(&conds, "ResolvedRefs"), ("True", "ResolvedRefs"));
    assert_eq!(grpc_backend_target(&c), Ok(()));
}

// ---------------------------------------------------------------------------------------
// RequestMirror fraction / percent
// ---------------------------------------------------------------------------------------

/// (numerator, denominator) of the only `RequestMirror` filter of a rule, and whether
/// its backend resolved.
fn mirror_of(rule: &HttpRule) -> (u32, u32, bool) {
    let mirrors: Vec<_> = rule
        .filters
        .iter()
        .filter_map(|f| match f {
            HttpFilter::RequestMirror(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(mirrors.len(), 1, "{:?}", rule.filters);
    let m = mirrors[0];
    (m.numerator, m.denominator, m.backend.target.is_ok())
}

#[test]
fn request_mirror_fraction_and_percent_compile_to_numerator_and_denominator() {
    let rule = |path: &str, extra: &str| {
        format!("  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]\n    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: web2, port: 8080}}{extra}}}}}]\n    backendRefs: [{{name: web, port: 8080}}]\n")
    };
    let rules = [
        rule("/fraction", ", fraction: {numerator: 1, denominator: 4}"),
        rule("/percent", ", percent: 25"),
        rule("/all", ""),
        rule("/no-denominator", ", fraction: {numerator: 7}"),
    ]
    .concat();
    let r = http_route(
        "infra",
        "r",
        "{name: gw, sectionName: http}",
        &format!("  rules:\n{rules}"),
    );
    let c = build(&[INFRA, GW, &r]);
    let conds = route(&c, "HTTPRoute", "infra/r", "gw");
    assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"));
    assert_eq!(sr(&conds, "ResolvedRefs"), ("True", "ResolvedRefs"));
    let cases = [
        ("fraction 1/4", "/fraction", (1, 4, true)),
        ("percent 25", "/percent", (25, 100, true)),
        ("neither: mirror everything", "/all", (100, 100, true)),
        (
            "fraction without denominator: out of 100",
            "/no-denominator",
            (7, 100, true),
        ),
    ];
    for (scenario, path, want) in cases {
        assert_eq!(mirror_of(rule_at(&c, path)), want, "{scenario}");
    }
}

// ---------------------------------------------------------------------------------------
// retry
// ---------------------------------------------------------------------------------------

#[test]
fn retry_codes_attempts_and_backoff_compile() {
    let r = http_route(
        "infra",
        "r",
        "{name: gw, sectionName: http}",
        "  rules:\n  - matches: [{path: {value: /backoff}}]\n    retry: {codes: [500, 503], attempts: 3, backoff: 250ms}\n    backendRefs: [{name: web, port: 8080}]\n  - matches: [{path: {value: /no-backoff}}]\n    retry: {codes: [502], attempts: 2}\n    backendRefs: [{name: web, port: 8080}]\n  - matches: [{path: {value: /no-retry}}]\n    backendRefs: [{name: web, port: 8080}]\n",
    );
    let c = build(&[INFRA, GW, &r]);
    let conds = route(&c, "HTTPRoute", "infra/r", "gw");
    assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"));

    let retry = rule_at(&c, "/backoff").retry.as_ref().expect("retry");
    assert_eq!(&retry.codes[..], &[500u16, 503][..]);
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.backoff, Some(Duration::from_millis(250)));

    let retry = rule_at(&c, "/no-backoff").retry.as_ref().expect("retry");
    assert_eq!(&retry.codes[..], &[502u16][..]);
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.backoff, None);

    assert!(rule_at(&c, "/no-retry").retry.is_none());
}

// ---------------------------------------------------------------------------------------
// RegularExpression path match
// ---------------------------------------------------------------------------------------

#[test]
fn regular_expression_path_is_a_full_match_in_the_table() {
    let r = http_route(
        "infra",
        "r",
        "{name: gw, sectionName: http}",
        "  rules:\n  - name: regex\n    matches: [{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}]\n    backendRefs: [{name: web, port: 8080}]\n",
    );
    let c = build(&[INFRA, GW, &r]);
    let conds = route(&c, "HTTPRoute", "infra/r", "gw");
    assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"));
    assert_eq!(sr(&conds, "ResolvedRefs"), ("True", "ResolvedRefs"));

    let lookup = |path: &str| {
        c.table
            .route_http(bind(&c, 80), "any.host", "GET", path, "", |_| None)
    };
    let m = lookup("/re/123").expect("/re/123 matches");
    assert_eq!(m.rule.source.rule_name.as_deref(), Some("regex"));
    assert!(matches!(m.matched.path, PathMatch::Regex(_)));
    assert!(m.matched.path.is_match("/re/0"));
    for path in ["/re/123/x", "/re/abc", "/xre/123", "/re/", "/re/123x"] {
        assert!(
            lookup(path).is_none(),
            "{path} must not match (full match only)"
        );
        assert!(!m.matched.path.is_match(path), "{path}");
    }
}

/// A rule whose filters or retry cannot be applied as written is dropped with a reason
/// naming what and where (`PartiallyInvalid`), never applied in part: a filter type
/// without its configuration (rule-level or on a backendRef), an unsupported filter type
/// on a backendRef, a weight outside 0-1,000,000, a retry code that is not an error
/// status, a negative attempt count, a backoff that is not a duration. The valid rule
/// next to them keeps serving.
#[test]
fn malformed_filters_and_retries_drop_their_rule_with_the_reason() {
    let cases = [
        (
            "filters: [{type: RequestHeaderModifier}]\n    backendRefs: [{name: web, port: 8080}]",
            "filters[0]: filter type RequestHeaderModifier without its `requestHeaderModifier` field",
        ),
        (
            "backendRefs: [{name: web, port: 8080, filters: [{type: ResponseHeaderModifier}]}]",
            "backendRefs[0].filters[0]: filter type ResponseHeaderModifier without its `responseHeaderModifier` field",
        ),
        (
            "backendRefs: [{name: web, port: 8080}, {name: web2, port: 8080, filters: [{type: URLRewrite}]}]",
            "backendRefs[1].filters[0]: filter type URLRewrite without its `urlRewrite` field",
        ),
        (
            "backendRefs: [{name: web, port: 8080, filters: [{type: CORS, cors: {allowOrigins: ['https://a.com']}}]}]",
            "backendRefs[0].filters[0]: filter CORS is not supported",
        ),
        (
            "backendRefs: [{name: web, port: 8080, weight: 2000000000}, {name: web2, port: 8080, weight: 2000000000}, {name: web, port: 8080, weight: 2000000000}]",
            "backendRefs[0].weight 2000000000 is outside 0-1000000",
        ),
        (
            "backendRefs: [{name: web, port: 8080}, {name: web2, port: 8080, weight: -1}]",
            "backendRefs[1].weight -1 is outside 0-1000000",
        ),
        (
            "retry: {codes: [200], attempts: 1}\n    backendRefs: [{name: web, port: 8080}]",
            "retry code 200 is not an HTTP error status (400-599)",
        ),
        (
            "retry: {codes: [503], attempts: -1}\n    backendRefs: [{name: web, port: 8080}]",
            "retry attempts -1 is negative",
        ),
        (
            "retry: {codes: [503], backoff: soon}\n    backendRefs: [{name: web, port: 8080}]",
            "invalid retry backoff \"soon\"",
        ),
    ];
    for (rule, reason) in cases {
        let r = http_route(
            "infra",
            "r",
            "{name: gw, sectionName: http}",
            &format!(
                "  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /good}}}}]\n    backendRefs: [{{name: web, port: 8080}}]\n  - matches: [{{path: {{type: PathPrefix, value: /bad}}}}]\n    {rule}\n"
            ),
        );
        let c = build(&[INFRA, GW, &r]);
        let conds = route(&c, "HTTPRoute", "infra/r", "gw");
        assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"), "{rule}");
        let p = cond(&conds, "PartiallyInvalid");
        assert!(p.message.contains(reason), "{rule}: {}", p.message);
        assert_eq!(rule_at(&c, "/good").source.rule_index, 0, "{rule}");
        assert!(
            c.table
                .route_http(bind(&c, 80), "any.host", "GET", "/bad", "", |_| None)
                .is_none(),
            "{rule}: the malformed rule must not serve"
        );
    }
}

/// The same for GRPCRoute rules: a method or header pattern that does not compile, or a
/// filter without its configuration (on the rule or on a backendRef), drops the rule
/// with its reason; a dropped rule matches nothing, and the valid rule keeps serving.
#[test]
fn malformed_grpc_rules_are_dropped_with_the_reason() {
    let cases = [
        (
            "matches: [{method: {type: RegularExpression, service: 'echo(('}}]\n    backendRefs: [{name: web, port: 8080}]",
            "matches[0].method.service: invalid regular expression",
        ),
        (
            "matches: [{method: {type: RegularExpression, service: bad.Bad, method: '[z-a]'}}]\n    backendRefs: [{name: web, port: 8080}]",
            "matches[0].method.method: invalid regular expression",
        ),
        (
            "matches: [{method: {service: bad.Bad}}, {headers: [{type: RegularExpression, name: v, value: '(('}]}]\n    backendRefs: [{name: web, port: 8080}]",
            "matches[1].headers[0]: invalid regular expression",
        ),
        (
            "matches: [{method: {service: bad.Bad}}]\n    filters: [{type: RequestHeaderModifier}]\n    backendRefs: [{name: web, port: 8080}]",
            "filters[0]: filter type RequestHeaderModifier without its `requestHeaderModifier` field",
        ),
        (
            "matches: [{method: {service: bad.Bad}}]\n    backendRefs: [{name: web, port: 8080, filters: [{type: RequestMirror}]}]",
            "backendRefs[0].filters[0]: filter type RequestMirror without its `requestMirror` field",
        ),
        (
            "matches: [{method: {service: bad.Bad}}]\n    backendRefs: [{name: web, port: 8080, weight: 1000001}]",
            "backendRefs[0].weight 1000001 is outside 0-1000000",
        ),
    ];
    for (rule, reason) in cases {
        let r = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: infra}}\nspec:\n  parentRefs: [{{name: gw, sectionName: http}}]\n  rules:\n  - matches: [{{method: {{service: good.Good}}}}]\n    backendRefs: [{{name: web, port: 8080}}]\n  - {rule}\n"
        );
        let c = build(&[INFRA, GW, &r]);
        let conds = route(&c, "GRPCRoute", "infra/g", "gw");
        assert_eq!(sr(&conds, "Accepted"), ("True", "Accepted"), "{rule}");
        let p = cond(&conds, "PartiallyInvalid");
        assert!(p.message.contains(reason), "{rule}: {}", p.message);
        let lookup = |service: &str| {
            c.table
                .route_grpc(bind(&c, 80), "any.host", service, "Call", |n| {
                    (n == "v").then_some("x")
                })
                .map(|m| m.rule.source.rule_index)
        };
        assert_eq!(lookup("good.Good"), Some(0), "{rule}");
        assert_eq!(
            lookup("bad.Bad"),
            None,
            "{rule}: the malformed rule must not serve"
        );
        assert_eq!(
            lookup("other.Other"),
            None,
            "{rule}: nor widen to every call"
        );
    }
}
