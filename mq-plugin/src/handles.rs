//! Safe handles over the host's C objects.
//!
//! A handle is only ever seen by reference (`&Context`, `&Connection`,
//! `&Address`, `&Credentials`, `&mut Message`), created from the raw pointer
//! the host passed to the hook. The reference's lifetime is the hook call,
//! so a handle cannot outlive the control the plugin holds. Handles are
//! neither `Send` nor `Sync`: host functions must be called on the worker
//! thread that owns the object.
//!
//! This module holds every pointer cast between C objects and handles.

use crate::data::DataStore;
use crate::host::host;
use crate::sys::*;
use std::ffi::{c_char, c_void, CStr};
use std::marker::{PhantomData, PhantomPinned};
use std::mem::ManuallyDrop;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{FromRawFd, RawFd};

/// Makes a type an opaque, unsized-in-spirit handle: zero-sized, `!Send`,
/// `!Sync`, `!Unpin`, only reachable by reference.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident => $raw:ident) => {
        $(#[$doc])*
        pub struct $name {
            _opaque: [u8; 0],
            _not_send_sync: PhantomData<(*mut u8, PhantomPinned)>,
        }

        impl $name {
            /// The handle for a raw pointer the host passed.
            ///
            /// # Safety
            /// `raw` must be a non-null pointer the host passed to the
            /// current hook (or an equivalent live object), valid for `'a`.
            #[doc(hidden)]
            pub unsafe fn from_raw<'a>(raw: *mut $raw) -> &'a Self {
                debug_assert!(!raw.is_null());
                // SAFETY: the handle is zero-sized, so any non-null, aligned
                // pointer is a valid reference to it; validity for 'a is the
                // caller's promise.
                unsafe { &*raw.cast::<Self>() }
            }

            /// The raw pointer, for calling `MQ_*` functions directly
            /// (see [`crate::raw`]).
            pub fn as_raw(&self) -> *mut $raw {
                self as *const Self as *mut $raw
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({:p})"), self.as_raw())
            }
        }
    };
}

handle! {
    /// A worker's context: one per plugin per worker thread.
    ///
    /// Gives access to the worker's event loop (timers, fd watchers) and to
    /// typed per-context data.
    Context => MQ_Context
}

handle! {
    /// An SMTP connection, incoming or outgoing.
    Connection => MQ_Connection
}

handle! {
    /// An envelope (`MAIL FROM`) or recipient (`RCPT TO`) address.
    Address => MQ_Address
}

impl Context {
    /// Typed per-context data of this plugin, if a value of type `T` was
    /// attached. The framework drops it at `mq_context_cleanup`.
    pub fn data<T: 'static>(&self) -> Option<&T> {
        self.store(false)?.get::<T>()
    }

    /// Typed per-context data of this plugin, attaching `make()` first if
    /// there is no `T` yet. Values are never replaced: keep mutable state in
    /// a `Cell` or `RefCell`.
    ///
    /// ```no_run
    /// # use mq_plugin::Context;
    /// # fn f(ctx: &Context) {
    /// let counter = ctx.data_or_insert_with(|| std::cell::Cell::new(0u64));
    /// counter.set(counter.get() + 1);
    /// # }
    /// ```
    pub fn data_or_insert_with<T: 'static>(&self, make: impl FnOnce() -> T) -> &T {
        self.store(true)
            .expect("created on demand")
            .get_or_insert_with(make)
    }

    /// The context's data store, created on demand (for the executor).
    pub(crate) fn store_for_runtime(&self) -> &DataStore {
        self.store(true).expect("created on demand")
    }

    /// The framework's own per-context state, if the context has any.
    pub(crate) fn runtime_if_any(&self) -> Option<&crate::executor::RuntimeSlot> {
        self.store(false).map(|s| &s.runtime)
    }

    fn store(&self, create: bool) -> Option<&DataStore> {
        // SAFETY: null or a DataStore this runtime boxed, live as long as
        // the context's data (until `mq_context_cleanup`).
        unsafe { self.store_ptr(create).as_ref() }
    }

    /// The context's data store as the host keeps it (a raw pointer, so
    /// that the executor may cache it without holding a reference), created
    /// on demand if `create`; null if there is none.
    pub(crate) fn store_ptr(&self, create: bool) -> *const DataStore {
        // SAFETY: `self` is a live context of this plugin; the slot holds
        // either null or a DataStore this runtime boxed.
        unsafe {
            let slot = host().api.context_data(self.as_raw());
            if !slot.is_null() || !create {
                return slot.cast::<DataStore>();
            }
            let store = Box::into_raw(Box::<DataStore>::default());
            host().api.set_context_data(self.as_raw(), store.cast());
            store
        }
    }

    /// MailerQ's libev loop (`MQ_ev`), or null in hosts without libev such
    /// as `mq-host`. Prefer [`Context::start_timer`] and
    /// [`Context::watch_fd`], which work everywhere.
    pub fn ev_loop(&self) -> *mut c_void {
        // SAFETY: live context.
        unsafe { host().api.ev(self.as_raw()) }
    }
}

