//! Certificate problems that only building the rustls configs finds (a key that does not
//! match its certificate, a CA rustls cannot use as a trust anchor), reported in the
//! listener's status as `gateway-config` would have reported a bad reference.
//!
//! `gateway-config` has no crypto provider, so it checks that a Secret parses, not that
//! its key signs for its certificate; [`super::TlsBindings::build`] does. The status is
//! patched on its JSON form (what `/status` serves), once per load.

use serde_json::{json, Map, Value};

use super::{TlsBindings, TlsBuildError};

/// `status` as JSON, with the certificate problems building `tls` found: what `/status`
/// serves and `gatewayd check` prints.
pub fn render<S: serde::Serialize>(status: &S, tls: &TlsBindings) -> Value {
    let mut json = serde_json::to_value(status)
        .unwrap_or_else(|err| json!({ "items": [], "error": err.to_string() }));
    report_problems(&mut json, tls);
    json
}

/// Sets, for every listener with a [`TlsProblem`](super::TlsProblem) about its
/// certificates, `ResolvedRefs=False` (`InvalidCertificateRef`, or
/// `InvalidCACertificateRef` for client validation), `Programmed=False` (`Invalid`) when
/// none of its certificates is usable, and the Gateway's `ResolvedRefs=False`
/// (`ListenersNotResolved`). Leaves the status alone when there are no such problems.
pub fn report_problems(status: &mut Value, tls: &TlsBindings) {
    for p in tls.problems() {
        let reason = match &p.error {
            TlsBuildError::Key { .. } => "InvalidCertificateRef",
            TlsBuildError::NoUsableCa { .. } | TlsBuildError::Verifier { .. } => {
                "InvalidCACertificateRef"
            }
            TlsBuildError::Config { .. } | TlsBuildError::BadOption { .. } => continue,
        };
        let unusable = matches!(p.error, TlsBuildError::Key { .. })
            && tls.table().listener(p.listener).is_some_and(|l| {
                let failed = tls
                    .problems()
                    .iter()
                    .filter(|q| q.listener == p.listener)
                    .filter(|q| matches!(q.error, TlsBuildError::Key { .. }))
                    .count();
                failed >= l.certificates.len()
            });
        let Some(gateway) = gateway_item(status, &p.gateway.namespace, &p.gateway.name) else {
            continue;
        };
        let generation = gateway
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .cloned()
            .unwrap_or(json!(1));
        let Some(st) = gateway.get_mut("status").and_then(Value::as_object_mut) else {
            continue;
        };
        let message = p.error.to_string();
        if let Some(listener) = st
            .get_mut("listeners")
            .and_then(Value::as_array_mut)
            .and_then(|ls| {
                ls.iter_mut()
                    .find(|l| l.get("name").and_then(Value::as_str) == Some(&*p.listener_name))
            })
            .and_then(Value::as_object_mut)
        {
            let Some(conds) = conditions(listener) else {
                continue;
            };
            set(conds, "ResolvedRefs", false, reason, &message, &generation);
            if unusable {
                set(
                    conds,
                    "Programmed",
                    false,
                    "Invalid",
                    "no usable certificate",
                    &generation,
                );
            }
        }
        let summary = format!("listeners with unresolved references: {}", p.listener_name);
        let Some(conds) = conditions(st) else {
            continue;
        };
        let already = conds.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some("ResolvedRefs")
                && c.get("status").and_then(Value::as_str) == Some("False")
        });
        if !already {
            set(
                conds,
                "ResolvedRefs",
                false,
                "ListenersNotResolved",
                &summary,
                &generation,
            );
        }
    }
}

fn gateway_item<'v>(status: &'v mut Value, namespace: &str, name: &str) -> Option<&'v mut Value> {
    status
        .get_mut("items")?
        .as_array_mut()?
        .iter_mut()
        .find(|i| {
            i.get("kind").and_then(Value::as_str) == Some("Gateway")
                && i.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace)
                && i.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
        })
}

fn conditions(object: &mut Map<String, Value>) -> Option<&mut Vec<Value>> {
    let conds = object
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !conds.is_array() {
        *conds = Value::Array(Vec::new());
    }
    conds.as_array_mut()
}

/// Replaces (or adds) the condition of `type_`, keeping its transition time when the
/// status does not change.
fn set(
    conds: &mut Vec<Value>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: &Value,
) {
    let status = if ok { "True" } else { "False" };
    let existing = conds
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_));
    match existing {
        Some(c) => {
            c["status"] = json!(status);
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        }
        None => {
            let now = conds
                .first()
                .and_then(|c| c.get("lastTransitionTime"))
                .cloned()
                .unwrap_or(Value::Null);
            conds.push(json!({
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": now,
            }));
        }
    }
}
