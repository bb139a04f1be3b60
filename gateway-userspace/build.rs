//! Builds the eBPF programs of `gateway-ebpf` with the nightly toolchain for
//! `bpfel-unknown-none` (through aya-build) so that `gatewayd` can embed the object.
//! `AYA_BUILD_SKIP=1` skips it (the binary then carries an empty object and `--ebpf auto`
//! serves without eBPF).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "gateway-ebpf")
        .ok_or_else(|| anyhow!("package gateway-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("gateway-ebpf manifest has no parent directory"))?;
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = std::path::Path::new(&out_dir).join("gateway");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // Keep include_bytes! satisfied; the loader reports the empty object as unavailable.
        if !object.exists() {
            std::fs::write(&object, []).context("write empty eBPF object")?;
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
