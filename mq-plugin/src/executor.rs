//! The executor: one per `MQ_Context` (per plugin per worker thread), driven
//! only by the host's loop functions, so it works in MailerQ and `mq-host`.
//!
//! A hook's future lives in place in one [`Task`] allocation from its first
//! poll to its end. The first poll happens inside the hook call; a future
//! that is ready then never takes control, and its allocation goes back to
//! a per-hook cache, so the ready path allocates nothing once warm.
//!
//! Wakers are `Send + Sync`. A wake on the owning thread queues the task and
//! starts a zero-delay host timer (if none is pending); a wake from another
//! thread queues it and writes to an eventfd the executor watches with
//! `MQ_ioWatch`. Either way the task is polled on the loop, at most
//! [`POLL_BUDGET`] tasks per loop callback, so one busy plugin cannot starve
//! the worker.

use crate::boundary::catch;
use crate::flow::{HookReturn, Outcome};
use crate::host::host;
use crate::sys::{MQ_Connection, MQ_Context};
use crate::{Context, FdWatcher, Interest};
use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, RawWaker, RawWakerVTable, Waker};
use std::thread::ThreadId;

/// Tasks polled per loop callback before the executor yields to the loop.
pub const POLL_BUDGET: usize = 64;

thread_local! {
    /// The context whose executor is polling on this thread right now.
    static CURRENT: Cell<*mut MQ_Context> = const { Cell::new(std::ptr::null_mut()) };
}

/// The context of the hook future being polled on this thread, if any.
pub(crate) fn current_context() -> Option<&'static Context> {
    let ctx = CURRENT.with(Cell::get);
    // SAFETY: set only while an executor of this live context polls.
    (!ctx.is_null()).then(|| unsafe { Context::from_raw(ctx) })
}

struct CurrentGuard(*mut MQ_Context);

impl CurrentGuard {
    fn enter(ctx: *mut MQ_Context) -> CurrentGuard {
        CurrentGuard(CURRENT.with(|c| c.replace(ctx)))
    }
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// A counted pointer to a task, as held by the queue.
struct TaskRef(NonNull<Header>);

// SAFETY: a TaskRef only reaches the task's atomics from other threads; the
// future is touched on the owning thread alone (see `run_queue`).
unsafe impl Send for TaskRef {}

impl Drop for TaskRef {
    fn drop(&mut self) {
        // SAFETY: a TaskRef owns one reference.
        unsafe { release(self.0) }
    }
}

/// What wakers on any thread share with the executor.
struct Shared {
    queue: Mutex<VecDeque<TaskRef>>,
    owner: ThreadId,
    ctx: usize,
    eventfd: i32,
    /// A zero timer or an eventfd wake is on its way to `run_queue`.
    notified: AtomicBool,
    /// The pending zero timer (it holds a reference to this `Shared`), so
    /// that context cleanup can stop it. Touched on the owning thread only.
    timer: AtomicPtr<crate::sys::MQ_Timer>,
    closed: AtomicBool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the executor created the eventfd and nothing else closes it.
        unsafe { libc::close(self.eventfd) };
    }
}

impl Shared {
    fn schedule(self: &Arc<Self>, task: TaskRef) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(task);
        self.notify();
    }

    fn notify(self: &Arc<Self>) {
        if self.notified.swap(true, Ordering::AcqRel) {
            return;
        }
        if std::thread::current().id() == self.owner {
            let data = Arc::into_raw(Arc::clone(self)) as *mut c_void;
            // SAFETY: on the owning thread, with its live context; the
            // callback takes the Arc back.
            let timer = unsafe {
                host()
                    .api
                    .start_timer(self.ctx as *mut MQ_Context, 0.0, Some(run_from_timer), data)
            };
            if timer.is_null() {
                // SAFETY: the host kept nothing; fall back to the eventfd.
                drop(unsafe { Arc::from_raw(data as *const Shared) });
                self.ping_eventfd();
            } else {
                self.timer.store(timer, Ordering::Release);
            }
        } else {
            self.ping_eventfd();
        }
    }

    fn ping_eventfd(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.eventfd, (&one as *const u64).cast(), 8) };
    }
}

