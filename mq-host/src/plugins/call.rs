//! The one place the host calls into a plugin's hooks.

use mq_abi::sys::*;
use mq_abi::RawHook;
use std::ffi::c_char;

/// The arguments of an SMTP hook besides context and connection, as the
/// C call passes them.
#[derive(Clone, Copy)]
pub(crate) enum SmtpArgs {
    None,
    Authenticate {
        login: *const c_char,
        login_len: usize,
        password: *const c_char,
        password_len: usize,
    },
    Address(*mut MQ_Address),
    Data(*const c_char, usize),
    Message(*mut MQ_Message),
}

/// Calls an SMTP hook (`bool hook(ctx, conn, ..)`); the result is whether it
/// took control.
///
/// # Safety
/// `hook` is a plugin's entry point; the handles and buffers are valid for
/// the call, and `args` fits the hook's shape.
pub(crate) unsafe fn smtp(
    hook: RawHook,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    args: SmtpArgs,
) -> bool {
    // SAFETY: the caller's promise.
    unsafe {
        match (hook, args) {
            (RawHook::Connection(f), SmtpArgs::None) => f(ctx, conn),
            (
                RawHook::Authenticate(f),
                SmtpArgs::Authenticate {
                    login,
                    login_len,
                    password,
                    password_len,
                },
            ) => f(ctx, conn, login, login_len, password, password_len),
            (RawHook::Address(f), SmtpArgs::Address(a)) => f(ctx, conn, a),
            (RawHook::Data(f), SmtpArgs::Data(d, len)) => f(ctx, conn, d, len),
            (RawHook::Message(f), SmtpArgs::Message(m)) => f(ctx, conn, m),
            (hook, _) => unreachable!(
                "an SMTP hook of shape {:?} called with other arguments (host bug)",
                hook.shape()
            ),
        }
    }
}

/// Calls a lifecycle hook: `mq_initialize`/`mq_cleanup` without a context,
/// `mq_context_initialize`/`mq_context_cleanup` with one.
///
/// # Safety
/// `hook` is a plugin's entry point; `ctx` is its live context.
pub(crate) unsafe fn lifecycle(hook: RawHook, ctx: Option<*mut MQ_Context>) {
    // SAFETY: the caller's promise.
    unsafe {
        match (hook, ctx) {
            (RawHook::Global(f), None) => f(),
            (RawHook::Context(f), Some(ctx)) => f(ctx),
            (hook, _) => unreachable!(
                "a lifecycle hook of shape {:?} called with other arguments (host bug)",
                hook.shape()
            ),
        }
    }
}
