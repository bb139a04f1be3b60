//! Parse: files and directories of Kubernetes manifests -> typed objects with their source
//! location. Multi-document YAML, JSON and `List` are accepted; unknown kinds are skipped
//! with a warning.

use std::path::{Path, PathBuf};

use gateway_api::backendtlspolicies::BackendTlsPolicy;
use gateway_api::experimental::gatewayclasses::GatewayClass;
use gateway_api::experimental::gateways::Gateway;
use gateway_api::experimental::grpcroutes::GrpcRoute;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::experimental::referencegrants::ReferenceGrant;
use gateway_api::experimental::tlsroutes::TlsRoute;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use crate::error::LoadProblem;

/// Where an object came from: file and the 1-based line its document starts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// File the object was read from.
    pub file: PathBuf,
    /// 1-based line of the object's document (or `List` item).
    pub line: usize,
}

/// A typed object and where it came from.
#[derive(Clone, Debug)]
pub struct Obj<T> {
    /// The object as the API types model it.
    pub obj: T,
    /// Where it was read.
    pub src: Source,
}

/// Every recognised object of the input, by kind, in input order.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// GatewayClasses.
    pub gateway_classes: Vec<Obj<GatewayClass>>,
    /// Gateways.
    pub gateways: Vec<Obj<Gateway>>,
    /// HTTPRoutes (parsed with the experimental channel's superset types).
    pub http_routes: Vec<Obj<HttpRoute>>,
    /// GRPCRoutes.
    pub grpc_routes: Vec<Obj<GrpcRoute>>,
    /// TLSRoutes.
    pub tls_routes: Vec<Obj<TlsRoute>>,
    /// ReferenceGrants.
    pub reference_grants: Vec<Obj<ReferenceGrant>>,
    /// BackendTLSPolicies.
    pub backend_tls_policies: Vec<Obj<BackendTlsPolicy>>,
    /// Namespaces (for their labels).
    pub namespaces: Vec<Obj<Namespace>>,
    /// Services.
    pub services: Vec<Obj<Service>>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<Obj<EndpointSlice>>,
    /// Secrets.
    pub secrets: Vec<Obj<Secret>>,
    /// ConfigMaps.
    pub config_maps: Vec<Obj<ConfigMap>>,
}

/// The kinds this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TlsRoute,
    ReferenceGrant,
    BackendTlsPolicy,
    Namespace,
    Service,
    EndpointSlice,
    Secret,
    ConfigMap,
}

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

fn classify(api_version: &str, kind: &str) -> Option<Kind> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    match (group, kind) {
        (GATEWAY_GROUP, "GatewayClass") if matches!(version, "v1" | "v1beta1") => {
            Some(Kind::GatewayClass)
        }
        (GATEWAY_GROUP, "Gateway") if matches!(version, "v1" | "v1beta1") => Some(Kind::Gateway),
        (GATEWAY_GROUP, "HTTPRoute") if matches!(version, "v1" | "v1beta1") => {
            Some(Kind::HttpRoute)
        }
        (GATEWAY_GROUP, "GRPCRoute") if matches!(version, "v1" | "v1alpha2") => {
            Some(Kind::GrpcRoute)
        }
        (GATEWAY_GROUP, "TLSRoute") if matches!(version, "v1" | "v1alpha2" | "v1alpha3") => {
            Some(Kind::TlsRoute)
        }
        (GATEWAY_GROUP, "ReferenceGrant") if matches!(version, "v1" | "v1beta1" | "v1alpha2") => {
            Some(Kind::ReferenceGrant)
        }
        (GATEWAY_GROUP, "BackendTLSPolicy") if matches!(version, "v1" | "v1alpha3") => {
            Some(Kind::BackendTlsPolicy)
        }
        ("", "Namespace") if version == "v1" => Some(Kind::Namespace),
        ("", "Service") if version == "v1" => Some(Kind::Service),
        ("", "Secret") if version == "v1" => Some(Kind::Secret),
        ("", "ConfigMap") if version == "v1" => Some(Kind::ConfigMap),
        ("discovery.k8s.io", "EndpointSlice") if version == "v1" => Some(Kind::EndpointSlice),
        _ => None,
    }
}

