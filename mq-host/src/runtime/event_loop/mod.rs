//! A libev-like event loop over mio: one [`EventLoop`] per worker thread.
//!
//! This is the loop behind the host functions that plugins call
//! (`MQ_ioWatch`, `MQ_ioUnwatch`, `MQ_startTimer`, `MQ_stopTimer`,
//! `MQ_resetTimer`). It keeps libev's semantics, which a 1:1 mapping onto
//! mio (or calloop, or tokio) does not:
//!
//! - **Level-triggered io watchers.** A watcher's callback fires on every
//!   turn while its fd is ready. mio is edge-triggered, so after the
//!   callbacks of an fd ran, the fd is re-armed (`EPOLL_CTL_MOD`), which makes
//!   the kernel report it again on the next turn if it is still ready.
//! - **Several watchers on one fd.** There is one registration per fd
//!   (token = fd number) holding the list of its watchers, registered with
//!   the union of their interests. Each watcher gets its own callback.
//! - **Closed and reused fd numbers.** Watching an fd first tries
//!   `EPOLL_CTL_MOD`; when that fails with `ENOENT`/`EBADF` the file the old
//!   watchers were watching is gone (the kernel dropped its registration
//!   when it was closed). Those old watchers are discarded (their handles
//!   become stale) and the fd is registered anew (`EPOLL_CTL_ADD`), so the
//!   new file's watchers work and never share events with the dead ones.
//!   Unwatching ignores `ENOENT`/`EBADF`.
//! - **The loop's own descriptors are never a plugin's.** A plugin may pass
//!   any fd number to `MQ_ioWatch`. Watching the loop's epoll fd or its
//!   wake-up eventfd fails with `PermissionDenied` before epoll is touched.
//!   The eventfd is the one registration the loop makes outside its map of
//!   watched fds (mio's `Poll` makes none). Were it watched, `EPOLL_CTL_ADD`
//!   would fail with `EEXIST`, the fallback to `EPOLL_CTL_MOD` would move it
//!   to the fd's token, the unwatch would delete it, and the loop would
//!   never wake for posted tasks again. With these two refused, the
//!   fallback takes over only registrations of our own: `EEXIST` means the
//!   pair (open file, fd number) is in the epoll set already, and every
//!   other pair in it was added by `watch_io`, with token = fd number (e.g.
//!   one left behind when its number was closed while a `dup` kept the file
//!   open, and that now names the file again). Other loops' descriptors are
//!   not refused: watching them adds to this loop's epoll set only.
//! - **Generational handles.** [`WatcherHandle`] and [`TimerHandle`] encode
//!   `loop_id (16 bits) | generation (16 bits) | slot + 1 (32 bits)`, never 0.
//!   A handle of another loop, or of a freed (and maybe reused) slot, is a
//!   harmless no-op.
//! - **Re-entrant callbacks.** Callbacks run on the loop thread and may call
//!   back into the loop (watch, unwatch — even the watcher that is firing —,
//!   start, stop and reset timers, defer, stop). No `RefCell` borrow is ever
//!   held while a callback runs; the list of watchers of an fd is
//!   snapshotted and each watcher is re-checked just before its callback.
//! - **One-shot timers** on a binary heap with lazy deletion. A timer never
//!   fires early (poll timeouts are rounded up to mio's 1 ms resolution);
//!   timers with equal deadlines fire in start order; a firing timer is
//!   freed before its callback runs.
//!
//! Other threads reach a loop through a [`LoopRemote`]: [`LoopRemote::post`]
//! queues a [`Task`] and wakes the loop by writing to its wake-up eventfd,
//! which the loop drains when epoll reports it.
//!
//! A turn ([`EventLoop::run_once`]) runs: deferred functions, poll (not
//! blocking when deferred or remote work is pending; otherwise blocking at
//! most until the next timer or `max_wait`), io callbacks, expired timers,
//! remote tasks, and deferred functions again. The loop stays consistent if
//! a callback panics and the caller of `run_once` catches the panic: the
//! work not done in that turn is done in the next one.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Poll, Token};

