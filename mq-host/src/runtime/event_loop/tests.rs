//! The event loop's tests: libev's semantics, one rule per test.

use super::*;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

const TICK: Option<Duration> = Some(Duration::from_millis(20));
const LONG: Option<Duration> = Some(Duration::from_secs(5));

fn new_loop(id: u16) -> Rc<EventLoop> {
    Rc::new(EventLoop::new(id).unwrap())
}

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

fn counter() -> Rc<Cell<u32>> {
    Rc::new(Cell::new(0))
}

fn counting(c: &Rc<Cell<u32>>) -> IoCallback {
    let c = Rc::clone(c);
    Box::new(move |_, _, _| c.set(c.get() + 1))
}

fn log() -> Rc<RefCell<Vec<u32>>> {
    Rc::new(RefCell::new(Vec::new()))
}

fn logging(log: &Rc<RefCell<Vec<u32>>>, n: u32) -> TimerCallback {
    let log = Rc::clone(log);
    Box::new(move || log.borrow_mut().push(n))
}

/// Runs turns until `done` or 5 s passed.
fn run_until(lp: &EventLoop, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out");
        lp.run_once(Some(Duration::from_millis(100))).unwrap();
    }
}

#[test]
fn interest_conversions() {
    assert_eq!(Interest::from_events(1), Interest::READ);
    assert_eq!(Interest::from_events(2), Interest::WRITE);
    assert_eq!(Interest::from_events(3), Interest::BOTH);
    assert_eq!(Interest::from_events(0), Interest::NONE);
    assert_eq!(Interest::BOTH.events(), 3);
    assert_eq!(Interest::READ.events(), 1);
    assert_eq!(Interest::WRITE.events(), 2);
    assert_eq!(Interest::READ.union(Interest::WRITE), Interest::BOTH);
    assert_eq!(
        Interest::BOTH.intersection(Interest::WRITE),
        Interest::WRITE
    );
}

#[test]
fn handles_encode_and_never_zero() {
    assert_eq!(WatcherHandle::from_raw(0), None);
    assert_eq!(TimerHandle::from_raw(0), None);
    let raw = encode(0, 0, 0);
    assert_ne!(raw, 0);
    assert_eq!(decode(raw, 0), Some((0, 0)));
    assert_eq!(decode(raw, 1), None);
    let raw = encode(7, 65535, u32::MAX - 1);
    assert_eq!(decode(raw, 7), Some((u32::MAX - 1, 65535)));
    let lp = new_loop(0);
    let h = lp.start_timer(Duration::from_secs(60), Box::new(|| {}));
    assert_ne!(h.to_raw(), 0);
    assert_eq!(TimerHandle::from_raw(h.to_raw()), Some(h));
    assert!(lp.stop_timer(TimerHandle::from_raw(h.to_raw()).unwrap()));
}

#[test]
fn timer_fires_once_after_delay() {
    let lp = new_loop(1);
    let n = counter();
    let n2 = Rc::clone(&n);
    let start = Instant::now();
    let fired_at = Rc::new(Cell::new(None));
    let f = Rc::clone(&fired_at);
    lp.start_timer(
        Duration::from_millis(15),
        Box::new(move || {
            n2.set(n2.get() + 1);
            f.set(Some(Instant::now()));
        }),
    );
    assert_eq!(lp.active_timers(), 1);
    run_until(&lp, || n.get() > 0);
    assert!(fired_at.get().unwrap() - start >= Duration::from_millis(15));
    assert_eq!(lp.active_timers(), 0);
    lp.run_once(TICK).unwrap();
    lp.run_once(TICK).unwrap();
    assert_eq!(n.get(), 1);
}

#[test]
fn timers_fire_in_deadline_order() {
    let lp = new_loop(1);
    let log = log();
    lp.start_timer(Duration::from_millis(30), logging(&log, 1));
    lp.start_timer(Duration::from_millis(10), logging(&log, 2));
    lp.start_timer(Duration::ZERO, logging(&log, 3));
    run_until(&lp, || log.borrow().len() == 3);
    assert_eq!(*log.borrow(), [3, 2, 1]);
}