unsafe extern "C" fn run_from_timer(data: *mut c_void) {
    // SAFETY: the Arc given to MQ_startTimer in `notify`; fired once.
    let shared = unsafe { Arc::from_raw(data as *const Shared) };
    shared.timer.store(std::ptr::null_mut(), Ordering::Release);
    crate::boundary::guard_callback("the executor", || run_queue(&shared));
}

/// A task's end: `Some` with its outcome (or panic message) once complete.
type Finished = Option<Result<Outcome, String>>;

/// Type-erased operations of a `Task<F>`.
struct VTable {
    /// Polls the future; on completion drops it in place and returns its outcome.
    poll: unsafe fn(NonNull<Header>, &mut std::task::Context<'_>) -> Finished,
    /// Drops the future in place if it is still there.
    drop_future: unsafe fn(NonNull<Header>),
    /// Frees the allocation (the future is gone).
    dealloc: unsafe fn(NonNull<Header>),
}

#[repr(C)]
struct Header {
    refs: AtomicUsize,
    scheduled: AtomicBool,
    shared: ManuallyDrop<Arc<Shared>>,
    vtable: &'static VTable,
    /// Where the result goes once the task completes after its first poll.
    owner: Owner,
    ctx: *mut MQ_Context,
    id: u64,
}

/// Whose task it is.
#[derive(Clone, Copy)]
enum Owner {
    /// A hook's future: its completion resumes the chain of `conn`.
    Hook {
        meta: &'static crate::__private_v1::HookMeta,
        conn: *mut MQ_Connection,
    },
    /// Background work from [`Context::spawn_local`].
    Background,
}

#[repr(C)]
struct Task<F: Future> {
    header: Header,
    future: UnsafeCell<ManuallyDrop<F>>,
    alive: Cell<bool>,
}

impl<F: Future<Output: HookReturn>> Task<F> {
    const VTABLE: VTable = VTable {
        poll: Self::poll,
        drop_future: Self::drop_future,
        dealloc: Self::dealloc,
    };

    unsafe fn poll(header: NonNull<Header>, cx: &mut std::task::Context<'_>) -> Finished {
        // SAFETY: `header` is the first field of a live Task<F> (repr(C)).
        let task = unsafe { header.cast::<Task<F>>().as_ref() };
        if !task.alive.get() {
            return None;
        }
        // SAFETY: the future stays in place until dropped below; only the
        // owning thread polls it.
        let future = unsafe { Pin::new_unchecked(&mut **task.future.get()) };
        // The outcome is made inside the boundary too: an `Err` whose
        // `Display` panics is a panic of the hook.
        let polled = catch(|| match future.poll(cx) {
            Poll::Pending => None,
            Poll::Ready(value) => Some(value.into_outcome()),
        });
        let outcome = match polled {
            Ok(None) => return None,
            Ok(Some(outcome)) => Ok(outcome),
            Err(panic) => Err(panic),
        };
        // SAFETY: complete: drop the future now, before anyone resumes the
        // host (which may free what the future borrowed).
        unsafe { Self::drop_future(header) };
        Some(outcome)
    }

    unsafe fn drop_future(header: NonNull<Header>) {
        // SAFETY: as in `poll`.
        let task = unsafe { header.cast::<Task<F>>().as_ref() };
        if task.alive.replace(false) {
            // A panicking Drop must not unwind into the loop.
            // SAFETY: alive until now; never dropped twice (flag).
            let _ = catch(|| unsafe { ManuallyDrop::drop(&mut *task.future.get()) });
        }
    }

