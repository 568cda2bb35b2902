//! The host's C functions: every `MQ_*` function of the MailerQ API.
//!
//! They are exported as real global C symbols (for C plugins, and for Rust
//! plugins in a host that offers no table) and also collected in the
//! [`HostApi`] table that Rust plugins get through their root module: one
//! implementation for both.
//!
//! Everything but `MQ_log` must be called on the worker thread that owns
//! the object; a call from elsewhere is refused, logged and counted.
//! Resumes (`MQ_continue`/`MQ_complete`/`MQ_retry`) go to the chain
//! state machine.

#![allow(non_snake_case)]

use crate::chain;
use crate::counters::Counters;
use crate::event_loop::{Interest, TimerHandle, WatcherHandle};
use crate::hostlog::{HostLog, Priority, Source};
use crate::objects::*;
use crate::worker::{self, Worker};
use mq_plugin::abi::{HostApi, HostApiRef, IoCallbackParam, TimerCallbackParam};
use mq_plugin::sys::*;
use mq_plugin::Flow;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

/// The table handed to Rust plugins.
pub(crate) fn host_api() -> HostApiRef {
    static API: OnceLock<HostApiRef> = OnceLock::new();
    *API.get_or_init(|| {
        use abi_stable::prefix_type::PrefixTypeTrait;
        HostApi {
            log: MQ_log,
            context_data: MQ_contextData,
            set_context_data: MQ_setContextData,
            ev: MQ_ev,
            io_watch: table_io_watch,
            io_unwatch: MQ_ioUnwatch,
            start_timer: table_start_timer,
            stop_timer: MQ_stopTimer,
            reset_timer: MQ_resetTimer,
            file_descriptor: MQ_fileDescriptor,
            send: MQ_send,
            authenticated: MQ_authenticated,
            set_authenticated: MQ_setAuthenticated,
            secure: MQ_secure,
            connection_data: MQ_connectionData,
            set_connection_data: MQ_setConnectionData,
            continue_: MQ_continue,
            complete: MQ_complete,
            retry: MQ_retry,
            json: MQ_json,
            envelope: MQ_envelope,
            set_envelope: MQ_setEnvelope,
            recipient: MQ_recipient,
            set_recipient: MQ_setRecipient,
            mime: MQ_mime,
            set_mime: MQ_setMime,
            local: MQ_local,
            set_local: MQ_setLocal,
            email: MQ_email,
            refuse_start,
        }
        .leak_into_prefix()
    })
}

thread_local! {
    /// The reason a plugin gave, during `mq_initialize` on this thread, for
    /// refusing the start.
    static REFUSAL: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Table-only extension: a Rust plugin's failed `mq_initialize` refuses the
/// start of the host that is initializing it on this thread.
unsafe extern "C" fn refuse_start(reason: *const c_char) {
    let reason = if reason.is_null() {
        "(no reason given)".to_owned()
    } else {
        // SAFETY: a NUL-terminated string from the plugin runtime.
        unsafe { CStr::from_ptr(reason) }
            .to_string_lossy()
            .into_owned()
    };
    let _ = REFUSAL.try_with(|r| r.borrow_mut().get_or_insert(reason).clone());
}

/// Takes the refusal recorded on this thread, if any.
pub(crate) fn take_start_refusal() -> Option<String> {
    REFUSAL.try_with(|r| r.borrow_mut().take()).ok().flatten()
}

/// Whether the running executable exports the `MQ_*` symbols, so that a C
/// plugin's `dlopen` can resolve them.
pub(crate) fn host_symbols_exported() -> bool {
    // SAFETY: a plain symbol lookup in the global scope.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"MQ_continue".as_ptr()) };
    found == MQ_continue as *mut c_void
}

unsafe extern "C" fn table_io_watch(
    ctx: *mut MQ_Context,
    fd: c_int,
    events: c_int,
    cb: IoCallbackParam,
    data: *mut c_void,
) -> *mut MQ_IOWatcher {
    // SAFETY: forwarded as received.
    unsafe { MQ_ioWatch(ctx, fd, events, cb.callback, data) }
}

unsafe extern "C" fn table_start_timer(
    ctx: *mut MQ_Context,
    seconds: f32,
    cb: TimerCallbackParam,
    data: *mut c_void,
) -> *mut MQ_Timer {
    // SAFETY: forwarded as received.
    unsafe { MQ_startTimer(ctx, seconds, cb.callback, data) }
}

/// Reports a refused host function call.
fn refuse(function: &str, why: &str) {
    match worker::current() {
        Some(w) => {
            Counters::bump(&w.shared.counters.wrong_thread_calls);
            w.log(Priority::Critical, format!("{function} refused: {why}"));
        }
        None => {
            if let Some(log) = HostLog::fallback() {
                log.write(
                    None,
                    Priority::Critical,
                    Source::Host,
                    format!("{function} refused: {why}"),
                );
            }
        }
    }
}

/// The worker and context for a context pointer, if it belongs to this thread.
unsafe fn context(
    function: &str,
    ctx: *mut MQ_Context,
) -> Option<(Rc<Worker>, &'static ContextObj)> {
    // SAFETY: the caller passes a pointer it got from the host (or null).
    if unsafe { tag_of(ctx.cast()) } != Some(CONTEXT_TAG) {
        refuse(function, "not an MQ_Context");
        return None;
    }
    // SAFETY: tagged as a context; contexts live as long as their worker.
    let obj: &'static ContextObj = unsafe { &*ctx.cast::<ContextObj>() };
    match worker::current() {
        Some(w) if w.id == obj.worker => Some((w, obj)),
        _ => {
            refuse(function, "called off the context's worker thread");
            None
        }
    }
}

/// The view for a connection pointer, if it belongs to this thread.
unsafe fn connection(function: &str, conn: *mut MQ_Connection) -> Option<&'static ConnectionView> {
    // SAFETY: a pointer the plugin got from the host (or null).
    if unsafe { tag_of(conn.cast()) } != Some(CONNECTION_TAG) {
        refuse(function, "not an MQ_Connection");
        return None;
    }
    // SAFETY: tagged as a connection view, alive while the connection is.
    let view: &'static ConnectionView = unsafe { &*conn.cast::<ConnectionView>() };
    if view.owner != std::thread::current().id() {
        refuse(function, "called off the connection's worker thread");
        return None;
    }
    Some(view)
}

