//! The bpffs directory (`--bpf-pin-dir`) where the flow table is pinned, so that it
//! outlives the process and a restart goes on counting the same flows.
//!
//! When the directory is not on a bpffs, one is mounted: on `/sys/fs/bpf` when the
//! directory is below it (the usual place, which many hosts leave unmounted), otherwise on
//! the directory itself.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};

/// `statfs.f_type` of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting a bpffs on {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not on a bpffs")]
    NotBpffs { path: PathBuf },
    #[error("removing the stale pin {path}: {source}")]
    Unlink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn statfs_type(path: &Path) -> std::io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `stat` is plain old data that statfs fills; all-zero is a valid value.
    #[allow(unsafe_code)]
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated path and `stat` a writable statfs.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's integer type differs between libcs.
    Ok(stat.f_type as i64)
}

fn is_bpffs(path: &Path) -> bool {
    statfs_type(path).is_ok_and(|t| t == BPF_FS_MAGIC)
}

/// The deepest existing directory at or above `path`.
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.is_dir())
}

fn mount_bpffs(target: &Path) -> Result<(), PinError> {
    std::fs::create_dir_all(target).map_err(|source| PinError::Create {
        path: target.to_owned(),
        source,
    })?;
    let mount_err = |source| PinError::Mount {
        path: target.to_owned(),
        source,
    };
    let c_target = CString::new(target.as_os_str().as_bytes()).map_err(|e| {
        mount_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            e.to_string(),
        ))
    })?;
    // SAFETY: every argument is a NUL-terminated string that outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(mount_err(std::io::Error::last_os_error()));
    }
    tracing::info!(path = %target.display(), "mounted a bpffs");
    Ok(())
}

/// Makes `dir` a directory on a bpffs, mounting one when needed.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    let on_bpffs = existing_ancestor(dir).is_some_and(is_bpffs);
    if !on_bpffs {
        let target = if dir.starts_with(SYS_FS_BPF) {
            Path::new(SYS_FS_BPF)
        } else {
            dir
        };
        mount_bpffs(target)?;
    }
    std::fs::create_dir_all(dir).map_err(|source| PinError::Create {
        path: dir.to_owned(),
        source,
    })?;
    if !is_bpffs(dir) {
        return Err(PinError::NotBpffs {
            path: dir.to_owned(),
        });
    }
    Ok(())
}

/// What a pinned map must look like to be reused.
pub struct Expected {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Removes the pin at `path` when it holds a map of another shape (an older gatewayd's
/// layout): reusing it would make the programs read garbage. `Ok(true)` when a stale pin
/// was removed.
pub fn remove_if_incompatible(path: &Path, expected: &Expected) -> Result<bool, PinError> {
    let Ok(info) = MapInfo::from_pin(path) else {
        return Ok(false);
    };
    let compatible = info.map_type().is_ok_and(|t| t == expected.map_type)
        && info.key_size() == expected.key_size
        && info.value_size() == expected.value_size
        && info.max_entries() == expected.max_entries;
    if compatible {
        return Ok(false);
    }
    std::fs::remove_file(path).map_err(|source| PinError::Unlink {
        path: path.to_owned(),
        source,
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tmp_directory_is_not_a_bpffs() {
        let dir = std::env::temp_dir();
        assert!(!is_bpffs(&dir));
        assert_eq!(existing_ancestor(&dir.join("a/b/c")), Some(dir.as_path()));
    }
}