/// Drops the context's data store; called by the framework at
/// `mq_context_cleanup`, after the plugin's own hook.
pub(crate) unsafe fn free_context_data(ctx: *mut MQ_Context) {
    // SAFETY: live context; the slot holds null or our boxed DataStore.
    unsafe {
        let slot = host().api.context_data(ctx);
        if !slot.is_null() {
            host().api.set_context_data(ctx, std::ptr::null_mut());
            drop(Box::from_raw(slot.cast::<DataStore>()));
        }
    }
}

impl Connection {
    /// Typed per-connection data of this plugin, if a value of type `T` was
    /// attached. The framework drops it after `mq_smtp_in_close`.
    pub fn data<T: 'static>(&self) -> Option<&T> {
        self.store(false)?.get::<T>()
    }

    /// Typed per-connection data, attaching `make()` first if there is no
    /// `T` yet (see [`Context::data_or_insert_with`]).
    ///
    /// Outgoing connections have no close event in the MailerQ API, so data
    /// attached in `smtp_out_*` hooks is dropped when that hook call ends.
    pub fn data_or_insert_with<T: 'static>(&self, make: impl FnOnce() -> T) -> &T {
        self.store(true)
            .expect("created on demand")
            .get_or_insert_with(make)
    }

    fn store(&self, create: bool) -> Option<&DataStore> {
        // SAFETY: as in Context::store.
        unsafe {
            let slot = host().api.connection_data(self.as_raw());
            if !slot.is_null() {
                return Some(&*slot.cast::<DataStore>());
            }
            if !create {
                return None;
            }
            let store = Box::into_raw(Box::<DataStore>::default());
            host().api.set_connection_data(self.as_raw(), store.cast());
            Some(&*store)
        }
    }

    /// Sends raw bytes to the SMTP peer (host-buffered); returns how many
    /// the host accepted. In `mq-host`, a reply sent from an `smtp_in_*`
    /// hook replaces the host's own reply to that command; where no client
    /// can get the bytes (`smtp_in_close`, the `smtp_out_*` hooks, no hook
    /// running) it returns 0 and the host logs why.
    pub fn send(&self, bytes: &[u8]) -> usize {
        // SAFETY: live connection; the buffer is valid for its length.
        unsafe {
            host()
                .api
                .send(self.as_raw(), bytes.as_ptr().cast(), bytes.len())
        }
    }

    /// Whether the client is authenticated.
    pub fn is_authenticated(&self) -> bool {
        // SAFETY: live connection.
        unsafe { host().api.authenticated(self.as_raw()) }
    }

    /// Accepts (`true`) or refuses (`false`) the client's credentials. A
    /// plugin that sets `false` after another set `true` makes the login fail.
    pub fn set_authenticated(&self, authenticated: bool) {
        // SAFETY: live connection.
        unsafe { host().api.set_authenticated(self.as_raw(), authenticated) }
    }

    /// Whether the connection is secured with TLS.
    pub fn is_secure(&self) -> bool {
        // SAFETY: live connection.
        unsafe { host().api.secure(self.as_raw()) }
    }

    /// The socket's file descriptor, for `getpeername`/`getsockname` only:
    /// never read, write or close it.
    pub fn file_descriptor(&self) -> RawFd {
        // SAFETY: live connection.
        unsafe { host().api.file_descriptor(self.as_raw()) }
    }

    /// The remote address of the connection.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.with_socket(|s| s.peer_addr())
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.with_socket(|s| s.local_addr())
    }

    fn with_socket<R>(
        &self,
        f: impl FnOnce(&TcpStream) -> std::io::Result<R>,
    ) -> std::io::Result<R> {
        let fd = self.file_descriptor();
        if fd < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the connection has no socket",
            ));
        }
        // SAFETY: the host owns the descriptor and keeps it open for the
        // hook call; ManuallyDrop makes sure we never close it.
        let socket = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
        f(&socket)
    }
}

