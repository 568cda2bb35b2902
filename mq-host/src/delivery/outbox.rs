//! The outbox: the message files waiting in `inbox/`, in the order they
//! are due; picked up at start, fed by `serve`, taken by the engine.

use crate::store::{self, DataDir, Queue};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What an [`Outbox`] found when it opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pickup {
    /// Messages waiting for delivery.
    pub waiting: usize,
    /// Messages whose result had been written but which were still in the
    /// outbox (the host stopped in between): removed, not sent again.
    pub finished: usize,
}

/// The outbox: the message files waiting in `inbox/`, in the order they
/// are due. Cheap to clone; all clones are one queue.
#[derive(Clone)]
pub struct Outbox {
    pub(super) shared: Arc<Shared>,
    pub(super) data_dir: DataDir,
    /// `DATA_DIR/.lock`, locked while any clone lives: one process per
    /// data directory.
    pub(super) _lock: Arc<std::fs::File>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("data_dir", &self.data_dir)
            .field("pending", &self.pending())
            .finish()
    }
}

/// The outbox's queue and its condition variable.
pub(super) struct Shared {
    queue: Mutex<Due>,
    /// Signalled when the queue changes.
    changed: Condvar,
    /// Message properties reported as not implemented in this run.
    reported: Mutex<std::collections::HashSet<String>>,
}

#[derive(Default)]
pub(super) struct Due {
    /// Waiting messages by due time (then order of arrival).
    due: BinaryHeap<Reverse<(Instant, u64, PathBuf)>>,
    seq: u64,
    /// Messages being delivered right now.
    in_flight: usize,
    stopping: bool,
    /// Relay connections of the deliveries on their way, to cut them
    /// short at shutdown.
    connections: std::collections::HashMap<u64, TcpStream>,
    next_connection: u64,
    /// The connections were cut: their attempts are not recorded.
    cut: bool,
}

impl Outbox {
    /// Opens the outbox under `data_dir` and picks up every message waiting
    /// in `inbox/` (without reading them: one whose `nextattempt` is still
    /// ahead is put back until then when its turn comes). Fails if another
    /// outbox (in this or another process) has the directory open.
    pub fn open(data_dir: impl Into<PathBuf>) -> std::io::Result<(Outbox, Pickup)> {
        let data_dir = DataDir::new(data_dir);
        let lock = data_dir.lock()?;
        // MIME that `serve` wrote for messages a crash kept it from writing.
        store::mime::MimeStore::new(&data_dir).remove_orphans(&data_dir)?;
        let inbox = data_dir.queue(Queue::Inbox);
        std::fs::create_dir_all(&inbox)?;
        let outbox = Outbox {
            shared: Arc::new(Shared {
                queue: Mutex::new(Due::default()),
                changed: Condvar::new(),
                reported: Mutex::default(),
            }),
            data_dir,
            _lock: Arc::new(lock),
        };
        let mut pickup = Pickup::default();
        for file in store::pending(&inbox)? {
            if outbox.has_final_result(&file) {
                store::remove(&file)?;
                pickup.finished += 1;
            } else {
                // Due now; a `nextattempt` still ahead is honoured when its
                // turn comes, from the read that turn makes anyway.
                outbox.push(file);
                pickup.waiting += 1;
            }
        }
        Ok((outbox, pickup))
    }

    /// Whether the message in outbox file `file` has its final result
    /// (`success/` or `failures/` under the same name).
    pub(super) fn has_final_result(&self, file: &Path) -> bool {
        let name = file.file_name().unwrap_or_default();
        [Queue::Success, Queue::Failures]
            .iter()
            .any(|q| self.data_dir.queue(*q).join(name).exists())
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The outbox's own directory (`inbox/` under the data directory).
    pub fn dir(&self) -> PathBuf {
        self.data_dir.queue(Queue::Inbox)
    }

    /// Stores `message` durably in the outbox and queues it.
    pub fn add(&self, message: &Value) -> std::io::Result<PathBuf> {
        let path = store::store(&self.data_dir.queue(Queue::Inbox), message)?;
        self.push(path.clone());
        Ok(path)
    }

    /// Queues a message file already stored in `inbox/`, due now.
    pub fn push(&self, file: PathBuf) {
        self.push_at(file, Instant::now());
    }

    pub(super) fn push_at(&self, file: PathBuf, due: Instant) {
        let mut queue = self.lock();
        queue.seq += 1;
        let seq = queue.seq;
        queue.due.push(Reverse((due, seq, file)));
        drop(queue);
        self.shared.changed.notify_all();
    }

    /// Message files in `inbox/` now (waiting, on their way, or left
    /// there by a turn that recorded nothing).
    pub fn pending_files(&self) -> usize {
        store::pending(&self.data_dir.queue(Queue::Inbox)).map_or(0, |f| f.len())
    }

    /// Messages waiting or on their way.
    pub fn pending(&self) -> usize {
        let queue = self.lock();
        queue.due.len() + queue.in_flight
    }

    /// Lets [`run`](super::run) return once the messages on their way are done; the
    /// waiting ones stay in `inbox/` for the next start.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.shared.changed.notify_all();
    }

