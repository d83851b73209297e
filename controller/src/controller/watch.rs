//! Watching the spec paths for changes.
//!
//! Editors and configuration tools replace a file by writing a temporary one and
//! renaming it over the original, which a watch on the file itself misses after the
//! first time. So this watches the parent directory of each spec file (and each spec
//! directory), non-recursively, and forwards any event that touches a spec path. It
//! only signals what kind of change it saw: debouncing and re-reading are the
//! controller's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// What happened to a spec path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A complete file was renamed into place (how editors and configuration tools
    /// save): its content is whole, so it can be read at once.
    Replaced,
    /// Anything else (a write, a truncation, a removal): more may follow, so the
    /// reader waits for the writes to settle.
    Touched,
}

impl Change {
    fn of(kind: &EventKind) -> Self {
        match kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Change::Replaced,
            _ => Change::Touched,
        }
    }
}

/// Keeps the watches alive; dropping it stops them.
pub struct SpecWatch {
    _watcher: RecommendedWatcher,
}

/// Watches `paths` (spec files or directories) and sends every relevant change.
pub fn watch(
    paths: &[PathBuf],
    changed: mpsc::UnboundedSender<Change>,
) -> Result<SpecWatch, WatchError> {
    let targets: Vec<Target> = paths.iter().map(|p| Target::new(p)).collect();
    let filter = targets.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            Ok(event) => {
                // A rename is reported as `From` (the source), `To` (where it lands)
                // and then `Both`; the first two say all of it.
                let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
                let relevant = event
                    .paths
                    .iter()
                    .any(|p| filter.iter().any(|t| t.matches(p)));
                // Reading a file is an event too (open, read, close): the controller's
                // own reads must not count as changes, or every read would schedule
                // the next one.
                let read_only = matches!(
                    event.kind,
                    EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write)
                );
                let change =
                    (relevant && event.kind != both && !read_only).then(|| Change::of(&event.kind));
                if let Some(change) = change {
                    // The receiver is gone only when the controller is stopping.
                    let _ = changed.send(change);
                }
            }
            Err(e) => tracing::warn!(error = %crate::report::Chain(&e), "spec watch error"),
        }
    })
    .map_err(|source| WatchError::Watch {
        path: PathBuf::from("."),
        source,
    })?;
    let dirs: BTreeSet<PathBuf> = targets.iter().map(|t| t.watch_dir.clone()).collect();
    for dir in dirs {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                path: dir.clone(),
                source,
            })?;
    }
    Ok(SpecWatch { _watcher: watcher })
}

#[derive(Clone, Debug)]
struct Target {
    /// The directory given, or the parent of the file given.
    watch_dir: PathBuf,
    /// The file given; `None` for a directory (any YAML file in it counts).
    file: Option<PathBuf>,
}

impl Target {
    fn new(path: &Path) -> Self {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        if absolute.is_dir() {
            Target {
                watch_dir: absolute,
                file: None,
            }
        } else {
            let parent = absolute
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("/"));
            Target {
                watch_dir: parent,
                file: Some(absolute),
            }
        }
    }

    fn matches(&self, changed: &Path) -> bool {
        match &self.file {
            Some(file) => changed == file,
            None => {
                changed.parent() == Some(self.watch_dir.as_path())
                    && changed
                        .extension()
                        .is_some_and(|e| e == "yaml" || e == "yml")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_file_replaced_by_rename_is_seen_every_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = dir.path().join("app.yaml");
        std::fs::write(&spec, "a: 1\n").expect("write");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watch = watch(std::slice::from_ref(&spec), tx).expect("watch");
        for round in 0..3 {
            let tmp = dir.path().join(format!(".app.yaml.tmp{round}"));
            std::fs::write(&tmp, format!("a: {round}\n")).expect("write");
            std::fs::rename(&tmp, &spec).expect("rename");
            let seen = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(change) = rx.recv().await {
                    if change == Change::Replaced {
                        return true;
                    }
                }
                false
            })
            .await;
            assert_eq!(
                seen,
                Ok(true),
                "round {round}: the rename was not seen as one"
            );
            while rx.try_recv().is_ok() {}
        }
    }

    #[tokio::test]
    async fn a_write_in_place_or_a_rename_away_waits_to_settle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = dir.path().join("app.yaml");
        std::fs::write(&spec, "a: 1\n").expect("write");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watch = watch(std::slice::from_ref(&spec), tx).expect("watch");
        std::fs::write(&spec, "a: 2\n").expect("write");
        std::fs::rename(&spec, dir.path().join("app.yaml.bak")).expect("rename");
        let mut seen = Vec::new();
        while let Ok(Some(change)) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
        {
            seen.push(change);
        }
        assert!(!seen.is_empty(), "no event");
        assert!(seen.iter().all(|c| *c == Change::Touched), "{seen:?}");
    }

    #[tokio::test]
    async fn reading_the_spec_is_not_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = dir.path().join("app.yaml");
        std::fs::write(&spec, "a: 1\n").expect("write");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watch = watch(std::slice::from_ref(&spec), tx).expect("watch");
        for _ in 0..3 {
            assert_eq!(std::fs::read_to_string(&spec).expect("read"), "a: 1\n");
        }
        let seen = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(seen.is_err(), "a read was reported as a change: {seen:?}");
    }

    #[tokio::test]
    async fn other_files_in_the_directory_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = dir.path().join("app.yaml");
        std::fs::write(&spec, "a: 1\n").expect("write");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watch = watch(std::slice::from_ref(&spec), tx).expect("watch");
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
        let seen = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        assert!(seen.is_err(), "an unrelated file triggered a reload");
    }
}