/// Token of the loop's [`WakeFd`]; fd tokens are fd numbers (`0..=i32::MAX`).
const WAKER_TOKEN: Token = Token(usize::MAX - 1);

/// How many readiness events one poll can return.
const EVENTS_CAPACITY: usize = 256;

/// Heaps smaller than this are never compacted.
const HEAP_COMPACT_MIN: usize = 64;

/// The events an io watcher waits for, or that are ready.
///
/// A plain pair of flags; [`Interest::from_mq`] and [`Interest::to_mq`]
/// convert from and to the `MQ_READ | MQ_WRITE` bits of the C API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Interest {
    /// Readable (or hung up, or in error).
    pub read: bool,
    /// Writable (or hung up, or in error).
    pub write: bool,
}

impl Interest {
    /// Neither readable nor writable.
    pub const NONE: Interest = Interest {
        read: false,
        write: false,
    };
    /// Readable.
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    /// Writable.
    pub const WRITE: Interest = Interest {
        read: false,
        write: true,
    };
    /// Readable and writable.
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
    };
    /// The C API's `MQ_READ` bit.
    pub const MQ_READ: i32 = mq_abi::sys::MQ_READ;
    /// The C API's `MQ_WRITE` bit.
    pub const MQ_WRITE: i32 = mq_abi::sys::MQ_WRITE;

    /// Converts the C API's `MQ_READ | MQ_WRITE` bits; other bits are ignored.
    pub fn from_mq(events: i32) -> Interest {
        Interest {
            read: events & Self::MQ_READ != 0,
            write: events & Self::MQ_WRITE != 0,
        }
    }

    /// Converts to the C API's `MQ_READ | MQ_WRITE` bits.
    pub fn to_mq(self) -> i32 {
        (if self.read { Self::MQ_READ } else { 0 }) | (if self.write { Self::MQ_WRITE } else { 0 })
    }

    /// True if neither flag is set.
    pub fn is_empty(self) -> bool {
        !self.read && !self.write
    }

    /// The flags set in `self` or in `other`.
    pub fn union(self, other: Interest) -> Interest {
        Interest {
            read: self.read || other.read,
            write: self.write || other.write,
        }
    }

    /// The flags set in both `self` and `other`.
    pub fn intersection(self, other: Interest) -> Interest {
        Interest {
            read: self.read && other.read,
            write: self.write && other.write,
        }
    }

    fn to_mio(self) -> Option<mio::Interest> {
        match (self.read, self.write) {
            (true, true) => Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
            (true, false) => Some(mio::Interest::READABLE),
            (false, true) => Some(mio::Interest::WRITABLE),
            (false, false) => None,
        }
    }

    /// libev's mapping: an error or a hang-up makes both directions ready.
    fn from_event(ev: &mio::event::Event) -> Interest {
        let err = ev.is_error();
        Interest {
            read: ev.is_readable() || ev.is_read_closed() || err,
            write: ev.is_writable() || ev.is_write_closed() || err,
        }
    }
}

/// Identifies an io watcher of one [`EventLoop`].
///
/// Encodes `loop_id | generation | slot`; never 0. A handle whose watcher was
/// unwatched (or discarded because its fd was closed and the number reused),
/// or that belongs to another loop, is stale: using it is a harmless no-op.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WatcherHandle(u64);

impl WatcherHandle {
    /// The raw value, e.g. to pass it through C as an opaque pointer. Never 0.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// A handle from a raw value of [`WatcherHandle::to_raw`]; `None` for 0.
    pub fn from_raw(raw: u64) -> Option<Self> {
        (raw != 0).then_some(WatcherHandle(raw))
    }
}

/// Identifies a timer of one [`EventLoop`].
///
/// Encodes `loop_id | generation | slot`; never 0. A handle whose timer fired
/// or was stopped, or that belongs to another loop, is stale: using it is a
/// harmless no-op.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerHandle(u64);

impl TimerHandle {
    /// The raw value, e.g. to pass it through C as an opaque pointer. Never 0.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// A handle from a raw value of [`TimerHandle::to_raw`]; `None` for 0.
    pub fn from_raw(raw: u64) -> Option<Self> {
        (raw != 0).then_some(TimerHandle(raw))
    }
}