#[test]
fn equal_deadlines_fire_in_start_order() {
    let lp = new_loop(1);
    let log = log();
    let deadline = Instant::now() + Duration::from_millis(5);
    for n in [5, 3, 9, 1, 7] {
        lp.start_timer_at(deadline, logging(&log, n));
    }
    run_until(&lp, || log.borrow().len() == 5);
    assert_eq!(*log.borrow(), [5, 3, 9, 1, 7]);
}

#[test]
fn stopped_timer_never_fires() {
    let lp = new_loop(1);
    let log = log();
    let h = lp.start_timer(Duration::from_millis(10), logging(&log, 1));
    lp.start_timer(Duration::from_millis(30), logging(&log, 2));
    assert!(lp.stop_timer(h));
    assert_eq!(lp.active_timers(), 1);
    run_until(&lp, || log.borrow().len() == 1);
    assert_eq!(*log.borrow(), [2]);
    assert!(!lp.stop_timer(h));
    assert!(!lp.reset_timer(h, Duration::ZERO));
}

#[test]
fn reset_shortens_and_extends() {
    let lp = new_loop(1);
    let log = log();
    lp.start_timer(Duration::from_millis(40), logging(&log, 1));
    let early = lp.start_timer(Duration::from_secs(10), logging(&log, 2));
    let fired = Rc::new(Cell::new(None));
    let (f, l) = (Rc::clone(&fired), Rc::clone(&log));
    let late = lp.start_timer(
        Duration::from_millis(5),
        Box::new(move || {
            f.set(Some(Instant::now()));
            l.borrow_mut().push(3);
        }),
    );
    assert!(lp.reset_timer(early, Duration::from_millis(10)));
    let reset_at = Instant::now();
    assert!(lp.reset_timer(late, Duration::from_millis(80)));
    run_until(&lp, || log.borrow().len() == 3);
    assert_eq!(*log.borrow(), [2, 1, 3]);
    assert!(fired.get().unwrap() - reset_at >= Duration::from_millis(80));
    assert_eq!(lp.active_timers(), 0);
}

#[test]
fn many_resets_keep_the_heap_small() {
    let lp = new_loop(1);
    let log = log();
    let h = lp.start_timer(Duration::from_secs(60), logging(&log, 1));
    let _other = lp.start_timer(Duration::from_secs(60), logging(&log, 2));
    for _ in 0..10_000 {
        assert!(lp.reset_timer(h, Duration::from_secs(60)));
    }
    assert!(lp.inner.borrow().heap.len() <= 2 * 2 + HEAP_COMPACT_MIN + 1);
    assert!(lp.reset_timer(h, Duration::ZERO));
    run_until(&lp, || !log.borrow().is_empty());
    lp.run_once(TICK).unwrap();
    assert_eq!(*log.borrow(), [1]);
    assert_eq!(lp.active_timers(), 1);
}

#[test]
fn fired_timer_cannot_be_stopped_or_reset() {
    let lp = new_loop(1);
    let inside = Rc::new(Cell::new(None));
    let me: Rc<Cell<Option<TimerHandle>>> = Rc::new(Cell::new(None));
    let (weak, i, m) = (Rc::downgrade(&lp), Rc::clone(&inside), Rc::clone(&me));
    let h = lp.start_timer(
        Duration::ZERO,
        Box::new(move || {
            let lp = weak.upgrade().unwrap();
            let h = m.get().unwrap();
            i.set(Some((lp.stop_timer(h), lp.reset_timer(h, Duration::ZERO))));
        }),
    );
    me.set(Some(h));
    run_until(&lp, || inside.get().is_some());
    assert_eq!(inside.get(), Some((false, false)));
    assert!(!lp.stop_timer(h));
    assert!(!lp.reset_timer(h, Duration::ZERO));
    assert_eq!(lp.active_timers(), 0);
}

