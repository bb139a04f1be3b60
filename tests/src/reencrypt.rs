//! The re-encrypt setup the backend TLS tests share: plaintext HTTP in through the
//! conformance `same-namespace` Gateway and HTTPRoute `r`, TLS out to the backends under
//! BackendTLSPolicy `p`, which trusts the CAs in ConfigMap `backend-ca`. Each function
//! returns YAML documents joined into one string, one item of [`Infra::serve`]'s list.
//!
//! [`Infra::serve`]: crate::scenario::Infra::serve

use crate::{
    scenario::{backend_tls_policy, http_route, same_namespace_gateway, validate_with, INFRA},
    tls::{ca_config_map, Ca},
};

/// The Gateway these manifests write (`same-namespace`).
pub const GATEWAY: &str = "same-namespace";
/// The HTTPRoute [`routed`] writes.
pub const ROUTE: &str = "r";
/// The BackendTLSPolicy [`trusting`] writes.
pub const POLICY: &str = "p";
/// The CA ConfigMap [`trusting`] writes.
pub const CA_CONFIG_MAP: &str = "backend-ca";

/// The `same-namespace` Gateway with its HTTP listener on `port`, and HTTPRoute `r` on it;
/// each rule `(exact path or "" for any, Service)` sends to the Service's port 8080.
pub fn routed(port: u16, rules: &[(&str, &str)]) -> String {
    let rules: Vec<(&str, &str, u16)> = rules.iter().map(|&(p, s)| (p, s, 8080)).collect();
    format!(
        "{}---\n{}",
        same_namespace_gateway(port),
        http_route(ROUTE, &[&format!("{{name: {GATEWAY}}}")], &rules)
    )
}

/// The ConfigMap `backend-ca` holding the bundle of `cas` (none: an empty `ca.crt`), and
/// BackendTLSPolicy `p` on the Services `targets`, trusting it for `hostname`.
pub fn trusting(cas: &[&Ca], targets: &[&str], hostname: &str) -> String {
    format!(
        "{}---\n{}",
        ca_config_map(INFRA, CA_CONFIG_MAP, cas),
        backend_tls_policy(POLICY, "", targets, &validate_with(CA_CONFIG_MAP, hostname))
    )
}

/// [`routed`] and [`trusting`]: policy `p` targets every Service the rules name.
pub fn reencrypt(port: u16, rules: &[(&str, &str)], cas: &[&Ca], hostname: &str) -> String {
    let mut targets: Vec<&str> = Vec::new();
    for &(_, svc) in rules {
        if !targets.contains(&svc) {
            targets.push(svc);
        }
    }
    format!(
        "{}---\n{}",
        routed(port, rules),
        trusting(cas, &targets, hostname)
    )
}