/// An io watcher's callback: its own handle, the fd, and which of the
/// watched events are ready now (never empty).
pub type IoCallback = Box<dyn FnMut(WatcherHandle, RawFd, Interest)>;

/// A timer's callback; timers are one-shot.
pub type TimerCallback = Box<dyn FnOnce()>;

/// Work posted from another thread with [`LoopRemote::post`].
pub type Task = Box<dyn FnOnce() + Send>;

fn encode(loop_id: u16, generation: u16, slot: u32) -> u64 {
    (u64::from(loop_id) << 48) | (u64::from(generation) << 32) | (u64::from(slot) + 1)
}

/// `(slot, generation)` of a handle of loop `loop_id`.
fn decode(raw: u64, loop_id: u16) -> Option<(u32, u16)> {
    if (raw >> 48) as u16 != loop_id {
        return None;
    }
    let low = raw as u32;
    if low == 0 {
        return None;
    }
    Some((low - 1, (raw >> 32) as u16))
}

/// A vector of generational slots.
struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    live: usize,
}

struct Slot<T> {
    generation: u16,
    value: Option<T>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Stores `value`; returns `(slot, generation)`.
    fn insert(&mut self, value: T) -> (u32, u16) {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            let s = &mut self.slots[slot as usize];
            s.value = Some(value);
            return (slot, s.generation);
        }
        let slot = u32::try_from(self.slots.len())
            .ok()
            .filter(|&n| n < u32::MAX)
            .expect("event loop slot space exhausted");
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        (slot, 0)
    }

    fn get_mut(&mut self, slot: u32, generation: u16) -> Option<&mut T> {
        self.slots
            .get_mut(slot as usize)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.value.as_mut())
    }

    fn get_any(&self, slot: u32) -> Option<(&T, u16)> {
        let s = self.slots.get(slot as usize)?;
        s.value.as_ref().map(|v| (v, s.generation))
    }

    /// Frees the slot; a slot whose generation would wrap is retired instead
    /// of reused, so a stale handle can never alias a new value.
    fn remove(&mut self, slot: u32, generation: u16) -> Option<T> {
        let s = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| s.generation == generation)?;
        let value = s.value.take()?;
        self.live -= 1;
        if s.generation < u16::MAX {
            s.generation += 1;
            self.free.push(slot);
        }
        Some(value)
    }
}

struct Watcher {
    fd: RawFd,
    interest: Interest,
    /// `None` while the callback runs.
    cb: Option<IoCallback>,
}

/// The one mio registration of an fd.
#[derive(Default)]
struct FdEntry {
    /// `(slot, generation)` of the watchers, in watch order.
    watchers: Vec<(u32, u16)>,
    /// The interest registered with epoll; `None` if the fd is not (or no
    /// longer: closed) registered.
    registered: Option<mio::Interest>,
}

struct Timer {
    /// Sequence number of the timer's current heap entry.
    seq: u64,
    cb: TimerCallback,
}

/// `(deadline, sequence, slot)`; an entry is live while the timer in `slot`
/// has that sequence number (sequence numbers are never reused).
type HeapEntry = Reverse<(Instant, u64, u32)>;

struct Inner {
    poll: Poll,
    events: Events,
    watchers: Slab<Watcher>,
    fds: HashMap<RawFd, FdEntry>,
    timers: Slab<Timer>,
    heap: BinaryHeap<HeapEntry>,
    next_seq: u64,
    deferred: VecDeque<Box<dyn FnOnce()>>,
    /// Readiness received from the last poll whose dispatch is not finished
    /// (the front one is being dispatched). Left over only if a callback
    /// panicked: the next turn re-arms these fds.
    pending_io: VecDeque<(RawFd, Interest)>,
    /// Reused buffer for the watcher snapshot of one fd.
    snapshot: Vec<(u32, u16)>,
}

fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF))
}

fn fd_token(fd: RawFd) -> Token {
    // fd >= 0 is checked by `watch_io`.
    Token(fd as usize)
}

