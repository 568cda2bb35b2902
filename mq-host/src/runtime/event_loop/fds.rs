//! The watched fds: one epoll registration per fd, its watchers in a list
//! linked through the watcher slab, and counts of their interests.
//!
//! Every operation on one watcher is O(1) however many watchers share its
//! fd: watching links it at the end of its fd's list, unwatching unlinks it
//! through its own links, and the interest the fd needs is read off the
//! counts of its reading and writing watchers instead of being folded over
//! the list. Only what is inherently per-watcher walks the list: handing
//! out an fd's ready events (one callback each) and discarding the watchers
//! of a closed fd (each once).

use super::interest::to_mio;
use super::slab::Ended;
use super::{is_gone, Inner, Interest, IoCallback};
use mio::unix::SourceFd;
use mio::Token;
use std::io;
use std::os::fd::RawFd;

/// An io watcher: its fd, interest and callback, and its neighbours in the
/// list of its fd.
pub(super) struct Watcher {
    pub(super) fd: RawFd,
    pub(super) interest: Interest,
    /// `None` while the callback runs.
    pub(super) cb: Option<IoCallback>,
    /// Slots of the previous and next watcher of the same fd (live ones:
    /// a watcher is unlinked before its slot is freed).
    prev: Option<u32>,
    next: Option<u32>,
}

/// The one mio registration of an fd, and its watchers in watch order.
#[derive(Default)]
pub(super) struct FdEntry {
    first: Option<u32>,
    last: Option<u32>,
    /// Watchers that want readiness for reading, and for writing.
    readers: usize,
    writers: usize,
    /// The interest registered with epoll; `None` if the fd is not (or no
    /// longer: closed) registered.
    pub(super) registered: Option<mio::Interest>,
}

impl FdEntry {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The union of the interests of the fd's watchers.
    fn wanted(&self) -> Option<mio::Interest> {
        to_mio(Interest {
            read: self.readers > 0,
            write: self.writers > 0,
        })
    }

    fn count(&mut self, interest: Interest, add: bool) {
        let step = |n: &mut usize| {
            *n = if add { *n + 1 } else { *n - 1 };
        };
        if interest.read {
            step(&mut self.readers);
        }
        if interest.write {
            step(&mut self.writers);
        }
    }
}

fn fd_token(fd: RawFd) -> Token {
    // fd >= 0 is checked by `watch_io`.
    Token(fd as usize)
}