/// Drops the connection's data store (after `mq_smtp_in_close`, and after
/// every `smtp_out_*` hook).
pub(crate) unsafe fn free_connection_data(conn: *mut MQ_Connection) {
    // SAFETY: live connection; the slot holds null or our boxed DataStore.
    unsafe {
        let slot = host().api.connection_data(conn);
        if !slot.is_null() {
            host().api.set_connection_data(conn, std::ptr::null_mut());
            drop(Box::from_raw(slot.cast::<DataStore>()));
        }
    }
}

/// `bytes` as text, if UTF-8: an ASCII check a word at a time first (an
/// address nearly always is ASCII; for short strings this is about a third
/// of `str::from_utf8`'s cost), the full validation only for other bytes.
#[inline]
pub(crate) fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

impl Address {
    /// The email address, or `None` for the empty address (`<>`, bounces)
    /// and for addresses that are not UTF-8 (see [`Address::email_bytes`]).
    pub fn email(&self) -> Option<&str> {
        utf8(self.email_bytes()?)
    }

    /// The email address as bytes, or `None` for the empty address.
    pub fn email_bytes(&self) -> Option<&[u8]> {
        // SAFETY: live address; the string lives as long as the address.
        let raw = unsafe { host().api.email(self.as_raw()) };
        // SAFETY: the host returns null or a NUL-terminated string.
        unsafe { c_bytes(raw) }.filter(|b| !b.is_empty())
    }

    /// The address parsed as an RFC 5321 mailbox: decide on its
    /// [`domain`](crate::Mailbox::domain), never on how the text ends. An
    /// address that is not one — the empty address, a control character, a
    /// second unquoted `@`, ... — is an error naming the cause (safe to put
    /// in a reply: it never quotes the address).
    ///
    /// ```no_run
    /// use mq_plugin::prelude::*;
    ///
    /// #[mq_hook(smtp_in_rcptto)]
    /// fn only_example_org(conn: &Connection, rcpt: &Address) -> Flow {
    ///     match rcpt.mailbox() {
    ///         Ok(mailbox) if mailbox.domain_is("example.org") => Flow::Continue,
    ///         Ok(_) => {
    ///             conn.send(b"550 5.7.1 not here\r\n");
    ///             Flow::Complete
    ///         }
    ///         Err(why) => {
    ///             conn.send(format!("553 5.1.3 not a valid mailbox: {why}\r\n").as_bytes());
    ///             Flow::Complete
    ///         }
    ///     }
    /// }
    /// # mq_plugin::declare_plugin!();
    /// # fn main() {}
    /// ```
    pub fn mailbox(&self) -> Result<crate::Mailbox, crate::MailboxError> {
        match self.email_bytes() {
            Some(bytes) => crate::Mailbox::parse_bytes(bytes),
            None => Err(crate::MailboxError::Empty),
        }
    }