impl Inner {
    fn timer_entry_live(timers: &Slab<Timer>, seq: u64, slot: u32) -> bool {
        timers.get_any(slot).is_some_and(|(t, _)| t.seq == seq)
    }

    /// Union of the interests of the watchers of `entry`.
    fn union(watchers: &Slab<Watcher>, entry: &FdEntry) -> Option<mio::Interest> {
        entry
            .watchers
            .iter()
            .filter_map(|&(slot, _)| watchers.get_any(slot).map(|(w, _)| w.interest))
            .fold(Interest::NONE, Interest::union)
            .to_mio()
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
        for (slot, generation) in entry.watchers.drain(..) {
            discarded.extend(self.watchers.remove(slot, generation));
        }
        let result = match registry.register(&mut SourceFd(&fd), fd_token(fd), interest) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                registry.reregister(&mut SourceFd(&fd), fd_token(fd), interest)
            }
            other => other,
        };
        match result {
            Ok(()) => {
                entry.registered = Some(interest);
                Ok(())
            }
            Err(e) => {
                self.fds.remove(&fd);
                Err(e)
            }
        }
    }

    /// Removes watcher `(slot, generation)` from the list of `fd`, updating
    /// or dropping the registration.
    fn detach(&mut self, fd: RawFd, slot: u32, generation: u16) {
        let Some(entry) = self.fds.get_mut(&fd) else {
            return;
        };
        entry.watchers.retain(|&w| w != (slot, generation));
        let registry = self.poll.registry();
        if entry.watchers.is_empty() {
            if entry.registered.is_some() {
                // ENOENT/EBADF: the fd was closed (and maybe reused); any
                // other error leaves nothing we could do either.
                let _ = registry.deregister(&mut SourceFd(&fd));
            }
            self.fds.remove(&fd);
            return;
        }
        let Some(current) = entry.registered else {
            return;
        };
        let Some(union) = Self::union(&self.watchers, entry) else {
            return;
        };
        if union != current {
            match registry.reregister(&mut SourceFd(&fd), fd_token(fd), union) {
                Ok(()) => entry.registered = Some(union),
                Err(e) if is_gone(&e) => entry.registered = None,
                Err(_) => {}
            }
        }
    }

    /// Re-arms `fd` after dispatch so that a still-ready fd is reported
    /// again (level-triggered behaviour over edge-triggered epoll).
    fn rearm(&mut self, fd: RawFd) {
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

    /// Deadline of the earliest live timer, dropping dead heap entries on
    /// the way.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, seq, slot))) = self.heap.peek() {
            if Self::timer_entry_live(&self.timers, seq, slot) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    /// Pushes a heap entry for the timer in `slot`, whose `seq` must
    /// already be `seq`; compacts the heap when dead entries dominate.
    fn push_timer_entry(&mut self, deadline: Instant, seq: u64, slot: u32) {
        self.heap.push(Reverse((deadline, seq, slot)));
        if self.heap.len() > HEAP_COMPACT_MIN
            && self.heap.len() > 2 * self.timers.live + HEAP_COMPACT_MIN
        {
            let timers = &self.timers;
            self.heap
                .retain(|&Reverse((_, s, sl))| Self::timer_entry_live(timers, s, sl));
        }
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }
}

/// Now + `after`, saturating far in the future.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Rounds up to whole milliseconds (mio's resolution): late, never early.
fn ceil_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The loop's wake-up eventfd, registered with [`WAKER_TOKEN`].
///
/// Our own rather than a [`mio::Waker`] because the loop must know its
/// number to refuse it to `watch_io`. Owned by [`Shared`], so it stays open
/// while a [`LoopRemote`] can write to it (a remote may outlive its loop)
/// and is closed when the last owner goes.
struct WakeFd(File);

