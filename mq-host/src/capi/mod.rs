//! The host's C functions: every `MQ_*` function of the MailerQ API.
//!
//! They are exported as real global C symbols (for C plugins, and for Rust
//! plugins in a host that offers no table) and also collected in the
//! [`HostApi`] table that Rust plugins get through their root module: one
//! implementation for both.
//!
//! Every function runs inside the host's panic boundary ([`host_fn!`]):
//! a host bug is logged and the function returns a neutral value; nothing
//! unwinds into a plugin. Every handle argument is checked through
//! [`crate::runtime::handles`] before anything is touched: NULL, a foreign value, a
//! handle of another thread (everything but `MQ_log` must be called on
//! the worker that owns the object) and a stale handle (its object is
//! gone, e.g. a connection after `smtp_in_close`) are refused, logged with
//! the plugin's name and counted. Resumes (`MQ_continue`/`MQ_complete`/
//! `MQ_retry`) go to the chain state machine.

#![allow(non_snake_case)]

use boundary::host_call;

mod boundary;
use crate::observe::Counters;
use crate::observe::{HostLog, Priority, Source};
use crate::runtime::connection::ConnectionState;
use crate::runtime::dispatch;
use crate::runtime::handles::{self, Kind, Refusal};
use crate::runtime::message::{AddressObj, MessageObj};
use crate::runtime::misuse::Misuse;
use crate::runtime::worker::ContextObj;
use crate::runtime::worker::{self, Worker};
use mq_abi::sys::*;
use mq_abi::Flow;
use mq_abi::{HostApi, HostApiRef};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::rc::Rc;
use std::sync::OnceLock;

/// Defines an exported host function whose body runs inside the host's
/// panic boundary; `neutral` is what it returns if the body panics.
macro_rules! host_fn {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $neutral:expr; $body:block) => {
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) $(-> $ret)? {
            host_call(stringify!($name), || $neutral, || $body)
        }
    };
}

mod clock;
mod event_loop;
mod send;

use event_loop::{table_io_watch, table_start_timer, MQ_ioUnwatch, MQ_resetTimer, MQ_stopTimer};
use send::MQ_send;

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
            plugin_panicked,
            mime_bytes,
            clock_offset: clock::clock_offset,
            hold_clock: clock::hold_clock,
            release_clock: clock::release_clock,
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
    host_call(
        "refuse_start",
        || (),
        || {
            let reason = if reason.is_null() {
                "(no reason given)".to_owned()
            } else {
                // SAFETY: a NUL-terminated string from the plugin runtime.
                unsafe { CStr::from_ptr(reason) }
                    .to_string_lossy()
                    .into_owned()
            };
            let _ = REFUSAL.try_with(|r| r.borrow_mut().get_or_insert(reason).clone());
        },
    )
}

/// Table-only extension: a Rust plugin caught a panic of its own (and
/// logged it); counted here.
unsafe extern "C" fn plugin_panicked() {
    host_call(
        "plugin_panicked",
        || (),
        || {
            if let Some(w) = worker::current() {
                Counters::bump(&w.shared.counters.plugin_panics);
            }
        },
    )
}

/// Table-only extension: `MQ_mime` with its length, so a Rust plugin reads
/// every byte of a MIME that holds a NUL byte. The bytes live as long as
/// `MQ_mime`'s pointer would ([`MessageObj::mime_slice`]).
unsafe extern "C" fn mime_bytes(msg: *mut MQ_Message, size: *mut usize) -> *const c_char {
    let set_size = |len: usize| {
        if !size.is_null() {
            // SAFETY: the table's contract: `size` is NULL or writable.
            unsafe { size.write(len) }
        }
    };
    host_call(
        "mime_bytes",
        || {
            set_size(0);
            std::ptr::null()
        },
        || {
            let slice = message("mime_bytes", msg).and_then(|(m, _)| m.mime_slice());
            let (ptr, len) = slice.unwrap_or((std::ptr::null(), 0));
            set_size(len);
            ptr.cast()
        },
    )
}

