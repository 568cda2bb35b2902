//! The host functions of the worker's event loop: fd watchers
//! (`MQ_ioWatch`, `MQ_ioUnwatch`) and timers (`MQ_startTimer`,
//! `MQ_stopTimer`, `MQ_resetTimer`).
//!
//! Their handles name the loop, not a plugin: a stale or foreign one is a
//! no-op, reported as a misuse when it is the plugin's (a timer that fired
//! or was stopped, a watcher unwatched twice), not when the loop discarded
//! a watcher itself. Callbacks run as watched calls of their plugin, for
//! the stall watchdog.

use super::context;
use super::host_call;
use crate::observe::{HostLog, Priority, Source};
use crate::runtime::event_loop::{Interest, Stale, TimerHandle, WatcherHandle};
use crate::runtime::misuse::{self, Misuse};
use crate::runtime::watchdog::CallSite;
use crate::runtime::worker::{self, Worker};
use mq_abi::sys::*;
use mq_abi::{IoCallbackParam, TimerCallbackParam};
use std::ffi::{c_int, c_void};
use std::time::Duration;

/// `MQ_ioWatch` for the table (its callback in abi_stable's wrapper).
pub(super) unsafe extern "C" fn table_io_watch(
    ctx: *mut MQ_Context,
    fd: c_int,
    events: c_int,
    cb: IoCallbackParam,
    data: *mut c_void,
) -> *mut MQ_IOWatcher {
    // SAFETY: forwarded as received.
    unsafe { MQ_ioWatch(ctx, fd, events, cb.callback, data) }
}

/// `MQ_startTimer` for the table (its callback in abi_stable's wrapper).
pub(super) unsafe extern "C" fn table_start_timer(
    ctx: *mut MQ_Context,
    seconds: f32,
    cb: TimerCallbackParam,
    data: *mut c_void,
) -> *mut MQ_Timer {
    // SAFETY: forwarded as received.
    unsafe { MQ_startTimer(ctx, seconds, cb.callback, data) }
}

/// Reports a timer or watcher function called off any worker thread (their
/// handles name the loop, not a plugin).
fn refuse_off_worker(function: &str, what: &str) {
    let line = format!(
        "{function} refused: called off a worker thread; {what} belong to the worker's event loop"
    );
    match HostLog::fallback() {
        Some(log) => log.write(None, Priority::Critical, Source::Host, line),
        None => crate::observe::eprint_line(&format!("mq-host: {line}")),
    }
}

/// A timer's delay, clamped to `0..=MAX_TIMER_DELAY`; a delay out of that
/// range (NaN, negative, too long, infinite) is reported as a misuse.
fn delay(w: &Worker, plugin: Option<usize>, function: &'static str, seconds: f32) -> Duration {
    let (after, misuse) = misuse::timer_delay(seconds);
    if let Some(misuse) = misuse {
        let shown = if seconds.abs() >= 1e9 {
            format!("{seconds:e}")
        } else {
            seconds.to_string()
        };
        w.report_misuse(plugin, function, misuse, &shown);
    }
    after
}

/// A timer or watcher argument for a misuse report.
fn shown_handle(raw: u64) -> String {
    if raw == 0 {
        "NULL".to_owned()
    } else {
        format!("{raw:#x}")
    }
}

host_fn! {
    /// `MQ_IOWatcher *MQ_ioWatch(MQ_Context*, int fd, int events, cb, void *data)`.
    fn MQ_ioWatch(
        ctx: *mut MQ_Context,
        fd: c_int,
        events: c_int,
        cb: Option<MQ_IOCallback>,
        data: *mut c_void,
    ) -> *mut MQ_IOWatcher = std::ptr::null_mut(); {
        let Some((w, plugin)) = context("MQ_ioWatch", ctx) else {
            return std::ptr::null_mut();
        };
        let Some(cb) = cb else {
            w.report_misuse(Some(plugin), "MQ_ioWatch", Misuse::NoCallback, "");
            return std::ptr::null_mut();
        };
        let interest = Interest::from_events(events);
        if interest.is_empty() {
            w.report_misuse(Some(plugin), "MQ_ioWatch", Misuse::NoEvents, "");
            return std::ptr::null_mut();
        }
        let calls = std::sync::Arc::clone(&w.calls);
        let callback = Box::new(move |handle: WatcherHandle, fd: c_int, ready: Interest| {
            let _calling = worker::Calling::watched(&calls, plugin, CallSite::FdCallback);
            // SAFETY: the plugin's callback with the data it registered.
            unsafe {
                cb(
                    handle.to_raw() as usize as *mut MQ_IOWatcher,
                    fd,
                    ready.events(),
                    data,
                )
            }
        });
        match w.ev.watch_io(fd, interest, callback) {
            Ok(handle) => handle.to_raw() as usize as *mut MQ_IOWatcher,
            Err(e) => {
                w.log(
                    Priority::Critical,
                    format!(
                        "plugin {}: MQ_ioWatch of fd {fd} failed: {e}",
                        w.shared.plugin_name(plugin)
                    ),
                );
                std::ptr::null_mut()
            }
        }
    }
}

