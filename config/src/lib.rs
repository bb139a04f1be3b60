//! `gateway-config`: the control model of gatewayd.
//!
//! Kubernetes Gateway API manifests in (files and directories of multi-document YAML or
//! JSON), then: parse ([`manifest`]) into the `gateway-api` and `k8s-openapi` types,
//! resolve exactly as the Gateway API v1 spec says, produce the Gateway API status of
//! every Gateway, route and BackendTLSPolicy ([`StatusReport`]), and compile an immutable
//! [`RouteTable`] whose lookups allocate nothing.
//!
//! This crate is pure: it must not depend on tokio (or any runtime) and does no I/O
//! beyond reading its input files, so it can be unit-tested, fuzzed and benchmarked
//! alone. The dataplane swaps whole tables (one `ArcSwap` root per reload).

pub mod cert;
mod error;
pub mod hostname;
pub mod manifest;
mod resolve;
pub mod status;
pub mod table;

use std::path::PathBuf;
use std::sync::Arc;

pub use cert::{CertifiedKeyDer, PemError};
pub use error::{LoadError, LoadProblem};
pub use manifest::Manifests;
pub use status::{ObjectStatus, StatusItem, StatusMetadata, StatusReport};
pub use table::*;

/// The controller name gatewayd answers to by default.
pub const DEFAULT_CONTROLLER_NAME: &str = "gateway.networking.example/gatewayd";

/// Options of a compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// GatewayClasses naming another controller are ignored (with their Gateways).
    pub controller_name: String,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            controller_name: DEFAULT_CONTROLLER_NAME.to_string(),
        }
    }
}

/// A compiled configuration.
#[derive(Debug)]
pub struct Compiled {
    /// The route table to swap in.
    pub table: Arc<RouteTable>,
    /// Status of every Gateway, route and BackendTLSPolicy.
    pub status: StatusReport,
    /// Non-fatal notes (skipped unknown kinds, ...).
    pub warnings: Vec<String>,
    /// Every file read, to watch for reload.
    pub inputs: Vec<PathBuf>,
}

/// Read every file (directories: every `*.yaml`/`*.yml`/`*.json` inside, sorted,
/// recursive), parse, resolve and compile.
///
/// `Err` only for unreadable or ill-formed input (YAML syntax, wrong field type, missing
/// required field), listing every problem; bad references are statuses, not errors.
pub fn load(paths: &[PathBuf], opts: &CompileOptions) -> Result<Compiled, LoadError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let inputs = manifest::expand_paths(paths, &mut problems);
    let manifests = manifest::parse_files(&inputs, &mut problems, &mut warnings);
    if !problems.is_empty() {
        return Err(LoadError { problems });
    }
    let mut compiled = compile(&manifests, opts);
    warnings.append(&mut compiled.warnings);
    compiled.warnings = warnings;
    compiled.inputs = inputs;
    Ok(compiled)
}

/// Resolve and compile manifests already parsed (benches, tests, fuzzing).
pub fn compile(manifests: &Manifests, opts: &CompileOptions) -> Compiled {
    let now = k8s_openapi::jiff::Timestamp::now();
    let out = resolve::compile(manifests, opts, now);
    Compiled {
        table: Arc::new(out.table),
        status: out.status,
        warnings: out.warnings,
        inputs: Vec::new(),
    }
}

/// Parse manifests held in memory; `name` stands for the file in messages.
pub fn parse_str(name: &str, text: &str) -> Result<(Manifests, Vec<String>), LoadError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut m = Manifests::default();
    manifest::parse_text(
        std::path::Path::new(name),
        text,
        &mut m,
        &mut problems,
        &mut warnings,
    );
    if problems.is_empty() {
        Ok((m, warnings))
    } else {
        Err(LoadError { problems })
    }
}