unsafe fn state(view: &ConnectionView) -> &ConnectionState {
    // SAFETY: a view points to its live connection.
    unsafe { &*view.conn.get() }
}

unsafe fn message(function: &str, msg: *mut MQ_Message) -> Option<&'static MessageObj> {
    // SAFETY: a pointer the plugin got from the host (or null).
    if unsafe { tag_of(msg.cast()) } != Some(MESSAGE_TAG) {
        refuse(function, "not an MQ_Message");
        return None;
    }
    // SAFETY: tagged as a message, alive during its chain.
    Some(unsafe { &*msg.cast::<MessageObj>() })
}

unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the C API: a pointer valid for `len` bytes.
        unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
    }
}

fn seconds(value: f32) -> Duration {
    if value.is_finite() && value > 0.0 {
        Duration::from_secs_f32(value)
    } else {
        Duration::ZERO
    }
}

// ---- log -------------------------------------------------------------------

/// `void MQ_log(int priority, const char *message)`; thread-safe.
#[no_mangle]
pub unsafe extern "C" fn MQ_log(priority: c_int, text: *const c_char) {
    let text = if text.is_null() {
        "(null)".to_owned()
    } else {
        // SAFETY: a NUL-terminated string, per the API.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    let (priority_level, valid) = Priority::from_c(priority);
    let text = if valid {
        text
    } else {
        format!("(invalid priority {priority}) {text}")
    };
    match worker::current() {
        Some(w) => w
            .shared
            .log
            .write(Some(w.id), priority_level, Source::Plugin, text),
        None => {
            if let Some(log) = HostLog::fallback() {
                log.write(None, priority_level, Source::Plugin, text);
            } else {
                eprintln!("[plugin] {text}");
            }
        }
    }
}

// ---- context -----------------------------------------------------------------

/// `void *MQ_contextData(MQ_Context*)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_contextData(ctx: *mut MQ_Context) -> *mut c_void {
    // SAFETY: checked by `context`.
    unsafe { context("MQ_contextData", ctx) }.map_or(std::ptr::null_mut(), |(_, c)| c.data.get())
}

/// `void MQ_setContextData(MQ_Context*, void*)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_setContextData(ctx: *mut MQ_Context, data: *mut c_void) {
    // SAFETY: checked by `context`.
    if let Some((_, c)) = unsafe { context("MQ_setContextData", ctx) } {
        c.data.set(data);
    }
}

/// `struct ev_loop *MQ_ev(MQ_Context*)`: always NULL, mq-host has no libev.
#[no_mangle]
pub unsafe extern "C" fn MQ_ev(_ctx: *mut MQ_Context) -> *mut c_void {
    std::ptr::null_mut()
}

