//! The in-process mock host the executor tests run against (see
//! `executor.rs`), shared by the test files that need it.

#![allow(dead_code)]
use abi_stable::prefix_type::PrefixTypeTrait;
use mq_abi::{HostApi, IoCallbackParam, TimerCallbackParam};
use mq_plugin::__private::v1::{self as rt, HookMeta, TaskCache};
use mq_plugin::sys::*;
use mq_plugin::Flow;
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void};
use std::future::Future;
use std::pin::Pin;
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

// ---- allocations, counted per thread ------------------------------------------

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting this thread's allocations.
struct Counting;

// SAFETY: forwards to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: the caller's layout, passed on.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: allocated by `alloc` above with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations made on this thread so far (the whole process's allocator
/// counts per thread, so tests running in parallel do not mix).
pub fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// ---- the mock host: per test thread ------------------------------------------

pub struct Timer {
    pub id: usize,
    pub due: Instant,
    pub cb: unsafe extern "C" fn(*mut c_void),
    pub data: *mut c_void,
}

pub struct Watch {
    pub id: usize,
    pub fd: c_int,
    pub events: c_int,
    pub cb: unsafe extern "C" fn(*mut MQ_IOWatcher, c_int, c_int, *mut c_void),
    pub data: *mut c_void,
}

#[derive(Default)]
pub struct Mock {
    pub timers: RefCell<Vec<Timer>>,
    pub watches: RefCell<Vec<Watch>>,
    pub next_id: Cell<usize>,
    pub resumes: RefCell<Vec<&'static str>>,
    pub in_hook: Cell<bool>,
    pub resumed_in_hook: Cell<bool>,
    pub timer_fires: Cell<usize>,
    pub log: RefCell<Vec<String>>,
    pub panics: Cell<usize>,
    /// `MQ_startTimer` calls.
    pub timers_started: Cell<usize>,
    /// `MQ_contextData` calls.
    pub context_data_calls: Cell<usize>,
}

thread_local! {
    pub static MOCK: Mock = Mock::default();
}

pub fn id() -> usize {
    MOCK.with(|m| {
        m.next_id.set(m.next_id.get() + 1);
        m.next_id.get()
    })
}

#[repr(C)]
pub struct MockContext {
    pub data: Cell<*mut c_void>,
}

thread_local! {
    /// The contexts this thread made, by address: like a C host, the mock
    /// finds its objects from the address a plugin passes, without using
    /// the Rust provenance of that pointer (which Miri checks).
    pub static CONTEXTS: RefCell<Vec<*const MockContext>> = const { RefCell::new(Vec::new()) };
}

pub fn mock_context(ctx: *mut MQ_Context) -> &'static MockContext {
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
    MOCK.with(|m| m.context_data_calls.set(m.context_data_calls.get() + 1));
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
    MOCK.with(|m| m.timers_started.set(m.timers_started.get() + 1));
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
pub fn resumed(what: &'static str) {
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
thread_local! {
    /// The offset `clock_offset` reports on this thread (0: the real clock).
    pub static CLOCK_OFFSET: Cell<u64> = const { Cell::new(0) };
}

/// The mock host runs on the real clock plus [`CLOCK_OFFSET`] (0 unless a
/// test sets it), and gives no holds.
unsafe extern "C" fn clock_offset(ctx: *mut MQ_Context) -> u64 {
    if ctx.is_null() {
        return 0;
    }
    CLOCK_OFFSET.with(Cell::get)
}
unsafe extern "C" fn hold_clock(_: *mut MQ_Context) -> *mut c_void {
    std::ptr::null_mut()
}
unsafe extern "C" fn release_clock(_: *mut c_void) {}

pub fn attach_mock_host() {
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
pub fn turn() {
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

pub fn run_until(limit: Duration, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() && start.elapsed() < limit {
        turn();
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn resumes() -> Vec<&'static str> {
    MOCK.with(|m| m.resumes.borrow().clone())
}

// ---- a hook, driven as the generated code drives it -------------------------------

pub static META: HookMeta = HookMeta {
    hook: &rt::HOOKS[8],
    function: "test",
    plugin: "executor-test",
    fallback: Flow::Complete,
};

thread_local! {
    pub static CACHE: TaskCache = const { TaskCache::new() };
}

pub fn call_hook<F: Future<Output = Flow> + 'static>(ctx: &MockContext, future: F) -> bool {
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

pub fn context() -> &'static MockContext {
    let ctx: &'static MockContext = Box::leak(Box::new(MockContext {
        data: Cell::new(std::ptr::null_mut()),
    }));
    CONTEXTS.with(|c| c.borrow_mut().push(ctx));
    ctx
}

/// Context cleanup, as a host does at shutdown: the framework frees the
/// context's data (and executor); then the mock frees its context and
/// fires what is left on its loop (nothing may resume after cleanup).
pub fn cleanup(ctx: &'static MockContext) {
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
pub struct YieldOnce(pub bool);

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