#[test]
fn zero_timer_started_by_timer_waits_a_turn() {
    let lp = new_loop(1);
    let log = log();
    let (weak, l) = (Rc::downgrade(&lp), Rc::clone(&log));
    lp.start_timer(
        Duration::ZERO,
        Box::new(move || {
            l.borrow_mut().push(1);
            let lp = weak.upgrade().unwrap();
            lp.start_timer(Duration::ZERO, logging(&l, 2));
        }),
    );
    run_until(&lp, || !log.borrow().is_empty());
    assert_eq!(*log.borrow(), [1]);
    lp.run_once(TICK).unwrap();
    assert_eq!(*log.borrow(), [1, 2]);
}

#[test]
fn read_is_level_triggered() {
    let lp = new_loop(1);
    let (mut a, mut b) = pair();
    let n = counter();
    let seen = Rc::new(Cell::new(Interest::NONE));
    let (n2, s2) = (Rc::clone(&n), Rc::clone(&seen));
    let afd = a.as_raw_fd();
    lp.watch_io(
        afd,
        Interest::READ,
        Box::new(move |_, fd, ready| {
            assert_eq!(fd, afd);
            n2.set(n2.get() + 1);
            s2.set(ready);
        }),
    )
    .unwrap();
    lp.run_once(TICK).unwrap();
    assert_eq!(n.get(), 0);
    b.write_all(b"hello").unwrap();
    for i in 1..=3 {
        lp.run_once(LONG).unwrap();
        assert_eq!(n.get(), i, "fires on every turn while readable");
    }
    assert_eq!(seen.get(), Interest::READ);
    let mut buf = [0u8; 16];
    assert_eq!(a.read(&mut buf).unwrap(), 5);
    lp.run_once(TICK).unwrap();
    let after = n.get();
    lp.run_once(TICK).unwrap();
    lp.run_once(TICK).unwrap();
    assert_eq!(n.get(), after, "stops once the data is read");
    assert!(after <= 4);
}

#[test]
fn write_readiness_fires() {
    let lp = new_loop(1);
    let (a, _b) = pair();
    let seen = Rc::new(Cell::new(Interest::NONE));
    let s2 = Rc::clone(&seen);
    let h = lp
        .watch_io(
            a.as_raw_fd(),
            Interest::BOTH,
            Box::new(move |_, _, r| s2.set(r)),
        )
        .unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!(seen.get(), Interest::WRITE);
    assert!(lp.unwatch_io(h));
    assert!(!lp.unwatch_io(h));
    assert_eq!(lp.active_watchers(), 0);
}

#[test]
fn two_watchers_on_one_fd() {
    let lp = new_loop(1);
    let (a, mut b) = pair();
    let (n1, n2) = (counter(), counter());
    let h1 = lp
        .watch_io(a.as_raw_fd(), Interest::READ, counting(&n1))
        .unwrap();
    let _h2 = lp
        .watch_io(a.as_raw_fd(), Interest::READ, counting(&n2))
        .unwrap();
    // A third one for writing only gets write readiness.
    let w = Rc::new(Cell::new(Interest::NONE));
    let w2 = Rc::clone(&w);
    let h3 = lp
        .watch_io(
            a.as_raw_fd(),
            Interest::WRITE,
            Box::new(move |_, _, r| w2.set(r)),
        )
        .unwrap();
    b.write_all(b"x").unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!((n1.get(), n2.get()), (1, 1));
    assert_eq!(w.get(), Interest::WRITE);
    assert!(lp.unwatch_io(h3));
    assert!(lp.unwatch_io(h1));
    lp.run_once(LONG).unwrap();
    assert_eq!((n1.get(), n2.get()), (1, 2));
    assert_eq!(lp.active_watchers(), 1);
}

#[test]
fn callback_unwatching_the_other_watcher_prevents_its_call() {
    let lp = new_loop(1);
    let (a, mut b) = pair();
    let n2 = counter();
    let other: Rc<Cell<Option<WatcherHandle>>> = Rc::new(Cell::new(None));
    let (weak, o) = (Rc::downgrade(&lp), Rc::clone(&other));
    let n1 = counter();
    let c1 = Rc::clone(&n1);
    lp.watch_io(
        a.as_raw_fd(),
        Interest::READ,
        Box::new(move |_, _, _| {
            c1.set(c1.get() + 1);
            if let Some(h) = o.take() {
                assert!(weak.upgrade().unwrap().unwatch_io(h));
            }
        }),
    )
    .unwrap();
    other.set(Some(
        lp.watch_io(a.as_raw_fd(), Interest::READ, counting(&n2))
            .unwrap(),
    ));
    b.write_all(b"x").unwrap();
    lp.run_once(LONG).unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!((n1.get(), n2.get()), (2, 0));
    assert_eq!(lp.active_watchers(), 1);
}

