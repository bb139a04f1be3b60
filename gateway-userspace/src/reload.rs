//! Reload: watch every input path (and every file a load read), and reload on change or
//! on SIGHUP. Changes are debounced, the new configuration is compiled whole, and only a
//! complete success replaces the serving snapshot.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::state::State;

/// Quiet time after the last file event before reloading: editors and `kubectl`-style
/// writers touch a file several times in a row.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    FileChange,
    Signal,
}

/// Directories to watch so that writes, renames and atomic replacements of `paths` are seen.
fn watch_targets(config_paths: &[PathBuf], inputs: &[PathBuf]) -> BTreeSet<(PathBuf, bool)> {
    let mut targets = BTreeSet::new();
    for path in config_paths {
        if path.is_dir() {
            targets.insert((path.clone(), true));
        } else if let Some(parent) = parent_dir(path) {
            targets.insert((parent, false));
        }
    }
    for input in inputs {
        if let Some(parent) = parent_dir(input) {
            if !targets
                .iter()
                .any(|(dir, recursive)| *recursive && parent.starts_with(dir))
            {
                targets.insert((parent, false));
            }
        }
    }
    targets
}

fn parent_dir(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if p.as_os_str().is_empty() => Some(PathBuf::from(".")),
        Some(p) => Some(p.to_path_buf()),
        None => None,
    }
}

/// Whether an event on `path` concerns the configuration.
fn is_relevant(path: &Path, config_paths: &[PathBuf], inputs: &[PathBuf]) -> bool {
    let matches = |candidate: &PathBuf| {
        path == candidate
            || path.file_name() == candidate.file_name()
                && parent_dir(path).and_then(|p| p.canonicalize().ok())
                    == parent_dir(candidate).and_then(|p| p.canonicalize().ok())
    };
    inputs.iter().any(matches)
        || config_paths.iter().any(|c| {
            matches(c) || (c.is_dir() && (path.starts_with(c) || canonical_starts_with(path, c)))
        })
}

fn canonical_starts_with(path: &Path, dir: &Path) -> bool {
    match (
        parent_dir(path).and_then(|p| p.canonicalize().ok()),
        dir.canonicalize(),
    ) {
        (Some(parent), Ok(dir)) => parent.starts_with(dir),
        _ => false,
    }
}

/// Runs until the process ends: reloads on every trigger received on `triggers` and on
/// every relevant file change.
pub async fn run(state: Arc<State>, mut triggers: mpsc::Receiver<Trigger>) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                let _ = events_tx.send(path);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => Some(w),
        Err(err) => {
            warn!(error = %err, "cannot watch the config files; reload with SIGHUP");
            None
        }
    };
    let mut watched: BTreeSet<(PathBuf, bool)> = BTreeSet::new();
    let mut inputs: Vec<PathBuf> = Vec::new();

    loop {
        // (Re)arm the watches for what the serving configuration read.
        if let Some(snapshot) = state.snapshot() {
            inputs.clone_from(&snapshot.compiled.inputs);
        }
        let wanted = watch_targets(&state.config_paths, &inputs);
        if let Some(watcher) = watcher.as_mut() {
            for (dir, _) in watched.difference(&wanted) {
                let _ = watcher.unwatch(dir);
            }
            for (dir, recursive) in wanted.difference(&watched) {
                let mode = if *recursive {
                    RecursiveMode::Recursive
                } else {
                    RecursiveMode::NonRecursive
                };
                if let Err(err) = watcher.watch(dir, mode) {
                    warn!(dir = %dir.display(), error = %err, "cannot watch directory");
                }
            }
        }
        watched = wanted;

        // Wait for a relevant change or a signal, then for quiet.
        let trigger = tokio::select! {
            Some(trigger) = triggers.recv() => trigger,
            Some(path) = events.recv() => {
                if !is_relevant(&path, &state.config_paths, &inputs) {
                    continue;
                }
                Trigger::FileChange
            }
            else => return,
        };
        while let Ok(Some(_)) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
        let state = state.clone();
        let result = tokio::task::spawn_blocking(move || state.reload().map(|_| ())).await;
        match result {
            Ok(Ok(())) => info!(?trigger, "configuration reloaded"),
            Ok(Err(err)) => {
                error!(
                    ?trigger,
                    "configuration reload failed, keeping the previous one:\n{err}"
                )
            }
            Err(err) => error!(error = %err, "configuration reload task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_watched_through_its_directory() {
        let targets = watch_targets(&[PathBuf::from("/etc/gw/gateway.yaml")], &[]);
        assert!(targets.contains(&(PathBuf::from("/etc/gw"), false)));
    }

    #[test]
    fn unrelated_files_next_to_the_config_do_not_trigger() {
        let config = vec![PathBuf::from("/etc/gw/gateway.yaml")];
        assert!(is_relevant(Path::new("/etc/gw/gateway.yaml"), &config, &[]));
        assert!(!is_relevant(Path::new("/etc/gw/notes.txt"), &config, &[]));
    }
}