impl Inner {
    /// Adds a watcher of `fd`: makes sure the fd is registered with at
    /// least `interest` (watchers of a previous file with the same number
    /// are moved to `discarded`), then links the new watcher at the end of
    /// the fd's list. On failure the callback is handed back.
    pub(super) fn add_watcher(
        &mut self,
        fd: RawFd,
        interest: Interest,
        cb: IoCallback,
        discarded: &mut Vec<Watcher>,
    ) -> Result<(u32, u16), (io::Error, IoCallback)> {
        let Some(mio_interest) = to_mio(interest) else {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "empty interest");
            return Err((e, cb));
        };
        if let Err(e) = self.prepare_fd(fd, mio_interest, discarded) {
            return Err((e, cb));
        }
        let entry = self.fds.entry(fd).or_default();
        let prev = entry.last;
        let (slot, generation) = self.watchers.insert(Watcher {
            fd,
            interest,
            cb: Some(cb),
            prev,
            next: None,
        });
        match prev {
            Some(p) => self.watchers.linked_mut(p).next = Some(slot),
            None => entry.first = Some(slot),
        }
        entry.last = Some(slot);
        entry.count(interest, true);
        Ok((slot, generation))
    }

    /// Makes sure `fd` is registered with at least `interest` for a new
    /// watcher. Watchers of a previous file with the same number are moved
    /// to `discarded`.
    fn prepare_fd(
        &mut self,
        fd: RawFd,
        interest: mio::Interest,
        discarded: &mut Vec<Watcher>,
    ) -> io::Result<()> {
        let registry = self.poll.registry();
        let entry = self.fds.entry(fd).or_default();
        if let Some(current) = entry.registered {
            let union = current | interest;
            match registry.reregister(&mut SourceFd(&fd), fd_token(fd), union) {
                Ok(()) => {
                    entry.registered = Some(union);
                    return Ok(());
                }
                Err(e) if is_gone(&e) => entry.registered = None,
                Err(e) => return Err(e),
            }
        }
        // Not registered: a new fd, or the file the existing watchers were
        // watching was closed (the kernel dropped its registration). Those
        // watchers can never fire again: discard them, they must not get
        // the events of a new file that happens to reuse the number.
        let mut next = entry.first.take();
        *entry = FdEntry::default();
        while let Some(slot) = next {
            let generation = self
                .watchers
                .get_any(slot)
                .map(|(_, g)| g)
                .expect("a linked slot holds a value");
            let w = self
                .watchers
                .remove(slot, generation, Ended::Discarded)
                .expect("a linked slot holds a value");
            next = w.next;
            discarded.push(w);
        }
        let result = match registry.register(&mut SourceFd(&fd), fd_token(fd), interest) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                registry.reregister(&mut SourceFd(&fd), fd_token(fd), interest)
            }
            other => other,
        };
        match result {
            Ok(()) => {
                if let Some(entry) = self.fds.get_mut(&fd) {
                    entry.registered = Some(interest);
                }
                Ok(())
            }
            Err(e) => {
                self.fds.remove(&fd);
                Err(e)
            }
        }
    }

    /// Unlinks `w` (just removed from slot `slot`) from the list of its fd,
    /// updating or dropping the fd's registration.
    pub(super) fn detach(&mut self, w: &Watcher, slot: u32) {
        let fd = w.fd;
        let Some(entry) = self.fds.get_mut(&fd) else {
            return;
        };
        match w.prev {
            Some(p) => self.watchers.linked_mut(p).next = w.next,
            None => entry.first = w.next,
        }
        match w.next {
            Some(n) => self.watchers.linked_mut(n).prev = w.prev,
            None => entry.last = w.prev,
        }
        debug_assert!(entry.first != Some(slot) && entry.last != Some(slot));
        entry.count(w.interest, false);
        #[cfg(test)]
        {
            // The two links changed and the count: the same for any n.
            self.steps += 3;
        }
        let registry = self.poll.registry();
        if entry.is_empty() {
            if entry.registered.is_some() {
                // ENOENT/EBADF: the fd was closed (and maybe reused); any
                // other error leaves nothing we could do either.
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
            self.fds.remove(&fd);
            return;
        }
        let (Some(current), Some(wanted)) = (entry.registered, entry.wanted()) else {
            return;
        };
        if wanted != current {
            match registry.reregister(&mut SourceFd(&fd), fd_token(fd), wanted) {
                Ok(()) => entry.registered = Some(wanted),
                Err(e) if is_gone(&e) => entry.registered = None,
                Err(_) => {}
            }
        }
    }

    /// Re-arms `fd` after dispatch so that a still-ready fd is reported
    /// again (level-triggered behaviour over edge-triggered epoll).
    pub(super) fn rearm(&mut self, fd: RawFd) {
        let Some(entry) = self.fds.get_mut(&fd) else {
            return;
        };
        let Some(interest) = entry.registered else {
            return;
        };
        match self
            .poll
            .registry()
            .reregister(&mut SourceFd(&fd), fd_token(fd), interest)
        {
            Ok(()) => {}
            Err(e) if is_gone(&e) => entry.registered = None,
            Err(_) => {}
        }
    }

    /// Fills `out` with `(slot, generation)` of the watchers of `fd`, in
    /// watch order; false if `fd` has none.
    pub(super) fn snapshot(&self, fd: RawFd, out: &mut Vec<(u32, u16)>) -> bool {
        let Some(entry) = self.fds.get(&fd) else {
            return false;
        };
        let mut next = entry.first;
        while let Some(slot) = next {
            let (w, generation) = self
                .watchers
                .get_any(slot)
                .expect("a linked slot holds a value");
            out.push((slot, generation));
            next = w.next;
        }
        true
    }
}
