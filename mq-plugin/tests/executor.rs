//! The executor against an in-process mock host: a table of `MQ_*`
//! functions with a tiny loop (timers, fd watchers via poll(2)), so the
//! resume rules are checked without any real host: a ready future does not
//! take control; a pending one takes control and resumes exactly once, on
//! the loop, never inside the hook call; wakes from other threads arrive;
//! panics take the fallback; at most POLL_BUDGET polls run per loop pass;
//! context cleanup drops pending futures.

use abi_stable::prefix_type::PrefixTypeTrait;
use mq_abi::{HostApi, IoCallbackParam, TimerCallbackParam};
use mq_plugin::__private::v1::{self as rt, HookMeta, TaskCache};
use mq_plugin::sys::*;
use mq_plugin::Flow;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Once;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

// ---- the mock host: per test thread ------------------------------------------

struct Timer {
    id: usize,
    due: Instant,
    cb: unsafe extern "C" fn(*mut c_void),
    data: *mut c_void,
}

struct Watch {
    id: usize,
    fd: c_int,
    events: c_int,
    cb: unsafe extern "C" fn(*mut MQ_IOWatcher, c_int, c_int, *mut c_void),
    data: *mut c_void,
}

#[derive(Default)]
struct Mock {
    timers: RefCell<Vec<Timer>>,
    watches: RefCell<Vec<Watch>>,
    next_id: Cell<usize>,
    resumes: RefCell<Vec<&'static str>>,
    in_hook: Cell<bool>,
    resumed_in_hook: Cell<bool>,
    timer_fires: Cell<usize>,
    log: RefCell<Vec<String>>,
    panics: Cell<usize>,
}

thread_local! {
    static MOCK: Mock = Mock::default();
}

fn id() -> usize {
    MOCK.with(|m| {
        m.next_id.set(m.next_id.get() + 1);
        m.next_id.get()
    })
}

#[repr(C)]
struct MockContext {
    data: Cell<*mut c_void>,
}

thread_local! {
    /// The contexts this thread made, by address: like a C host, the mock
    /// finds its objects from the address a plugin passes, without using
    /// the Rust provenance of that pointer (which Miri checks).
    static CONTEXTS: RefCell<Vec<*const MockContext>> = const { RefCell::new(Vec::new()) };
}

fn mock_context(ctx: *mut MQ_Context) -> &'static MockContext {
    let found = CONTEXTS.with(|c| {
        c.borrow()
            .iter()
            .copied()
            .find(|p| std::ptr::eq(*p as *const u8, ctx as *const u8))
    });
    // SAFETY: registered by `context()`; the boxes live until the test ends.
    unsafe { &*found.expect("a context of this test") }
}