    /// Whether this recipient is local (delivered to the local queue).
    pub fn is_local(&self) -> bool {
        // SAFETY: the host accepts a recipient's address where MQ_local takes
        // a message (its objects carry a type tag; see mailerq.h).
        unsafe { host().api.local(self.as_raw().cast()) }
    }

    /// Marks this recipient as local (or not).
    pub fn set_local(&self, local: bool) {
        // SAFETY: as in is_local.
        unsafe { host().api.set_local(self.as_raw().cast(), local) }
    }
}

/// A message: the wrapper over its MailerQ JSON object.
///
/// Hooks get it as `&mut Message`, since setters change it: for incoming
/// messages they change the JSON that will be published, for outgoing ones
/// what goes over SMTP. The JSON itself is read and changed with
/// [`Message::property`], [`Message::set_property`],
/// [`Message::remove_property`] and [`Message::json`].
pub struct Message {
    _opaque: [u8; 0],
    _not_send_sync: PhantomData<(*mut u8, PhantomPinned)>,
}

impl Message {
    /// The handle for a raw pointer the host passed.
    ///
    /// # Safety
    /// `raw` must be a non-null message pointer the host passed to the
    /// current hook, valid and not otherwise borrowed for `'a`.
    #[doc(hidden)]
    pub unsafe fn from_raw_mut<'a>(raw: *mut MQ_Message) -> &'a mut Self {
        debug_assert!(!raw.is_null());
        // SAFETY: zero-sized handle; validity is the caller's promise.
        unsafe { &mut *raw.cast::<Self>() }
    }

    /// The raw pointer, for calling `MQ_*` functions directly.
    pub fn as_raw(&self) -> *mut MQ_Message {
        self as *const Self as *mut MQ_Message
    }

    /// The envelope (`MAIL FROM`) address, if the message has one.
    pub fn envelope(&self) -> Option<&Address> {
        // SAFETY: live message; the address lives as long as the message
        // is not changed, which needs `&mut self`.
        let raw = unsafe { host().api.envelope(self.as_raw()) };
        // SAFETY: non-null address of this message.
        (!raw.is_null()).then(|| unsafe { Address::from_raw(raw) })
    }

    /// Sets the envelope address.
    pub fn set_envelope(&mut self, envelope: &str) {
        // SAFETY: live message; pointer and length describe `envelope`.
        unsafe {
            host()
                .api
                .set_envelope(self.as_raw(), envelope.as_ptr().cast(), envelope.len())
        }
    }

    /// The recipient (`RCPT TO`) address.
    pub fn recipient(&self) -> Option<&str> {
        // SAFETY: live message; NUL-terminated string valid until changed.
        let bytes = unsafe { c_bytes(host().api.recipient(self.as_raw())) }?;
        std::str::from_utf8(bytes).ok()
    }

    /// Sets the recipient address.
    pub fn set_recipient(&mut self, recipient: &str) {
        // SAFETY: live message; pointer and length describe `recipient`.
        unsafe {
            host()
                .api
                .set_recipient(self.as_raw(), recipient.as_ptr().cast(), recipient.len())
        }
    }

    /// The full MIME message, byte for byte: `MQ_mime`.
    ///
    /// On an incoming message, the JSON's `mime`. On an outgoing message
    /// `None` until a plugin set the MIME with [`Message::set_mime`] (as in
    /// MailerQ, where an outgoing message's MIME is often made by a plugin
    /// from other properties); read what the message was loaded with from
    /// its JSON, byte for byte: `msg.property_bytes("mime")`.
    ///
    /// In `mq-host` every byte, NUL bytes included. MailerQ offers the MIME
    /// only as a C string (`MQ_mime`), so there (and in `mq-host`'s
    /// global-symbols mode) it ends before the first NUL byte.
    pub fn mime(&self) -> Option<&[u8]> {
        let host = host();
        let Some(mime_bytes) = host.mime_bytes else {
            // SAFETY: live message; NUL-terminated string valid until changed.
            return unsafe { c_bytes(host.api.mime(self.as_raw())) };
        };
        let mut size = 0;
        // SAFETY: live message; `size` is writable.
        let ptr = unsafe { mime_bytes(self.as_raw(), &mut size) };
        // SAFETY: the host's bytes are valid for `size` bytes until the MIME
        // is replaced, which needs `&mut self`.
        (!ptr.is_null()).then(|| unsafe { raw_slice(ptr, size) })
    }

