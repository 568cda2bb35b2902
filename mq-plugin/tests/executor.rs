//! The executor against an in-process mock host: a table of `MQ_*`
//! functions with a tiny loop (timers, fd watchers via poll(2)), so the
//! resume rules are checked without any real host: a ready future does not
//! take control; a pending one takes control and resumes exactly once, on
//! the loop, never inside the hook call; wakes from other threads arrive;
//! panics take the fallback; at most POLL_BUDGET polls run per loop pass;
//! context cleanup drops pending futures.

mod mock;

use mock::*;
use mq_plugin::__private::v1::{self as rt, TaskCache};
use mq_plugin::sys::*;
use mq_plugin::Flow;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[test]
fn a_ready_future_does_not_take_control() {
    let ctx = context();
    assert!(!call_hook(ctx, async { Flow::Continue }));
    run_until(Duration::from_millis(20), || false);
    assert!(resumes().is_empty());
    cleanup(ctx);
}

#[test]
fn a_pending_future_resumes_exactly_once_on_the_loop() {
    let ctx = context();
    assert!(call_hook(ctx, async {
        YieldOnce(false).await;
        Flow::Complete
    }));
    assert!(resumes().is_empty(), "never inside the hook call");
    run_until(Duration::from_secs(2), || !resumes().is_empty());
    run_until(Duration::from_millis(20), || false);
    assert_eq!(resumes(), ["complete"]);
    assert!(!MOCK.with(|m| m.resumed_in_hook.get()));
    cleanup(ctx);
}

#[test]
fn sleep_uses_host_timers() {
    let ctx = context();
    let start = Instant::now();
    assert!(call_hook(ctx, async {
        mq_plugin::time::sleep(Duration::from_millis(30)).await;
        Flow::Retry
    }));
    run_until(Duration::from_secs(2), || !resumes().is_empty());
    assert_eq!(resumes(), ["retry"]);
    assert!(start.elapsed() >= Duration::from_millis(30));
    cleanup(ctx);
}

struct FromThread(std::sync::Arc<std::sync::Mutex<(bool, Option<Waker>)>>);

impl Future for FromThread {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.lock().unwrap();
        if s.0 {
            return Poll::Ready(());
        }
        s.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[test]
fn a_wake_from_another_thread_is_polled_on_the_loop() {
    let ctx = context();
    let state: std::sync::Arc<std::sync::Mutex<(bool, Option<Waker>)>> = Default::default();
    let remote = state.clone();
    assert!(call_hook(ctx, async move {
        FromThread(state).await;
        Flow::Continue
    }));
    let loop_thread = std::thread::current().id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        let waker = {
            let mut s = remote.lock().unwrap();
            s.0 = true;
            s.1.take()
        };
        assert_ne!(std::thread::current().id(), loop_thread);
        waker.unwrap().wake();
    });
    run_until(Duration::from_secs(2), || !resumes().is_empty());
    assert_eq!(resumes(), ["continue"]);
    cleanup(ctx);
}

#[test]
fn a_panic_takes_the_fallback_and_is_logged() {
    let ctx = context();
    assert!(call_hook(ctx, async {
        YieldOnce(false).await;
        panic!("boom");
    }));
    run_until(Duration::from_secs(2), || !resumes().is_empty());
    assert_eq!(resumes(), ["complete"], "the fallback of META");
    assert!(MOCK.with(|m| m
        .log
        .borrow()
        .iter()
        .any(|l| l.contains("panicked: boom; taking fallback complete"))));
    assert_eq!(MOCK.with(|m| m.panics.get()), 1, "the host counts it");
    cleanup(ctx);
}