unsafe extern "C" fn log(_p: c_int, text: *const c_char) {
    // SAFETY: the plugin passes a NUL-terminated string.
    let text = unsafe { std::ffi::CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned();
    let _ = MOCK.try_with(|m| m.log.borrow_mut().push(text));
}
unsafe extern "C" fn context_data(ctx: *mut MQ_Context) -> *mut c_void {
    mock_context(ctx).data.get()
}
unsafe extern "C" fn set_context_data(ctx: *mut MQ_Context, data: *mut c_void) {
    mock_context(ctx).data.set(data)
}
unsafe extern "C" fn ev(_: *mut MQ_Context) -> *mut c_void {
    std::ptr::null_mut()
}
unsafe extern "C" fn io_watch(
    _: *mut MQ_Context,
    fd: c_int,
    events: c_int,
    cb: IoCallbackParam,
    data: *mut c_void,
) -> *mut MQ_IOWatcher {
    let id = id();
    MOCK.with(|m| {
        m.watches.borrow_mut().push(Watch {
            id,
            fd,
            events,
            cb: cb.callback.unwrap(),
            data,
        })
    });
    id as *mut MQ_IOWatcher
}
unsafe extern "C" fn io_unwatch(w: *mut MQ_IOWatcher) {
    MOCK.with(|m| m.watches.borrow_mut().retain(|x| x.id != w as usize));
}
unsafe extern "C" fn start_timer(
    _: *mut MQ_Context,
    s: f32,
    cb: TimerCallbackParam,
    data: *mut c_void,
) -> *mut MQ_Timer {
    let id = id();
    let due = Instant::now() + Duration::from_secs_f32(s.max(0.0));
    MOCK.with(|m| {
        m.timers.borrow_mut().push(Timer {
            id,
            due,
            cb: cb.callback.unwrap(),
            data,
        })
    });
    id as *mut MQ_Timer
}
unsafe extern "C" fn stop_timer(t: *mut MQ_Timer) {
    MOCK.with(|m| m.timers.borrow_mut().retain(|x| x.id != t as usize));
}
unsafe extern "C" fn reset_timer(t: *mut MQ_Timer, s: f32) {
    MOCK.with(|m| {
        for x in m
            .timers
            .borrow_mut()
            .iter_mut()
            .filter(|x| x.id == t as usize)
        {
            x.due = Instant::now() + Duration::from_secs_f32(s);
        }
    });
}
unsafe extern "C" fn fd(_: *mut MQ_Connection) -> c_int {
    -1
}
unsafe extern "C" fn send(_: *mut MQ_Connection, _: *const c_void, n: usize) -> usize {
    n
}
unsafe extern "C" fn get_bool(_: *mut MQ_Connection) -> bool {
    false
}
unsafe extern "C" fn set_bool(_: *mut MQ_Connection, _: bool) {}
unsafe extern "C" fn null_data(_: *mut MQ_Connection) -> *mut c_void {
    std::ptr::null_mut()
}
unsafe extern "C" fn set_data(_: *mut MQ_Connection, _: *mut c_void) {}
fn resumed(what: &'static str) {
    MOCK.with(|m| {
        if m.in_hook.get() {
            m.resumed_in_hook.set(true);
        }
        m.resumes.borrow_mut().push(what);
    });
}
unsafe extern "C" fn continue_(_: *mut MQ_Connection) {
    resumed("continue");
}
unsafe extern "C" fn complete(_: *mut MQ_Connection) {
    resumed("complete");
}
unsafe extern "C" fn retry(_: *mut MQ_Connection) {
    resumed("retry");
}
unsafe extern "C" fn json(_: *mut MQ_Message) -> *const c_void {
    std::ptr::null()
}
unsafe extern "C" fn envelope(_: *mut MQ_Message) -> *mut MQ_Address {
    std::ptr::null_mut()
}
unsafe extern "C" fn set_text(_: *mut MQ_Message, _: *const c_char, _: usize) {}
unsafe extern "C" fn text(_: *mut MQ_Message) -> *const c_char {
    std::ptr::null()
}
unsafe extern "C" fn local(_: *mut MQ_Message) -> bool {
    false
}
unsafe extern "C" fn set_local(_: *mut MQ_Message, _: bool) {}
unsafe extern "C" fn email(_: *mut MQ_Address) -> *const c_char {
    std::ptr::null()
}
unsafe extern "C" fn refuse_start(_: *const c_char) {}
unsafe extern "C" fn plugin_panicked() {
    let _ = MOCK.try_with(|m| m.panics.set(m.panics.get() + 1));
}
unsafe extern "C" fn mime_bytes(_: *mut MQ_Message, _: *mut usize) -> *const c_char {
    std::ptr::null()
}
/// The mock host runs on the real clock: no offset, no holds.
unsafe extern "C" fn clock_offset(_: *mut MQ_Context) -> u64 {
    0
}
unsafe extern "C" fn hold_clock(_: *mut MQ_Context) -> *mut c_void {
    std::ptr::null_mut()
}
unsafe extern "C" fn release_clock(_: *mut c_void) {}

fn attach_mock_host() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let api = HostApi {
            log,
            context_data,
            set_context_data,
            ev,
            io_watch,
            io_unwatch,
            start_timer,
            stop_timer,
            reset_timer,
            file_descriptor: fd,
            send,
            authenticated: get_bool,
            set_authenticated: set_bool,
            secure: get_bool,
            connection_data: null_data,
            set_connection_data: set_data,
            continue_,
            complete,
            retry,
            json,
            envelope,
            set_envelope: set_text,
            recipient: text,
            set_recipient: set_text,
            mime: text,
            set_mime: set_text,
            local,
            set_local,
            email,
            refuse_start,
            plugin_panicked,
            mime_bytes,
            clock_offset,
            hold_clock,
            release_clock,
        }
        .leak_into_prefix();
        let module = rt::root_module("executor-test", "0", "", 0);
        (module.attach_host())(api);
    });
}

