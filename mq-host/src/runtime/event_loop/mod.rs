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
//!   the union of their interests. Each watcher gets its own callback, in
//!   watch order. Watching and unwatching cost O(1) however many watchers
//!   share the fd (the list is linked through the watchers, the union is
//!   kept as counts of readers and writers; see `fds`), so a plugin with
//!   thousands of watchers on one fd cannot make its worker quadratic.
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
//!   harmless no-op. The `try_` methods say why a handle is stale
//!   ([`Stale`]: a timer fired or was stopped, a watcher was unwatched or
//!   discarded), so the host can report a plugin's misuse.
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
//! most until the next timer or `max_wait`; on the virtual [`clock`] of a
//! test host, jumping to the next timer instead when the loop is idle), io
//! callbacks, expired timers, remote tasks, and deferred functions again. The loop stays consistent if
//! a callback panics and the caller of `run_once` catches the panic: the
//! work not done in that turn is done in the next one.

pub mod clock;
mod fds;
mod interest;
mod remote;
mod slab;

pub use clock::{ClockHolds, ClockMode, ClockStep};
pub use interest::{Interest, IoCallback, Task, TimerCallback, TimerHandle, WatcherHandle};
pub use remote::LoopRemote;

use clock::LoopClock;
use fds::{FdEntry, Watcher};
use interest::{decode, encode};
use remote::{OwnFd, RemoteQueue, Shared, WakeFd};
use slab::{Ended, Slab};
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Poll, Token};

/// Token of the loop's wake-up eventfd; fd tokens are fd numbers (`0..=i32::MAX`).
const WAKER_TOKEN: Token = Token(usize::MAX - 1);

/// How many readiness events one poll can return.
const EVENTS_CAPACITY: usize = 256;

/// Heaps smaller than this are never compacted.
const HEAP_COMPACT_MIN: usize = 64;

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
    /// Work done to unwatch (see `fds`), for the tests that bound it.
    #[cfg(test)]
    steps: u64,
}

fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF))
}