impl WakeFd {
    fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; it returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is open and nothing else owns it.
        Ok(WakeFd(File::from(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Adds 1 to the counter, which makes epoll report the fd.
    fn wake(&self) {
        // An eventfd write is 8 bytes or nothing. `EAGAIN` means the
        // counter is full: the fd is readable, a wake-up is pending anyway.
        let _ = (&self.0).write(&1u64.to_ne_bytes());
    }

    /// Resets the counter to 0, so that it never fills up.
    fn drain(&self) {
        let mut count = [0u8; 8];
        // `EAGAIN`: nothing to drain.
        let _ = (&self.0).read(&mut count);
    }
}

/// The descriptors an [`EventLoop`] made for itself; no watcher may use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OwnFd {
    /// The [`WakeFd`].
    WakeUp,
    /// The epoll instance of the loop's [`Poll`].
    Epoll,
}

impl OwnFd {
    /// The error of `watch_io(fd)`.
    fn refusal(self, fd: RawFd) -> io::Error {
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

struct RemoteQueue {
    /// False once the loop was dropped.
    alive: bool,
    tasks: VecDeque<Task>,
}

struct Shared {
    queue: Mutex<RemoteQueue>,
    wake_fd: WakeFd,
    stop: AtomicBool,
    /// True when a wake-up was sent since the loop last returned from poll;
    /// saves wake-ups when many tasks are posted in a row.
    wake_pending: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RemoteQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.wake_fd.wake();
        }
    }
}

/// A libev-like event loop for one worker thread: level-triggered io
/// watchers on raw fds, one-shot timers, deferred functions and tasks posted
/// from other threads.
///
/// All methods take `&self`, so callbacks (which run on the loop thread)
/// can call back into the loop, e.g. through an `Rc<EventLoop>` or a `Weak`.
/// The loop is neither `Send` nor `Sync`; other threads use a
/// [`LoopRemote`]. See the [module documentation](self) for the semantics.
pub struct EventLoop {
    loop_id: u16,
    inner: RefCell<Inner>,
    shared: Arc<Shared>,
    /// True while `run_once` runs (it is not re-entrant).
    running: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("loop_id", &self.loop_id)
            .field("active_watchers", &self.active_watchers())
            .field("active_timers", &self.active_timers())
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

/// Resets `EventLoop::running` when a turn ends, also by a panic.
struct RunningGuard<'a>(&'a Cell<bool>);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// Holds an io callback while it runs and puts it back into its watcher
/// afterwards (also when the callback panics), if the watcher still exists.
struct IoCallGuard<'a> {
    event_loop: &'a EventLoop,
    slot: u32,
    generation: u16,
    cb: Option<IoCallback>,
}

impl Drop for IoCallGuard<'_> {
    fn drop(&mut self) {
        let Some(cb) = self.cb.take() else {
            return;
        };
        let leftover = match self.event_loop.inner.try_borrow_mut() {
            Ok(mut inner) => match inner.watchers.get_mut(self.slot, self.generation) {
                Some(w) if w.cb.is_none() => {
                    w.cb = Some(cb);
                    None
                }
                _ => Some(cb),
            },
            Err(_) => Some(cb),
        };
        // Dropped outside the borrow: the watcher was unwatched meanwhile.
        drop(leftover);
    }
}

impl EventLoop {
    /// Creates a loop. `loop_id` goes into every handle of this loop, so a
    /// handle of another loop is recognised; give each loop its own id.
    pub fn new(loop_id: u16) -> io::Result<Self> {
        let poll = Poll::new()?;
        // The only registration outside `fds` (mio's `Poll` makes none).
        let wake_fd = WakeFd::new()?;
        poll.registry().register(
            &mut SourceFd(&wake_fd.raw()),
            WAKER_TOKEN,
            mio::Interest::READABLE,
        )?;
        Ok(EventLoop {
            loop_id,
            inner: RefCell::new(Inner {
                poll,
                events: Events::with_capacity(EVENTS_CAPACITY),
                watchers: Slab::new(),
                fds: HashMap::new(),
                timers: Slab::new(),
                heap: BinaryHeap::new(),
                next_seq: 0,
                deferred: VecDeque::new(),
                pending_io: VecDeque::new(),
                snapshot: Vec::new(),
            }),
            shared: Arc::new(Shared {
                queue: Mutex::new(RemoteQueue {
                    alive: true,
                    tasks: VecDeque::new(),
                }),
                wake_fd,
                stop: AtomicBool::new(false),
                wake_pending: AtomicBool::new(false),
            }),
            running: Cell::new(false),
            _not_send: PhantomData,
        })
    }