#[test]
fn one_loop_pass_polls_at_most_the_budget() {
    let ctx = context();
    let polled = Rc::new(Cell::new(0usize));
    for _ in 0..200 {
        let polled = polled.clone();
        call_hook(ctx, async move {
            YieldOnce(false).await;
            polled.set(polled.get() + 1);
            Flow::Continue
        });
    }
    // All 200 woke themselves during their first poll; one timer callback
    // may poll only POLL_BUDGET of them before yielding to the loop.
    let fires_before = MOCK.with(|m| m.timer_fires.get());
    let due: Vec<Timer> = MOCK.with(|m| m.timers.borrow_mut().drain(..).collect());
    assert_eq!(due.len(), 1, "one notification for many wakes");
    // SAFETY: the executor's own timer callback and data.
    unsafe { (due[0].cb)(due[0].data) };
    assert_eq!(polled.get(), rt::POLL_BUDGET_FOR_TESTS);
    run_until(Duration::from_secs(2), || polled.get() == 200);
    assert_eq!(polled.get(), 200);
    assert_eq!(resumes().len(), 200);
    assert!(MOCK.with(|m| m.timer_fires.get()) > fires_before);
    cleanup(ctx);
}

struct Guard(Rc<Cell<bool>>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn context_cleanup_drops_pending_futures_without_resuming() {
    let ctx = context();
    let dropped = Rc::new(Cell::new(false));
    let guard = Guard(dropped.clone());
    assert!(call_hook(ctx, async move {
        let _guard = guard;
        std::future::pending::<()>().await;
        Flow::Continue
    }));
    cleanup(ctx);
    assert!(dropped.get());
    run_until(Duration::from_millis(20), || false);
    assert!(resumes().is_empty());
}

#[test]
fn interval_ticks_and_timeout_lets_a_fast_future_through() {
    let ctx = context();
    let ticks = Rc::new(Cell::new(0u32));
    let counted = ticks.clone();
    let start = Instant::now();
    assert!(call_hook(ctx, async move {
        let mut interval = mq_plugin::time::interval(Duration::from_millis(10));
        for _ in 0..3 {
            interval.tick().await;
            counted.set(counted.get() + 1);
        }
        let fast = mq_plugin::time::timeout(Duration::from_secs(5), async { 7 }).await;
        let slow = mq_plugin::time::timeout(
            Duration::from_millis(5),
            mq_plugin::time::sleep(Duration::from_secs(5)),
        )
        .await;
        if fast == Ok(7) && slow.is_err() {
            Flow::Complete
        } else {
            Flow::Retry
        }
    }));
    run_until(Duration::from_secs(2), || !resumes().is_empty());
    assert_eq!(ticks.get(), 3);
    assert!(
        start.elapsed() >= Duration::from_millis(20),
        "ticks at 0, 10 and 20 ms"
    );
    assert_eq!(resumes(), ["complete"]);
    cleanup(ctx);
}

#[test]
fn a_deadline_drops_the_future_and_takes_the_fallback() {
    let ctx = context();
    let dropped = Rc::new(Cell::new(false));
    let guard = Guard(dropped.clone());
    let start = Instant::now();
    attach_mock_host();
    MOCK.with(|m| m.in_hook.set(true));
    let future = rt::with_deadline(Duration::from_millis(20), async move {
        let _guard = guard;
        mq_plugin::time::sleep(Duration::from_secs(10)).await;
        Flow::Retry
    });
    // SAFETY: the arguments of a hook call the mock keeps alive.
    let took = unsafe {
        rt::hook_async(
            &META,
            &DEADLINE_CACHE,
            ctx as *const _ as *mut MQ_Context,
            8 as *mut MQ_Connection,
            future,
        )
    };
    MOCK.with(|m| m.in_hook.set(false));
    assert!(took);
    run_until(Duration::from_secs(2), || !resumes().is_empty());
    assert_eq!(resumes(), ["complete"], "META's fallback");
    assert!(dropped.get(), "the slow future was dropped");
    assert!(
        start.elapsed() >= Duration::from_millis(20) && start.elapsed() < Duration::from_secs(5)
    );
    assert!(MOCK.with(|m| m
        .log
        .borrow()
        .iter()
        .any(|l| l.contains("failed: its deadline passed (timed out after 20ms)"))));
    cleanup(ctx);
}

thread_local! {
    static DEADLINE_CACHE: TaskCache = const { TaskCache::new() };
}

// ---- cancellation and cleanup ---------------------------------------------------

fn raw(ctx: &'static MockContext) -> *mut MQ_Context {
    ctx as *const MockContext as *mut MQ_Context
}

fn cancel(ctx: &'static MockContext) -> bool {
    let module = rt::root_module("executor-test", "0", "", 0);
    let cancel = module.cancel_hold().expect("plugins export cancel_hold");
    cancel(raw(ctx), 8 as *mut MQ_Connection)
}

#[test]
fn cancel_hold_drops_the_pending_future_and_it_never_resumes() {
    let ctx = context();
    let dropped = Rc::new(Cell::new(false));
    let guard = Guard(dropped.clone());
    assert!(call_hook(ctx, async move {
        let _guard = guard;
        mq_plugin::time::sleep(Duration::from_secs(10)).await;
        Flow::Complete
    }));
    assert!(!dropped.get());
    assert!(cancel(ctx), "a pending hook is cancelled");
    assert!(dropped.get(), "synchronously, before cancel_hold returns");
    assert!(
        MOCK.with(|m| m.timers.borrow().is_empty()),
        "the sleep's timer was stopped with the future"
    );
    assert!(!cancel(ctx), "nothing is left to cancel");
    run_until(Duration::from_millis(30), || false);
    assert!(resumes().is_empty());
    cleanup(ctx);
}

#[test]
fn cancel_hold_stops_a_synchronous_hooks_scheduled_resume() {
    let ctx = context();
    attach_mock_host();
    // SAFETY: the arguments of a hook call the mock keeps alive.
    let took = unsafe {
        rt::connection::<Flow, _>(&META, raw(ctx), 8 as *mut MQ_Connection, |_, _| {
            Flow::Complete
        })
    };
    assert!(took, "Complete takes control");
    assert!(cancel(ctx));
    run_until(Duration::from_millis(30), || false);
    assert!(resumes().is_empty(), "the scheduled resume was stopped");
    cleanup(ctx);
}

#[test]
fn smtp_in_close_drops_a_pending_hook_of_its_connection_first() {
    let ctx = context();
    let dropped = Rc::new(Cell::new(false));
    let guard = Guard(dropped.clone());
    assert!(call_hook(ctx, async move {
        let _guard = guard;
        std::future::pending::<()>().await;
        Flow::Continue
    }));
    // SAFETY: a live context and connection of this test.
    let took = unsafe { rt::smtp_in_close_entry(None, raw(ctx), 8 as *mut MQ_Connection) };
    assert!(!took);
    assert!(dropped.get());
    assert!(MOCK.with(|m| m
        .log
        .borrow()
        .iter()
        .any(|l| l.contains("was still pending when its connection closed"))));
    run_until(Duration::from_millis(20), || false);
    assert!(resumes().is_empty());
    cleanup(ctx);
}

#[test]
fn timers_still_running_at_cleanup_are_stopped_and_their_callbacks_dropped() {
    let ctx = context();
    attach_mock_host();
    let dropped = Rc::new(Cell::new(false));
    let guard = Guard(dropped.clone());
    // SAFETY: a live context of this test.
    let context = unsafe { mq_plugin::Context::from_raw(raw(ctx)) };
    let timer = context
        .start_timer(Duration::from_secs(3600), move || drop(guard))
        .unwrap();
    drop(timer);
    let kept = context
        .start_timer(Duration::from_secs(3600), || {})
        .unwrap();
    assert_eq!(MOCK.with(|m| m.timers.borrow().len()), 2);
    // SAFETY: a live context of this test.
    unsafe { rt::context_cleanup_entry(None, raw(ctx)) };
    assert!(dropped.get(), "the callback was dropped");
    assert!(MOCK.with(|m| m.timers.borrow().is_empty()), "both stopped");
    assert!(!kept.stop(), "a handle kept past cleanup is done");
    cleanup(ctx);
}
