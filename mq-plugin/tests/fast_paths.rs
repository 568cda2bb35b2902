//! The executor's fast paths against the mock host (`mock/mod.rs`): what a
//! hook costs is counted in host calls and allocations, never in time.
//!
//! - an `async fn` hook ready at its first poll allocates nothing once warm
//!   and never looks the context's executor up (`MQ_contextData`);
//! - a sleep resumes its hook from its own timer: one host timer per
//!   resume, no allocation once warm; an fd future from its watcher, with
//!   no timer at all;
//! - a sleep's timer is named by slab index and generation: a stale fire
//!   wakes nothing, and a forgotten sleep is stopped at context cleanup.

mod mock;

use mock::*;
use mq_plugin::__private::v1::{self as rt, TaskCache};
use mq_plugin::sys::*;
use mq_plugin::time::sleep;
use mq_plugin::Flow;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A hook call with its own task cache, as the macro generates one per hook.
fn hook<F: Future<Output = Flow> + 'static>(
    cache: &'static std::thread::LocalKey<TaskCache>,
    ctx: &'static MockContext,
    future: F,
) -> bool {
    hook_on(8, cache, ctx, future)
}

/// [`hook`] on connection `conn`.
fn hook_on<F: Future<Output = Flow> + 'static>(
    conn: usize,
    cache: &'static std::thread::LocalKey<TaskCache>,
    ctx: &'static MockContext,
    future: F,
) -> bool {
    attach_mock_host();
    MOCK.with(|m| m.in_hook.set(true));
    // SAFETY: the arguments of a hook call the mock keeps alive.
    let took = unsafe {
        rt::hook_async(
            &META,
            cache,
            ctx as *const MockContext as *mut MQ_Context,
            conn as *mut MQ_Connection,
            future,
        )
    };
    MOCK.with(|m| m.in_hook.set(false));
    took
}

fn timers_started() -> usize {
    MOCK.with(|m| m.timers_started.get())
}

fn context_lookups() -> usize {
    MOCK.with(|m| m.context_data_calls.get())
}

/// Room for the mock's own records, so that its pushes allocate nothing
/// while allocations are counted.
fn reserve_mock() {
    MOCK.with(|m| {
        m.resumes.borrow_mut().reserve(64);
        m.timers.borrow_mut().reserve(16);
        m.watches.borrow_mut().reserve(16);
    });
}

/// Fires the mock's last started timer (without the allocating loop turn).
fn fire_last_timer() {
    let timer = MOCK.with(|m| m.timers.borrow_mut().pop()).expect("a timer");
    // SAFETY: the callback and data a plugin registered, fired once.
    unsafe { (timer.cb)(timer.data) };
}

thread_local! {
    static READY: TaskCache = const { TaskCache::new() };
    static SLEEPY: TaskCache = const { TaskCache::new() };
    static LONG: TaskCache = const { TaskCache::new() };
    static FORGETFUL: TaskCache = const { TaskCache::new() };
    static FD: TaskCache = const { TaskCache::new() };
}

async fn nothing() -> Flow {
    Flow::Continue
}

#[test]
fn a_ready_hook_allocates_nothing_and_never_looks_up_the_executor() {
    let ctx = context();
    reserve_mock();
    assert!(!hook(&READY, ctx, nothing()), "warms the task cache");
    let (allocations_before, lookups_before) = (allocations(), context_lookups());
    for _ in 0..3 {
        assert!(!hook(&READY, ctx, nothing()));
    }
    assert_eq!(allocations(), allocations_before, "no allocation");
    assert_eq!(context_lookups(), lookups_before, "no MQ_contextData");
    assert!(resumes().is_empty());
    cleanup(ctx);
}

async fn zero_sleep() -> Flow {
    sleep(Duration::ZERO).await;
    Flow::Retry
}

#[test]
fn a_sleep_resumes_from_its_own_timer_once_warm_without_allocating() {
    let ctx = context();
    reserve_mock();
    // Warm: the executor, its maps, the sleep slab and the task cache.
    assert!(hook(&SLEEPY, ctx, zero_sleep()));
    fire_last_timer();
    assert_eq!(resumes(), ["retry"], "resumed from the sleep's own timer");
    let (allocations_before, timers_before) = (allocations(), timers_started());
    assert!(hook(&SLEEPY, ctx, zero_sleep()));
    let resumed_in_call = MOCK.with(|m| m.resumes.borrow().len());
    fire_last_timer();
    let allocated = allocations() - allocations_before;
    assert_eq!(resumed_in_call, 1, "never inside the hook call");
    assert_eq!(resumes(), ["retry", "retry"]);
    assert_eq!(
        timers_started() - timers_before,
        1,
        "one host timer per resume"
    );
    assert_eq!(allocated, 0, "no allocation once warm");
    assert!(
        MOCK.with(|m| m.timers.borrow().is_empty()),
        "no zero-delay timer"
    );
    assert!(!MOCK.with(|m| m.resumed_in_hook.get()));
    cleanup(ctx);
}