/// Takes the refusal recorded on this thread, if any.
pub(crate) fn take_start_refusal() -> Option<String> {
    REFUSAL.try_with(|r| r.borrow_mut().take()).ok().flatten()
}

// ---- refusals --------------------------------------------------------------

/// Reports a refused call: logged with the plugin's name and counted, in the
/// host the handle belongs to (whatever thread called).
fn refuse(function: &str, raw: *const c_void, kind: Kind, why: Refusal) {
    let decoded = handles::plugin_of(raw as usize as u64);
    let here = worker::current();
    // The host of the handle: this worker's, or (from a foreign thread)
    // the one whose worker registry the handle names.
    let shared = match (&here, decoded, why) {
        (_, Some((_, registry)), Refusal::OtherThread) => worker::shared_of_registry(registry),
        (Some(w), _, _) => Some(std::sync::Arc::clone(&w.shared)),
        (None, _, _) => None,
    };
    let plugin = match why {
        Refusal::Null | Refusal::NotA(_) if here.is_some() => worker::calling(),
        _ => decoded.map(|(p, _)| p),
    };
    let text = |name: &str| format!("plugin {name}: {function} refused: {}", why.describe(kind));
    let Some(shared) = shared else {
        let line = text(&plugin.map_or("(unknown)".to_owned(), |p| format!("#{p}")));
        match HostLog::fallback() {
            Some(log) => log.write(None, Priority::Critical, Source::Host, line),
            None => crate::observe::eprint_line(&format!("mq-host: {line}")),
        }
        return;
    };
    let counter = match why {
        Refusal::OtherThread => &shared.counters.wrong_thread_calls,
        _ => &shared.counters.invalid_handles,
    };
    Counters::bump(counter);
    let name = plugin.map_or("(unknown)", |p| shared.plugin_name(p));
    let worker = here.as_ref().map(|w| w.id);
    shared
        .log
        .write(worker, Priority::Critical, Source::Host, text(name));
}

/// The worker and context of a context handle of this thread.
fn context(function: &str, ctx: *mut MQ_Context) -> Option<(Rc<Worker>, usize)> {
    let refused = |why| {
        refuse(function, ctx.cast(), Kind::Context, why);
        None
    };
    let h = match handles::decode(ctx as usize as u64, Kind::Context) {
        Ok(h) => h,
        Err(why) => return refused(why),
    };
    match worker::current() {
        Some(w) if h.plugin < w.contexts.len() => Some((w, h.plugin)),
        Some(_) => refused(Refusal::Stale),
        None => refused(Refusal::OtherThread),
    }
}

fn context_obj(w: &Worker, plugin: usize) -> &ContextObj {
    &w.contexts[plugin]
}

/// The open connection of a connection handle of this thread.
fn connection(function: &str, conn: *mut MQ_Connection) -> Option<(Rc<ConnectionState>, usize)> {
    match connection_object(function, conn) {
        Some((c, _)) if c.closed.get() => {
            refuse(function, conn.cast(), Kind::Connection, Refusal::Stale);
            None
        }
        found => found,
    }
}

/// The connection of a connection handle of this thread, also one that
/// closed but is still kept for a plugin whose hold expired (its data
/// slot is the plugin's own, and the plugin frees it late).
fn connection_object(
    function: &str,
    conn: *mut MQ_Connection,
) -> Option<(Rc<ConnectionState>, usize)> {
    handles::resolve::<ConnectionState>(conn as usize as u64, Kind::Connection)
        .map_err(|why| refuse(function, conn.cast(), Kind::Connection, why))
        .ok()
}

fn message(function: &str, msg: *mut MQ_Message) -> Option<(Rc<MessageObj>, usize)> {
    handles::resolve::<MessageObj>(msg as usize as u64, Kind::Message)
        .map_err(|why| refuse(function, msg.cast(), Kind::Message, why))
        .ok()
}

fn address(function: &str, addr: *mut MQ_Address) -> Option<Rc<AddressObj>> {
    handles::resolve::<AddressObj>(addr as usize as u64, Kind::Address)
        .map(|(a, _)| a)
        .map_err(|why| refuse(function, addr.cast(), Kind::Address, why))
        .ok()
}

