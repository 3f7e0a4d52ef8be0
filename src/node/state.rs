//! Where the agent keeps what it learned across restarts: one small JSON
//! file on the node (a hostPath), replaced atomically, or memory in tests.
//! Checking the values is `plan::learned`'s job; this only reads, parses
//! and writes bytes, and says plainly why a file cannot be read.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::plan::learned::{LearnedState, STATE_VERSION};

/// Files larger than this are not read (nor written): the agent's own
/// state is a few KiB.
pub const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: no learned state yet")]
    Missing { path: String },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_STATE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: not a learned-state document: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("{path}: version {found}, this agent reads version {STATE_VERSION}")]
    Version { path: String, found: u32 },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Load and save of the learned state.
pub trait StateStore: Send + Sync {
    fn load(&self) -> Result<LearnedState, StateError>;
    fn save(&self, state: &LearnedState) -> Result<(), StateError>;
    /// Where it lives, for log lines.
    fn location(&self) -> String;
}

/// The version first, so a document of another version is reported as
/// such rather than as whatever field it lacks.
#[derive(serde::Deserialize)]
struct VersionProbe {
    version: u32,
}

/// Parses a document read from `path`.
pub fn parse(path: &str, bytes: &[u8]) -> Result<LearnedState, StateError> {
    let corrupt = |e: serde_json::Error| StateError::Corrupt {
        path: path.to_string(),
        reason: e.to_string(),
    };
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(corrupt)?;
    if probe.version != STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_string(),
            found: probe.version,
        });
    }
    serde_json::from_slice(bytes).map_err(corrupt)
}

fn encode(path: &str, state: &LearnedState) -> Result<Vec<u8>, StateError> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write {
        path: path.to_string(),
        source: std::io::Error::other(e),
    })?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(StateError::TooLarge {
            path: path.to_string(),
        });
    }
    Ok(bytes)
}

/// A file, replaced atomically: written to a temporary file in the same
/// directory (mode 0600), fsynced, renamed over the old one, then the
/// directory fsynced, so a crash leaves the old or the new file, whole.
pub struct FileStateStore {
    path: PathBuf,
}

impl FileStateStore {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn shown(&self) -> String {
        self.path.display().to_string()
    }

    fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // tempfile creates with mode 0600 and O_EXCL.
        let mut tmp = tempfile::Builder::new()
            .prefix(".learned-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

impl StateStore for FileStateStore {
    fn load(&self) -> Result<LearnedState, StateError> {
        let path = self.shown();
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing { path })
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| StateError::Read {
                path: path.clone(),
                source,
            })?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(StateError::TooLarge { path });
        }
        parse(&path, &bytes)
    }

    fn save(&self, state: &LearnedState) -> Result<(), StateError> {
        let path = self.shown();
        let bytes = encode(&path, state)?;
        self.write(&bytes)
            .map_err(|source| StateError::Write { path, source })
    }

    fn location(&self) -> String {
        self.shown()
    }
}

/// In memory, as bytes, so tests can damage them like a file.
#[derive(Clone, Default)]
pub struct MemoryStateStore {
    pub bytes: Arc<Mutex<Option<Vec<u8>>>>,
    /// Saves so far.
    pub saves: Arc<Mutex<usize>>,
}

