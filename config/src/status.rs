//! Status output: every Gateway, route and BackendTLSPolicy of the input with its status
//! shaped as the Gateway API defines it (the `gateway-api` crate's status types).

use gateway_api::backendtlspolicies::BackendTlsPolicyStatus;
use gateway_api::experimental::gateways::GatewayStatus;
use gateway_api::experimental::grpcroutes::GrpcRouteStatus;
use gateway_api::experimental::httproutes::HttpRouteStatus;
use gateway_api::experimental::tlsroutes::TlsRouteStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

/// `{"items": [...]}`, as `gatewayd check` (YAML) and `GET /status` (JSON) print it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StatusReport {
    /// One item per Gateway, HTTPRoute, GRPCRoute, TLSRoute and BackendTLSPolicy served.
    pub items: Vec<StatusItem>,
}

/// An object and its status.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusItem {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `Gateway`, `HTTPRoute`, `GRPCRoute`, `TLSRoute` or `BackendTLSPolicy`.
    pub kind: String,
    /// Namespace, name and generation.
    pub metadata: StatusMetadata,
    /// The status.
    pub status: ObjectStatus,
}

/// The metadata printed with a status.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusMetadata {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// `metadata.generation` (1 when absent).
    pub generation: i64,
}

/// The status of one object, serialised as the kind's own status type.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ObjectStatus {
    /// Gateway.
    Gateway(GatewayStatus),
    /// HTTPRoute.
    HttpRoute(HttpRouteStatus),
    /// GRPCRoute.
    GrpcRoute(GrpcRouteStatus),
    /// TLSRoute.
    TlsRoute(TlsRouteStatus),
    /// BackendTLSPolicy.
    BackendTlsPolicy(BackendTlsPolicyStatus),
}

impl StatusReport {
    /// The status of one object.
    pub fn find(&self, kind: &str, namespace: &str, name: &str) -> Option<&StatusItem> {
        self.items.iter().find(|i| {
            i.kind == kind && i.metadata.namespace == namespace && i.metadata.name == name
        })
    }

    /// A Gateway's status.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&GatewayStatus> {
        match &self.find("Gateway", namespace, name)?.status {
            ObjectStatus::Gateway(s) => Some(s),
            _ => None,
        }
    }

    /// Conditions of a route's parent status entry for a Gateway `gw_namespace/gw_name`
    /// (the first entry naming that Gateway).
    pub fn route_parent_conditions(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        gw_name: &str,
    ) -> Option<&[Condition]> {
        match &self.find(kind, namespace, name)?.status {
            ObjectStatus::HttpRoute(s) => s
                .parents
                .iter()
                .find(|p| p.parent_ref.name == gw_name)
                .map(|p| &p.conditions[..]),
            ObjectStatus::GrpcRoute(s) => s
                .parents
                .iter()
                .find(|p| p.parent_ref.name == gw_name)
                .map(|p| &p.conditions[..]),
            ObjectStatus::TlsRoute(s) => s
                .parents
                .iter()
                .find(|p| p.parent_ref.name == gw_name)
                .map(|p| &p.conditions[..]),
            _ => None,
        }
    }
}

/// A condition result before it gets a time and generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cond {
    pub(crate) type_: &'static str,
    pub(crate) ok: bool,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl Cond {
    pub(crate) fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Cond {
            type_,
            ok,
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn build(&self, generation: i64, now: &Time) -> Condition {
        Condition {
            last_transition_time: now.clone(),
            message: self.message.clone(),
            observed_generation: Some(generation),
            reason: self.reason.to_string(),
            status: if self.ok { "True" } else { "False" }.to_string(),
            type_: self.type_.to_string(),
        }
    }
}

/// Build conditions.
pub(crate) fn conditions(conds: &[Cond], generation: i64, now: &Time) -> Vec<Condition> {
    conds.iter().map(|c| c.build(generation, now)).collect()
}