/// `MQ_IOWatcher *MQ_ioWatch(MQ_Context*, int fd, int events, cb, void *data)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_ioWatch(
    ctx: *mut MQ_Context,
    fd: c_int,
    events: c_int,
    cb: Option<MQ_IOCallback>,
    data: *mut c_void,
) -> *mut MQ_IOWatcher {
    // SAFETY: checked by `context`.
    let Some((w, _)) = (unsafe { context("MQ_ioWatch", ctx) }) else {
        return std::ptr::null_mut();
    };
    let Some(cb) = cb else {
        refuse("MQ_ioWatch", "no callback");
        return std::ptr::null_mut();
    };
    let interest = Interest::from_mq(events);
    if !interest.read && !interest.write {
        refuse("MQ_ioWatch", "events is neither MQ_READ nor MQ_WRITE");
        return std::ptr::null_mut();
    }
    let callback = Box::new(move |handle: WatcherHandle, fd: c_int, ready: Interest| {
        // SAFETY: the plugin's callback with the data it registered.
        unsafe {
            cb(
                handle.to_raw() as usize as *mut MQ_IOWatcher,
                fd,
                ready.to_mq(),
                data,
            )
        }
    });
    match w.ev.watch_io(fd, interest, callback) {
        Ok(handle) => handle.to_raw() as usize as *mut MQ_IOWatcher,
        Err(e) => {
            w.log(
                Priority::Critical,
                format!("MQ_ioWatch of fd {fd} failed: {e}"),
            );
            std::ptr::null_mut()
        }
    }
}

/// `void MQ_ioUnwatch(MQ_IOWatcher*)`: a stale or foreign handle is a no-op.
#[no_mangle]
pub unsafe extern "C" fn MQ_ioUnwatch(watcher: *mut MQ_IOWatcher) {
    let Some(handle) = WatcherHandle::from_raw(watcher as usize as u64) else {
        return;
    };
    match worker::current() {
        Some(w) => {
            w.ev.unwatch_io(handle);
        }
        None => refuse("MQ_ioUnwatch", "called off a worker thread"),
    }
}

/// `MQ_Timer *MQ_startTimer(MQ_Context*, float seconds, cb, void *data)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_startTimer(
    ctx: *mut MQ_Context,
    seconds_: f32,
    cb: Option<MQ_TimerCallback>,
    data: *mut c_void,
) -> *mut MQ_Timer {
    // SAFETY: checked by `context`.
    let Some((w, _)) = (unsafe { context("MQ_startTimer", ctx) }) else {
        return std::ptr::null_mut();
    };
    let Some(cb) = cb else {
        refuse("MQ_startTimer", "no callback");
        return std::ptr::null_mut();
    };
    // SAFETY: the plugin's callback with the data it registered.
    let handle =
        w.ev.start_timer(seconds(seconds_), Box::new(move || unsafe { cb(data) }));
    handle.to_raw() as usize as *mut MQ_Timer
}

/// `void MQ_stopTimer(MQ_Timer*)`: a fired or stale timer is a no-op.
#[no_mangle]
pub unsafe extern "C" fn MQ_stopTimer(timer: *mut MQ_Timer) {
    let Some(handle) = TimerHandle::from_raw(timer as usize as u64) else {
        return;
    };
    match worker::current() {
        Some(w) => {
            w.ev.stop_timer(handle);
        }
        None => refuse("MQ_stopTimer", "called off a worker thread"),
    }
}

/// `void MQ_resetTimer(MQ_Timer*, float seconds)`: a fired or stale timer is a no-op.
#[no_mangle]
pub unsafe extern "C" fn MQ_resetTimer(timer: *mut MQ_Timer, seconds_: f32) {
    let Some(handle) = TimerHandle::from_raw(timer as usize as u64) else {
        return;
    };
    match worker::current() {
        Some(w) => {
            w.ev.reset_timer(handle, seconds(seconds_));
        }
        None => refuse("MQ_resetTimer", "called off a worker thread"),
    }
}

// ---- connection ----------------------------------------------------------------

/// `int MQ_fileDescriptor(MQ_Connection*)`; -1 for connections without a socket.
#[no_mangle]
pub unsafe extern "C" fn MQ_fileDescriptor(conn: *mut MQ_Connection) -> c_int {
    // SAFETY: checked by `connection`.
    unsafe { connection("MQ_fileDescriptor", conn) }.map_or(-1, |v| unsafe { state(v) }.fd.get())
}

