//! # mq-abi: the binary contract between MailerQ plugins and `mq-host`
//!
//! What a plugin built with `mq-plugin` and the `mq-host` host must agree
//! on, and nothing else, so that both depend on it and neither on the
//! other:
//!
//! - [`sys`]: MailerQ's C types and the raw signatures of its hooks, as in
//!   `mailerq.h`; [`RawHook`], a hook's entry point typed by its shape;
//! - [`Flow`]: how the host goes on after a hook;
//! - [`Interest`]: the readiness of a file descriptor (`MQ_READ | MQ_WRITE`);
//! - [`PluginModule`]: a Rust plugin's abi_stable root module, which
//!   `mq-host` checks on load ([`check_plugin_layout`]) and through which
//!   it hands the plugin its functions as a [`HostApi`] table;
//! - [`for_each_host_function!`]: the one list of MailerQ's `MQ_*`
//!   functions, from which the plugin's resolver of MailerQ's global
//!   symbols is generated and against which [`HostApi`], `mq-host`'s
//!   exported symbols and `mailerq.h` are checked.
//!
//! Plugin authors never use this crate directly: `mq-plugin` re-exports
//! what they need.

#![warn(missing_docs)]

mod flow;
mod interest;
mod module;
mod panic;
pub mod sys;

pub use flow::Flow;
pub use interest::Interest;
pub use module::*;
pub use mq_hook_table::{Shape, HOOKS, MQ_API_VERSION};
pub use panic::panic_text;

/// The longest timer delay mq-host supports, in seconds: 365 days. A longer
/// `MQ_startTimer`/`MQ_resetTimer` delay (or `INFINITY`) is clamped to it
/// and reported as a misuse; `mq-plugin` clamps the durations it passes to
/// it, so safe Rust code never trips that report.
pub const MAX_TIMER_SECONDS: f32 = 31_536_000.0;

use sys::*;

/// A hook's C entry point, typed by its [`Shape`].
#[derive(Clone, Copy, Debug)]
pub enum RawHook {
    /// `void hook(void)`.
    Global(GlobalHookFn),
    /// `void hook(MQ_Context*)`.
    Context(ContextHookFn),
    /// `bool hook(MQ_Context*, MQ_Connection*)`.
    Connection(ConnectionHookFn),
    /// `bool hook(.., login, loginsize, passwd, passwdsize)`.
    Authenticate(AuthenticateHookFn),
    /// `bool hook(.., MQ_Address*)`.
    Address(AddressHookFn),
    /// `bool hook(.., const char *mime, size_t size)`.
    Data(DataHookFn),
    /// `bool hook(.., MQ_Message*)`.
    Message(MessageHookFn),
}

impl RawHook {
    /// The shape of this entry point.
    pub const fn shape(&self) -> Shape {
        match self {
            RawHook::Global(_) => Shape::Global,
            RawHook::Context(_) => Shape::Context,
            RawHook::Connection(_) => Shape::Connection,
            RawHook::Authenticate(_) => Shape::Authenticate,
            RawHook::Address(_) => Shape::Address,
            RawHook::Data(_) => Shape::Data,
            RawHook::Message(_) => Shape::Message,
        }
    }
}