    /// Like [`Outbox::stop`], then waits up to `grace` for the deliveries
    /// on their way; those still going then are cut short (their messages
    /// stay in `inbox/`, unchanged, for the next start). Returns how many
    /// were cut.
    pub fn stop_within(&self, grace: Duration) -> usize {
        self.stop();
        let deadline = Instant::now() + grace.min(LONGEST_DELAY);
        let mut queue = self.lock();
        while queue.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            queue = self.wait(queue, Some(left));
        }
        if queue.in_flight == 0 {
            return 0;
        }
        queue.cut = true;
        for stream in queue.connections.values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        queue.in_flight
    }

    /// Keeps a clone of a relay connection until the guard drops.
    /// `None` once the shutdown cut the connections.
    pub(super) fn track(&self, stream: &TcpStream) -> Option<Tracked> {
        let clone = stream.try_clone().ok()?;
        let mut queue = self.lock();
        if queue.cut {
            return None;
        }
        queue.next_connection += 1;
        let id = queue.next_connection;
        queue.connections.insert(id, clone);
        Some(Tracked {
            outbox: self.clone(),
            id,
        })
    }

    /// Whether `property` is reported for the first time in this run.
    pub(super) fn first_report(&self, property: &str) -> bool {
        let mut reported = self
            .shared
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        reported.insert(property.to_owned())
    }

    pub(super) fn was_cut(&self) -> bool {
        self.lock().cut
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.lock().stopping
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Due> {
        // A poisoned lock only means a delivery thread panicked while
        // holding it; the queue itself is always consistent.
        self.shared.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next due message, waiting for one; `None` when `run` should end.
    pub(super) fn next(&self, until: Until) -> Option<PathBuf> {
        let mut queue = self.lock();
        loop {
            if queue.stopping {
                return None;
            }
            let now = Instant::now();
            match queue.due.peek() {
                Some(Reverse((due, _, _))) if *due <= now => {
                    let Reverse((_, _, file)) = queue.due.pop().expect("peeked");
                    queue.in_flight += 1;
                    return Some(file);
                }
                Some(Reverse((due, _, _))) => {
                    let wait = *due - now;
                    queue = self.wait(queue, Some(wait));
                }
                None if until == Until::Empty && queue.in_flight == 0 => {
                    // Wake the other threads: they end too.
                    self.shared.changed.notify_all();
                    return None;
                }
                None => queue = self.wait(queue, None),
            }
        }
    }

    pub(super) fn wait<'a>(
        &self,
        queue: MutexGuard<'a, Due>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Due> {
        let cv = &self.shared.changed;
        match timeout {
            Some(t) => {
                cv.wait_timeout(queue, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => cv.wait(queue).unwrap_or_else(|e| e.into_inner()),
        }
    }

    pub(super) fn done(&self) {
        self.lock().in_flight -= 1;
        self.shared.changed.notify_all();
    }
}

/// When [`run`](super::run) returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// When [`Outbox::stop`] is called (after the messages on their way).
    Stopped,
    /// When every message has its final result, or at [`Outbox::stop`].
    Empty,
}

/// A tracked relay connection (see [`Outbox::track`]).
pub(super) struct Tracked {
    outbox: Outbox,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.outbox.lock().connections.remove(&self.id);
    }
}

/// The longest any delay may be (retries, `nextattempt`): 30 days.
pub(super) const LONGEST_DELAY: Duration = Duration::from_secs(30 * 86_400);
