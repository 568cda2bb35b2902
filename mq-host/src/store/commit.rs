//! Group commit: the files that many SMTP sessions wrote are made durable
//! together, on one store thread, and each session answers `250` only once
//! its own files are.
//!
//! A worker writes a transaction's files under temporary names
//! ([`Staged`]: open, written, not yet fsync'd, not yet under their final
//! names) and hands them over as one [`Job`]. The store thread takes every
//! job that is waiting when it wakes (at most [`MAX_JOBS`]; no timer, no
//! added wait: while one commit's fsyncs run, the next commit's jobs
//! queue up), and commits them as one batch:
//!
//! 1. starts the write-back of every file of the batch at once
//!    (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the disk sees
//!    them together and the file system journals their allocations in one
//!    transaction;
//! 2. `fsync`s each file (the first commits the journal for all; the rest
//!    mostly find their data already on disk);
//! 3. renames each file to its final name (and makes the hard links that
//!    share one MIME file between the recipients of a transaction);
//! 4. `fsync`s each directory of the batch **once**, after all renames.
//!
//! Only then does it call each job's completion, which posts the reply to
//! the session's worker. The worker's loop never waits for a commit: the
//! session waits (its pipelined input stays buffered), the worker serves
//! its other sessions.
//!
//! # Why a `250` never comes before the message is durable
//!
//! A session sends its `250` only from its job's completion
//! ([`Job::done`] with `Ok`), and the store thread calls it only after, for
//! every file of the job: the file's data and inode were `fsync`'d (step
//! 2) before it got its final name (step 3), and the directory holding
//! that name was `fsync`'d after the rename (step 4) — the same three
//! guarantees as the one-message path ([`store_as`](super::store_as)),
//! with one directory `fsync` covering every rename made before it. A
//! crash at any point before the completion leaves at worst a temporary
//! file (removed when the directory is read again) or a file whose
//! client never got a `250` (and retries: a duplicate, never a loss). If
//! any step fails for a job, its files are removed again and the
//! completion gets the error (the session answers `451`).

use crate::observe::Counters;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};

/// The most jobs one commit takes.
pub(crate) const MAX_JOBS: usize = 256;

/// A file written under a temporary name, waiting for its commit.
pub(crate) struct StagedFile {
    /// The file (its data written, not yet fsync'd), if kept open: a
    /// transaction keeps its first file open for its commit and closes
    /// the others, which the store thread opens again, so that a session
    /// holds at most one descriptor while it waits, however many
    /// recipients its transaction has.
    pub(crate) file: Option<File>,
    /// Its temporary name.
    pub(crate) tmp: PathBuf,
    /// Its final name.
    pub(crate) path: PathBuf,
}

/// A transaction's files, written but not yet durable nor visible.
#[derive(Default)]
pub(crate) struct Staged {
    /// The files, committed in this order.
    pub(crate) files: Vec<StagedFile>,
    /// Hard links `(existing, new)` to make once the files have their
    /// final names (a copy where the file system cannot link).
    pub(crate) links: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// Removes the temporary files (nothing was committed).
    pub(crate) fn discard(self) {
        for f in self.files {
            let _ = std::fs::remove_file(&f.tmp);
        }
    }
}

/// What a job's completion learns: `Ok` once every file is durable under
/// its final name.
pub(crate) type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// One transaction's files and what to do once they are committed.
pub(crate) struct Job {
    pub(crate) staged: Staged,
    /// Called on the store thread once the job's files are durable (or
    /// could not be made so, and were removed again).
    pub(crate) done: Done,
}

/// How many store threads a listener has: commits in flight at once.
/// One: measured on a virtual disk (docs/performance.md), four threads
/// committing side by side (their fsyncs joined in the file system's
/// journal) made smaller batches, more fsyncs and no more messages per
/// second than one thread whose batches grow while it waits on the disk.
pub(crate) const THREADS: usize = 1;

/// The sending side of a listener's store threads; they end once every
/// `Committer` is dropped and the queue is done.
pub(crate) struct Committer {
    jobs: Option<mpsc::Sender<Job>>,
    counters: Arc<Counters>,
    #[cfg(test)]
    pub(crate) gate: Arc<tests::Gate>,
}