    /// The id given to [`EventLoop::new`].
    pub fn loop_id(&self) -> u16 {
        self.loop_id
    }

    /// Watches `fd` for `interest` (level-triggered): `cb` runs on every
    /// turn while the fd is ready for some of `interest`, with the ready
    /// subset. Several watchers on one fd are allowed.
    ///
    /// If `fd` was watched before and has been closed (and its number
    /// reused) since, the old watchers are discarded: their handles become
    /// stale. Fails with `InvalidInput` for a negative fd or an empty
    /// interest, with `PermissionDenied` for one of the loop's own
    /// descriptors (its epoll fd and its wake-up eventfd), and with the OS
    /// error if epoll refuses the fd (e.g. `EBADF`, or `EPERM` for a regular
    /// file).
    pub fn watch_io(
        &self,
        fd: RawFd,
        interest: Interest,
        cb: IoCallback,
    ) -> io::Result<WatcherHandle> {
        if fd < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
        }
        if let Some(own) = self.own_fd(fd) {
            return Err(own.refusal(fd));
        }
        let Some(mio_interest) = interest.to_mio() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty interest",
            ));
        };
        let mut discarded = Vec::new();
        let result = {
            let mut inner = self.inner.borrow_mut();
            match inner.prepare_fd(fd, mio_interest, &mut discarded) {
                Ok(()) => {
                    let (slot, generation) = inner.watchers.insert(Watcher {
                        fd,
                        interest,
                        cb: Some(cb),
                    });
                    inner
                        .fds
                        .entry(fd)
                        .or_default()
                        .watchers
                        .push((slot, generation));
                    Ok(WatcherHandle(encode(self.loop_id, generation, slot)))
                }
                Err(e) => Err((e, cb)),
            }
        };
        // Callbacks are dropped outside the borrow.
        drop(discarded);
        result.map_err(|(e, _cb)| e)
    }

    /// Which of the loop's own descriptors `fd` is, if any.
    fn own_fd(&self, fd: RawFd) -> Option<OwnFd> {
        if fd == self.shared.wake_fd.raw() {
            Some(OwnFd::WakeUp)
        } else if fd == self.inner.borrow().poll.as_raw_fd() {
            Some(OwnFd::Epoll)
        } else {
            None
        }
    }

    /// Stops an io watcher; it may be the one whose callback is running.
    /// Returns false (and does nothing) for a stale handle or a handle of
    /// another loop.
    pub fn unwatch_io(&self, h: WatcherHandle) -> bool {
        let removed = {
            let mut inner = self.inner.borrow_mut();
            let Some((slot, generation)) = decode(h.0, self.loop_id) else {
                return false;
            };
            let Some(w) = inner.watchers.remove(slot, generation) else {
                return false;
            };
            inner.detach(w.fd, slot, generation);
            w
        };
        drop(removed);
        true
    }

    /// Starts a one-shot timer that runs `cb` on this loop once `after` has
    /// passed (never earlier).
    pub fn start_timer(&self, after: Duration, cb: TimerCallback) -> TimerHandle {
        self.start_timer_at(deadline_after(after), cb)
    }

    fn start_timer_at(&self, deadline: Instant, cb: TimerCallback) -> TimerHandle {
        let mut inner = self.inner.borrow_mut();
        let seq = inner.take_seq();
        let (slot, generation) = inner.timers.insert(Timer { seq, cb });
        inner.push_timer_entry(deadline, seq, slot);
        TimerHandle(encode(self.loop_id, generation, slot))
    }

    /// Stops a timer so it never fires. Returns false if it already fired
    /// (or is firing), was stopped, or the handle is of another loop.
    pub fn stop_timer(&self, h: TimerHandle) -> bool {
        let removed = {
            let mut inner = self.inner.borrow_mut();
            decode(h.0, self.loop_id)
                .and_then(|(slot, generation)| inner.timers.remove(slot, generation))
        };
        // The callback is dropped outside the borrow.
        removed.is_some()
    }

    /// Re-arms a pending timer to fire once `after` has passed from now.
    /// Returns false if it already fired (or is firing), was stopped, or the
    /// handle is of another loop.
    pub fn reset_timer(&self, h: TimerHandle, after: Duration) -> bool {
        let Some((slot, generation)) = decode(h.0, self.loop_id) else {
            return false;
        };
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let Some(timer) = inner.timers.get_mut(slot, generation) else {
            return false;
        };
        let seq = inner.next_seq;
        inner.next_seq += 1;
        // The entry of the old deadline is dead from now on.
        timer.seq = seq;
        inner.push_timer_entry(deadline_after(after), seq, slot);
        true
    }

    /// Runs `f` on this loop in a later turn, before the loop blocks again;
    /// deferred functions run in FIFO order. A function deferred while
    /// deferred functions run waits for the next batch.
    pub fn defer(&self, f: Box<dyn FnOnce()>) {
        self.inner.borrow_mut().deferred.push_back(f);
    }

    /// A handle for other threads to post tasks to this loop or stop it.
    pub fn remote(&self) -> LoopRemote {
        LoopRemote {
            shared: Arc::clone(&self.shared),
        }
    }

    /// One turn: runs deferred functions, polls, runs the callbacks of ready
    /// io watchers, expired timers, remote tasks and deferred functions.
    ///
    /// The poll does not block when deferred functions or remote tasks are
    /// pending or the loop is stopped; otherwise it blocks until an fd is
    /// ready, a task is posted, or the next timer or `max_wait` (`None`: no
    /// limit) is due. Fails with the poll's error, or if called from inside
    /// a callback of this loop (a turn is not re-entrant).
    pub fn run_once(&self, max_wait: Option<Duration>) -> io::Result<()> {
        if self.running.replace(true) {
            return Err(io::Error::other(
                "EventLoop::run_once called from inside a callback",
            ));
        }
        let _running = RunningGuard(&self.running);
        self.rearm_leftovers();
        self.run_deferred();
        let timeout = self.poll_timeout(max_wait);
        self.poll(timeout)?;
        self.dispatch_io();
        self.run_timers();
        self.run_remote();
        self.run_deferred();
        Ok(())
    }

    /// Runs turns until [`EventLoop::stop`] or [`LoopRemote::stop`] was
    /// called; returns at once if the loop is already stopped. Stopping is
    /// final.
    pub fn run(&self) -> io::Result<()> {
        while !self.is_stopped() {
            self.run_once(None)?;
        }
        Ok(())
    }

    /// Makes [`EventLoop::run`] return after the current turn.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// True once [`EventLoop::stop`] or [`LoopRemote::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// How many io watchers exist.
    pub fn active_watchers(&self) -> usize {
        self.inner.borrow().watchers.live
    }

    /// How many timers are pending.
    pub fn active_timers(&self) -> usize {
        self.inner.borrow().timers.live
    }

    /// Re-arms the fds whose dispatch a panicking callback interrupted, so
    /// the events not delivered are reported again.
    fn rearm_leftovers(&self) {
        let mut inner = self.inner.borrow_mut();
        while let Some((fd, _)) = inner.pending_io.pop_front() {
            inner.rearm(fd);
        }
    }

    fn poll_timeout(&self, max_wait: Option<Duration>) -> Option<Duration> {
        let mut inner = self.inner.borrow_mut();
        if self.is_stopped() || !inner.deferred.is_empty() || !self.shared.lock().tasks.is_empty() {
            return Some(Duration::ZERO);
        }
        let to_timer = inner
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        match (to_timer, max_wait) {
            (Some(a), Some(b)) => Some(ceil_ms(a.min(b))),
            (a, b) => a.or(b).map(ceil_ms),
        }
    }

    fn poll(&self, timeout: Option<Duration>) -> io::Result<()> {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let result = inner.poll.poll(&mut inner.events, timeout);
        // Any wake-up sent before now was consumed by this poll or is still
        // pending for the next one; later posts must wake again.
        self.shared.wake_pending.store(false, Ordering::SeqCst);
        match result {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in inner.events.iter() {
            if ev.token() == WAKER_TOKEN {
                // After `wake_pending` was reset: a wake-up this drain
                // swallows came with a task queued (or a stop set) before
                // it, which this turn's `run_remote` (or `run`) sees.
                self.shared.wake_fd.drain();
                continue;
            }
            if let Ok(fd) = RawFd::try_from(ev.token().0) {
                inner.pending_io.push_back((fd, Interest::from_event(ev)));
            }
        }
        Ok(())
    }

    fn dispatch_io(&self) {
        loop {
            let Some((fd, ready)) = self.inner.borrow().pending_io.front().copied() else {
                break;
            };
            self.dispatch_fd(fd, ready);
            let mut inner = self.inner.borrow_mut();
            inner.pending_io.pop_front();
            inner.rearm(fd);
        }
    }

    fn dispatch_fd(&self, fd: RawFd, ready: Interest) {
        let snapshot = {
            let mut inner = self.inner.borrow_mut();
            let mut snapshot = std::mem::take(&mut inner.snapshot);
            snapshot.clear();
            match inner.fds.get(&fd) {
                Some(entry) => snapshot.extend_from_slice(&entry.watchers),
                None => return,
            }
            snapshot
        };
        for &(slot, generation) in &snapshot {
            // The watcher may have been unwatched by an earlier callback.
            let call = {
                let mut inner = self.inner.borrow_mut();
                match inner.watchers.get_mut(slot, generation) {
                    Some(w) if w.fd == fd => {
                        let r = ready.intersection(w.interest);
                        if r.is_empty() {
                            None
                        } else {
                            w.cb.take().map(|cb| (cb, r))
                        }
                    }
                    _ => None,
                }
            };
            let Some((cb, r)) = call else {
                continue;
            };
            let mut guard = IoCallGuard {
                event_loop: self,
                slot,
                generation,
                cb: Some(cb),
            };
            if let Some(cb) = guard.cb.as_mut() {
                cb(WatcherHandle(encode(self.loop_id, generation, slot)), fd, r);
            }
        }
        self.inner.borrow_mut().snapshot = snapshot;
    }

    /// Fires the timers that expired by now and were started before this
    /// batch (a zero-delay timer started by a timer callback waits a turn).
    fn run_timers(&self) {
        let now = Instant::now();
        let seq_limit = self.inner.borrow().next_seq;
        loop {
            let cb = {
                let mut inner = self.inner.borrow_mut();
                let Some(&Reverse((deadline, seq, slot))) = inner.heap.peek() else {
                    break;
                };
                if deadline > now || seq >= seq_limit {
                    break;
                }
                inner.heap.pop();
                match inner.timers.get_any(slot) {
                    Some((t, generation)) if t.seq == seq => {
                        // Freed before the callback runs.
                        inner.timers.remove(slot, generation).map(|t| t.cb)
                    }
                    _ => None,
                }
            };
            if let Some(cb) = cb {
                cb();
            }
        }
    }

    /// Runs the remote tasks queued before this batch began.
    fn run_remote(&self) {
        let n = self.shared.lock().tasks.len();
        for _ in 0..n {
            let task = self.shared.lock().tasks.pop_front();
            match task {
                Some(task) => task(),
                None => break,
            }
        }
    }

    /// Runs the deferred functions queued before this batch began.
    fn run_deferred(&self) {
        let n = self.inner.borrow().deferred.len();
        for _ in 0..n {
            let f = self.inner.borrow_mut().deferred.pop_front();
            match f {
                Some(f) => f(),
                None => break,
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let tasks = {
            let mut queue = self.shared.lock();
            queue.alive = false;
            std::mem::take(&mut queue.tasks)
        };
        drop(tasks);
    }
}

/// A thread-safe handle to an [`EventLoop`]: posts tasks to it and stops
/// it from other threads.
#[derive(Clone)]
pub struct LoopRemote {
    shared: Arc<Shared>,
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

    /// Stops the loop like [`EventLoop::stop`] and wakes it, so a blocked
    /// [`EventLoop::run`] returns.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake();
    }
}

#[cfg(test)]
mod tests;
