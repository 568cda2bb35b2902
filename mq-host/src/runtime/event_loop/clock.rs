//! The loop's clock: real, or virtual for tests.
//!
//! With the **real** clock the loop's now is [`Instant::now`]. With the
//! **virtual** clock ([`ClockMode::Virtual`], `HostBuilder::virtual_time`)
//! the loop's now is the real now plus an offset that grows whenever the
//! loop would otherwise sit idle waiting for a timer: instead of blocking,
//! it jumps to the next timer's deadline. Code that runs still takes its
//! (real) time, so timers fire in deadline order and a hook that sleeps
//! 30 s completes in microseconds, with the loop's clock 30 s later.
//!
//! **The rule.** At the point where the loop would block, it first polls
//! without waiting. It jumps to the next timer only when
//!
//! - nothing is ready: no fd, no posted task, no deferred function;
//! - no fd is watched that an outside peer may make ready (a socket, a
//!   pipe: a plugin's Redis call in flight). Eventfds do not count: in a
//!   plugin they are wake-ups from its own threads, which are covered by
//!   the next point;
//! - no *clock hold* is taken ([`ClockHolds`]): a plugin's
//!   `task::spawn_blocking` job holds the clock while it runs, so a
//!   timeout around it is not overtaken by a jump.
//!
//! Otherwise the loop waits for real (up to the next timer, as ever), and
//! the virtual clock goes on at the real rate meanwhile. So a plugin that
//! talks to Redis works, with its timeouts measured in real time while the
//! request is in flight.
//!
//! **Between steps the clock stands still.** A worker of a test host
//! gates its loop's jumps on *steps* ([`EventLoop::gate_jumps_on_steps`](super::EventLoop::gate_jumps_on_steps)):
//! it jumps only while a step is in flight — a chain the test started and
//! has not got the result of ([`EventLoop::clock_step`](super::EventLoop::clock_step)), or an explicit
//! advance of the clock (`Host::advance`). While the test's own thread
//! works between two steps, no time passes, as with a paused clock: a
//! plugin's periodic timer (a sweeper task) neither fires through hours of
//! virtual time nor keeps the worker spinning.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which clock a loop runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// The real clock (`serve`, `deliver`, every host by default).
    #[default]
    Real,
    /// A clock that jumps to the next timer whenever the loop is idle (see
    /// the [module documentation](self)); for tests.
    Virtual,
}

/// The clock holds of a loop: while any is taken, the virtual clock does
/// not jump. Shared with other threads (a hold may be released anywhere).
#[derive(Debug, Default)]
pub struct ClockHolds {
    count: AtomicUsize,
}

impl ClockHolds {
    /// Takes a hold.
    pub fn take(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Releases a hold taken with [`ClockHolds::take`] (never below zero).
    pub fn release(&self) {
        let _ = self
            .count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Whether any hold is taken.
    pub fn held(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }
}

/// A loop's clock.
pub(super) struct LoopClock {
    mode: ClockMode,
    /// How far the virtual clock is ahead of the real one.
    offset: Cell<Duration>,
    pub(super) holds: Arc<ClockHolds>,
    /// Whether jumps need a step in flight (see the module documentation).
    gated: Cell<bool>,
    /// Steps in flight: [`ClockStep`]s alive.
    steps: Rc<Cell<usize>>,
    /// For each fd watched under the virtual clock: whether it is an
    /// eventfd (classified when it is watched; its number may be reused,
    /// so it is classified again at every watch).
    eventfds: RefCell<HashMap<RawFd, bool>>,
}

impl LoopClock {
    pub(super) fn new(mode: ClockMode) -> LoopClock {
        LoopClock {
            mode,
            offset: Cell::new(Duration::ZERO),
            holds: Arc::default(),
            gated: Cell::new(false),
            steps: Rc::new(Cell::new(0)),
            eventfds: RefCell::new(HashMap::new()),
        }
    }

    pub(super) fn mode(&self) -> ClockMode {
        self.mode
    }

    /// The loop's now.
    pub(super) fn now(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.offset.get()).unwrap_or(now)
    }

    /// How far the loop's clock is ahead of the real one.
    pub(super) fn offset(&self) -> Duration {
        self.offset.get()
    }

    /// Moves the virtual clock on to `deadline` (if it is later than now).
    pub(super) fn jump_to(&self, deadline: Instant) {
        let by = deadline.saturating_duration_since(self.now());
        self.offset.set(self.offset.get().saturating_add(by));
    }

    /// Notes what kind of fd a new watcher watches (virtual clock only).
    pub(super) fn classify(&self, fd: RawFd) {
        if self.mode == ClockMode::Virtual {
            self.eventfds.borrow_mut().insert(fd, is_eventfd(fd));
        }
    }

    /// Whether any of `fds` (the watched ones) may be made ready by an
    /// outside peer: any that is not an eventfd.
    pub(super) fn watches_outside(&self, mut fds: impl Iterator<Item = RawFd>) -> bool {
        let eventfds = self.eventfds.borrow();
        fds.any(|fd| !eventfds.get(&fd).copied().unwrap_or(false))
    }
}

impl super::EventLoop {
    /// The loop's now: [`Instant::now`] on the real clock, later on the
    /// virtual one. Timers are due by it.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// How far this loop's clock is ahead of the real one (zero on the real
    /// clock).
    pub fn clock_offset(&self) -> Duration {
        self.clock.offset()
    }