impl Committer {
    /// Store threads for files under `data_dir`; none where it is on a file
    /// system in memory (tmpfs, ramfs): there `fsync` has nothing to wait
    /// for, and [`Committer::commit_here`] commits on the caller's thread,
    /// without the two thread switches of a hand-over.
    pub(crate) fn start(counters: Arc<Counters>, data_dir: &Path) -> io::Result<Committer> {
        // Unit tests of `serve` hold the store threads, wherever the
        // temporary directory is.
        if in_memory(data_dir) && !cfg!(test) {
            return Ok(Committer::in_place(counters));
        }
        Committer::threads(counters)
    }

    /// No store thread: every commit on the caller's thread.
    pub(crate) fn in_place(counters: Arc<Counters>) -> Committer {
        Committer {
            jobs: None,
            counters,
            #[cfg(test)]
            gate: Arc::new(tests::Gate::default()),
        }
    }

    /// Store threads, whatever the file system.
    pub(crate) fn threads(counters: Arc<Counters>) -> io::Result<Committer> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        #[cfg(test)]
        let gate = Arc::new(tests::Gate::default());
        for n in 0..THREADS {
            let queue = Arc::clone(&queue);
            let counters = Arc::clone(&counters);
            #[cfg(test)]
            let gate = Arc::clone(&gate);
            std::thread::Builder::new()
                .name(format!("mq-store-{n}"))
                .spawn(move || loop {
                    // One thread waits on the queue at a time; it takes
                    // every job waiting, and lets the next thread wait
                    // while it commits them.
                    let batch = {
                        let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
                        let Ok(first) = queue.recv() else { return };
                        let mut batch = vec![first];
                        batch.extend(queue.try_iter().take(MAX_JOBS - 1));
                        batch
                    };
                    #[cfg(test)]
                    gate.pass(batch.len());
                    commit(batch, &counters);
                })?;
        }
        Ok(Committer {
            jobs: Some(jobs),
            counters,
            #[cfg(test)]
            gate,
        })
    }

    /// Whether jobs are committed on the caller's thread
    /// ([`Committer::commit_here`]) rather than submitted.
    pub(crate) fn inline(&self) -> bool {
        self.jobs.is_none()
    }

    /// Commits `staged` now, on this thread (see [`Committer::start`]).
    pub(crate) fn commit_here(&self, staged: Staged) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        commit(
            vec![Job {
                staged,
                done: Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            }],
            &self.counters,
        );
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("the commit ended without a result")))
    }

    /// Queues `job`; if the store threads are gone (or there are none), it
    /// is committed here.
    pub(crate) fn submit(&self, job: Job) {
        #[cfg(test)]
        self.gate.submitted.fetch_add(1, Ordering::SeqCst);
        let job = match &self.jobs {
            Some(jobs) => match jobs.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        commit(vec![job], &self.counters);
    }
}

