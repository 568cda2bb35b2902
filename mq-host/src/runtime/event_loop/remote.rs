//! How other threads reach a loop: the wake-up eventfd, the queue of
//! posted tasks, and [`LoopRemote`].

use super::Task;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The loop's wake-up eventfd, registered with
/// [`WAKER_TOKEN`](super::WAKER_TOKEN).
///
/// Our own rather than a [`mio::Waker`] because the loop must know its
/// number to refuse it to `watch_io`. Owned by [`Shared`], so it stays open
/// while a [`LoopRemote`] can write to it (a remote may outlive its loop)
/// and is closed when the last owner goes.
pub(super) struct WakeFd(File);

impl WakeFd {
    pub(super) fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is open and nothing else owns it.
        Ok(WakeFd(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    pub(super) fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Adds 1 to the counter, which makes epoll report the fd.
    fn wake(&self) {
        // An eventfd write is 8 bytes or nothing. `EAGAIN` means the
        // counter is full: the fd is readable, a wake-up is pending anyway.
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    /// Resets the counter to 0, so that it never fills up.
    pub(super) fn drain(&self) {
        let mut count = [0u8; 8];
        // `EAGAIN`: nothing to drain.
        let _ = (&self.0).read(&mut count);
    }
}

/// The descriptors an [`EventLoop`](super::EventLoop) made for itself; no watcher may use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OwnFd {
    /// The [`WakeFd`].
    WakeUp,
    /// The epoll instance of the loop's [`Poll`].
    Epoll,
}

impl OwnFd {
    /// The error of `watch_io(fd)`.
    pub(super) fn refusal(self, fd: RawFd) -> io::Error {
        let what = match self {
            OwnFd::WakeUp => "wake-up",
            OwnFd::Epoll => "epoll",
        };
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("fd {fd} is the event loop's own {what} descriptor; plugins cannot watch it"),
        )
    }
}

pub(super) struct RemoteQueue {
    /// False once the loop was dropped.
    pub(super) alive: bool,
    pub(super) tasks: VecDeque<Task>,
}

pub(super) struct Shared {
    pub(super) queue: Mutex<RemoteQueue>,
    pub(super) wake_fd: WakeFd,
    pub(super) stop: AtomicBool,
    /// True when a wake-up was sent since the loop last returned from poll;
    /// saves wake-ups when many tasks are posted in a row.
    pub(super) wake_pending: AtomicBool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, RemoteQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.wake_fd.wake();
        }
    }
}

/// A thread-safe handle to an [`EventLoop`](super::EventLoop): posts tasks to it and stops
/// it from other threads.
#[derive(Clone)]
pub struct LoopRemote {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for LoopRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopRemote").finish_non_exhaustive()
    }
}

impl LoopRemote {
    /// Queues `task` to run on the loop thread (in FIFO order, in the loop's
    /// next turn) and wakes the loop. Returns false, dropping the task, if
    /// the loop was dropped. A task queued just before the loop is dropped
    /// is dropped without running.
    pub fn post(&self, task: Task) -> bool {
        {
            let mut queue = self.shared.lock();
            if !queue.alive {
                drop(queue);
                drop(task);
                return false;
            }
            queue.tasks.push_back(task);
        }
        self.shared.wake();
        true
    }

    /// Stops the loop like [`EventLoop::stop`](super::EventLoop::stop) and wakes it, so a blocked
    /// [`EventLoop::run`](super::EventLoop::run) returns.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
}
