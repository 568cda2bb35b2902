//! Durable message files under the data directory.
//!
//! Every message the host accepted lives in exactly one file at a time, and
//! every file is written the same way: a temporary file (`.NAME.tmp`),
//! `fsync`, an atomic `rename` over the final name, and an `fsync` of the
//! directory. A crash leaves either the old file or the new one, never a
//! torn one; a leftover `.tmp` file was never acknowledged and is removed
//! when the directory is picked up again.
//!
//! `serve` shares that cost between sessions: its files are written by
//! the workers ([`stage`]) and made durable by a store thread in group
//! commits ([`commit`]: each file fsync'd, renamed, then each directory
//! fsync'd once for every file of the commit) before any `250`.
//!
//! The layout (`mq-host serve` and `mq-host deliver`), one [`Queue`]
//! each, and the lock ([`DataDir::lock`]: one process per directory):
//!
//! | directory    | holds                                                     |
//! |--------------|-----------------------------------------------------------|
//! | `inbox/`     | the outbox: accepted messages waiting for delivery        |
//! | `local/`     | messages a plugin marked local (`MQ_setLocal`)            |
//! | `refused/`   | messages a plugin refused at `smtp_in_message`, with the reply |
//! | `results/`   | delivery results: every final one (delivered or failed)   |
//! | `success/`   | delivery results: delivered                               |
//! | `failures/`  | delivery results: failed for good                         |
//! | `retry/`     | delivery results: failed for now, to be retried           |
//! | `mime/`      | MIME data kept apart from its message ([`mime`])          |
//! | `.lock`      | locked while a process uses the directory                 |

pub(crate) mod commit;
pub(crate) mod mime;

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A directory of a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Queue {
    /// The outbox: accepted messages waiting for delivery.
    Inbox,
    /// Messages a plugin marked local.
    Local,
    /// Messages a plugin refused at `smtp_in_message`.
    Refused,
    /// Delivery results: every final one (MailerQ's `results` queue).
    Results,
    /// Delivery results: delivered.
    Success,
    /// Delivery results: failed for good.
    Failures,
    /// Delivery results: failed for now.
    Retry,
}

impl Queue {
    /// The directory's name.
    pub(crate) const fn dir_name(self) -> &'static str {
        match self {
            Queue::Inbox => "inbox",
            Queue::Local => "local",
            Queue::Refused => "refused",
            Queue::Results => "results",
            Queue::Success => "success",
            Queue::Failures => "failures",
            Queue::Retry => "retry",
        }
    }
}

/// A data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataDir(PathBuf);

impl DataDir {
    pub(crate) fn new(path: impl Into<PathBuf>) -> DataDir {
        DataDir(path.into())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// The directory of `queue`.
    pub(crate) fn queue(&self, queue: Queue) -> PathBuf {
        self.0.join(queue.dir_name())
    }

    /// Locks the directory (`.lock`) for this process while the returned
    /// file is open; fails, naming the lock file, if another process (or
    /// another lock in this one) has it.
    pub(crate) fn lock(&self) -> std::io::Result<std::fs::File> {
        std::fs::create_dir_all(&self.0)?;
        let lock_path = self.0.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        if let Err(e) = lock.try_lock() {
            let why = match e {
                std::fs::TryLockError::WouldBlock => {
                    "another mq-host uses this data directory".to_owned()
                }
                std::fs::TryLockError::Error(e) => e.to_string(),
            };
            return Err(std::io::Error::other(format!(
                "cannot lock {}: {why}",
                lock_path.display()
            )));
        }
        Ok(lock)
    }
}

/// A new, unique message name, without `.json`: `<ns>-<pid>-<seq>`.
pub(crate) fn new_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{stamp}-{}-{}",
        process_id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// This process's id, asked of the kernel once (`getpid` is a system
/// call, and a name is made for every message).
pub(crate) fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Creates (or truncates) the file `path` in `dir`; `dir` (with its
/// parents) is created only when it is missing, so that a store costs no
/// `mkdir` once the directory exists. A directory made here is made
/// durable in its parent.
pub(crate) fn create_in(dir: &Path, path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::File::create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            std::fs::File::create(path)
        }
        other => other,
    }
}

/// Writes `bytes` to a temporary file for `dir/name`, not yet durable:
/// its [group commit](commit) fsyncs it and gives it its name.
pub(crate) fn stage(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<commit::StagedFile> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = create_in(dir, &tmp)?;
    if let Err(e) = file.write_all(bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(commit::StagedFile {
        file: Some(file),
        tmp,
        path: dir.join(name),
    })
}

/// Writes `message` as JSON under `dir` with a new, unique name, durably.
pub(crate) fn store(dir: &Path, message: &Value) -> std::io::Result<PathBuf> {
    store_as(dir, &format!("{}.json", new_name()), message)
}

/// Writes `message` as JSON to `dir/name`, durably, replacing a file of
/// that name atomically.
pub(crate) fn store_as(dir: &Path, name: &str, message: &Value) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    {
        // Serialized in memory first: serde writes a few bytes at a time,
        // and straight into the file that was a system call each (every
        // escaped `\r\n` of a MIME one).
        let bytes = serde_json::to_vec(message)?;
        let mut file = create_in(dir, &tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(path)
}

/// Removes `path` durably (the removal itself is fsync'd in its directory).
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    std::fs::remove_file(path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Moves `path` into `dir` as `name` in one rename, durably.
pub(crate) fn move_as(path: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let target = dir.join(name);
    match std::fs::rename(path, &target) {
        // `dir` made only when missing: no `mkdir` per move.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
            std::fs::create_dir_all(dir)?;
            std::fs::rename(path, &target)?;
        }
        other => other?,
    }
    sync_dir(dir)?;
    if let Some(from) = path.parent() {
        sync_dir(from)?;
    }
    Ok(target)
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The message files in `dir` (`*.json`, oldest name first); leftover
/// temporary files of an interrupted write are removed. A missing
/// directory holds no messages.
pub(crate) fn pending(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.') && name.ends_with(".tmp") {
            std::fs::remove_file(&path)?;
        } else if !name.starts_with('.') && name.ends_with(".json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_replace_and_pending() {
        let dir = std::env::temp_dir().join(format!("mq-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = store(&dir, &serde_json::json!({"n": 1})).unwrap();
        std::fs::write(dir.join(".half.json.tmp"), b"{").unwrap();
        let name = first.file_name().unwrap().to_str().unwrap().to_owned();
        store_as(&dir, &name, &serde_json::json!({"n": 2})).unwrap();
        assert_eq!(pending(&dir).unwrap(), vec![first.clone()]);
        assert!(!dir.join(".half.json.tmp").exists(), "leftover tmp removed");
        let back: Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
        assert_eq!(back["n"], 2);
        remove(&first).unwrap();
        assert!(pending(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            pending(&dir).unwrap().is_empty(),
            "a missing directory is empty"
        );
    }
}