    unsafe fn dealloc(header: NonNull<Header>) {
        // SAFETY: the last reference; the future is gone.
        let mut task = unsafe { Box::from_raw(header.cast::<Task<F>>().as_ptr()) };
        // SAFETY: dropped once, here.
        unsafe { ManuallyDrop::drop(&mut task.header.shared) };
    }
}

/// Drops one reference; frees the task at the last.
unsafe fn release(header: NonNull<Header>) {
    // SAFETY: the caller owns a reference.
    let h = unsafe { header.as_ref() };
    if h.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
        // SAFETY: no reference is left; the owner dropped the future before
        // giving its reference up, or drops it now on the last reference.
        unsafe {
            (h.vtable.drop_future)(header);
            (h.vtable.dealloc)(header);
        }
    }
}

fn acquire(header: NonNull<Header>) -> TaskRef {
    // SAFETY: called with a live task.
    unsafe { header.as_ref() }
        .refs
        .fetch_add(1, Ordering::Relaxed);
    TaskRef(header)
}

static WAKER_VTABLE: RawWakerVTable =
    RawWakerVTable::new(waker_clone, waker_wake, waker_wake_by_ref, waker_drop);

unsafe fn waker_clone(data: *const ()) -> RawWaker {
    let header = NonNull::new(data as *mut Header).expect("task waker");
    std::mem::forget(acquire(header));
    RawWaker::new(data, &WAKER_VTABLE)
}

unsafe fn waker_wake(data: *const ()) {
    // SAFETY: the waker owns one reference; wake_by_ref takes its own.
    unsafe {
        waker_wake_by_ref(data);
        waker_drop(data);
    }
}

unsafe fn waker_wake_by_ref(data: *const ()) {
    let header = NonNull::new(data as *mut Header).expect("task waker");
    // SAFETY: the waker keeps the task alive.
    let h = unsafe { header.as_ref() };
    if !h.scheduled.swap(true, Ordering::AcqRel) {
        h.shared.schedule(acquire(header));
    }
}

unsafe fn waker_drop(data: *const ()) {
    // SAFETY: the waker owns one reference.
    unsafe { release(NonNull::new_unchecked(data as *mut Header)) }
}

fn waker_for(header: NonNull<Header>) -> ManuallyDrop<Waker> {
    // SAFETY: a borrowed waker (ManuallyDrop: it owns no reference); clones
    // take their own through the vtable.
    ManuallyDrop::new(unsafe {
        Waker::from_raw(RawWaker::new(header.as_ptr() as *const (), &WAKER_VTABLE))
    })
}

/// The executor of one context.
pub(crate) struct Executor {
    shared: Arc<Shared>,
    /// Pending hook tasks by connection (a connection has at most one held
    /// hook per plugin), each holding the owner's reference.
    hooks: RefCell<HashMap<usize, TaskRef>>,
    /// Pending `spawn_local` tasks by id.
    background: RefCell<HashMap<u64, TaskRef>>,
    next_id: Cell<u64>,
    _watcher: FdWatcher,
}

impl Executor {
    /// The context's executor, created on first use.
    pub(crate) fn of(ctx: &Context) -> Result<&Executor, String> {
        let slot = &ctx.store_for_runtime().runtime;
        if let Some(e) = slot.executor.get() {
            return Ok(e);
        }
        let executor = Executor::new(ctx)?;
        Ok(slot.executor.get_or_init(|| executor))
    }

    /// The context's executor if it has one.
    fn existing(ctx: &Context) -> Option<&Executor> {
        ctx.runtime_if_any()?.executor.get()
    }

