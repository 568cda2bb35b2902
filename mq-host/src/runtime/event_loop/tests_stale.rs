//! Why a handle is stale ([`Stale`]): what the host needs to tell a
//! plugin's misuse (stopping a fired timer, unwatching twice) from what
//! the loop did on its own (discarding the watchers of a closed fd).

use super::*;
use std::os::unix::net::UnixStream;
use std::rc::Rc;

fn noop() -> IoCallback {
    Box::new(|_, _, _| {})
}

#[test]
fn a_stopped_or_fired_timer_says_so() {
    let lp = Rc::new(EventLoop::new(1).unwrap());
    let stopped = lp.start_timer(Duration::from_secs(60), Box::new(|| {}));
    assert_eq!(lp.try_stop_timer(stopped), Ok(()));
    assert_eq!(lp.try_stop_timer(stopped), Err(Stale::Stopped));
    assert_eq!(
        lp.try_reset_timer(stopped, Duration::ZERO),
        Err(Stale::Stopped)
    );

    let inside = Rc::new(Cell::new(None));
    let me = Rc::new(Cell::new(None));
    let (weak, i, m) = (Rc::downgrade(&lp), Rc::clone(&inside), Rc::clone(&me));
    let fired = lp.start_timer(
        Duration::ZERO,
        Box::new(move || {
            let lp = weak.upgrade().unwrap();
            i.set(Some(lp.try_stop_timer(m.get().unwrap())));
        }),
    );
    me.set(Some(fired));
    while inside.get().is_none() {
        lp.run_once(Some(Duration::from_millis(100))).unwrap();
    }
    assert_eq!(inside.get(), Some(Err(Stale::Fired)), "inside its callback");
    assert_eq!(lp.try_stop_timer(fired), Err(Stale::Fired));
    assert_eq!(lp.try_reset_timer(fired, Duration::ZERO), Err(Stale::Fired));
}

#[test]
fn a_reused_slot_forgets_and_foreign_handles_are_foreign() {
    let lp = EventLoop::new(1).unwrap();
    let old = lp.start_timer(Duration::from_secs(60), Box::new(|| {}));
    assert!(lp.stop_timer(old));
    // The slot is reused and freed again: the old handle's end is forgotten.
    let newer = lp.start_timer(Duration::from_secs(60), Box::new(|| {}));
    assert_eq!(
        lp.try_stop_timer(old),
        Err(Stale::Stopped),
        "still the last"
    );
    assert!(lp.stop_timer(newer));
    assert_eq!(lp.try_stop_timer(old), Err(Stale::Forgotten));
    assert_eq!(lp.try_stop_timer(newer), Err(Stale::Stopped));

    let other = EventLoop::new(2).unwrap();
    let theirs = other.start_timer(Duration::from_secs(60), Box::new(|| {}));
    assert_eq!(lp.try_stop_timer(theirs), Err(Stale::Foreign));
    // A handle of this loop whose slot or generation was never given out.
    let never = TimerHandle(encode(1, 0, 1000));
    assert_eq!(lp.try_stop_timer(never), Err(Stale::Foreign));
    let later_generation = TimerHandle(encode(1, 7, 0));
    assert_eq!(lp.try_stop_timer(later_generation), Err(Stale::Foreign));
    assert_eq!(other.active_timers(), 1);
}

#[test]
fn unwatching_twice_is_told_from_a_discarded_watcher() {
    let lp = EventLoop::new(1).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let h = lp.watch_io(a.as_raw_fd(), Interest::READ, noop()).unwrap();
    assert_eq!(lp.try_unwatch_io(h), Ok(()));
    assert_eq!(lp.try_unwatch_io(h), Err(Stale::Unwatched));

    // Close the watched fd and reuse its number: watching it again
    // discards the old watcher, which the plugin cannot know.
    let (old_a, _old_b) = UnixStream::pair().unwrap();
    let fd = old_a.as_raw_fd();
    let stale = lp.watch_io(fd, Interest::READ, noop()).unwrap();
    let (new_a, _new_b) = UnixStream::pair().unwrap();
    // SAFETY: both fds are open and owned by this test; dup2 closes the
    // old file of `fd` and makes `fd` refer to `new_a`'s socket, in one
    // step, so that no other test thread can take the number meanwhile.
    assert_eq!(unsafe { libc::dup2(new_a.as_raw_fd(), fd) }, fd);
    let fresh = lp.watch_io(fd, Interest::READ, noop()).unwrap();
    assert_eq!(lp.try_unwatch_io(stale), Err(Stale::Discarded));
    assert_eq!(lp.try_unwatch_io(fresh), Ok(()));
    assert_eq!(lp.try_unwatch_io(WatcherHandle(0)), Err(Stale::Foreign));
    assert_eq!(lp.active_watchers(), 0);
    drop(old_a);
}
