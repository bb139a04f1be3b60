//! Gateway addresses of the implementation-specific type `gateway.networking.example/CIDR`:
//! one bind on the range's first address that the kernel steers the whole range to
//! (`sk_lookup`), next to the core `IPAddress` type.

use gateway_config::{
    compile, parse_str, Bind, CompileOptions, Compiled, EbpfListenerEntry, CIDR_ADDRESS_TYPE,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

fn build(docs: &[&str]) -> Compiled {
    let text = docs.join("\n---\n");
    let (m, warnings) = parse_str("test.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    compile(&m, &CompileOptions::default())
}

fn gateway(name: &str, created: &str, addresses: &str, port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: infra, creationTimestamp: \"{created}\"}}\nspec:\n  gatewayClassName: x\n  addresses: {addresses}\n  listeners:\n  - {{name: l, protocol: HTTP, port: {port}}}\n"
    )
}

fn cond<'a>(conds: &'a [Condition], type_: &str) -> &'a Condition {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {conds:?}"))
}

fn gateway_conditions(c: &Compiled, name: &str) -> Vec<Condition> {
    c.status
        .gateway("infra", name)
        .and_then(|s| s.conditions.clone())
        .expect("gateway conditions")
}

fn listener_reason(c: &Compiled, gw: &str) -> String {
    let s = c.status.gateway("infra", gw).expect("gateway status");
    let l = s.listeners.iter().flatten().next().expect("a listener");
    cond(&l.conditions, "Accepted").reason.clone()
}

fn binds(c: &Compiled) -> Vec<(String, Option<u8>)> {
    c.table
        .binds()
        .iter()
        .map(|b| (b.addr.to_string(), b.prefix_len))
        .collect()
}

#[test]
fn the_cidr_type_is_domain_prefixed_as_the_spec_requires_for_implementation_specific_types() {
    // AddressType: "A domain-prefixed string identifier (like acme.io/CustomAddressType)";
    // the CRD's pattern for such values is `<dns subdomain>/<path>`.
    let (domain, name) = CIDR_ADDRESS_TYPE.split_once('/').expect("domain/name");
    assert!(domain.contains('.'), "{domain}");
    assert!(domain
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-'));
    assert!(!name.is_empty());
}

#[test]
fn a_cidr_address_binds_its_first_address_once_and_steers_the_range() {
    let c = build(&[&gateway(
        "range",
        "2020-01-01T00:00:00Z",
        "[{type: gateway.networking.example/CIDR, value: 192.0.2.0/24}, {type: gateway.networking.example/CIDR, value: \"2001:db8:7::/64\"}, {type: IPAddress, value: 198.51.100.7}]",
        80,
    )]);
    assert_cond_true(&gateway_conditions(&c, "range"), "Accepted");
    assert_eq!(
        binds(&c),
        vec![
            ("192.0.2.0:80".to_string(), Some(24)),
            ("[2001:db8:7::]:80".to_string(), Some(64)),
            ("198.51.100.7:80".to_string(), None),
        ]
    );
    let steered: Vec<_> = c.table.binds().iter().map(Bind::steered_prefix).collect();
    assert_eq!(
        steered,
        vec![
            Some(("192.0.2.0".parse().expect("ip"), 24)),
            Some(("2001:db8:7::".parse().expect("ip"), 64)),
            Some(("198.51.100.7".parse().expect("ip"), 32)),
        ]
    );
    // The kernel listener table knows the range by its first address.
    let plan: Vec<&EbpfListenerEntry> = c.table.ebpf_plan().iter().collect();
    assert_eq!(plan.len(), 3);
    assert_eq!(plan[0].addr.to_string(), "192.0.2.0");
    // Status lists each address with the type it was asked with.
    let status = c.status.gateway("infra", "range").expect("status");
    let listed: Vec<(String, String)> = status
        .addresses
        .iter()
        .flatten()
        .map(|a| (a.r#type.clone().unwrap_or_default(), a.value.clone()))
        .collect();
    assert_eq!(
        listed,
        vec![
            (CIDR_ADDRESS_TYPE.to_string(), "192.0.2.0/24".to_string()),
            (CIDR_ADDRESS_TYPE.to_string(), "2001:db8:7::/64".to_string()),
            ("IPAddress".to_string(), "198.51.100.7".to_string()),
        ]
    );
}

fn assert_cond_true(conds: &[Condition], type_: &str) {
    let c = cond(conds, type_);
    assert_eq!(c.status, "True", "{c:?}");
}

#[test]
fn wildcard_binds_steer_nothing() {
    let c = build(&[&gateway("any", "2020-01-01T00:00:00Z", "[]", 80)]);
    assert!(c.table.binds().iter().all(|b| b.steered_prefix().is_none()));
    assert!(c.table.binds().iter().all(|b| b.prefix_len.is_none()));
}

#[test]
fn malformed_or_unsupported_ranges_are_unsupported_addresses() {
    for (value, says) in [
        ("192.0.2.0", "not a CIDR"),
        ("192.0.2.0/33", "prefix length"),
        ("0.0.0.0/0", "prefix length"),
        ("192.0.2.1/24", "host bits"),
        ("2001:db8::1/64", "host bits"),
        ("example.com/24", "not a CIDR"),
    ] {
        let c = build(&[&gateway(
            "bad",
            "2020-01-01T00:00:00Z",
            &format!("[{{type: {CIDR_ADDRESS_TYPE}, value: \"{value}\"}}]"),
            80,
        )]);
        let accepted = cond(&gateway_conditions(&c, "bad"), "Accepted").clone();
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "UnsupportedAddress"),
            "{value}: {accepted:?}"
        );
        assert!(accepted.message.contains(says), "{value}: {accepted:?}");
    }
    // Other implementation-specific types stay unsupported.
    let c = build(&[&gateway(
        "other",
        "2020-01-01T00:00:00Z",
        "[{type: example.com/Range, value: 192.0.2.0/24}]",
        80,
    )]);
    let accepted = cond(&gateway_conditions(&c, "other"), "Accepted").clone();
    assert_eq!(accepted.reason, "UnsupportedAddress");
    assert!(
        accepted.message.contains("example.com/Range"),
        "{accepted:?}"
    );
}

#[test]
fn a_range_and_the_same_first_address_on_one_port_are_not_merged() {
    // The range's socket is bound on its first address: a younger Gateway asking for that
    // one address on the same port cannot share it (it would also get the whole range).
    let range = gateway(
        "range",
        "2020-01-01T00:00:00Z",
        "[{type: gateway.networking.example/CIDR, value: 192.0.2.0/24}]",
        80,
    );
    let single = gateway(
        "single",
        "2021-01-01T00:00:00Z",
        "[{type: IPAddress, value: 192.0.2.0}]",
        80,
    );
    let c = build(&[&range, &single]);
    assert_eq!(listener_reason(&c, "range"), "Accepted");
    assert_eq!(listener_reason(&c, "single"), "PortUnavailable");
    assert_eq!(binds(&c), vec![("192.0.2.0:80".to_string(), Some(24))]);
    // Another address of the range is a bind of its own (the kernel prefers the longest
    // prefix, so it wins over the range for that one address).
    let other = gateway(
        "other",
        "2021-01-01T00:00:00Z",
        "[{type: IPAddress, value: 192.0.2.9}]",
        80,
    );
    let c = build(&[&range, &other]);
    assert_eq!(listener_reason(&c, "other"), "Accepted");
    assert_eq!(
        binds(&c),
        vec![
            ("192.0.2.0:80".to_string(), Some(24)),
            ("192.0.2.9:80".to_string(), None)
        ]
    );
}