    /// Drops the pending hook of `conn`, if there is one, without resuming
    /// the host: its future and every borrow in it are gone on return.
    /// Returns the cancelled task's hook.
    fn cancel_hook(
        &self,
        conn: *mut MQ_Connection,
    ) -> Option<&'static crate::__private_v1::HookMeta> {
        let task = self.hooks.borrow_mut().remove(&(conn as usize))?;
        let _guard = CurrentGuard::enter(self.shared.ctx as *mut MQ_Context);
        // SAFETY: on the owning thread; the queue's references (if any) see
        // the future gone and skip it.
        let header = unsafe { task.0.as_ref() };
        // SAFETY: as above; the future is dropped in place, in a boundary.
        unsafe { (header.vtable.drop_future)(task.0) };
        let meta = match header.owner {
            Owner::Hook { meta, .. } => Some(meta),
            Owner::Background => None,
        };
        drop(task);
        meta
    }

    fn new(ctx: &Context) -> Result<Executor, String> {
        // SAFETY: plain eventfd creation.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "eventfd failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            owner: std::thread::current().id(),
            ctx: ctx.as_raw() as usize,
            eventfd: fd,
            notified: AtomicBool::new(false),
            timer: AtomicPtr::new(std::ptr::null_mut()),
            closed: AtomicBool::new(false),
        });
        let for_watcher = Arc::clone(&shared);
        let watcher = ctx
            .watch_fd(fd, Interest::READ, move |_| {
                let mut counter = 0u64;
                // SAFETY: draining our eventfd into a valid u64.
                unsafe { libc::read(for_watcher.eventfd, (&mut counter as *mut u64).cast(), 8) };
                run_queue(&for_watcher);
            })
            .map_err(|e| format!("cannot watch the executor's eventfd: {e}"))?;
        Ok(Executor {
            shared,
            hooks: RefCell::new(HashMap::new()),
            background: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            _watcher: watcher,
        })
    }
}

impl Drop for Executor {
    /// Context cleanup: every pending hook future is dropped here.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _guard = CurrentGuard::enter(self.shared.ctx as *mut MQ_Context);
        let timer = self
            .shared
            .timer
            .swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !timer.is_null() {
            // SAFETY: the zero timer has not fired (it clears the pointer
            // when it does), so the host still knows it; stopped, it never
            // takes back the reference it was given: take it back here.
            unsafe {
                host().api.stop_timer(timer);
                drop(Arc::from_raw(Arc::as_ptr(&self.shared)));
            }
        }
        let mut tasks: Vec<TaskRef> = self.hooks.borrow_mut().drain().map(|(_, t)| t).collect();
        tasks.extend(self.background.borrow_mut().drain().map(|(_, t)| t));
        for task in tasks {
            // SAFETY: on the owning thread; the future is dropped in place.
            unsafe { (task.0.as_ref().vtable.drop_future)(task.0) };
        }
        let queued: Vec<TaskRef> = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        drop(queued);
    }
}

/// Polls queued tasks, at most [`POLL_BUDGET`] per call.
fn run_queue(shared: &Arc<Shared>) {
    shared.notified.store(false, Ordering::Release);
    let _guard = CurrentGuard::enter(shared.ctx as *mut MQ_Context);
    for _ in 0..POLL_BUDGET {
        let Some(task) = shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        else {
            return;
        };
        if shared.closed.load(Ordering::Acquire) {
            continue;
        }
        // SAFETY: the queue's reference keeps the task alive.
        let header = unsafe { task.0.as_ref() };
        header.scheduled.store(false, Ordering::Release);
        let waker = waker_for(task.0);
        let mut cx = std::task::Context::from_waker(&waker);
        // SAFETY: polled on the owning thread only.
        if let Some(result) = unsafe { (header.vtable.poll)(task.0, &mut cx) } {
            complete(header, result);
        }
    }
    if !shared
        .queue
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        // Out of budget: let the loop breathe, then go on.
        shared.notify();
    }
}

/// A task finished after its first poll: release it and resume the host.
fn complete(header: &Header, result: Result<Outcome, String>) {
    // SAFETY: the context is live while its executor runs.
    let ctx = unsafe { Context::from_raw(header.ctx) };
    let owner = header.owner;
    let task = Executor::existing(ctx).and_then(|e| match owner {
        Owner::Hook { conn, .. } => {
            let mut hooks = e.hooks.borrow_mut();
            let ours = hooks
                .get(&(conn as usize))
                .is_some_and(|t| std::ptr::eq(t.0.as_ptr(), header));
            ours.then(|| hooks.remove(&(conn as usize))).flatten()
        }
        Owner::Background => e.background.borrow_mut().remove(&header.id),
    });
    drop(task);
    match owner {
        Owner::Hook { meta, conn } => {
            crate::__private_v1::after_async_hook(meta, conn);
            if let Some(flow) = crate::__private_v1::flow_of(meta, result) {
                // SAFETY: this plugin holds the chain of `conn`; we are on its
                // loop, outside the hook call; the future is already dropped.
                unsafe { crate::raw::resume(conn, flow) };
            }
        }
        Owner::Background => {
            let problem = match result {
                Err(panic) => Some(format!("panicked: {panic}")),
                Ok(Outcome::Failed(e)) => Some(format!("failed: {e}")),
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                let plugin = crate::log::plugin_name();
                crate::log::log_text(
                    crate::sys::MQ_CRIT,
                    &format!("[{plugin}] a spawn_local task {problem}"),
                );
            }
        }
    }
}