    /// The loop's clock.
    pub fn clock_mode(&self) -> ClockMode {
        self.clock.mode()
    }

    /// The loop's clock holds, for work on other threads that the virtual
    /// clock must wait for.
    pub fn clock_holds(&self) -> Arc<ClockHolds> {
        Arc::clone(&self.clock.holds)
    }

    /// Lets this loop's virtual clock jump only while a step is in flight
    /// ([`EventLoop::clock_step`](super::EventLoop::clock_step)): between steps it stands still. Test
    /// hosts' workers set it; a bare loop jumps whenever it is idle.
    pub fn gate_jumps_on_steps(&self) {
        self.clock.gated.set(true);
    }

    /// Marks a step in flight until the returned value is dropped: a
    /// chain whose result a test waits for, or an advance of the clock.
    pub fn clock_step(&self) -> ClockStep {
        let steps = Rc::clone(&self.clock.steps);
        steps.set(steps.get() + 1);
        ClockStep { steps }
    }

    /// Polls for at most `timeout`; on the virtual clock, jumps to the next
    /// timer instead of waiting when the loop is idle (the module's rule).
    pub(super) fn poll_or_jump(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        if self.clock.mode != ClockMode::Virtual || timeout == Some(Duration::ZERO) {
            return self.poll(timeout);
        }
        self.poll(Some(Duration::ZERO))?;
        let deadline = {
            let mut inner = self.inner.borrow_mut();
            let busy = !inner.pending_io.is_empty()
                || !self.shared.lock().tasks.is_empty()
                || !inner.deferred.is_empty();
            if busy {
                return Ok(());
            }
            let outside = self.clock.watches_outside(inner.fds.keys().copied());
            match inner.next_deadline() {
                Some(deadline)
                    if !outside
                        && !self.clock.holds.held()
                        && (!self.clock.gated.get() || self.clock.steps.get() > 0) =>
                {
                    Some(deadline)
                }
                _ => None,
            }
        };
        match deadline {
            Some(deadline) => {
                self.clock.jump_to(deadline);
                Ok(())
            }
            None => self.poll(timeout),
        }
    }
}

/// A step in flight on a loop whose jumps are gated on steps
/// ([`EventLoop::clock_step`](super::EventLoop::clock_step)); the step ends when this is dropped.
pub struct ClockStep {
    steps: Rc<Cell<usize>>,
}

impl Drop for ClockStep {
    fn drop(&mut self) {
        self.steps.set(self.steps.get().saturating_sub(1));
    }
}

/// Whether `fd` is an eventfd (as `/proc/self/fd` names it).
fn is_eventfd(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventfd]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfds_are_told_from_sockets() {
        // SAFETY: plain eventfd creation; closed below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(efd >= 0);
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock = std::os::fd::AsRawFd::as_raw_fd(&a);
        assert!(is_eventfd(efd));
        assert!(!is_eventfd(sock));
        let clock = LoopClock::new(ClockMode::Virtual);
        clock.classify(efd);
        assert!(!clock.watches_outside([efd].into_iter()));
        clock.classify(sock);
        assert!(clock.watches_outside([efd, sock].into_iter()));
        // SAFETY: our own eventfd, closed once.
        unsafe { libc::close(efd) };
    }

    use crate::runtime::event_loop::{EventLoop, Interest};
    use std::rc::Rc;