host_fn! {
    /// `void MQ_ioUnwatch(MQ_IOWatcher*)`: a stale or foreign handle is a no-op,
    /// reported as a misuse unless the host discarded the watcher itself
    /// (its fd was closed and the number watched anew).
    fn MQ_ioUnwatch(watcher: *mut MQ_IOWatcher) = (); {
        let raw = watcher as usize as u64;
        let Some(w) = worker::current() else {
            return refuse_off_worker("MQ_ioUnwatch", "fd watchers");
        };
        let unwatched = WatcherHandle::from_raw(raw).map_or(Err(Stale::Foreign), |h| w.ev.try_unwatch_io(h));
        if let Some(misuse) = unwatched.err().and_then(Misuse::of_watcher) {
            w.report_misuse(None, "MQ_ioUnwatch", misuse, &shown_handle(raw));
        }
    }
}

host_fn! {
    /// `MQ_Timer *MQ_startTimer(MQ_Context*, float seconds, cb, void *data)`:
    /// the delay is clamped to 0 s ..= 365 days (NaN and negative: 0 s;
    /// longer, or `INFINITY`: 365 days), and a delay out of range is reported
    /// as a misuse.
    fn MQ_startTimer(
        ctx: *mut MQ_Context,
        seconds_: f32,
        cb: Option<MQ_TimerCallback>,
        data: *mut c_void,
    ) -> *mut MQ_Timer = std::ptr::null_mut(); {
        let Some((w, plugin)) = context("MQ_startTimer", ctx) else {
            return std::ptr::null_mut();
        };
        let Some(cb) = cb else {
            w.report_misuse(Some(plugin), "MQ_startTimer", Misuse::NoCallback, "");
            return std::ptr::null_mut();
        };
        let after = delay(&w, Some(plugin), "MQ_startTimer", seconds_);
        let calls = std::sync::Arc::clone(&w.calls);
        let callback = Box::new(move || {
            let _calling = worker::Calling::watched(&calls, plugin, CallSite::TimerCallback);
            // SAFETY: the plugin's callback with the data it registered.
            unsafe { cb(data) }
        });
        let handle = w.ev.start_timer(after, callback);
        handle.to_raw() as usize as *mut MQ_Timer
    }
}

host_fn! {
    /// `void MQ_stopTimer(MQ_Timer*)`: a fired, stopped or foreign timer is a
    /// no-op, reported as a misuse.
    fn MQ_stopTimer(timer: *mut MQ_Timer) = (); {
        let raw = timer as usize as u64;
        let Some(w) = worker::current() else {
            return refuse_off_worker("MQ_stopTimer", "timers");
        };
        let stopped = TimerHandle::from_raw(raw).map_or(Err(Stale::Foreign), |h| w.ev.try_stop_timer(h));
        if let Err(stale) = stopped {
            w.report_misuse(None, "MQ_stopTimer", Misuse::of_timer(stale), &shown_handle(raw));
        }
    }
}

host_fn! {
    /// `void MQ_resetTimer(MQ_Timer*, float seconds)`: a fired, stopped or
    /// foreign timer is a no-op, reported as a misuse; the delay is clamped
    /// as `MQ_startTimer`'s.
    fn MQ_resetTimer(timer: *mut MQ_Timer, seconds_: f32) = (); {
        let raw = timer as usize as u64;
        let Some(w) = worker::current() else {
            return refuse_off_worker("MQ_resetTimer", "timers");
        };
        let after = delay(&w, None, "MQ_resetTimer", seconds_);
        let reset = TimerHandle::from_raw(raw).map_or(Err(Stale::Foreign), |h| w.ev.try_reset_timer(h, after));
        if let Err(stale) = reset {
            w.report_misuse(None, "MQ_resetTimer", Misuse::of_timer(stale), &shown_handle(raw));
        }
    }
}