impl Context {
    /// Runs `future` on this worker's loop in the background. It is
    /// cancelled (dropped) at `mq_context_cleanup` if it has not finished;
    /// a panic or an `Err` is logged.
    ///
    /// ```no_run
    /// # use mq_plugin::prelude::*;
    /// # fn f(ctx: &Context) {
    /// ctx.spawn_local(async {
    ///     mq_plugin::time::sleep(std::time::Duration::from_secs(60)).await;
    ///     log::info!("a minute later");
    /// })
    /// .expect("the executor runs");
    /// # }
    /// ```
    pub fn spawn_local<F>(&self, future: F) -> Result<(), crate::HostError>
    where
        F: Future<Output: HookReturn> + 'static,
    {
        let executor =
            Executor::of(self).map_err(|_| crate::HostError("no executor for this context"))?;
        let id = executor.next_id.get();
        executor.next_id.set(id + 1);
        let task = Box::new(Task {
            header: Header {
                refs: AtomicUsize::new(1),
                scheduled: AtomicBool::new(true),
                shared: ManuallyDrop::new(Arc::clone(&executor.shared)),
                vtable: &Task::<F>::VTABLE,
                owner: Owner::Background,
                ctx: self.as_raw(),
                id,
            },
            future: UnsafeCell::new(ManuallyDrop::new(future)),
            alive: Cell::new(true),
        });
        let header: NonNull<Header> = NonNull::from(Box::leak(task)).cast();
        executor.background.borrow_mut().insert(id, TaskRef(header));
        executor.shared.schedule(acquire(header));
        Ok(())
    }
}

/// A per-hook cache of one task allocation, so a hook whose future is ready
/// on the first poll allocates nothing once warm.
pub struct TaskCache(Cell<Option<(NonNull<u8>, std::alloc::Layout)>>);

impl TaskCache {
    /// An empty cache (one per hook, in a `thread_local!`).
    pub const fn new() -> TaskCache {
        TaskCache(Cell::new(None))
    }
}