    type Fired = Rc<RefCell<Vec<(&'static str, Duration)>>>;

    /// A loop on the virtual clock with timers of 30 s and 5 s that log
    /// their names with the loop's time since the start.
    fn two_timers() -> (Rc<EventLoop>, Fired) {
        let ev = Rc::new(EventLoop::with_clock(1, ClockMode::Virtual).unwrap());
        let fired = Rc::new(RefCell::new(Vec::new()));
        let start = ev.now();
        for (name, secs) in [("thirty", 30), ("five", 5)] {
            let (fired, weak) = (Rc::clone(&fired), Rc::downgrade(&ev));
            ev.start_timer(
                Duration::from_secs(secs),
                Box::new(move || {
                    let at = weak.upgrade().unwrap().now() - start;
                    fired.borrow_mut().push((name, at));
                }),
            );
        }
        (ev, fired)
    }

    #[test]
    fn an_idle_virtual_loop_jumps_to_each_timer_in_order() {
        let (ev, fired) = two_timers();
        // `None`: no limit on the wait; on the real clock this blocks 5 s.
        ev.run_once(None).unwrap();
        ev.run_once(None).unwrap();
        let fired = fired.borrow();
        assert_eq!(
            fired.iter().map(|f| f.0).collect::<Vec<_>>(),
            ["five", "thirty"]
        );
        assert!(fired[0].1 >= Duration::from_secs(5) && fired[0].1 < Duration::from_secs(6));
        assert!(fired[1].1 >= Duration::from_secs(30) && fired[1].1 < Duration::from_secs(31));
    }

    #[test]
    fn a_gated_loop_jumps_only_while_a_step_is_in_flight() {
        let (ev, fired) = two_timers();
        ev.gate_jumps_on_steps();
        // No step: the loop waits for real (1 ms), the 5 s timer stays ahead.
        ev.run_once(Some(Duration::from_millis(1))).unwrap();
        assert!(fired.borrow().is_empty());
        assert!(ev.clock_offset() < Duration::from_secs(1));
        // A step in flight: the next idle wait jumps to the 5 s timer.
        let step = ev.clock_step();
        ev.run_once(None).unwrap();
        assert_eq!(
            fired.borrow().iter().map(|f| f.0).collect::<Vec<_>>(),
            ["five"]
        );
        // The step over: the 30 s timer does not come by itself.
        drop(step);
        ev.run_once(Some(Duration::from_millis(1))).unwrap();
        assert_eq!(fired.borrow().len(), 1);
        assert!(ev.clock_offset() < Duration::from_secs(6));
    }

    #[test]
    fn a_watched_socket_keeps_the_clock_real() {
        let (ev, fired) = two_timers();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&a);
        ev.watch_io(fd, Interest::READ, Box::new(|_, _, _| {}))
            .unwrap();
        ev.run_once(Some(Duration::from_millis(1))).unwrap();
        assert!(
            fired.borrow().is_empty(),
            "a peer may still answer: no jump"
        );
        assert!(ev.clock_offset() < Duration::from_secs(1));
    }

    #[test]
    fn a_clock_hold_keeps_the_clock_real_until_released() {
        let (ev, fired) = two_timers();
        let holds = ev.clock_holds();
        holds.take();
        ev.run_once(Some(Duration::from_millis(1))).unwrap();
        assert!(fired.borrow().is_empty(), "held: no jump");
        holds.release();
        ev.run_once(None).unwrap();
        assert_eq!(fired.borrow().len(), 1);
    }

    #[test]
    fn the_real_clock_never_jumps() {
        let ev = EventLoop::new(1).unwrap();
        let fired = Rc::new(Cell::new(false));
        let f = Rc::clone(&fired);
        ev.start_timer(Duration::from_secs(30), Box::new(move || f.set(true)));
        ev.run_once(Some(Duration::from_millis(1))).unwrap();
        assert!(!fired.get());
        assert_eq!(ev.clock_offset(), Duration::ZERO);
    }

    #[test]
    fn holds_never_go_below_zero() {
        let holds = ClockHolds::default();
        holds.release();
        assert!(!holds.held());
        holds.take();
        holds.take();
        holds.release();
        assert!(holds.held());
        holds.release();
        assert!(!holds.held());
    }

    #[test]
    fn a_jump_moves_now_by_the_distance_to_the_deadline() {
        let clock = LoopClock::new(ClockMode::Virtual);
        let before = clock.now();
        clock.jump_to(before + Duration::from_secs(30));
        assert!(clock.offset() >= Duration::from_secs(29));
        assert!(clock.now() >= before + Duration::from_secs(30));
        // A deadline in the past does not move the clock back.
        let offset = clock.offset();
        clock.jump_to(before);
        assert_eq!(clock.offset(), offset);
    }
}
