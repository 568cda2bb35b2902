//! File descriptor readiness on the worker's event loop (`MQ_ioWatch`).

use crate::boundary::guard_callback;
use crate::handles::Context;
use crate::host::host;
use crate::sys::MQ_IOWatcher;
use crate::HostError;
use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::rc::Rc;

pub use mq_abi::Interest;

struct WatchState {
    active: Cell<bool>,
    callback: RefCell<Box<dyn FnMut(Interest)>>,
}

/// A watched file descriptor. The callback runs on the event loop for as
/// long as the descriptor is ready (level-triggered, like libev). Dropping
/// the watcher stops watching.
pub struct FdWatcher {
    raw: *mut MQ_IOWatcher,
    state: Rc<WatchState>,
}

impl Context {
    /// Calls `callback` with the ready events while `fd` is ready for
    /// `interest`. The plugin keeps owning `fd`; stop watching before
    /// closing it.
    pub fn watch_fd(
        &self,
        fd: RawFd,
        interest: Interest,
        callback: impl FnMut(Interest) + 'static,
    ) -> Result<FdWatcher, HostError> {
        let state = Rc::new(WatchState {
            active: Cell::new(true),
            callback: RefCell::new(Box::new(callback)),
        });
        let data = Rc::into_raw(state.clone()) as *mut c_void;
        // SAFETY: live context; `data` is an Rc released when unwatched.
        let raw = unsafe {
            host()
                .api
                .io_watch(self.as_raw(), fd, interest.events(), Some(ready), data)
        };
        if raw.is_null() {
            // SAFETY: the host did not keep `data`.
            drop(unsafe { Rc::from_raw(data as *const WatchState) });
            return Err(HostError("MQ_ioWatch returned no watcher"));
        }
        Ok(FdWatcher { raw, state })
    }
}

unsafe extern "C" fn ready(
    _watcher: *mut MQ_IOWatcher,
    _fd: c_int,
    events: c_int,
    data: *mut c_void,
) {
    // SAFETY: `data` is the Rc given to MQ_ioWatch, alive while watched;
    // borrow it without taking the host's reference, and hold a clone so an
    // unwatch from inside the callback cannot free it under us.
    let state = ManuallyDrop::new(unsafe { Rc::from_raw(data as *const WatchState) });
    let state: Rc<WatchState> = Rc::clone(&state);
    if !state.active.get() {
        return;
    }
    // A re-entrant call for the same watcher (cannot happen on one loop
    // thread, but be safe) is skipped rather than aliasing the closure.
    let borrowed = state.callback.try_borrow_mut();
    if let Ok(mut callback) = borrowed {
        guard_callback("an fd watcher callback", || {
            callback(Interest::from_events(events))
        });
    }
}

impl FdWatcher {
    /// Stops watching (also done on drop).
    pub fn unwatch(self) {}

    fn stop(&self) {
        if !self.state.active.replace(false) {
            return;
        }
        // SAFETY: the watcher is active, so the host still knows it.
        unsafe { host().api.io_unwatch(self.raw) };
        // SAFETY: the host will not call `ready` again; take its reference back.
        drop(unsafe { Rc::from_raw(Rc::as_ptr(&self.state)) });
    }
}

impl Drop for FdWatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for FdWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdWatcher")
            .field("active", &self.state.active.get())
            .finish()
    }
}