/// `size_t MQ_send(MQ_Connection*, const void *buf, size_t size)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_send(
    conn: *mut MQ_Connection,
    buf: *const c_void,
    size: usize,
) -> usize {
    // SAFETY: checked by `connection`; the buffer is valid for `size`.
    let Some(view) = (unsafe { connection("MQ_send", conn) }) else {
        return 0;
    };
    // SAFETY: the C API: `buf` is valid for `size` bytes.
    let data = unsafe { bytes(buf.cast(), size) };
    // SAFETY: a view checked by `connection` points to its live connection.
    unsafe { state(view) }
        .sent
        .borrow_mut()
        .extend_from_slice(data);
    data.len()
}

/// `bool MQ_authenticated(MQ_Connection*)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_authenticated(conn: *mut MQ_Connection) -> bool {
    // SAFETY: checked by `connection`.
    unsafe { connection("MQ_authenticated", conn) }
        // SAFETY: a checked view points to its live connection.
        .is_some_and(|v| unsafe { state(v) }.auth.get().authenticated)
}

/// `void MQ_setAuthenticated(MQ_Connection*, bool)`: one `false` makes the login fail.
#[no_mangle]
pub unsafe extern "C" fn MQ_setAuthenticated(conn: *mut MQ_Connection, value: bool) {
    // SAFETY: checked by `connection`.
    let Some(view) = (unsafe { connection("MQ_setAuthenticated", conn) }) else {
        return;
    };
    // SAFETY: a checked view points to its live connection.
    let conn = unsafe { state(view) };
    let mut auth = conn.auth.get();
    if value {
        auth.authenticated = !auth.refused;
    } else {
        auth.refused = true;
        auth.authenticated = false;
    }
    conn.auth.set(auth);
}

/// `bool MQ_secure(MQ_Connection*)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_secure(conn: *mut MQ_Connection) -> bool {
    // SAFETY: checked by `connection`.
    unsafe { connection("MQ_secure", conn) }.is_some_and(|v| unsafe { state(v) }.secure.get())
}

/// `void *MQ_connectionData(MQ_Connection*)`: this plugin's slot.
#[no_mangle]
pub unsafe extern "C" fn MQ_connectionData(conn: *mut MQ_Connection) -> *mut c_void {
    // SAFETY: checked by `connection`.
    unsafe { connection("MQ_connectionData", conn) }.map_or(std::ptr::null_mut(), |v| v.data.get())
}

/// `void MQ_setConnectionData(MQ_Connection*, void*)`: this plugin's slot.
#[no_mangle]
pub unsafe extern "C" fn MQ_setConnectionData(conn: *mut MQ_Connection, data: *mut c_void) {
    // SAFETY: checked by `connection`.
    if let Some(view) = unsafe { connection("MQ_setConnectionData", conn) } {
        view.data.set(data);
    }
}

unsafe fn resume(function: &str, conn: *mut MQ_Connection, flow: Flow) {
    // SAFETY: a pointer the plugin got from the host (or null).
    if unsafe { tag_of(conn.cast()) } != Some(CONNECTION_TAG) {
        refuse(function, "not an MQ_Connection");
        return;
    }
    // SAFETY: tagged as a connection view; only its immutable fields are
    // read until the thread is known to be the owner.
    let view: &ConnectionView = unsafe { &*conn.cast::<ConnectionView>() };
    if view.owner != std::thread::current().id() {
        // SAFETY: the host's shared state outlives every connection.
        chain::wrong_thread_resume(function, unsafe { &*view.shared }, view.plugin);
        return;
    }
    // SAFETY: on the owner thread the connection is live.
    chain::resume(unsafe { state(view) }, view.plugin, flow);
}

/// `void MQ_continue(MQ_Connection*)`: go on with the next plugin.
#[no_mangle]
pub unsafe extern "C" fn MQ_continue(conn: *mut MQ_Connection) {
    // SAFETY: see `resume`.
    unsafe { resume("MQ_continue", conn, Flow::Continue) }
}

/// `void MQ_complete(MQ_Connection*)`: skip the remaining plugins.
#[no_mangle]
pub unsafe extern "C" fn MQ_complete(conn: *mut MQ_Connection) {
    // SAFETY: see `resume`.
    unsafe { resume("MQ_complete", conn, Flow::Complete) }
}

/// `void MQ_retry(MQ_Connection*)`: restart the step from the first plugin.
#[no_mangle]
pub unsafe extern "C" fn MQ_retry(conn: *mut MQ_Connection) {
    // SAFETY: see `resume`.
    unsafe { resume("MQ_retry", conn, Flow::Retry) }
}

// ---- message -------------------------------------------------------------------

/// `MQ_json(MQ_Message*)`: in mq-host, the JSON text (valid until the message changes).
#[no_mangle]
pub unsafe extern "C" fn MQ_json(msg: *mut MQ_Message) -> *const c_void {
    // SAFETY: checked by `message`.
    unsafe { message("MQ_json", msg) }.map_or(std::ptr::null(), |m| m.json_ptr().cast())
}