#[test]
fn an_fd_future_resumes_from_its_watcher_without_a_timer() {
    let ctx = context();
    // SAFETY: eventfd takes no pointers; closed below.
    let fd = unsafe { libc::eventfd(1, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    let timers_before = timers_started();
    assert!(hook(&FD, ctx, async move {
        let _ = mq_plugin::io::readable(fd).await;
        Flow::Complete
    }));
    run_until(Duration::from_secs(2), || !resumes().is_empty());
    assert_eq!(resumes(), ["complete"]);
    assert_eq!(timers_started(), timers_before, "no zero-delay timer");
    cleanup(ctx);
    // SAFETY: our eventfd, no longer watched.
    unsafe { libc::close(fd) };
}

#[test]
fn a_stale_sleep_timer_wakes_nothing() {
    let ctx = context();
    assert!(hook(&LONG, ctx, async {
        sleep(Duration::from_secs(3600)).await;
        Flow::Complete
    }));
    let stale = MOCK.with(|m| {
        let timers = m.timers.borrow();
        let t = timers.last().expect("the sleep's timer");
        (t.cb, t.data)
    });
    let module = rt::root_module("executor-test", "0", "", 0);
    let cancel = module.cancel_hold().expect("plugins export cancel_hold");
    assert!(cancel(
        ctx as *const MockContext as *mut MQ_Context,
        8 as *mut MQ_Connection
    ));
    // The slot is free again; a new sleep takes it (a new generation).
    assert!(hook(&LONG, ctx, async {
        sleep(Duration::from_secs(3600)).await;
        Flow::Retry
    }));
    // SAFETY: a fire the host would never make (the timer was stopped),
    // with the data the plugin gave it: it must name nothing live.
    unsafe { (stale.0)(stale.1) };
    run_until(Duration::from_millis(20), || false);
    assert!(resumes().is_empty(), "the new sleep was not woken");
    assert_eq!(MOCK.with(|m| m.timers.borrow().len()), 1, "still armed");
    fire_last_timer();
    assert_eq!(resumes(), ["retry"]);
    cleanup(ctx);
}

/// Polls a sleep once and forgets it (its `Drop` never runs).
struct ForgetSleep(Option<ManuallyDrop<mq_plugin::time::Sleep>>);

impl Future for ForgetSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(mut s) = self.0.take() {
            assert!(Pin::new(&mut *s).poll(cx).is_pending());
        }
        Poll::Ready(())
    }
}

#[test]
fn a_forgotten_sleep_is_stopped_at_context_cleanup() {
    let ctx = context();
    assert!(!hook(&FORGETFUL, ctx, async {
        ForgetSleep(Some(ManuallyDrop::new(sleep(Duration::from_secs(3600))))).await;
        Flow::Continue
    }));
    assert_eq!(MOCK.with(|m| m.timers.borrow().len()), 1);
    // SAFETY: a live context of this test.
    unsafe {
        rt::context_cleanup_entry(None, ctx as *const MockContext as *mut MQ_Context);
    }
    assert!(MOCK.with(|m| m.timers.borrow().is_empty()), "stopped");
    cleanup(ctx);
}

thread_local! {
    static MANY: TaskCache = const { TaskCache::new() };
}

#[test]
fn many_held_hooks_at_once_allocate_nothing_once_warm() {
    let ctx = context();
    reserve_mock();
    let round = || {
        for conn in 1..=10 {
            assert!(hook_on(conn * 8, &MANY, ctx, zero_sleep()));
        }
        for _ in 0..10 {
            fire_last_timer();
        }
    };
    round();
    let before = allocations();
    round();
    let allocated = allocations() - before;
    assert_eq!(resumes().len(), 20);
    assert_eq!(allocated, 0, "task slots, sleep slots and maps reused");
    cleanup(ctx);
}