/// Calls `$callback!` with the list of MailerQ's host functions, one entry
/// per function, in `mailerq.h`'s order:
///
/// ```text
/// field: "MQ_name" => fn(arg: Type, ..) -> Return = neutral;
/// ```
///
/// `field` is the function's [`HostApi`] field (the C name without `MQ_`,
/// in snake case; `MQ_continue` is `continue_`), the signature is the C
/// one, and `neutral` is what a plugin takes as the answer when a host
/// does not offer the function. The types are written with `$crate` paths,
/// so the list expands anywhere.
#[macro_export]
macro_rules! for_each_host_function {
    ($callback:ident) => {
        $callback! {
            log: "MQ_log" => fn(priority: ::core::ffi::c_int, text: *const ::core::ffi::c_char) = ();
            context_data: "MQ_contextData" => fn(ctx: *mut $crate::sys::MQ_Context) -> *mut ::core::ffi::c_void = ::core::ptr::null_mut();
            set_context_data: "MQ_setContextData" => fn(ctx: *mut $crate::sys::MQ_Context, data: *mut ::core::ffi::c_void) = ();
            ev: "MQ_ev" => fn(ctx: *mut $crate::sys::MQ_Context) -> *mut ::core::ffi::c_void = ::core::ptr::null_mut();
            io_watch: "MQ_ioWatch" => fn(ctx: *mut $crate::sys::MQ_Context, fd: ::core::ffi::c_int, events: ::core::ffi::c_int, cb: ::core::option::Option<$crate::sys::MQ_IOCallback>, data: *mut ::core::ffi::c_void) -> *mut $crate::sys::MQ_IOWatcher = ::core::ptr::null_mut();
            io_unwatch: "MQ_ioUnwatch" => fn(watcher: *mut $crate::sys::MQ_IOWatcher) = ();
            start_timer: "MQ_startTimer" => fn(ctx: *mut $crate::sys::MQ_Context, seconds: f32, cb: ::core::option::Option<$crate::sys::MQ_TimerCallback>, data: *mut ::core::ffi::c_void) -> *mut $crate::sys::MQ_Timer = ::core::ptr::null_mut();
            stop_timer: "MQ_stopTimer" => fn(timer: *mut $crate::sys::MQ_Timer) = ();
            reset_timer: "MQ_resetTimer" => fn(timer: *mut $crate::sys::MQ_Timer, seconds: f32) = ();
            file_descriptor: "MQ_fileDescriptor" => fn(conn: *mut $crate::sys::MQ_Connection) -> ::core::ffi::c_int = -1;
            send: "MQ_send" => fn(conn: *mut $crate::sys::MQ_Connection, buf: *const ::core::ffi::c_void, size: usize) -> usize = 0;
            authenticated: "MQ_authenticated" => fn(conn: *mut $crate::sys::MQ_Connection) -> bool = false;
            set_authenticated: "MQ_setAuthenticated" => fn(conn: *mut $crate::sys::MQ_Connection, value: bool) = ();
            secure: "MQ_secure" => fn(conn: *mut $crate::sys::MQ_Connection) -> bool = false;
            connection_data: "MQ_connectionData" => fn(conn: *mut $crate::sys::MQ_Connection) -> *mut ::core::ffi::c_void = ::core::ptr::null_mut();
            set_connection_data: "MQ_setConnectionData" => fn(conn: *mut $crate::sys::MQ_Connection, data: *mut ::core::ffi::c_void) = ();
            continue_: "MQ_continue" => fn(conn: *mut $crate::sys::MQ_Connection) = ();
            complete: "MQ_complete" => fn(conn: *mut $crate::sys::MQ_Connection) = ();
            retry: "MQ_retry" => fn(conn: *mut $crate::sys::MQ_Connection) = ();
            json: "MQ_json" => fn(msg: *mut $crate::sys::MQ_Message) -> *const ::core::ffi::c_void = ::core::ptr::null();
            envelope: "MQ_envelope" => fn(msg: *mut $crate::sys::MQ_Message) -> *mut $crate::sys::MQ_Address = ::core::ptr::null_mut();
            set_envelope: "MQ_setEnvelope" => fn(msg: *mut $crate::sys::MQ_Message, text: *const ::core::ffi::c_char, size: usize) = ();
            recipient: "MQ_recipient" => fn(msg: *mut $crate::sys::MQ_Message) -> *const ::core::ffi::c_char = ::core::ptr::null();
            set_recipient: "MQ_setRecipient" => fn(msg: *mut $crate::sys::MQ_Message, text: *const ::core::ffi::c_char, size: usize) = ();
            mime: "MQ_mime" => fn(msg: *mut $crate::sys::MQ_Message) -> *const ::core::ffi::c_char = ::core::ptr::null();
            set_mime: "MQ_setMime" => fn(msg: *mut $crate::sys::MQ_Message, text: *const ::core::ffi::c_char, size: usize) = ();
            local: "MQ_local" => fn(msg: *mut $crate::sys::MQ_Message) -> bool = false;
            set_local: "MQ_setLocal" => fn(msg: *mut $crate::sys::MQ_Message, value: bool) = ();
            email: "MQ_email" => fn(addr: *mut $crate::sys::MQ_Address) -> *const ::core::ffi::c_char = ::core::ptr::null();
        }
    };
}

macro_rules! names {
    ($( $field:ident : $c_name:literal => fn($($arg:ident : $ty:ty),*) $(-> $ret:ty)? = $neutral:expr; )*) => {
        /// Every MailerQ host function: its C name and its [`HostApi`]
        /// field, in `mailerq.h`'s order (from [`for_each_host_function!`]).
        pub const HOST_FUNCTIONS: &[(&str, &str)] = &[$( ($c_name, stringify!($field)), )*];
    };
}

for_each_host_function!(names);

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::type_layout::TLData;
    use abi_stable::StableAbi;

    /// The table's fields are the list's functions, in order, then the
    /// extensions appended after the prefix.
    #[test]
    fn the_host_table_follows_the_list() {
        // The reference's layout names the prefix type's layout.
        let reference = <HostApiRef as StableAbi>::LAYOUT;
        let prefix = std::iter::once(reference)
            .chain(reference.shared_vars().type_layouts().iter().map(|l| l()))
            .find_map(|l| match l.data() {
                TLData::PrefixType(p) => Some(p),
                _ => None,
            })
            .expect("HostApi is a prefix type");
        let fields: Vec<&str> = prefix.fields.iter().map(|f| f.name()).collect();
        let listed: Vec<&str> = HOST_FUNCTIONS.iter().map(|(_, field)| *field).collect();
        assert_eq!(fields[..listed.len()], listed[..]);
        assert_eq!(
            fields[listed.len()..],
            [
                "refuse_start",
                "plugin_panicked",
                "mime_bytes",
                "clock_offset",
                "hold_clock",
                "release_clock"
            ]
        );
        assert_eq!(HOST_FUNCTIONS.len(), 29);
    }
}
