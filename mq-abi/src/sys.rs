//! Raw C declarations of the MailerQ plugin API, as in `mailerq.h`.
//!
//! Everything here mirrors the C header one to one. Plugin authors use the
//! safe handles of this crate instead; hosts (such as `mq-host`) use these
//! types to implement the API.

#![allow(non_camel_case_types)]

use abi_stable::StableAbi;
use std::ffi::{c_char, c_int, c_void};

macro_rules! opaque {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[repr(C)]
        #[derive(StableAbi)]
        pub struct $name {
            _opaque: [u8; 0],
        }
    )*};
}

opaque! {
    /// A worker's context, one per plugin per worker thread (`MQ_Context`).
    MQ_Context;
    /// An SMTP connection, incoming or outgoing (`MQ_Connection`).
    MQ_Connection;
    /// A message: a wrapper over its JSON object (`MQ_Message`).
    MQ_Message;
    /// An envelope or recipient address (`MQ_Address`).
    MQ_Address;
    /// A file descriptor watcher (`MQ_IOWatcher`).
    MQ_IOWatcher;
    /// A one-shot timer (`MQ_Timer`).
    MQ_Timer;
}

/// `MQ_READ`: watch a descriptor for readability.
pub const MQ_READ: c_int = 1;
/// `MQ_WRITE`: watch a descriptor for writability.
pub const MQ_WRITE: c_int = 2;
/// `MQ_CRIT`: critical log priority.
pub const MQ_CRIT: c_int = 1;
/// `MQ_WARN`: warning log priority.
pub const MQ_WARN: c_int = 2;
/// `MQ_INFO`: informational log priority.
pub const MQ_INFO: c_int = 3;

/// `void (*)(MQ_IOWatcher*, int fd, int events, void *data)`.
pub type MQ_IOCallback =
    unsafe extern "C" fn(watcher: *mut MQ_IOWatcher, fd: c_int, events: c_int, data: *mut c_void);
/// `void (*)(void *data)`.
pub type MQ_TimerCallback = unsafe extern "C" fn(data: *mut c_void);

/// C signature of `mq_version`.
pub type VersionFn = unsafe extern "C" fn() -> c_int;
/// C signature of hooks of [`Shape::Global`](mq_hook_table::Shape::Global).
pub type GlobalHookFn = unsafe extern "C" fn();
/// C signature of hooks of [`Shape::Context`](mq_hook_table::Shape::Context).
pub type ContextHookFn = unsafe extern "C" fn(*mut MQ_Context);
/// C signature of hooks of [`Shape::Connection`](mq_hook_table::Shape::Connection).
pub type ConnectionHookFn = unsafe extern "C" fn(*mut MQ_Context, *mut MQ_Connection) -> bool;
/// C signature of hooks of [`Shape::Authenticate`](mq_hook_table::Shape::Authenticate).
pub type AuthenticateHookFn = unsafe extern "C" fn(
    *mut MQ_Context,
    *mut MQ_Connection,
    *const c_char,
    usize,
    *const c_char,
    usize,
) -> bool;
/// C signature of hooks of [`Shape::Address`](mq_hook_table::Shape::Address).
pub type AddressHookFn =
    unsafe extern "C" fn(*mut MQ_Context, *mut MQ_Connection, *mut MQ_Address) -> bool;
/// C signature of hooks of [`Shape::Data`](mq_hook_table::Shape::Data).
pub type DataHookFn =
    unsafe extern "C" fn(*mut MQ_Context, *mut MQ_Connection, *const c_char, usize) -> bool;
/// C signature of hooks of [`Shape::Message`](mq_hook_table::Shape::Message).
pub type MessageHookFn =
    unsafe extern "C" fn(*mut MQ_Context, *mut MQ_Connection, *mut MQ_Message) -> bool;