#[test]
fn callback_unwatching_itself() {
    let lp = new_loop(1);
    let (a, mut b) = pair();
    let n1 = counter();
    let (weak, c1) = (Rc::downgrade(&lp), Rc::clone(&n1));
    lp.watch_io(
        a.as_raw_fd(),
        Interest::READ,
        Box::new(move |me, _, _| {
            c1.set(c1.get() + 1);
            let lp = weak.upgrade().unwrap();
            assert!(lp.unwatch_io(me));
            assert!(!lp.unwatch_io(me));
        }),
    )
    .unwrap();
    let n2 = counter();
    lp.watch_io(a.as_raw_fd(), Interest::READ, counting(&n2))
        .unwrap();
    b.write_all(b"x").unwrap();
    lp.run_once(LONG).unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!((n1.get(), n2.get()), (1, 2));
}

#[test]
fn closed_fd_number_reused() {
    let lp = new_loop(1);
    let (old_a, mut old_b) = pair();
    let fd = old_a.as_raw_fd();
    let n_old = counter();
    let stale = lp.watch_io(fd, Interest::READ, counting(&n_old)).unwrap();
    old_b.write_all(b"x").unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!(n_old.get(), 1);

    // Close the watched fd and reuse its number for a new socket, in one
    // step, so that no other test thread can take the number meanwhile.
    let (new_a, mut new_b) = pair();
    // SAFETY: both fds are open and owned by this test; dup2 closes the
    // old file of `fd` and makes `fd` refer to `new_a`'s socket. `old_a`
    // keeps owning the number `fd` and closes it when dropped.
    let r = unsafe { libc::dup2(new_a.as_raw_fd(), fd) };
    assert_eq!(r, fd);
    drop(new_a);
    let reused = old_a;

    let n_new = counter();
    let fresh = lp.watch_io(fd, Interest::READ, counting(&n_new)).unwrap();
    assert_eq!(
        lp.active_watchers(),
        1,
        "the old file's watcher is discarded"
    );
    lp.run_once(TICK).unwrap();
    assert_eq!((n_old.get(), n_new.get()), (1, 0));
    new_b.write_all(b"y").unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!((n_old.get(), n_new.get()), (1, 1));

    assert!(!lp.unwatch_io(stale), "stale handle is a no-op");
    lp.run_once(LONG).unwrap();
    assert_eq!((n_old.get(), n_new.get()), (1, 2));
    let mut buf = [0u8; 4];
    assert_eq!((&reused).read(&mut buf).unwrap(), 1);
    lp.run_once(TICK).unwrap();
    assert_eq!(n_new.get(), 2);
    new_b.write_all(b"z").unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!(n_new.get(), 3);
    assert!(lp.unwatch_io(fresh));
    assert_eq!(lp.active_watchers(), 0);
    drop(old_b);
}

#[test]
fn closed_fd_while_watched() {
    let lp = new_loop(1);
    let (a, b) = pair();
    let n = counter();
    let h = lp
        .watch_io(a.as_raw_fd(), Interest::READ, counting(&n))
        .unwrap();
    drop(a);
    drop(b);
    lp.run_once(TICK).unwrap();
    assert_eq!(n.get(), 0);
    assert!(lp.unwatch_io(h));
    assert_eq!(lp.active_watchers(), 0);
    // A peer closing is reported as readable (hang-up), like libev.
    let (a, b) = pair();
    let seen = Rc::new(Cell::new(Interest::NONE));
    let s = Rc::clone(&seen);
    let h = lp
        .watch_io(
            a.as_raw_fd(),
            Interest::READ,
            Box::new(move |_, _, r| s.set(r)),
        )
        .unwrap();
    drop(b);
    lp.run_once(LONG).unwrap();
    assert_eq!(seen.get(), Interest::READ);
    assert!(lp.unwatch_io(h));
}