/// # Safety
/// `ptr` is null or valid for `len` bytes (the C API's contract).
unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
    }
}

/// The bytes of a C buffer of `plugin`'s call of `function`; `None`, and
/// reported as a misuse, for a NULL buffer with a non-zero size.
///
/// # Safety
/// `ptr` is null or valid for `len` bytes (the C API's contract).
unsafe fn buffer<'a>(
    function: &'static str,
    plugin: usize,
    ptr: *const c_char,
    len: usize,
) -> Option<&'a [u8]> {
    if ptr.is_null() && len != 0 {
        worker::with_current(|w| {
            w.report_misuse(Some(plugin), function, Misuse::NullBuffer, &len.to_string());
        });
        return None;
    }
    // SAFETY: the caller's promise.
    Some(unsafe { bytes(ptr, len) })
}

// ---- log -------------------------------------------------------------------

host_fn! {
    /// `void MQ_log(int priority, const char *message)`; thread-safe.
    fn MQ_log(priority: c_int, text: *const c_char) = (); {
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
                    crate::observe::eprint_line(&format!("[plugin] {text}"));
                }
            }
        }
    }
}

// ---- context -----------------------------------------------------------------

host_fn! {
    /// `void *MQ_contextData(MQ_Context*)`: this plugin's slot.
    fn MQ_contextData(ctx: *mut MQ_Context) -> *mut c_void = std::ptr::null_mut(); {
        context("MQ_contextData", ctx)
            .map_or(std::ptr::null_mut(), |(w, p)| context_obj(&w, p).data.get())
    }
}

host_fn! {
    /// `void MQ_setContextData(MQ_Context*, void*)`: this plugin's slot.
    fn MQ_setContextData(ctx: *mut MQ_Context, data: *mut c_void) = (); {
        if let Some((w, p)) = context("MQ_setContextData", ctx) {
            context_obj(&w, p).data.set(data);
        }
    }
}

host_fn! {
    /// `struct ev_loop *MQ_ev(MQ_Context*)`: always NULL, mq-host has no
    /// libev; reported once per plugin (a MailerQ plugin that relies on it
    /// would fail here without a word otherwise).
    fn MQ_ev(ctx: *mut MQ_Context) -> *mut c_void = std::ptr::null_mut(); {
        if let Some((w, plugin)) = context("MQ_ev", ctx) {
            w.report_misuse(Some(plugin), "MQ_ev", Misuse::NoLibevLoop, "");
        }
        std::ptr::null_mut()
    }
}

// ---- connection ----------------------------------------------------------------

host_fn! {
    /// `int MQ_fileDescriptor(MQ_Connection*)`: the SMTP connection's
    /// socket — the client's on an incoming connection, the relay's on a
    /// delivery (`smtp_out_data`, `smtp_out_sent`), as in MailerQ; -1 for
    /// a connection without one (those `Host::open` makes for tests and
    /// `mq-host run`).
    fn MQ_fileDescriptor(conn: *mut MQ_Connection) -> c_int = -1; {
        connection("MQ_fileDescriptor", conn).map_or(-1, |(c, _)| c.fd.get())
    }
}

host_fn! {
    /// `bool MQ_authenticated(MQ_Connection*)`.
    fn MQ_authenticated(conn: *mut MQ_Connection) -> bool = false; {
        connection("MQ_authenticated", conn).is_some_and(|(c, _)| c.auth.get().authenticated)
    }
}

host_fn! {
    /// `void MQ_setAuthenticated(MQ_Connection*, bool)`: one `false` makes the login fail.
    fn MQ_setAuthenticated(conn: *mut MQ_Connection, value: bool) = (); {
        let Some((conn, _)) = connection("MQ_setAuthenticated", conn) else {
            return;
        };
        let mut auth = conn.auth.get();
        if value {
            auth.authenticated = !auth.refused;
        } else {
            auth.refused = true;
            auth.authenticated = false;
        }
        conn.auth.set(auth);
    }
}

