//! A hook's future from the hook call on: its first poll inside the call,
//! and, if it is pending then, its task joining the context's executor.

use super::*;

/// Runs a hook's future: the first poll here, inside the hook call; the
/// rest on the loop. Returns `Ok(None)` when the hook took control,
/// `Ok(Some(result))` when the future finished on its first poll, `Err`
/// when it is pending and cannot be run on (no executor: the future is
/// dropped, the caller takes the fallback).
///
/// The ready path allocates nothing once warm (the task's slot comes from
/// `cache`) and never looks the context's executor up.
///
/// # Safety
/// `ctx` and `conn` are the live arguments of this hook call, and the host
/// keeps them (and whatever `future` borrows of the call) alive until this
/// plugin resumes the chain. `cache` belongs to this hook alone (one future
/// type per cache).
#[inline]
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
    // One thread-local access for the cache and one for LOCAL.
    cache.with(|slots| {
        let task = Task {
            header: Header {
                refs: AtomicUsize::new(1),
                scheduled: AtomicBool::new(false),
                shared: AtomicPtr::new(std::ptr::null_mut()),
                vtable: &Task::<F>::VTABLE,
                owner: Owner::Hook { meta, conn, cache },
                ctx,
                id: Cell::new(0),
            },
            future: UnsafeCell::new(ManuallyDrop::new(future)),
            alive: Cell::new(true),
        };
        let layout = std::alloc::Layout::new::<Task<F>>();
        let header: NonNull<Header> = match slots.take(layout) {
            Some(slot) => {
                let slot = slot.cast::<Task<F>>();
                // SAFETY: a cached, empty allocation of exactly this layout.
                unsafe { slot.as_ptr().write(task) };
                slot.cast()
            }
            None => NonNull::from(Box::leak(Box::new(task))).cast(),
        };
        let polled = LOCAL.with(|l| {
            let _restore = Restore::enter(&l.current, ctx);
            let waker = waker_for(header);
            let mut cx = std::task::Context::from_waker(&waker);
            // SAFETY: a live task, on the owning thread.
            unsafe { (Task::<F>::VTABLE.poll)(header, &mut cx) }
        });
        match polled {
            Some(result) => {
                // SAFETY: live until released.
                let h = unsafe { header.as_ref() };
                if h.refs.load(Ordering::Acquire) == 1 {
                    // No waker outlived the poll and the task never joined
                    // an executor: its memory goes straight back.
                    if !slots.keep(header.cast(), layout) {
                        // SAFETY: sole owner; the future is gone.
                        drop(unsafe { Box::from_raw(header.cast::<Task<F>>().as_ptr()) });
                    }
                } else {
                    // SAFETY: the owner's reference.
                    unsafe { release(header) };
                }
                Ok(Some(result))
            }
            // SAFETY: the caller's promise, passed on.
            None => unsafe { join_executor(meta, ctx, conn, header) },
        }
    })
}

/// A hook's future was pending at its first poll: its task joins the
/// context's executor (created on first use) and waits there.
///
/// # Safety
/// As [`run_hook`]; `header` is that hook's live task, with the owner's
/// reference, which this takes.
#[inline(never)]
unsafe fn join_executor(
    meta: &'static crate::__private_v1::HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    header: NonNull<Header>,
) -> Result<Finished, String> {
    // SAFETY: the caller's promise.
    let context = unsafe { Context::from_raw(ctx) };
    // SAFETY: live until we release it.
    let h = unsafe { header.as_ref() };
    let last = LOCAL.with(|l| l.last.get());
    let found = if last.0 == ctx {
        // SAFETY: the context's live data store, recorded below once its
        // executor existed (cleared when that executor drops).
        unsafe { Executor::in_store(context, last.1) }
    } else {
        let store = context.store_ptr(true);
        // SAFETY: just looked up (created on demand).
        let found = unsafe { Executor::in_store(context, store) };
        if found.is_ok() {
            LOCAL.with(|l| l.last.set((ctx, store)));
        }
        found
    };
    let executor = match found {
        Ok(executor) => executor,
        Err(why) => {
            let _guard = CurrentGuard::enter(ctx);
            // SAFETY: on the owning thread: the future goes now (in a
            // boundary), then the owner's reference.
            unsafe {
                (h.vtable.drop_future)(header);
                release(header);
            }
            return Err(why);
        }
    };
    let id = executor.next_id.get();
    executor.next_id.set(id + 1);
    h.id.set(id);
    let shared = Arc::into_raw(Arc::clone(&executor.shared)).cast_mut();
    h.shared.store(shared, Ordering::SeqCst);
    if h.scheduled.load(Ordering::SeqCst) {
        // Woken during the first poll (or since): queue it now.
        executor.shared.schedule(acquire(header));
    }
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

fn earlier_id(task: &TaskRef) -> u64 {
    // SAFETY: a live task.
    unsafe { task.0.as_ref() }.id.get()
}