impl MemoryStateStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_bytes(&self, bytes: &[u8]) {
        *self.lock() = Some(bytes.to_vec());
    }

    pub fn saves(&self) -> usize {
        *self.saves.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for MemoryStateStore {
    fn load(&self) -> Result<LearnedState, StateError> {
        let path = self.location();
        let bytes = self
            .lock()
            .clone()
            .ok_or(StateError::Missing { path: path.clone() })?;
        if bytes.len() as u64 > MAX_STATE_BYTES {
            return Err(StateError::TooLarge { path });
        }
        parse(&path, &bytes)
    }

    fn save(&self, state: &LearnedState) -> Result<(), StateError> {
        let bytes = encode(&self.location(), state)?;
        *self.lock() = Some(bytes);
        *self.saves.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(())
    }

    fn location(&self) -> String {
        "memory".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::plan::learned::{MeasuredSize, WindowRecord};
    use proptest::prelude::*;

    fn state() -> LearnedState {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut s = LearnedState::new("n1", now);
        s.throughput_bytes_per_second = Some(12_345_678.5);
        s.missing_bytes.insert(
            "r.example/a:1".into(),
            MeasuredSize {
                bytes: 4 << 20,
                measured_at_unix: 1_800_000_000,
            },
        );
        s.windows.insert(
            "erp-sync".into(),
            WindowRecord {
                occurrence_start_unix: 1_800_003_600,
                warm_seen: true,
                late_counted: false,
                lead_seconds: Some(-2.5),
            },
        );
        s
    }

    fn file_store() -> (tempfile::TempDir, FileStateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path().join("learned.json"));
        (dir, store)
    }

    #[test]
    fn a_file_round_trips_with_mode_0600_and_no_temporary_left() {
        let (dir, store) = file_store();
        assert!(matches!(store.load(), Err(StateError::Missing { .. })));
        store.save(&state()).unwrap();
        let mut changed = state();
        changed.throughput_bytes_per_second = Some(1e6);
        store.save(&changed).unwrap();
        assert_eq!(store.load().unwrap(), changed);
        let meta = std::fs::metadata(dir.path().join("learned.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["learned.json"], "temporaries left");
    }

    #[test]
    fn corrupt_and_truncated_files_say_so() {
        let (dir, store) = file_store();
        let path = dir.path().join("learned.json");
        std::fs::write(&path, b"{not json").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("learned.json: not a learned-state document: "),
            "{err}"
        );
        let whole = serde_json::to_vec_pretty(&state()).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
        std::fs::write(&path, vec![b' '; MAX_STATE_BYTES as usize + 1]).unwrap();
        assert!(matches!(store.load(), Err(StateError::TooLarge { .. })));
    }

    #[test]
    fn another_version_is_reported_as_such() {
        let (dir, store) = file_store();
        let path = dir.path().join("learned.json");
        std::fs::write(&path, br#"{"version": 2, "whatever": []}"#).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Version { found: 2, .. }), "{err}");
        assert!(
            err.to_string()
                .ends_with("version 2, this agent reads version 1"),
            "{err}"
        );
    }

    #[test]
    fn another_nodes_state_loads_for_the_checks_to_refuse() {
        let (_dir, store) = file_store();
        let mut s = state();
        s.node = "other-node".into();
        store.save(&s).unwrap();
        let loaded = store.load().unwrap();
        let err = crate::plan::learned::check(
            loaded,
            "n1",
            std::time::Duration::from_secs(600),
            chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"other-node\""), "{err}");
    }

    #[test]
    fn non_finite_values_are_never_written_as_numbers() {
        // serde_json writes them as null: they come back unknown.
        let (_dir, store) = file_store();
        let mut s = state();
        s.throughput_bytes_per_second = Some(f64::NAN);
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap().throughput_bytes_per_second, None);
        let (dir, store) = file_store();
        let text = serde_json::to_string(&state())
            .unwrap()
            .replace("12345678.5", "1e999");
        std::fs::write(dir.path().join("learned.json"), text).unwrap();
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn a_missing_directory_fails_to_save_and_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStateStore::new(dir.path().join("gone/learned.json"));
        assert!(matches!(store.load(), Err(StateError::Missing { .. })));
        let err = store.save(&state()).unwrap_err();
        assert!(matches!(err, StateError::Write { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("gone/learned.json: cannot write: "),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_path_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let store = FileStateStore::new(dir.path().to_path_buf());
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Read { .. }), "{err}");
    }

    #[test]
    fn the_memory_store_behaves_like_the_file() {
        let store = MemoryStateStore::default();
        assert!(matches!(store.load(), Err(StateError::Missing { .. })));
        store.save(&state()).unwrap();
        assert_eq!(store.load().unwrap(), state());
        assert_eq!(store.saves(), 1);
        store.set_bytes(b"[1, 2");
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_loader(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse("p", &bytes);
        }

        #[test]
        fn damaged_documents_never_panic_the_loader(cut in 0usize..400, flip in 0usize..400, byte in any::<u8>()) {
            let mut bytes = serde_json::to_vec(&state()).unwrap();
            if flip < bytes.len() {
                bytes[flip] = byte;
            }
            bytes.truncate(cut.min(bytes.len()));
            if let Ok(s) = parse("p", &bytes) {
                let _ = crate::plan::learned::check(
                    s,
                    "n1",
                    std::time::Duration::from_secs(600),
                    chrono::Utc::now(),
                );
            }
        }
    }
}