#[test]
fn watch_errors() {
    let lp = new_loop(1);
    let n = counter();
    assert_eq!(
        lp.watch_io(-1, Interest::READ, counting(&n))
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    let (a, _b) = pair();
    assert_eq!(
        lp.watch_io(a.as_raw_fd(), Interest::NONE, counting(&n))
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    let fd = a.as_raw_fd();
    drop(a);
    // Not open (or, if another test thread reused it, maybe open).
    if let Ok(h) = lp.watch_io(fd, Interest::READ, counting(&n)) {
        assert!(lp.unwatch_io(h));
    }
    assert_eq!(lp.active_watchers(), 0);
}

#[test]
fn stale_handles_from_freed_slots_are_no_ops() {
    let lp = new_loop(1);
    let (a, mut b) = pair();
    let h1 = lp
        .watch_io(a.as_raw_fd(), Interest::READ, Box::new(|_, _, _| {}))
        .unwrap();
    assert!(lp.unwatch_io(h1));
    let n = counter();
    let h2 = lp
        .watch_io(a.as_raw_fd(), Interest::READ, counting(&n))
        .unwrap();
    assert_ne!(h1, h2);
    assert!(!lp.unwatch_io(h1));
    b.write_all(b"x").unwrap();
    lp.run_once(LONG).unwrap();
    assert_eq!(n.get(), 1);

    let log = log();
    let t1 = lp.start_timer(Duration::ZERO, logging(&log, 1));
    assert!(lp.stop_timer(t1));
    let t2 = lp.start_timer(Duration::ZERO, logging(&log, 2));
    assert_ne!(t1, t2);
    assert!(!lp.stop_timer(t1));
    assert!(!lp.reset_timer(t1, Duration::from_secs(9)));
    run_until(&lp, || !log.borrow().is_empty());
    assert_eq!(*log.borrow(), [2]);
}

#[test]
fn handles_of_another_loop_are_no_ops() {
    let lp1 = new_loop(1);
    let lp2 = new_loop(2);
    let (a, mut b) = pair();
    let n = counter();
    let h1 = lp1
        .watch_io(a.as_raw_fd(), Interest::READ, counting(&n))
        .unwrap();
    let _h2 = lp2
        .watch_io(a.as_raw_fd(), Interest::WRITE, Box::new(|_, _, _| {}))
        .unwrap();
    assert!(!lp2.unwatch_io(h1));
    assert_eq!((lp1.active_watchers(), lp2.active_watchers()), (1, 1));
    b.write_all(b"x").unwrap();
    lp1.run_once(LONG).unwrap();
    assert_eq!(n.get(), 1);

    let log = log();
    let t1 = lp1.start_timer(Duration::ZERO, logging(&log, 1));
    let _t2 = lp2.start_timer(Duration::from_secs(60), logging(&log, 2));
    assert!(!lp2.stop_timer(t1));
    assert!(!lp2.reset_timer(t1, Duration::from_secs(60)));
    run_until(&lp1, || !log.borrow().is_empty());
    assert_eq!(*log.borrow(), [1]);
    assert_eq!(lp2.active_timers(), 1);
}

#[test]
fn remote_post_runs_on_loop_thread_and_wakes() {
    let lp = new_loop(1);
    let remote = lp.remote();
    let ran_on = Arc::new(Mutex::new(None));
    let r = Arc::clone(&ran_on);
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let posted = remote.post(Box::new(move || {
            *r.lock().unwrap() = Some(std::thread::current().id());
        }));
        assert!(posted);
    });
    let start = Instant::now();
    // Blocks (no timers, no fds) until the post wakes it.
    while ran_on.lock().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(5));
        lp.run_once(Some(Duration::from_secs(10))).unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(*ran_on.lock().unwrap(), Some(std::thread::current().id()));
    poster.join().unwrap();

    // Many posts in a row run in order.
    let remote = lp.remote();
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        let o = Arc::clone(&order);
        assert!(remote.post(Box::new(move || o.lock().unwrap().push(i))));
    }
    lp.run_once(LONG).unwrap();
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());

    drop(lp);
    assert!(!remote.post(Box::new(|| {})));
}