/// One turn of the mock loop: due timers, then ready watchers.
fn turn() {
    let due: Vec<Timer> = MOCK.with(|m| {
        let mut timers = m.timers.borrow_mut();
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|t| t.due <= now);
        *timers = later;
        due
    });
    for t in due {
        MOCK.with(|m| m.timer_fires.set(m.timer_fires.get() + 1));
        // SAFETY: the callback and data a plugin registered.
        unsafe { (t.cb)(t.data) };
    }
    let watches: Vec<(usize, c_int, c_int, _, *mut c_void)> = MOCK.with(|m| {
        m.watches
            .borrow()
            .iter()
            .map(|w| (w.id, w.fd, w.events, w.cb, w.data))
            .collect()
    });
    for (id, fd, events, cb, data) in watches {
        // Miri cannot call poll(2): there every watcher is reported ready
        // each turn, which the executor must (and does) tolerate.
        let mut p = libc::pollfd {
            fd,
            events: if events & MQ_READ != 0 {
                libc::POLLIN
            } else {
                0
            },
            revents: 0,
        };
        // SAFETY: polling one valid pollfd without blocking.
        if cfg!(miri) || unsafe { libc::poll(&mut p, 1, 0) } == 1 {
            // SAFETY: the callback and data a plugin registered.
            unsafe { cb(id as *mut MQ_IOWatcher, fd, MQ_READ, data) };
        }
    }
}

fn run_until(limit: Duration, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() && start.elapsed() < limit {
        turn();
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn resumes() -> Vec<&'static str> {
    MOCK.with(|m| m.resumes.borrow().clone())
}

// ---- a hook, driven as the generated code drives it -------------------------------

static META: HookMeta = HookMeta {
    hook: &rt::HOOKS[8],
    function: "test",
    plugin: "executor-test",
    fallback: Flow::Complete,
};

thread_local! {
    static CACHE: TaskCache = const { TaskCache::new() };
}

fn call_hook<F: Future<Output = Flow> + 'static>(ctx: &MockContext, future: F) -> bool {
    attach_mock_host();
    MOCK.with(|m| m.in_hook.set(true));
    // SAFETY: the arguments of a hook call the mock keeps alive.
    let took = unsafe {
        rt::hook_async(
            &META,
            &CACHE,
            ctx as *const _ as *mut MQ_Context,
            8 as *mut MQ_Connection,
            future,
        )
    };
    MOCK.with(|m| m.in_hook.set(false));
    took
}

fn context() -> &'static MockContext {
    let ctx: &'static MockContext = Box::leak(Box::new(MockContext {
        data: Cell::new(std::ptr::null_mut()),
    }));
    CONTEXTS.with(|c| c.borrow_mut().push(ctx));
    ctx
}

/// Context cleanup, as a host does at shutdown: the framework frees the
/// context's data (and executor); then the mock frees its context and
/// fires what is left on its loop (nothing may resume after cleanup).
fn cleanup(ctx: &'static MockContext) {
    // SAFETY: a live context of this test.
    unsafe { rt::context_cleanup_entry(None, ctx as *const _ as *mut MQ_Context) };
    assert!(ctx.data.get().is_null(), "the framework cleared its slot");
    let leftover: Vec<Timer> = MOCK.with(|m| m.timers.borrow_mut().drain(..).collect());
    for t in leftover {
        // SAFETY: the callback and data a plugin registered.
        unsafe { (t.cb)(t.data) };
    }
    CONTEXTS.with(|c| c.borrow_mut().retain(|p| !std::ptr::eq(*p, ctx)));
    // SAFETY: the box leaked by `context()`, no longer registered.
    drop(unsafe { Box::from_raw(ctx as *const MockContext as *mut MockContext) });
}

/// Pending once (waking itself), then ready.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

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