/// Expand the given paths into the files to read: files as given, directories recursively
/// (every `*.yaml`, `*.yml`, `*.json`, sorted).
pub fn expand_paths(paths: &[PathBuf], problems: &mut Vec<LoadProblem>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk_dir(p, &mut out, problems);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>, problems: &mut Vec<LoadProblem>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(source) => {
            problems.push(LoadProblem::Unreadable {
                file: dir.to_path_buf(),
                source,
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk_dir(&p, out, problems);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}

/// One YAML document of a file: its text and the 1-based file line it starts on.
struct Document<'a> {
    text: &'a str,
    line: usize,
}

/// Split a multi-document YAML stream on `---` / `...` lines, remembering where each
/// document starts so errors can name file lines.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end();
        let is_marker = trimmed == "---"
            || trimmed.starts_with("--- ")
            || trimmed == "..."
            || trimmed.starts_with("---\t");
        if is_marker {
            docs.push(Document {
                text: &text[start..offset],
                line: start_line,
            });
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: &text[start..],
        line: start_line,
    });
    docs
}

/// Parse every file; collect problems and warnings rather than stopping.
pub fn parse_files(
    files: &[PathBuf],
    problems: &mut Vec<LoadProblem>,
    warnings: &mut Vec<String>,
) -> Manifests {
    let mut m = Manifests::default();
    for file in files {
        match std::fs::read_to_string(file) {
            Ok(text) => parse_text(file, &text, &mut m, problems, warnings),
            Err(source) => problems.push(LoadProblem::Unreadable {
                file: file.clone(),
                source,
            }),
        }
    }
    m
}