impl Inner {
    fn timer_entry_live(timers: &Slab<Timer>, seq: u64, slot: u32) -> bool {
        timers.get_any(slot).is_some_and(|(t, _)| t.seq == seq)
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

/// `now` + `after`, saturating far in the future.
fn deadline_after(now: Instant, after: Duration) -> Instant {
    now.checked_add(after)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Rounds up to whole milliseconds (mio's resolution): late, never early.
fn ceil_ms(d: Duration) -> Duration {
    let ms = d.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Why a [`WatcherHandle`] or [`TimerHandle`] names nothing to act on.
///
/// The loop remembers why the last watcher or timer of each slot went
/// until that slot is reused and freed again; after that a stale handle is
/// [`Stale::Forgotten`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The timer fired (or is firing): a fired timer is freed by the loop.
    Fired,
    /// The timer was stopped.
    Stopped,
    /// The watcher was unwatched.
    Unwatched,
    /// The watcher's fd was closed and its number watched anew, so the loop
    /// discarded it (see the module documentation).
    Discarded,
    /// Its watcher or timer is gone; the loop no longer knows why.
    Forgotten,
    /// No handle of this loop: another loop's, or a value this loop never
    /// gave out.
    Foreign,
}

impl Stale {
    /// Why `(slot, generation)` of `slab` names no value.
    fn of<T>(slab: &Slab<T>, slot: u32, generation: u16) -> Stale {
        match slab.ended(slot, generation) {
            Some(Ended::Fired) => Stale::Fired,
            Some(Ended::Stopped) => Stale::Stopped,
            Some(Ended::Unwatched) => Stale::Unwatched,
            Some(Ended::Discarded) => Stale::Discarded,
            None if slab.was_used(slot, generation) => Stale::Forgotten,
            None => Stale::Foreign,
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
    clock: LoopClock,
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
        Self::with_clock(loop_id, ClockMode::Real)
    }

    /// Creates a loop on the given clock (see [`ClockMode`]).
    pub fn with_clock(loop_id: u16, clock: ClockMode) -> io::Result<Self> {
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
                #[cfg(test)]
                steps: 0,
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
            clock: LoopClock::new(clock),
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
        let mut discarded = Vec::new();
        let result = self
            .inner
            .borrow_mut()
            .add_watcher(fd, interest, cb, &mut discarded);
        // Callbacks are dropped outside the borrow.
        drop(discarded);
        if result.is_ok() {
            self.clock.classify(fd);
        }
        result
            .map(|(slot, generation)| WatcherHandle(encode(self.loop_id, generation, slot)))
            .map_err(|(e, _cb)| e)
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
    /// another loop; [`EventLoop::try_unwatch_io`] says which.
    pub fn unwatch_io(&self, h: WatcherHandle) -> bool {
        self.try_unwatch_io(h).is_ok()
    }

    /// [`EventLoop::unwatch_io`], saying why a handle names no watcher.
    pub fn try_unwatch_io(&self, h: WatcherHandle) -> Result<(), Stale> {
        let removed = {
            let mut inner = self.inner.borrow_mut();
            let Some((slot, generation)) = decode(h.0, self.loop_id) else {
                return Err(Stale::Foreign);
            };
            let Some(w) = inner.watchers.remove(slot, generation, Ended::Unwatched) else {
                return Err(Stale::of(&inner.watchers, slot, generation));
            };
            inner.detach(&w, slot);
            w
        };
        drop(removed);
        Ok(())
    }

    /// Starts a one-shot timer that runs `cb` on this loop once `after` has
    /// passed (never earlier).
    pub fn start_timer(&self, after: Duration, cb: TimerCallback) -> TimerHandle {
        self.start_timer_at(deadline_after(self.clock.now(), after), cb)
    }

    fn start_timer_at(&self, deadline: Instant, cb: TimerCallback) -> TimerHandle {
        let mut inner = self.inner.borrow_mut();
        let seq = inner.take_seq();
        let (slot, generation) = inner.timers.insert(Timer { seq, cb });
        inner.push_timer_entry(deadline, seq, slot);
        TimerHandle(encode(self.loop_id, generation, slot))
    }

    /// Stops a timer so it never fires. Returns false if it already fired
    /// (or is firing), was stopped, or the handle is of another loop;
    /// [`EventLoop::try_stop_timer`] says which.
    pub fn stop_timer(&self, h: TimerHandle) -> bool {
        self.try_stop_timer(h).is_ok()
    }

    /// [`EventLoop::stop_timer`], saying why a handle names no pending timer.
    pub fn try_stop_timer(&self, h: TimerHandle) -> Result<(), Stale> {
        let removed = {
            let mut inner = self.inner.borrow_mut();
            let Some((slot, generation)) = decode(h.0, self.loop_id) else {
                return Err(Stale::Foreign);
            };
            match inner.timers.remove(slot, generation, Ended::Stopped) {
                Some(timer) => timer,
                None => return Err(Stale::of(&inner.timers, slot, generation)),
            }
        };
        // The callback is dropped outside the borrow.
        drop(removed);
        Ok(())
    }

    /// Re-arms a pending timer to fire once `after` has passed from now.
    /// Returns false if it already fired (or is firing), was stopped, or the
    /// handle is of another loop; [`EventLoop::try_reset_timer`] says which.
    pub fn reset_timer(&self, h: TimerHandle, after: Duration) -> bool {
        self.try_reset_timer(h, after).is_ok()
    }

    /// [`EventLoop::reset_timer`], saying why a handle names no pending timer.
    pub fn try_reset_timer(&self, h: TimerHandle, after: Duration) -> Result<(), Stale> {
        let Some((slot, generation)) = decode(h.0, self.loop_id) else {
            return Err(Stale::Foreign);
        };
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let Some(timer) = inner.timers.get_mut(slot, generation) else {
            return Err(Stale::of(&inner.timers, slot, generation));
        };
        let seq = inner.next_seq;
        inner.next_seq += 1;
        // The entry of the old deadline is dead from now on.
        timer.seq = seq;
        inner.push_timer_entry(deadline_after(self.clock.now(), after), seq, slot);
        Ok(())
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
        self.poll_or_jump(timeout)?;
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
            .map(|d| d.saturating_duration_since(self.clock.now()));
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
                inner.pending_io.push_back((fd, interest::from_event(ev)));
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
            if !inner.snapshot(fd, &mut snapshot) {
                inner.snapshot = snapshot;
                return;
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
        let now = self.clock.now();
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
                        inner
                            .timers
                            .remove(slot, generation, Ended::Fired)
                            .map(|t| t.cb)
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_scale;
#[cfg(test)]
mod tests_stale;