impl Drop for TaskCache {
    fn drop(&mut self) {
        if let Some((ptr, layout)) = self.0.take() {
            // SAFETY: an empty task allocation of this layout, made by Box.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

impl Default for TaskCache {
    fn default() -> Self {
        TaskCache::new()
    }
}

/// Runs a hook's future: the first poll here, inside the hook call; the
/// rest on the loop. Returns the C hook's return value.
///
/// # Safety
/// `ctx` and `conn` are the live arguments of this hook call, and the host
/// keeps them (and whatever `future` borrows of the call) alive until this
/// plugin resumes the chain. `cache` belongs to this hook alone (one future
/// type per cache).
pub(crate) unsafe fn run_hook<F>(
    meta: &'static crate::__private_v1::HookMeta,
    cache: &'static std::thread::LocalKey<TaskCache>,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    future: F,
) -> Result<Finished, String>
where
    F: Future<Output: HookReturn> + 'static,
{
    // SAFETY: the caller's promise.
    let context = unsafe { Context::from_raw(ctx) };
    let executor = Executor::of(context)?;
    let id = executor.next_id.get();
    executor.next_id.set(id + 1);
    let task = Task {
        header: Header {
            refs: AtomicUsize::new(1),
            scheduled: AtomicBool::new(false),
            shared: ManuallyDrop::new(Arc::clone(&executor.shared)),
            vtable: &Task::<F>::VTABLE,
            owner: Owner::Hook { meta, conn },
            ctx,
            id,
        },
        future: UnsafeCell::new(ManuallyDrop::new(future)),
        alive: Cell::new(true),
    };
    let header: NonNull<Header> = match cache.with(|c| c.0.take()) {
        Some((slot, layout)) => {
            debug_assert_eq!(layout, std::alloc::Layout::new::<Task<F>>());
            let slot = slot.cast::<Task<F>>();
            // SAFETY: a cached, empty allocation of exactly this Task<F>.
            unsafe { slot.as_ptr().write(task) };
            slot.cast()
        }
        None => NonNull::from(Box::leak(Box::new(task))).cast(),
    };
    let _guard = CurrentGuard::enter(ctx);
    let waker = waker_for(header);
    let mut cx = std::task::Context::from_waker(&waker);
    // SAFETY: a live task, on the owning thread.
    match unsafe { (Task::<F>::VTABLE.poll)(header, &mut cx) } {
        None => {
            let earlier = executor
                .hooks
                .borrow_mut()
                .insert(conn as usize, TaskRef(header));
            if let Some(earlier) = earlier {
                // The host called a hook on a connection whose earlier hook
                // this plugin still holds (MailerQ never does): keep both.
                crate::log::log_text(
                    crate::sys::MQ_CRIT,
                    &format!(
                        "[{}] the host called hook {} while this plugin held another hook of \
                         the same connection",
                        meta.plugin, meta.hook.name
                    ),
                );
                executor
                    .background
                    .borrow_mut()
                    .insert(earlier_id(&earlier), earlier);
            }
            Ok(None)
        }
        Some(result) => {
            // SAFETY: live until we release it.
            let h = unsafe { header.as_ref() };
            if h.refs.load(Ordering::Acquire) == 1 && cache.with(|c| c.0.get().is_none()) {
                // No waker outlived the poll: keep the allocation for next time.
                // SAFETY: sole owner; the future is gone; drop the Arc, keep the memory.
                unsafe {
                    ManuallyDrop::drop(&mut (*header.cast::<Task<F>>().as_ptr()).header.shared);
                }
                cache.with(|c| {
                    c.0.set(Some((header.cast(), std::alloc::Layout::new::<Task<F>>())))
                });
            } else {
                // SAFETY: the owner's reference.
                unsafe { release(header) };
            }
            Ok(Some(result))
        }
    }
}

fn earlier_id(task: &TaskRef) -> u64 {
    // SAFETY: a live task.
    unsafe { task.0.as_ref() }.id
}

/// Ends this plugin's hold of `conn` (the host's `cancel_hold`): a pending
/// hook future is dropped, or a scheduled resume of a synchronous hook is
/// stopped. Either way the take-over is never resumed. False if the plugin
/// holds nothing it can cancel there.
///
/// # Safety
/// `ctx` and `conn` are this plugin's live context and connection.
pub(crate) unsafe fn cancel_hold(ctx: *mut MQ_Context, conn: *mut MQ_Connection) -> bool {
    // SAFETY: the caller's promise.
    let context = unsafe { Context::from_raw(ctx) };
    let Some(runtime) = context.runtime_if_any() else {
        return false;
    };
    if let Some(meta) = runtime.executor.get().and_then(|e| e.cancel_hook(conn)) {
        crate::__private_v1::after_async_hook(meta, conn);
        return true;
    }
    runtime.cancel_scheduled(conn)
}

/// Drops the pending hook of `conn` before its connection goes away
/// (`smtp_in_close`), so no per-connection data is freed under a borrow.
///
/// # Safety
/// As [`cancel_hold`].
pub(crate) unsafe fn drop_pending_hook(ctx: *mut MQ_Context, conn: *mut MQ_Connection) {
    // SAFETY: the caller's promise.
    let context = unsafe { Context::from_raw(ctx) };
    let Some(runtime) = context.runtime_if_any() else {
        return;
    };
    if let Some(meta) = runtime.executor.get().and_then(|e| e.cancel_hook(conn)) {
        crate::log::log_text(
            crate::sys::MQ_CRIT,
            &format!(
                "[{}] hook {} (fn {}) was still pending when its connection closed; \
                 it was dropped without resuming",
                meta.plugin, meta.hook.name, meta.function
            ),
        );
    }
    runtime.cancel_scheduled(conn);
}

/// A synchronous hook's `Complete` or `Retry` on its way to the host from
/// a zero-delay timer (never inside the hook call).
struct ScheduledResume {
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    flow: crate::Flow,
}

/// The context data slot's runtime part: what the framework itself keeps
/// per context, all released at `mq_context_cleanup`.
#[derive(Default)]
pub(crate) struct RuntimeSlot {
    pub(crate) executor: std::cell::OnceCell<Executor>,
    /// Scheduled resumes by connection: the timer and its boxed data.
    scheduled: RefCell<HashMap<usize, (*mut crate::sys::MQ_Timer, *mut ScheduledResume)>>,
    /// The plugin's running timers, stopped (and their callbacks dropped)
    /// at cleanup.
    pub(crate) timers: crate::timer::TimerRegistry,
}

impl RuntimeSlot {
    /// Takes control and resumes `conn` with `flow` from a zero-delay
    /// timer; false if the host gave no timer.
    pub(crate) fn schedule_resume(
        &self,
        ctx: *mut MQ_Context,
        conn: *mut MQ_Connection,
        flow: crate::Flow,
    ) -> bool {
        let pending = Box::into_raw(Box::new(ScheduledResume { ctx, conn, flow }));
        // SAFETY: live context; the trampoline takes `pending` back.
        let timer = unsafe {
            host()
                .api
                .start_timer(ctx, 0.0, Some(resume_from_loop), pending.cast())
        };
        if timer.is_null() {
            // SAFETY: the host did not keep `pending`.
            drop(unsafe { Box::from_raw(pending) });
            return false;
        }
        self.scheduled
            .borrow_mut()
            .insert(conn as usize, (timer, pending));
        true
    }

    fn cancel_scheduled(&self, conn: *mut MQ_Connection) -> bool {
        let Some((timer, pending)) = self.scheduled.borrow_mut().remove(&(conn as usize)) else {
            return false;
        };
        // SAFETY: the timer has not fired (firing removes the entry), so the
        // host still knows it; stopped, it never takes `pending` back.
        unsafe {
            host().api.stop_timer(timer);
            drop(Box::from_raw(pending));
        }
        true
    }
}

impl Drop for RuntimeSlot {
    /// Context cleanup: pending hook futures first (they may stop their
    /// own timers), then scheduled resumes, then the plugin's timers.
    fn drop(&mut self) {
        drop(self.executor.take());
        let scheduled: Vec<_> = self.scheduled.borrow_mut().drain().collect();
        for (_, (timer, pending)) in scheduled {
            // SAFETY: as in `cancel_scheduled`.
            unsafe {
                host().api.stop_timer(timer);
                drop(Box::from_raw(pending));
            }
        }
        self.timers.stop_all();
    }
}

unsafe extern "C" fn resume_from_loop(data: *mut c_void) {
    // SAFETY: `data` is the ScheduledResume boxed by schedule_resume; the
    // one-shot timer fires once, and its entry is removed here.
    let pending = unsafe { Box::from_raw(data.cast::<ScheduledResume>()) };
    // SAFETY: the context of this plugin, live while its timers fire.
    let context = unsafe { Context::from_raw(pending.ctx) };
    if let Some(runtime) = context.runtime_if_any() {
        runtime
            .scheduled
            .borrow_mut()
            .remove(&(pending.conn as usize));
    }
    // SAFETY: this plugin holds the chain of `conn`; we are on its loop.
    unsafe { crate::raw::resume(pending.conn, pending.flow) };
}
