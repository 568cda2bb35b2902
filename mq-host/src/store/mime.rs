//! MIME data kept apart from its message: `mime/<key>` under the data
//! directory, named by the message's `key` property (MailerQ's way of
//! pointing at MIME in external storage).
//!
//! `serve` stores a message's MIME inline, as its `mime` string, when that
//! is possible and costs nothing: the data is UTF-8 and no other message of
//! the transaction shares it. Otherwise — bytes that are not UTF-8 (8BITMIME
//! mail in another charset), or one DATA for many recipients — the data is
//! written once, byte for byte, and each message gets its own `key`: a hard
//! link to the same file (a copy where the file system cannot link). A
//! message then owns its key as it owns its JSON file, and removing one
//! never touches another's.
//!
//! Keys are file names: ASCII letters, digits, `.`, `-` and `_`, not
//! starting with a dot, at most 200 bytes.

use super::commit::{Staged, StagedFile};
#[cfg(test)]
use super::{create_in, store_as, sync_dir};
use super::{new_name, stage, DataDir, Queue};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

/// The `mime/` directory of a data directory.
#[derive(Debug, Clone)]
pub(crate) struct MimeStore {
    dir: PathBuf,
}

/// Whether `key` can name a file in `mime/`.
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl MimeStore {
    pub(crate) fn new(data_dir: &DataDir) -> MimeStore {
        MimeStore {
            dir: data_dir.path().join("mime"),
        }
    }

    fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        if !valid_key(key) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{key:?} is not a MIME key (letters, digits, '.', '-', '_'; not starting with '.')"),
            ));
        }
        Ok(self.dir.join(key))
    }

    /// Writes `bytes` as `key`, durably (a temporary file, fsync, rename).
    #[cfg(test)]
    pub(crate) fn write(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(key)?;
        let tmp = self.dir.join(format!(".{key}.tmp"));
        {
            use std::io::Write;
            let mut file = create_in(&self.dir, &tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    /// The data of `key`.
    pub(crate) fn read(&self, key: &str) -> std::io::Result<Vec<u8>> {
        let path = self.path(key)?;
        std::fs::read(&path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()))
        })
    }

    /// Removes `key` (a message's own name for its data).
    pub(crate) fn remove(&self, key: &str) -> std::io::Result<()> {
        super::remove(&self.path(key)?)
    }

    /// Removes the data that `serve` wrote for messages that were never
    /// written (a crash between the two): a key in the form of a message
    /// name with no message of that name in any queue. Leftover temporary
    /// files go too. Keys of other forms (put there by a user for
    /// `deliver`) are never touched. Returns how many were removed.
    pub(crate) fn remove_orphans(&self, data_dir: &DataDir) -> std::io::Result<usize> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let orphan = if name.starts_with('.') {
                name.ends_with(".tmp")
            } else {
                is_message_name(name) && !has_message(data_dir, name)
            };
            if orphan {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Whether `name` has the form of [`new_name`]'s names.
fn is_message_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether a message (or a result) named `name` exists in any queue.
fn has_message(data_dir: &DataDir, name: &str) -> bool {
    [
        Queue::Inbox,
        Queue::Local,
        Queue::Refused,
        Queue::Success,
        Queue::Failures,
    ]
    .iter()
    .any(|q| data_dir.queue(*q).join(format!("{name}.json")).exists())
}

/// One transaction's messages, written all or none, each MIME buffer once.
///
/// [`Batch::add`] writes each file under a temporary name without making
/// it durable; [`Batch::into_staged`] hands them over for a group commit
/// ([`commit`](super::commit)), which fsyncs and renames them; only then
/// do they exist under their names.
pub(crate) struct Batch {
    data_dir: DataDir,
    mime: MimeStore,
    /// How many of the batch's messages use each buffer (by address).
    uses: HashMap<*const u8, usize>,
    /// The key a buffer was first written under.
    written_as: HashMap<*const u8, String>,
    /// Files written so far, and links to make.
    staged: Staged,
}

impl Batch {
    /// A batch for messages whose MIME buffers are `buffers` (one entry per
    /// message that has one).
    pub(crate) fn new<'a>(
        data_dir: &DataDir,
        buffers: impl IntoIterator<Item = &'a Rc<[u8]>>,
    ) -> Batch {
        let mut uses = HashMap::new();
        for buffer in buffers {
            *uses.entry(buffer.as_ptr()).or_insert(0) += 1;
        }
        Batch {
            data_dir: data_dir.clone(),
            mime: MimeStore::new(data_dir),
            uses,
            written_as: HashMap::new(),
            staged: Staged::default(),
        }
    }

    /// Writes one message for `queue`: its JSON, with its MIME inline or
    /// under its own key (see the module docs). Returns the name it will
    /// have once committed.
    pub(crate) fn add(
        &mut self,
        queue: Queue,
        mut json: Map<String, Value>,
        mime: Option<&Rc<[u8]>>,
    ) -> std::io::Result<PathBuf> {
        let name = new_name();
        if let Some(mime) = mime {
            let shared = self.uses.get(&mime.as_ptr()).copied().unwrap_or(0) > 1;
            match std::str::from_utf8(mime) {
                Ok(text) if !shared => {
                    json.insert("mime".to_owned(), Value::String(text.to_owned()));
                }
                _ => {
                    match self.written_as.get(&mime.as_ptr()) {
                        Some(first) => {
                            let link = (self.mime.path(first)?, self.mime.path(&name)?);
                            self.staged.links.push(link);
                        }
                        None => {
                            let file = stage(&self.mime.dir, &name, mime)?;
                            self.push(file);
                            self.written_as.insert(mime.as_ptr(), name.clone());
                        }
                    }
                    json.insert("key".to_owned(), Value::String(name.clone()));
                }
            }
        }
        let bytes = serde_json::to_vec(&Value::Object(json))?;
        let file = stage(&self.data_dir.queue(queue), &format!("{name}.json"), &bytes)?;
        let path = file.path.clone();
        self.push(file);
        Ok(path)
    }

    /// Adds a written file; only a transaction's first stays open (see
    /// [`StagedFile::file`]).
    fn push(&mut self, mut file: StagedFile) {
        if !self.staged.files.is_empty() {
            file.file = None;
        }
        self.staged.files.push(file);
    }

    /// The files written, for their commit.
    pub(crate) fn into_staged(self) -> Staged {
        self.staged
    }

    /// Removes everything written so far (a later message failed).
    pub(crate) fn undo(self) {
        self.staged.discard();
    }
}