host_fn! {
    /// `bool MQ_secure(MQ_Connection*)`.
    fn MQ_secure(conn: *mut MQ_Connection) -> bool = false; {
        connection("MQ_secure", conn).is_some_and(|(c, _)| c.secure.get())
    }
}

host_fn! {
    /// `void *MQ_connectionData(MQ_Connection*)`: this plugin's slot.
    fn MQ_connectionData(conn: *mut MQ_Connection) -> *mut c_void = std::ptr::null_mut(); {
        connection_object("MQ_connectionData", conn)
            .and_then(|(c, p)| c.data.get(p).map(|d| d.get()))
            .unwrap_or(std::ptr::null_mut())
    }
}

host_fn! {
    /// `void MQ_setConnectionData(MQ_Connection*, void*)`: this plugin's slot.
    fn MQ_setConnectionData(conn: *mut MQ_Connection, data: *mut c_void) = (); {
        if let Some((c, p)) = connection_object("MQ_setConnectionData", conn) {
            if let Some(slot) = c.data.get(p) {
                slot.set(data);
            }
        }
    }
}

/// `MQ_continue`/`MQ_complete`/`MQ_retry`.
fn resume(function: &str, conn: *mut MQ_Connection, flow: Flow) {
    let raw = conn as usize as u64;
    match handles::resolve::<ConnectionState>(raw, Kind::Connection) {
        Ok((c, plugin)) => match worker::current() {
            // Also on a closed connection: it may be the late resume of a
            // take-over whose hold expired.
            Some(w) => dispatch::resume(&w, &c, plugin, flow),
            None => refuse(
                function,
                conn.cast(),
                Kind::Connection,
                Refusal::OtherThread,
            ),
        },
        Err(Refusal::OtherThread) => {
            match handles::plugin_of(raw)
                .and_then(|(p, registry)| Some((p, worker::shared_of_registry(registry)?)))
            {
                Some((plugin, shared)) => dispatch::wrong_thread_resume(function, &shared, plugin),
                None => refuse(
                    function,
                    conn.cast(),
                    Kind::Connection,
                    Refusal::OtherThread,
                ),
            }
        }
        Err(why) => refuse(function, conn.cast(), Kind::Connection, why),
    }
}

host_fn! {
    /// `void MQ_continue(MQ_Connection*)`: go on with the next plugin.
    fn MQ_continue(conn: *mut MQ_Connection) = (); {
        resume("MQ_continue", conn, Flow::Continue)
    }
}

host_fn! {
    /// `void MQ_complete(MQ_Connection*)`: skip the remaining plugins.
    fn MQ_complete(conn: *mut MQ_Connection) = (); {
        resume("MQ_complete", conn, Flow::Complete)
    }
}

host_fn! {
    /// `void MQ_retry(MQ_Connection*)`: restart the step from the first plugin.
    fn MQ_retry(conn: *mut MQ_Connection) = (); {
        resume("MQ_retry", conn, Flow::Retry)
    }
}

// ---- message -------------------------------------------------------------------

host_fn! {
    /// `struct fjson_object *MQ_json(MQ_Message*)`: the message's live
    /// libfastjson object, as in MailerQ. The same object on every call,
    /// owned by the message (a plugin must not `fjson_object_put` it) and
    /// freed with it; a plugin's changes are kept (incoming: in what is
    /// stored; outgoing: in what the delivery's result carries).
    fn MQ_json(msg: *mut MQ_Message) -> *const c_void = std::ptr::null(); {
        message("MQ_json", msg).map_or(std::ptr::null(), |(m, _)| m.json_object().cast_const().cast())
    }
}

host_fn! {
    /// `MQ_Address *MQ_envelope(MQ_Message*)`.
    fn MQ_envelope(msg: *mut MQ_Message) -> *mut MQ_Address = std::ptr::null_mut(); {
        message("MQ_envelope", msg)
            .and_then(|(m, plugin)| m.envelope().handle(plugin))
            .map_or(std::ptr::null_mut(), |h| h.to_ptr())
    }
}

