//! The cost of many watchers on one fd: every watch and unwatch is O(1),
//! and the fd's registered interest follows its watchers exactly.

use super::*;
use std::os::unix::net::UnixStream;
use std::rc::Rc;

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

fn noop() -> IoCallback {
    Box::new(|_, _, _| {})
}

/// The interest registered for `fd`, if it is registered.
fn registered(lp: &EventLoop, fd: RawFd) -> Option<mio::Interest> {
    lp.inner.borrow().fds.get(&fd).and_then(|e| e.registered)
}

/// The orders in which [`unwatch_steps`] unwatches.
#[derive(Clone, Copy, Debug)]
enum UnwatchOrder {
    /// First watched first.
    Watch,
    /// Last watched first.
    Reverse,
    /// Every other one, then the rest.
    Interleaved,
}

/// Watches `n` watchers on one fd (alternately for reading and writing),
/// unwatches them all in `order`, and returns the steps the loop counted
/// while unwatching (watchers visited, links changed).
fn unwatch_steps(n: usize, order: UnwatchOrder) -> u64 {
    let lp = EventLoop::new(1).unwrap();
    let (a, _b) = pair();
    let mut handles: Vec<WatcherHandle> = (0..n)
        .map(|i| {
            let interest = if i % 2 == 0 {
                Interest::READ
            } else {
                Interest::WRITE
            };
            lp.watch_io(a.as_raw_fd(), interest, noop()).unwrap()
        })
        .collect();
    match order {
        UnwatchOrder::Watch => {}
        UnwatchOrder::Reverse => handles.reverse(),
        UnwatchOrder::Interleaved => {
            let (even, odd): (Vec<_>, Vec<_>) =
                handles.iter().enumerate().partition(|(i, _)| i % 2 == 0);
            handles = even.into_iter().chain(odd).map(|(_, &h)| h).collect();
        }
    }
    let before = lp.inner.borrow().steps;
    for h in handles {
        assert!(lp.unwatch_io(h));
    }
    assert_eq!(lp.active_watchers(), 0);
    assert!(lp.inner.borrow().fds.is_empty());
    let after = lp.inner.borrow().steps;
    after - before
}

/// Unwatching the watchers of one fd takes a bounded number of steps per
/// watcher, whatever the order: n watchers cost O(n) in all, not O(n²)
/// (20,000 watchers on one fd used to stall a worker for seconds).
#[test]
fn unwatching_many_watchers_of_one_fd_is_linear() {
    const N: usize = 1_000;
    for order in [
        UnwatchOrder::Watch,
        UnwatchOrder::Reverse,
        UnwatchOrder::Interleaved,
    ] {
        let small = unwatch_steps(N, order);
        let large = unwatch_steps(8 * N, order);
        assert!(
            large <= 8 * small + 16,
            "{order:?}: {small} steps for {N} watchers, {large} for {}",
            8 * N
        );
        assert!(
            large <= 4 * 8 * N as u64,
            "{order:?}: {large} steps for {} watchers",
            8 * N
        );
    }
}

/// Watchers that unwatch themselves from their callbacks: every one fires
/// once, in watch order, and the fd ends unregistered.
#[test]
fn many_watchers_unwatching_themselves_fire_once_in_order() {
    let lp = Rc::new(EventLoop::new(1).unwrap());
    let (a, mut b) = pair();
    let fired = Rc::new(RefCell::new(Vec::new()));
    for i in 0..500u32 {
        let (weak, fired) = (Rc::downgrade(&lp), Rc::clone(&fired));
        lp.watch_io(
            a.as_raw_fd(),
            Interest::READ,
            Box::new(move |me, _, _| {
                fired.borrow_mut().push(i);
                assert!(weak.upgrade().unwrap().unwatch_io(me));
            }),
        )
        .unwrap();
    }
    std::io::Write::write_all(&mut b, b"x").unwrap();
    lp.run_once(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(*fired.borrow(), (0..500).collect::<Vec<_>>());
    assert_eq!(lp.active_watchers(), 0);
    assert_eq!(registered(&lp, a.as_raw_fd()), None);
}

/// The registration is the union of the remaining watchers' interests,
/// kept by counts: it narrows when the last writer (or reader) goes and
/// widens again when one comes.
#[test]
fn registered_interest_follows_the_watchers() {
    let lp = EventLoop::new(1).unwrap();
    let (a, _b) = pair();
    let fd = a.as_raw_fd();
    let (read, write, both) = (
        Some(mio::Interest::READABLE),
        Some(mio::Interest::WRITABLE),
        Some(mio::Interest::READABLE | mio::Interest::WRITABLE),
    );
    let r1 = lp.watch_io(fd, Interest::READ, noop()).unwrap();
    assert_eq!(registered(&lp, fd), read);
    let w1 = lp.watch_io(fd, Interest::WRITE, noop()).unwrap();
    let w2 = lp.watch_io(fd, Interest::WRITE, noop()).unwrap();
    let rw = lp.watch_io(fd, Interest::BOTH, noop()).unwrap();
    assert_eq!(registered(&lp, fd), both);
    assert!(lp.unwatch_io(rw));
    assert!(lp.unwatch_io(w1));
    assert_eq!(registered(&lp, fd), both, "w2 still writes");
    assert!(lp.unwatch_io(w2));
    assert_eq!(registered(&lp, fd), read);
    let w3 = lp.watch_io(fd, Interest::WRITE, noop()).unwrap();
    assert_eq!(registered(&lp, fd), both);
    assert!(lp.unwatch_io(r1));
    assert_eq!(registered(&lp, fd), write);
    assert!(lp.unwatch_io(w3));
    assert_eq!(registered(&lp, fd), None);
    assert!(lp.inner.borrow().fds.is_empty());
}