/// Parse one file's text (exposed for tests and benches that hold manifests in memory).
pub fn parse_text(
    file: &Path,
    text: &str,
    m: &mut Manifests,
    problems: &mut Vec<LoadProblem>,
    warnings: &mut Vec<String>,
) {
    for doc in split_documents(text) {
        if doc
            .text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let value: Value = match serde_yaml_ng::from_str(doc.text) {
            Ok(v) => v,
            Err(e) => {
                let at = e.location();
                problems.push(LoadProblem::Syntax {
                    file: file.to_path_buf(),
                    line: at.as_ref().map_or(0, |l| l.line().saturating_sub(1)) + doc.line,
                    column: at.as_ref().map(|l| l.column()),
                    message: syntax_message(&e.to_string(), doc.line),
                });
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let ctx = DocCtx {
            file,
            text: doc.text,
            line: doc.line,
            item: None,
        };
        parse_object(&ctx, value, m, problems, warnings);
    }
}

struct DocCtx<'a> {
    file: &'a Path,
    /// The document's text, to re-parse with positions when a typed parse fails.
    text: &'a str,
    line: usize,
    /// Index within a `List`, when the object is a list item.
    item: Option<usize>,
}

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn object_name(v: &Value) -> String {
    let meta = v.get("metadata");
    let ns = meta.and_then(|m| str_field(m, "namespace"));
    let name = meta.and_then(|m| str_field(m, "name")).unwrap_or("?");
    let cluster_scoped = matches!(
        str_field(v, "kind"),
        Some("Namespace" | "GatewayClass" | "List") | None
    );
    match ns {
        Some(ns) => format!("{ns}/{name}"),
        None if cluster_scoped => name.to_string(),
        None => format!("default/{name}"),
    }
}

fn parse_object(
    ctx: &DocCtx<'_>,
    value: Value,
    m: &mut Manifests,
    problems: &mut Vec<LoadProblem>,
    warnings: &mut Vec<String>,
) {
    let api_version = str_field(&value, "apiVersion").unwrap_or("").to_string();
    let kind = str_field(&value, "kind").unwrap_or("").to_string();
    let invalid = |field: &str, message: String| LoadProblem::Invalid {
        file: ctx.file.to_path_buf(),
        line: ctx.line,
        kind: format!("{api_version} {kind}").trim().to_string(),
        object: object_name(&value),
        field: item_field(ctx.item, field),
        message,
    };
    if !value.is_mapping() {
        problems.push(invalid(".", "a manifest must be a mapping".to_string()));
        return;
    }
    if api_version.is_empty() {
        problems.push(invalid(
            "apiVersion",
            "missing field `apiVersion`".to_string(),
        ));
        return;
    }
    if kind.is_empty() {
        problems.push(invalid("kind", "missing field `kind`".to_string()));
        return;
    }
    if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
        if ctx.item.is_some() {
            problems.push(invalid(".", "a List inside a List".to_string()));
            return;
        }
        match value.get("items") {
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let item_ctx = DocCtx {
                        file: ctx.file,
                        text: "",
                        line: ctx.line,
                        item: Some(i),
                    };
                    parse_object(&item_ctx, item.clone(), m, problems, warnings);
                }
            }
            Some(Value::Null) | None => {}
            Some(_) => problems.push(invalid(
                "items",
                "invalid type: expected a sequence".to_string(),
            )),
        }
        return;
    }
    let Some(k) = classify(&api_version, &kind) else {
        let item = ctx.item.map(|i| format!(", item {i}")).unwrap_or_default();
        warnings.push(format!(
            "skipped unknown kind {api_version} {kind} {} (file {}, line {}{item})",
            object_name(&value),
            ctx.file.display(),
            ctx.line
        ));
        return;
    };
    let value = normalize(k, &api_version, value);
    match k {
        Kind::GatewayClass => typed(ctx, value, &mut m.gateway_classes, problems),
        Kind::Gateway => typed(ctx, value, &mut m.gateways, problems),
        Kind::HttpRoute => typed(ctx, value, &mut m.http_routes, problems),
        Kind::GrpcRoute => typed(ctx, value, &mut m.grpc_routes, problems),
        Kind::TlsRoute => typed(ctx, value, &mut m.tls_routes, problems),
        Kind::ReferenceGrant => typed(ctx, value, &mut m.reference_grants, problems),
        Kind::BackendTlsPolicy => typed(ctx, value, &mut m.backend_tls_policies, problems),
        Kind::Namespace => typed(ctx, value, &mut m.namespaces, problems),
        Kind::Service => typed(ctx, value, &mut m.services, problems),
        Kind::EndpointSlice => typed(ctx, value, &mut m.endpoint_slices, problems),
        Kind::Secret => typed(ctx, value, &mut m.secrets, problems),
        Kind::ConfigMap => typed(ctx, value, &mut m.config_maps, problems),
    }
}

/// Older served versions differ from v1 only in optional-ness: fill what v1 requires so
/// the v1 types read them. k8s-openapi types check `apiVersion`, so core kinds are left.
fn normalize(kind: Kind, api_version: &str, mut value: Value) -> Value {
    if kind == Kind::TlsRoute && !api_version.ends_with("/v1") {
        if let Some(Value::Mapping(spec)) = value.get_mut("spec") {
            let key = Value::String("hostnames".to_string());
            if !spec.contains_key(&key) {
                spec.insert(key, Value::Sequence(Vec::new()));
            }
        }
    }
    value
}

fn item_field(item: Option<usize>, field: &str) -> String {
    match (item, field) {
        (Some(i), "." | "") => format!("items[{i}]"),
        (Some(i), f) => format!("items[{i}].{f}"),
        (None, "") => ".".to_string(),
        (None, f) => f.to_string(),
    }
}