#[test]
fn remote_stop_wakes_run() {
    let lp = new_loop(1);
    let remote = lp.remote();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        remote.stop();
    });
    lp.run().unwrap();
    assert!(lp.is_stopped());
    t.join().unwrap();
}

#[test]
fn defer_runs_fifo_on_next_turn() {
    let lp = new_loop(1);
    let log = log();
    let (weak, l) = (Rc::downgrade(&lp), Rc::clone(&log));
    lp.defer(Box::new(move || {
        l.borrow_mut().push(1);
        let lp = weak.upgrade().unwrap();
        let l2 = Rc::clone(&l);
        let weak2 = Rc::downgrade(&lp);
        lp.defer(Box::new(move || {
            l2.borrow_mut().push(3);
            let l3 = Rc::clone(&l2);
            weak2
                .upgrade()
                .unwrap()
                .defer(Box::new(move || l3.borrow_mut().push(4)));
        }));
    }));
    let l = Rc::clone(&log);
    lp.defer(Box::new(move || l.borrow_mut().push(2)));
    assert!(log.borrow().is_empty());
    // Not blocking: pending deferred work makes the poll return at once.
    let start = Instant::now();
    lp.run_once(None).unwrap();
    assert_eq!(*log.borrow(), [1, 2, 3]);
    lp.run_once(TICK).unwrap();
    assert_eq!(*log.borrow(), [1, 2, 3, 4]);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn stop_from_callback_ends_run() {
    let lp = new_loop(1);
    let weak: Weak<EventLoop> = Rc::downgrade(&lp);
    let log = log();
    lp.start_timer(Duration::from_secs(30), logging(&log, 2));
    let l = Rc::clone(&log);
    lp.start_timer(
        Duration::from_millis(10),
        Box::new(move || {
            l.borrow_mut().push(1);
            weak.upgrade().unwrap().stop();
        }),
    );
    lp.run().unwrap();
    assert!(lp.is_stopped());
    assert_eq!(*log.borrow(), [1]);
    assert_eq!(lp.active_timers(), 1);
}

#[test]
fn run_once_is_not_reentrant() {
    let lp = new_loop(1);
    let res = Rc::new(Cell::new(None));
    let (weak, r) = (Rc::downgrade(&lp), Rc::clone(&res));
    lp.defer(Box::new(move || {
        r.set(Some(weak.upgrade().unwrap().run_once(TICK).is_err()));
    }));
    lp.run_once(TICK).unwrap();
    assert_eq!(res.get(), Some(true));
    lp.run_once(TICK).unwrap();
}

#[test]
fn loop_survives_panicking_callbacks() {
    let lp = new_loop(1);
    let (a, mut b) = pair();
    let n = counter();
    let c = Rc::clone(&n);
    lp.watch_io(
        a.as_raw_fd(),
        Interest::READ,
        Box::new(move |_, _, _| {
            c.set(c.get() + 1);
            if c.get() == 1 {
                panic!("test panic in io callback");
            }
        }),
    )
    .unwrap();
    let n2 = counter();
    lp.watch_io(a.as_raw_fd(), Interest::READ, counting(&n2))
        .unwrap();
    let log = log();
    lp.start_timer(Duration::ZERO, Box::new(|| panic!("test panic in timer")));
    lp.start_timer(Duration::ZERO, logging(&log, 1));
    b.write_all(b"x").unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| lp.run_once(LONG)));
    assert!(r.is_err());
    assert_eq!((n.get(), n2.get()), (1, 0));
    assert_eq!(lp.active_timers(), 2);
    // The watcher keeps its callback; the fd is reported again. Then the
    // first timer panics.
    let r = catch_unwind(AssertUnwindSafe(|| lp.run_once(LONG)));
    assert!(r.is_err());
    assert_eq!((n.get(), n2.get()), (2, 1));
    assert_eq!(lp.active_timers(), 1);
    assert!(log.borrow().is_empty());
    lp.run_once(LONG).unwrap();
    assert_eq!((n.get(), n2.get()), (3, 2));
    run_until(&lp, || !log.borrow().is_empty());
    assert_eq!(*log.borrow(), [1]);
    assert_eq!(lp.active_timers(), 0);
}