/// `MQ_Address *MQ_envelope(MQ_Message*)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_envelope(msg: *mut MQ_Message) -> *mut MQ_Address {
    // SAFETY: checked by `message`.
    unsafe { message("MQ_envelope", msg) }.map_or(std::ptr::null_mut(), |m| m.envelope().as_raw())
}

/// `void MQ_setEnvelope(MQ_Message*, const char*, size_t)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_setEnvelope(msg: *mut MQ_Message, text: *const c_char, size: usize) {
    // SAFETY: checked by `message`; the text is valid for `size`.
    if let Some(m) = unsafe { message("MQ_setEnvelope", msg) } {
        // SAFETY: the C API: `text` is valid for `size` bytes.
        m.set_envelope(unsafe { bytes(text, size) });
    }
}

/// `const char *MQ_recipient(MQ_Message*)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_recipient(msg: *mut MQ_Message) -> *const c_char {
    // SAFETY: checked by `message`.
    unsafe { message("MQ_recipient", msg) }.map_or(std::ptr::null(), |m| m.recipient_ptr())
}

/// `void MQ_setRecipient(MQ_Message*, const char*, size_t)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_setRecipient(msg: *mut MQ_Message, text: *const c_char, size: usize) {
    // SAFETY: checked by `message`; the text is valid for `size`.
    if let Some(m) = unsafe { message("MQ_setRecipient", msg) } {
        // SAFETY: the C API: `text` is valid for `size` bytes.
        m.set_recipient(unsafe { bytes(text, size) });
    }
}

/// `const char *MQ_mime(MQ_Message*)`: NULL when the message has no MIME.
#[no_mangle]
pub unsafe extern "C" fn MQ_mime(msg: *mut MQ_Message) -> *const c_char {
    // SAFETY: checked by `message`.
    unsafe { message("MQ_mime", msg) }.map_or(std::ptr::null(), |m| m.mime_ptr())
}

/// `void MQ_setMime(MQ_Message*, const char*, size_t)`.
#[no_mangle]
pub unsafe extern "C" fn MQ_setMime(msg: *mut MQ_Message, text: *const c_char, size: usize) {
    // SAFETY: checked by `message`; the text is valid for `size`.
    if let Some(m) = unsafe { message("MQ_setMime", msg) } {
        // SAFETY: the C API: `text` is valid for `size` bytes.
        m.set_mime(unsafe { bytes(text, size) });
    }
}

/// The `local` flag of a message or a recipient address.
unsafe fn local_flag(
    function: &str,
    ptr: *mut MQ_Message,
) -> Option<&'static std::cell::Cell<bool>> {
    // SAFETY: a pointer the plugin got from the host (or null); once the
    // tag is known, the object is of that type and alive during its chain.
    unsafe {
        match tag_of(ptr.cast()) {
            Some(MESSAGE_TAG) => Some(&(*ptr.cast::<MessageObj>()).local),
            Some(ADDRESS_TAG) => Some(&(*ptr.cast::<AddressObj>()).local),
            _ => {
                refuse(function, "not an MQ_Message or MQ_Address");
                None
            }
        }
    }
}

/// `bool MQ_local(MQ_Message*)`: also takes a recipient's `MQ_Address*`.
#[no_mangle]
pub unsafe extern "C" fn MQ_local(msg: *mut MQ_Message) -> bool {
    // SAFETY: checked by `local_flag`.
    unsafe { local_flag("MQ_local", msg) }.is_some_and(|l| l.get())
}

/// `void MQ_setLocal(MQ_Message*, bool)`: also takes a recipient's `MQ_Address*`.
#[no_mangle]
pub unsafe extern "C" fn MQ_setLocal(msg: *mut MQ_Message, value: bool) {
    // SAFETY: checked by `local_flag`.
    if let Some(l) = unsafe { local_flag("MQ_setLocal", msg) } {
        l.set(value);
    }
}

/// `const char *MQ_email(MQ_Address*)`: NULL for the empty address.
#[no_mangle]
pub unsafe extern "C" fn MQ_email(addr: *mut MQ_Address) -> *const c_char {
    // SAFETY: a pointer the plugin got from the host (or null).
    if unsafe { tag_of(addr.cast()) } != Some(ADDRESS_TAG) {
        refuse("MQ_email", "not an MQ_Address");
        return std::ptr::null();
    }
    // SAFETY: tagged as an address.
    unsafe { &*addr.cast::<AddressObj>() }.email_ptr()
}