/// The parser's message with positions in file lines: libyaml prints `problem at line L
/// column C[, context at line L2 column C2]`, lines counted from the document's start.
/// The problem's own position is reported separately (`file:line:column`), so it is
/// dropped; the context's (where the unfinished construct began) is kept, as a file line.
fn syntax_message(msg: &str, doc_line: usize) -> String {
    const AT: &str = " at line ";
    let mut out = String::new();
    let mut rest = msg;
    let mut first = true;
    while let Some(i) = rest.find(AT) {
        out.push_str(&rest[..i]);
        let after = &rest[i + AT.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(line) = after[..digits].parse::<usize>() else {
            out.push_str(AT);
            rest = after;
            continue;
        };
        let tail = &after[digits..];
        let col_digits = tail
            .strip_prefix(" column ")
            .map_or(0, |t| t.bytes().take_while(u8::is_ascii_digit).count());
        let mark_end = if col_digits > 0 {
            " column ".len() + col_digits
        } else {
            0
        };
        if !first {
            out.push_str(AT);
            out.push_str(&(line + doc_line - 1).to_string());
            out.push_str(&tail[..mark_end]);
        }
        first = false;
        rest = &tail[mark_end..];
    }
    out.push_str(rest);
    out
}

/// `serde_yaml_ng` appends ` at line L column C`; the line is reported separately.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// Split `path: message` as `serde_yaml_ng` formats a positioned error; fold
/// `missing field `x`` into the path.
fn split_path(msg: &str) -> (String, String) {
    let msg = strip_location(msg);
    let (path, rest) = match msg.split_once(": ") {
        Some((p, r)) if !p.contains(' ') && !p.is_empty() => (p.to_string(), r.to_string()),
        _ => (".".to_string(), msg.clone()),
    };
    if let Some(field) = rest
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        let full = if path == "." {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return (full, rest);
    }
    (path, rest)
}

fn typed<T: DeserializeOwned>(
    ctx: &DocCtx<'_>,
    value: Value,
    out: &mut Vec<Obj<T>>,
    problems: &mut Vec<LoadProblem>,
) {
    let kind = format!(
        "{} {}",
        str_field(&value, "apiVersion").unwrap_or(""),
        str_field(&value, "kind").unwrap_or("")
    );
    let object = object_name(&value);
    match serde_yaml_ng::from_value::<T>(value.clone()) {
        Ok(obj) => out.push(Obj {
            obj,
            src: Source {
                file: ctx.file.to_path_buf(),
                line: ctx.line,
            },
        }),
        Err(_) => {
            // Re-parse from text to get the field path and line of the failure. A `List`
            // item has no text of its own: re-serialise it for the path, keep the list line.
            let (text, line_known) = if ctx.item.is_none() {
                (ctx.text.to_string(), true)
            } else {
                (serde_yaml_ng::to_string(&value).unwrap_or_default(), false)
            };
            let err = match serde_yaml_ng::from_str::<T>(&text) {
                Err(e) => e,
                Ok(_) => match serde_yaml_ng::from_value::<T>(value) {
                    Err(e) => e,
                    Ok(obj) => {
                        out.push(Obj {
                            obj,
                            src: Source {
                                file: ctx.file.to_path_buf(),
                                line: ctx.line,
                            },
                        });
                        return;
                    }
                },
            };
            let line = match (line_known, err.location()) {
                (true, Some(l)) => ctx.line + l.line().saturating_sub(1),
                _ => ctx.line,
            };
            let (field, message) = split_path(&err.to_string());
            problems.push(LoadProblem::Invalid {
                file: ctx.file.to_path_buf(),
                line,
                kind,
                object,
                field: item_field(ctx.item, &field),
                message,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Manifests, Vec<LoadProblem>, Vec<String>) {
        let mut p = Vec::new();
        let mut w = Vec::new();
        let mut m = Manifests::default();
        parse_text(Path::new("x.yaml"), text, &mut m, &mut p, &mut w);
        (m, p, w)
    }

    #[test]
    fn documents_are_split_and_their_start_lines_kept() {
        let docs = split_documents("a: 1\n---\nb: 2\nc: 3\n---\n\nd: 4\n");
        let lines: Vec<usize> = docs.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![1, 3, 6]);
        assert_eq!(docs[1].text, "b: 2\nc: 3\n");
    }

    #[test]
    fn unknown_kind_is_skipped_with_a_warning_naming_file_and_line() {
        let (m, p, w) = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: default}\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(m.namespaces.len(), 1);
        assert_eq!(
            w,
            vec!["skipped unknown kind apps/v1 Deployment default/web (file x.yaml, line 5)"]
        );
    }

    #[test]
    fn wrong_field_type_names_file_line_object_and_field_path() {
        let (_, p, _) = parse(
            "# leading comment\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: ns\nspec:\n  gatewayClassName: c\n  listeners:\n  - name: http\n    port: eighty\n    protocol: HTTP\n",
        );
        assert_eq!(p.len(), 1);
        let msg = p[0].to_string();
        assert!(
            msg.starts_with(
                "x.yaml:12: gateway.networking.k8s.io/v1 Gateway ns/gw: field spec.listeners[0].port: invalid type"
            ),
            "{msg}"
        );
    }

    #[test]
    fn missing_required_field_is_reported_with_its_full_path() {
        let (_, p, _) = parse(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners: []\n",
        );
        assert_eq!(p.len(), 1);
        let LoadProblem::Invalid { field, line, .. } = &p[0] else {
            panic!("expected Invalid, got {:?}", p[0]);
        };
        assert_eq!(field, "spec.gatewayClassName");
        assert!(*line >= 1);
    }

    #[test]
    fn yaml_syntax_error_names_the_file_line_and_column() {
        // The second document starts on line 4; the parser stops at `b:` on line 5.
        let (_, p, _) = parse("apiVersion: v1\nkind: Namespace\n---\nmetadata: [a\n  b: c\n");
        assert_eq!(p.len(), 1);
        assert!(
            matches!(
                &p[0],
                LoadProblem::Syntax {
                    line: 5,
                    column: Some(4),
                    ..
                }
            ),
            "{:?}",
            p[0]
        );
        assert_eq!(
            p[0].to_string(),
            "x.yaml:5:4: YAML syntax error: did not find expected ',' or ']', while parsing a flow sequence at line 4 column 11"
        );
    }

    #[test]
    fn an_unclosed_flow_sequence_names_where_it_began_as_a_file_line() {
        // The parser only notices at the end of the document (line 6, column 1); the
        // message points back at the `[` on line 5 of the file (line 2 of its document).
        let (_, p, _) = parse("a: 1\n---\nkind: Service\nmetadata:\n  labels: [unclosed\n");
        let syntax: Vec<String> = p
            .iter()
            .filter(|p| matches!(p, LoadProblem::Syntax { .. }))
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            syntax,
            vec!["x.yaml:6:1: YAML syntax error: did not find expected ',' or ']', while parsing a flow sequence at line 5 column 11"]
        );
    }

    #[test]
    fn syntax_messages_without_a_context_keep_the_problem_only() {
        assert_eq!(
            syntax_message("did not find expected key at line 3 column 2", 10),
            "did not find expected key"
        );
        assert_eq!(
            syntax_message("found unexpected end of stream at line 3 column 1, while scanning a quoted scalar at line 1 column 4", 10),
            "found unexpected end of stream, while scanning a quoted scalar at line 10 column 4"
        );
        assert_eq!(syntax_message("no position", 3), "no position");
    }

    #[test]
    fn every_problem_is_collected_not_only_the_first() {
        let (_, p, _) = parse(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: x}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: y}]}\n",
        );
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn list_items_are_read_and_their_errors_name_the_item() {
        let (m, p, _) = parse(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s}\n  spec: {ports: [{port: x}]}\n",
        );
        assert_eq!(m.namespaces.len(), 1);
        assert_eq!(p.len(), 1);
        let LoadProblem::Invalid { field, .. } = &p[0] else {
            panic!("expected Invalid");
        };
        assert!(field.starts_with("items[1].spec.ports[0].port"), "{field}");
    }

    #[test]
    fn v1alpha2_tlsroute_without_hostnames_is_read() {
        let (m, p, _) = parse(
            "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TLSRoute\nmetadata: {name: t}\nspec:\n  rules: [{backendRefs: [{name: s, port: 443}]}]\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(m.tls_routes.len(), 1);
    }
}