/// A no-op io callback.
fn noop() -> IoCallback {
    Box::new(|_, _, _| {})
}

/// Posts from another thread while the loop blocks, twice (a wake-up
/// after a drained one must wake again). Each turn is bounded, so a lost
/// wake-up fails the test instead of hanging it.
fn assert_remote_wakes(lp: &EventLoop) {
    for _ in 0..2 {
        let remote = lp.remote();
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        let poster = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            assert!(remote.post(Box::new(move || r.store(true, Ordering::SeqCst))));
        });
        // A lost wake-up still runs the task, at the end of a turn that
        // timed out: what fails the test is the time the turn took.
        let start = Instant::now();
        while !ran.load(Ordering::SeqCst) {
            lp.run_once(Some(Duration::from_secs(3))).unwrap();
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "a task posted from another thread did not wake the loop"
            );
        }
        poster.join().unwrap();
    }
}

#[test]
fn loop_remote_is_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<LoopRemote>();
}

#[test]
fn own_wake_up_fd_cannot_be_watched() {
    let lp = new_loop(1);
    let fd = lp.shared.wake_fd.raw();
    let result = lp.watch_io(fd, Interest::READ, noop());
    // What a plugin does next: drop its watcher.
    if let Ok(h) = result {
        lp.unwatch_io(h);
    }
    assert_remote_wakes(&lp);
    let e = result.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(
        e.to_string(),
        format!("fd {fd} is the event loop's own wake-up descriptor; plugins cannot watch it")
    );
    assert_eq!(lp.active_watchers(), 0);
}

#[test]
fn own_epoll_fd_cannot_be_watched() {
    let lp = new_loop(1);
    let fd = lp.inner.borrow().poll.as_raw_fd();
    let result = lp.watch_io(fd, Interest::BOTH, noop());
    if let Ok(h) = result {
        lp.unwatch_io(h);
    }
    assert_remote_wakes(&lp);
    let e = result.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(
        e.to_string(),
        format!("fd {fd} is the event loop's own epoll descriptor; plugins cannot watch it")
    );
    assert_eq!(lp.active_watchers(), 0);
}

#[test]
fn watching_any_fd_leaves_wake_ups_and_timers_working() {
    let lp = new_loop(1);
    // At least one watchable fd in the sweep, whatever stdin and stdout are
    // (epoll refuses regular files).
    let (_a, _b) = UnixStream::pair().unwrap();
    let own = [lp.shared.wake_fd.raw(), lp.inner.borrow().poll.as_raw_fd()];
    let watch = |fd| match lp.watch_io(fd, Interest::BOTH, noop()) {
        Ok(h) => Some(h),
        Err(e) => {
            // epoll's own EPERM (e.g. for /dev/null) has the same kind;
            // our refusal has no OS error: epoll was never asked.
            let refused = e.kind() == io::ErrorKind::PermissionDenied && e.raw_os_error().is_none();
            assert_eq!(refused, own.contains(&fd), "fd {fd}: {e}");
            None
        }
    };
    // One at a time, as a plugin that drops its watcher at once...
    for fd in 0..64 {
        if let Some(h) = watch(fd) {
            assert!(lp.unwatch_io(h));
        }
    }
    // ... and all at once, across a turn.
    let handles: Vec<_> = (0..64).filter_map(watch).collect();
    assert!(!handles.is_empty());
    lp.run_once(TICK).unwrap();
    for h in handles {
        assert!(lp.unwatch_io(h));
    }
    assert_eq!(lp.active_watchers(), 0);
    assert_remote_wakes(&lp);
    let log = log();
    lp.start_timer(Duration::from_millis(5), logging(&log, 1));
    run_until(&lp, || !log.borrow().is_empty());
    assert_eq!(*log.borrow(), [1]);
}