/// Whether `dir` is on a file system kept in memory (tmpfs, ramfs).
fn in_memory(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` points to
    // writable memory of the size `statfs` fills; it is read only after
    // the call succeeded.
    let ok = unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) } == 0;
    if !ok {
        return false;
    }
    // SAFETY: `statfs` returned 0, so it filled `stat`.
    let kind = unsafe { stat.assume_init() }.f_type;
    // ramfs: 0x858458f6 (not among libc's constants).
    kind == libc::TMPFS_MAGIC || kind == 0x8584_58f6
}

/// One job's progress through a commit.
struct InFlight {
    job: Job,
    failed: Option<io::Error>,
    /// Final names made so far (renamed files, then links).
    made: Vec<PathBuf>,
}

/// Commits `jobs` together (see the module docs) and calls each one's
/// completion.
fn commit(jobs: Vec<Job>, counters: &Counters) {
    let mut fsyncs = 0u64;
    let mut jobs: Vec<InFlight> = jobs
        .into_iter()
        .map(|job| InFlight {
            job,
            failed: None,
            made: Vec::new(),
        })
        .collect();
    // 1. Write-back of every file at once. Only a hint: step 2 is what
    // makes them durable.
    for j in &jobs {
        for f in &j.job.staged.files {
            if let Some(file) = &f.file {
                start_writeback(file);
            }
        }
    }
    // 2. Each file's data and inode.
    for j in &mut jobs {
        for f in &mut j.job.staged.files {
            fsyncs += 1;
            let synced = match f.file.take() {
                Some(file) => file.sync_all(),
                None => File::options()
                    .write(true)
                    .open(&f.tmp)
                    .and_then(|file| file.sync_all()),
            };
            if let Err(e) = synced {
                j.failed = Some(e);
                break;
            }
        }
    }
    // 3. The final names.
    for j in &mut jobs {
        if j.failed.is_some() {
            continue;
        }
        if let Err(e) = publish(&j.job.staged, &mut j.made, &mut fsyncs) {
            j.failed = Some(e);
        }
    }
    // 4. Each directory once, after every rename into it.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for j in jobs.iter().filter(|j| j.failed.is_none()) {
        for made in &j.made {
            if let Some(dir) = made.parent() {
                if !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_owned());
                }
            }
        }
    }
    for dir in &dirs {
        fsyncs += 1;
        if let Err(e) = super::sync_dir(dir) {
            for j in jobs.iter_mut().filter(|j| j.failed.is_none()) {
                if j.made.iter().any(|m| m.parent() == Some(dir)) {
                    j.failed = Some(io::Error::new(e.kind(), e.to_string()));
                }
            }
        }
    }
    counters.store_commits.fetch_add(1, Ordering::Relaxed);
    counters.store_fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
    for j in jobs {
        let result = match j.failed {
            None => Ok(()),
            Some(e) => {
                // Nothing of a failed job stays: not its final names, not
                // its temporary files.
                for made in &j.made {
                    let _ = std::fs::remove_file(made);
                }
                for f in &j.job.staged.files {
                    let _ = std::fs::remove_file(&f.tmp);
                }
                Err(e)
            }
        };
        (j.job.done)(result);
    }
}

/// Renames a job's files to their final names, then makes its links;
/// `made` collects the names made.
fn publish(staged: &Staged, made: &mut Vec<PathBuf>, fsyncs: &mut u64) -> io::Result<()> {
    for f in &staged.files {
        std::fs::rename(&f.tmp, &f.path)?;
        made.push(f.path.clone());
    }
    for (existing, new) in &staged.links {
        if std::fs::hard_link(existing, new).is_err() {
            // A file system without hard links: a copy of its own, made
            // durable before its directory is.
            std::fs::copy(existing, new)?;
            made.push(new.clone());
            *fsyncs += 1;
            File::open(new)?.sync_all()?;
        } else {
            made.push(new.clone());
        }
    }
    Ok(())
}

/// Starts writing `file`'s dirty pages back without waiting for them.
fn start_writeback(file: &File) {
    // SAFETY: `sync_file_range` only reads its integer arguments; the
    // descriptor is open for as long as `file` is borrowed. Its result is
    // ignored: it is a hint, and the `fsync` that follows reports errors.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    /// Holds the store thread before a commit, for tests that look at a
    /// session while its files wait for their commit.
    #[derive(Default)]
    pub(crate) struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
        /// Jobs submitted so far.
        pub(crate) submitted: AtomicU64,
    }

    #[derive(Default)]
    struct GateState {
        closed: bool,
        /// Batches held, and their jobs.
        held_batches: usize,
        held_jobs: usize,
    }

    impl Gate {
        /// Holds every commit from now on until [`Gate::open`].
        pub(crate) fn close(&self) {
            self.state.lock().unwrap().closed = true;
        }

        /// Lets commits go on.
        pub(crate) fn open(&self) {
            self.state.lock().unwrap().closed = false;
            self.changed.notify_all();
        }

        /// Waits until a store thread holds a batch; the jobs held. Fails
        /// the test after a minute (the thread never came).
        pub(crate) fn wait_holding(&self) -> usize {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut state = self.state.lock().unwrap();
            loop {
                if state.held_batches > 0 {
                    return state.held_jobs;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "the store thread never reached a commit");
                state = self.changed.wait_timeout(state, left).unwrap().0;
            }
        }

        /// Waits until `n` jobs were submitted (a minute at most).
        pub(crate) fn wait_submitted(&self, n: u64) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.submitted.load(Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} jobs were submitted",
                    self.submitted.load(Ordering::SeqCst)
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }

        /// On the store thread: waits while the gate is closed.
        pub(super) fn pass(&self, jobs: usize) {
            let mut state = self.state.lock().unwrap();
            if !state.closed {
                return;
            }
            state.held_batches += 1;
            state.held_jobs += jobs;
            self.changed.notify_all();
            while state.closed {
                state = self.changed.wait(state).unwrap();
            }
            state.held_batches -= 1;
            state.held_jobs -= jobs;
        }
    }

    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mq-commit-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn staged(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Staged {
        use std::io::Write;
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = File::create(&tmp).unwrap();
        file.write_all(bytes).unwrap();
        Staged {
            files: vec![StagedFile {
                file: Some(file),
                tmp,
                path: dir.join(name),
            }],
            links: Vec::new(),
        }
    }

    #[test]
    fn jobs_waiting_together_share_one_commit_and_one_directory_fsync() {
        let dir = dir("share");
        let counters = Arc::new(Counters::default());
        let committer = Committer::threads(Arc::clone(&counters)).unwrap();
        committer.gate.close();
        let (tx, rx) = mpsc::channel();
        for n in 0..10 {
            let tx = tx.clone();
            committer.submit(Job {
                staged: staged(&dir, &format!("{n}.json"), b"{}"),
                done: Box::new(move |r| tx.send((n, r.is_ok())).unwrap()),
            });
        }
        // The first job may be held alone; the other nine wait behind it.
        let first = committer.gate.wait_holding();
        assert!(
            !dir.join("0.json").exists(),
            "not under its name before the commit"
        );
        committer.gate.open();
        let mut done: Vec<(i32, bool)> = (0..10).map(|_| rx.recv().unwrap()).collect();
        done.sort();
        assert_eq!(done, (0..10).map(|n| (n, true)).collect::<Vec<_>>());
        for n in 0..10 {
            assert_eq!(std::fs::read(dir.join(format!("{n}.json"))).unwrap(), b"{}");
            assert!(!dir.join(format!(".{n}.json.tmp")).exists());
        }
        let commits = counters.store_commits.load(Ordering::SeqCst);
        // At most one per thread held, then one for the rest.
        let most = THREADS as u64 + 1;
        assert!(commits <= most, "{commits} commits (first held {first})");
        // One fsync per file, one per directory per commit: not two per file.
        assert_eq!(counters.store_fsyncs.load(Ordering::SeqCst), 10 + commits);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_job_leaves_nothing_and_says_why() {
        let dir = dir("fail");
        let committer = Committer::threads(Arc::new(Counters::default())).unwrap();
        let mut bad = staged(&dir, "a.json", b"{}");
        // Its final name lies in a directory that does not exist: the
        // rename fails.
        bad.files[0].path = dir.join("missing").join("a.json");
        let (tx, rx) = mpsc::channel();
        committer.submit(Job {
            staged: bad,
            done: Box::new(move |r| tx.send(r.is_err()).unwrap()),
        });
        assert!(rx.recv().unwrap(), "the completion gets the error");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no file left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memory_file_systems_commit_in_place() {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (point, kind) = (fields[1], fields[2]);
            if point.contains('\\') || !matches!(kind, "tmpfs" | "ext4" | "proc" | "xfs") {
                continue;
            }
            assert_eq!(in_memory(Path::new(point)), kind == "tmpfs", "{line}");
        }
        let counters = Arc::new(Counters::default());
        let committer = Committer::in_place(Arc::clone(&counters));
        assert!(committer.inline());
        let dir = dir("in-place");
        committer
            .commit_here(staged(&dir, "a.json", b"{}"))
            .unwrap();
        assert_eq!(std::fs::read(dir.join("a.json")).unwrap(), b"{}");
        assert_eq!(counters.store_commits.load(Ordering::SeqCst), 1);
        assert_eq!(counters.store_fsyncs.load(Ordering::SeqCst), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