    /// Replaces the MIME message.
    pub fn set_mime(&mut self, mime: &[u8]) {
        // SAFETY: live message; pointer and length describe `mime`.
        unsafe {
            host()
                .api
                .set_mime(self.as_raw(), mime.as_ptr().cast(), mime.len())
        }
    }

    /// Whether the (incoming) message goes to the local queue.
    pub fn is_local(&self) -> bool {
        // SAFETY: live message.
        unsafe { host().api.local(self.as_raw()) }
    }

    /// Sends the (incoming) message to the local queue (or to the relay).
    pub fn set_local(&mut self, local: bool) {
        // SAFETY: live message.
        unsafe { host().api.set_local(self.as_raw(), local) }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Message({:p})", self.as_raw())
    }
}

/// The credentials a client sent with `AUTH` (`smtp_in_authenticate`).
pub struct Credentials {
    login: *const c_char,
    login_len: usize,
    password: *const c_char,
    password_len: usize,
    _not_send_sync: PhantomData<*mut u8>,
}

impl Credentials {
    /// Wraps the raw arguments of `mq_smtp_in_authenticate`.
    ///
    /// # Safety
    /// Both pointers must be valid for their lengths (or null with length
    /// 0) for as long as the value is used.
    #[doc(hidden)]
    pub unsafe fn from_raw(
        login: *const c_char,
        login_len: usize,
        password: *const c_char,
        password_len: usize,
    ) -> Self {
        Credentials {
            login,
            login_len,
            password,
            password_len,
            _not_send_sync: PhantomData,
        }
    }

    /// The login as sent.
    pub fn login(&self) -> &[u8] {
        // SAFETY: from_raw's contract.
        unsafe { raw_slice(self.login, self.login_len) }
    }

    /// The password as sent.
    pub fn password(&self) -> &[u8] {
        // SAFETY: from_raw's contract.
        unsafe { raw_slice(self.password, self.password_len) }
    }

    /// The login as UTF-8 text, if it is.
    pub fn login_str(&self) -> Option<&str> {
        std::str::from_utf8(self.login()).ok()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &String::from_utf8_lossy(self.login()))
            .field("password", &"<hidden>")
            .finish()
    }
}

/// A slice from a C pointer and length; empty for null.
///
/// # Safety
/// `ptr` must be null or valid for `len` bytes for `'a`.
pub(crate) unsafe fn raw_slice<'a>(ptr: *const c_char, len: usize) -> &'a [u8] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise.
        unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
    }
}

/// The bytes of a NUL-terminated C string; `None` for null.
///
/// # Safety
/// `ptr` must be null or a NUL-terminated string valid for `'a`.
unsafe fn c_bytes<'a>(ptr: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: the caller's promise.
    (!ptr.is_null()).then(|| unsafe { CStr::from_ptr(ptr) }.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::utf8;

    #[test]
    fn utf8_fast_path_agrees_with_from_utf8() {
        let cases: [&[u8]; 7] = [
            b"",
            b"user@example.org",
            b"a-rather-long-local-part.with.dots@sub.example.org",
            "j\u{f6}rg@b\u{fc}cher.example".as_bytes(),
            b"bad\xff@example.org",
            b"truncated\xc3",
            b"\x7f\x00@x",
        ];
        for bytes in cases {
            assert_eq!(utf8(bytes), std::str::from_utf8(bytes).ok(), "{bytes:?}");
        }
    }
}