/// The MIME of a stored message: its `mime` string, or the data under its
/// `key` in `data_dir`'s `mime/`. `None`: it has neither.
pub(crate) fn message_mime(
    data_dir: &DataDir,
    message: &Map<String, Value>,
) -> std::io::Result<Option<Vec<u8>>> {
    if let Some(Value::String(mime)) = message.get("mime") {
        return Ok(Some(mime.clone().into_bytes()));
    }
    match message.get("key") {
        Some(Value::String(key)) => MimeStore::new(data_dir).read(key).map(Some),
        _ => Ok(None),
    }
}

/// The key of a stored message whose MIME `serve` kept apart (a key of
/// its own making, whose data exists, not overridden by a `mime` string):
/// the message owns that data, and it goes with the message's final
/// result. Keys a user put in `mime/` are never the host's to remove.
pub(crate) fn own_key(data_dir: &DataDir, message: &Map<String, Value>) -> Option<String> {
    if message.contains_key("mime") {
        return None;
    }
    let key = message.get("key")?.as_str()?;
    let exists = valid_key(key) && MimeStore::new(data_dir).dir.join(key).exists();
    (exists && is_message_name(key)).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    fn data_dir(test: &str) -> DataDir {
        let dir = std::env::temp_dir().join(format!("mq-mime-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir::new(dir)
    }

    /// Commits `batch` through a store thread, as `serve` does.
    fn commit(batch: Batch) {
        commit_staged(batch.into_staged());
    }

    fn commit_staged(staged: Staged) {
        let counters = std::sync::Arc::new(crate::observe::Counters::default());
        let committer = super::super::commit::Committer::threads(counters).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        committer.submit(super::super::commit::Job {
            staged,
            done: Box::new(move |r| tx.send(r).unwrap()),
        });
        rx.recv().unwrap().unwrap();
    }

    fn json(recipient: &str) -> Map<String, Value> {
        let Value::Object(map) = serde_json::json!({"recipient": recipient}) else {
            unreachable!()
        };
        map
    }

    #[test]
    fn one_buffer_for_many_messages_is_written_once() {
        let dir = data_dir("shared");
        let mime: Rc<[u8]> = Rc::from(&b"Subject: x\r\n\r\nbody"[..]);
        let mut batch = Batch::new(&dir, [&mime, &mime, &mime]);
        let paths: Vec<PathBuf> = (0..3)
            .map(|n| {
                batch
                    .add(Queue::Inbox, json(&format!("r{n}@x")), Some(&mime))
                    .unwrap()
            })
            .collect();
        assert!(!paths[0].exists(), "not under its name before its commit");
        let staged = batch.into_staged();
        let open = staged.files.iter().filter(|f| f.file.is_some()).count();
        assert_eq!((staged.files.len(), open), (4, 1), "one descriptor held");
        commit_staged(staged);
        let keys: Vec<String> = paths
            .iter()
            .map(|p| {
                let m: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                assert!(m.get("mime").is_none());
                m["key"].as_str().unwrap().to_owned()
            })
            .collect();
        let store = MimeStore::new(&dir);
        for key in &keys {
            assert_eq!(store.read(key).unwrap(), &*mime);
        }
        let meta = std::fs::metadata(store.dir.join(&keys[0])).unwrap();
        assert_eq!(meta.nlink(), 3, "one file, three names");
        store.remove(&keys[0]).unwrap();
        assert_eq!(store.read(&keys[1]).unwrap(), &*mime, "the others keep it");
        std::fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn utf8_alone_is_inline_other_bytes_are_kept_apart() {
        let dir = data_dir("inline");
        let text: Rc<[u8]> = Rc::from(&b"Subject: hi\r\n\r\nplain"[..]);
        let latin1: Rc<[u8]> = Rc::from(&b"Subject: \xe9t\xe9\r\n\r\na\0b"[..]);
        let mut batch = Batch::new(&dir, [&text, &latin1]);
        let inline = batch.add(Queue::Inbox, json("a@x"), Some(&text)).unwrap();
        let apart = batch.add(Queue::Local, json("b@x"), Some(&latin1)).unwrap();
        commit(batch);
        let read = |p: &Path| -> Map<String, Value> {
            serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
        };
        let inline = read(&inline);
        assert_eq!(inline["mime"], "Subject: hi\r\n\r\nplain");
        assert_eq!(message_mime(&dir, &inline).unwrap().unwrap(), &*text);
        let apart = read(&apart);
        assert_eq!(message_mime(&dir, &apart).unwrap().unwrap(), &*latin1);
        assert!(own_key(&dir, &apart).is_some());
        assert!(own_key(&dir, &inline).is_none());
        std::fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn undo_removes_messages_and_keys() {
        let dir = data_dir("undo");
        let mime: Rc<[u8]> = Rc::from(&b"\xff"[..]);
        let mut batch = Batch::new(&dir, [&mime]);
        let path = batch.add(Queue::Inbox, json("a@x"), Some(&mime)).unwrap();
        batch.undo();
        assert!(!path.exists());
        let tmp_left = std::fs::read_dir(dir.queue(Queue::Inbox)).unwrap().count();
        assert_eq!(tmp_left, 0, "no temporary file left");
        let left = std::fs::read_dir(dir.path().join("mime")).unwrap().count();
        assert_eq!(left, 0);
        std::fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn orphans_are_removed_and_user_keys_kept() {
        let dir = data_dir("orphans");
        let store = MimeStore::new(&dir);
        let kept = new_name();
        store.write(&kept, b"kept").unwrap();
        store_as(
            &dir.queue(Queue::Inbox),
            &format!("{kept}.json"),
            &serde_json::json!({"key": kept}),
        )
        .unwrap();
        let orphan = new_name();
        store.write(&orphan, b"orphan").unwrap();
        store.write("users-own-key.eml", b"user").unwrap();
        std::fs::write(store.dir.join(".half.tmp"), b"x").unwrap();
        assert_eq!(store.remove_orphans(&dir).unwrap(), 2);
        assert!(store.read(&kept).is_ok());
        assert!(store.read(&orphan).is_err());
        assert!(store.read("users-own-key.eml").is_ok());
        std::fs::remove_dir_all(dir.path()).unwrap();
    }

    #[test]
    fn keys_are_file_names() {
        assert!(valid_key("1733091234-77-0"));
        assert!(valid_key("msg_1.eml"));
        for bad in ["", ".hidden", "../etc/passwd", "a/b", "a b", "é"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