host_fn! {
    /// `void MQ_setEnvelope(MQ_Message*, const char*, size_t)`: NULL with a
    /// size is refused (a misuse), NULL with 0 is the empty address.
    fn MQ_setEnvelope(msg: *mut MQ_Message, text: *const c_char, size: usize) = (); {
        let Some((m, plugin)) = message("MQ_setEnvelope", msg) else {
            return;
        };
        // SAFETY: the C API: `text` is valid for `size` bytes.
        if let Some(text) = unsafe { buffer("MQ_setEnvelope", plugin, text, size) } {
            m.set_envelope(text);
        }
    }
}

host_fn! {
    /// `const char *MQ_recipient(MQ_Message*)`.
    fn MQ_recipient(msg: *mut MQ_Message) -> *const c_char = std::ptr::null(); {
        message("MQ_recipient", msg).map_or(std::ptr::null(), |(m, _)| m.recipient_ptr())
    }
}

host_fn! {
    /// `void MQ_setRecipient(MQ_Message*, const char*, size_t)`: NULL with a
    /// size is refused (a misuse).
    fn MQ_setRecipient(msg: *mut MQ_Message, text: *const c_char, size: usize) = (); {
        let Some((m, plugin)) = message("MQ_setRecipient", msg) else {
            return;
        };
        // SAFETY: the C API: `text` is valid for `size` bytes.
        if let Some(text) = unsafe { buffer("MQ_setRecipient", plugin, text, size) } {
            m.set_recipient(text);
        }
    }
}

host_fn! {
    /// `const char *MQ_mime(MQ_Message*)`: NULL when the message has no MIME.
    /// On an incoming message the JSON's `mime`; on an outgoing one NULL
    /// until a plugin set the MIME with `MQ_setMime`, as in MailerQ.
    fn MQ_mime(msg: *mut MQ_Message) -> *const c_char = std::ptr::null(); {
        message("MQ_mime", msg).map_or(std::ptr::null(), |(m, _)| m.mime_ptr())
    }
}

host_fn! {
    /// `void MQ_setMime(MQ_Message*, const char*, size_t)`: NULL with a size
    /// is refused (a misuse).
    fn MQ_setMime(msg: *mut MQ_Message, text: *const c_char, size: usize) = (); {
        let Some((m, plugin)) = message("MQ_setMime", msg) else {
            return;
        };
        // SAFETY: the C API: `text` is valid for `size` bytes.
        if let Some(text) = unsafe { buffer("MQ_setMime", plugin, text, size) } {
            m.set_mime(text);
        }
    }
}

/// Reads or sets the `local` flag of a message or a recipient address.
fn with_local_flag<R>(
    function: &str,
    ptr: *mut MQ_Message,
    f: impl FnOnce(&std::cell::Cell<bool>) -> R,
) -> Option<R> {
    let raw = ptr as usize as u64;
    match handles::Handle::from_raw(raw).map(|h| h.kind) {
        Some(Kind::Address) => address(function, ptr.cast()).map(|a| f(&a.local)),
        _ => message(function, ptr).map(|(m, _)| f(&m.local)),
    }
}

host_fn! {
    /// `bool MQ_local(MQ_Message*)`: also takes a recipient's `MQ_Address*`.
    fn MQ_local(msg: *mut MQ_Message) -> bool = false; {
        with_local_flag("MQ_local", msg, |l| l.get()).unwrap_or(false)
    }
}

host_fn! {
    /// `void MQ_setLocal(MQ_Message*, bool)`: also takes a recipient's `MQ_Address*`.
    fn MQ_setLocal(msg: *mut MQ_Message, value: bool) = (); {
        with_local_flag("MQ_setLocal", msg, |l| l.set(value));
    }
}

host_fn! {
    /// `const char *MQ_email(MQ_Address*)`: NULL for the empty address.
    fn MQ_email(addr: *mut MQ_Address) -> *const c_char = std::ptr::null(); {
        address("MQ_email", addr).map_or(std::ptr::null(), |a| a.email_ptr())
    }
}
