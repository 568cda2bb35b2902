//! What `#[mq_hook]` and `declare_plugin!` expand to call. Not public API:
//! the version in the module name changes whenever the contract between the
//! macros and the runtime does, so a mismatched pair fails to compile.

#![doc(hidden)]
#![allow(missing_docs, clippy::missing_safety_doc)]

use crate::abi::{HostApiRef, PluginModule, PluginModuleRef, FRAMEWORK_ABI_VERSION};
use crate::boundary::catch;
pub use crate::flow::Outcome;
use crate::flow::{HookReturn, LifecycleReturn};
use crate::handles::{free_connection_data, free_context_data, raw_slice};
use crate::host::host;
use crate::sys::*;
pub use crate::sys::{MQ_Address, MQ_Connection, MQ_Context, MQ_Message};
use crate::{Address, Connection, Context, Credentials, Flow, Message};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::RStr;
use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

pub use abi_stable;
pub use mq_hook_table::{Hook, HOOKS, MQ_API_VERSION};

/// Static facts about one generated hook.
pub struct HookMeta {
    pub hook: &'static Hook,
    /// The author's function name.
    pub function: &'static str,
    /// The plugin's name (from the declaration).
    pub plugin: &'static str,
    /// The flow taken when the hook returns `Err` or panics.
    pub fallback: Flow,
}

/// Implemented by the declaration for the crate's `__MqPlugin` type.
pub trait PluginIdentity {
    const NAME: &'static str;
    const VERSION: &'static str;
}

/// A hook's C entry point, by shape.
#[derive(Clone, Copy)]
pub enum RawHook {
    Global(GlobalHookFn),
    Context(ContextHookFn),
    Connection(ConnectionHookFn),
    Authenticate(AuthenticateHookFn),
    Address(AddressHookFn),
    Data(DataHookFn),
    Message(MessageHookFn),
}

/// Implemented by `#[mq_hook]` for the crate's `__MqPlugin` type, once per
/// hook index: two hooks for one symbol are two conflicting impls.
pub trait Authored<const HOOK: usize> {
    const RAW: RawHook;
}

/// Asks, in the declaration, whether the author wrote hook `HOOK`.
pub struct Probe<T, const HOOK: usize>(PhantomData<T>);

impl<T, const HOOK: usize> Probe<T, HOOK> {
    pub const NEW: Self = Probe(PhantomData);
}

pub trait ProbeAuthored {
    fn authored(&self) -> Option<RawHook>;
}

impl<T: Authored<HOOK>, const HOOK: usize> ProbeAuthored for Probe<T, HOOK> {
    fn authored(&self) -> Option<RawHook> {
        Some(T::RAW)
    }
}

pub trait ProbeNotAuthored {
    fn authored(&self) -> Option<RawHook>;
}

impl<T, const HOOK: usize> ProbeNotAuthored for &Probe<T, HOOK> {
    fn authored(&self) -> Option<RawHook> {
        None
    }
}

fn enter(meta: &HookMeta) {
    crate::log::init(meta.plugin);
}

fn report_failure(meta: &HookMeta, what: &str, message: &str, consequence: &str) {
    crate::log::log_text(
        MQ_CRIT,
        &format!(
            "[{}] hook {} (fn {}) {what}: {message}; {consequence}",
            meta.plugin, meta.hook.name, meta.function
        ),
    );
}

/// The flow a finished hook asks for (its fallback, logged, on an error or
/// a panic); `None` when it resumes by itself ([`crate::raw::ManualControl`]).
pub(crate) fn flow_of(meta: &HookMeta, result: Result<Outcome, String>) -> Option<Flow> {
    // Formatting only on the failure paths: the common path allocates nothing.
    let fallback = || format!("taking fallback {}", meta.fallback);
    match result {
        Ok(Outcome::Flow(flow)) => Some(flow),
        Ok(Outcome::Manual) => None,
        Ok(Outcome::Failed(message)) => {
            report_failure(meta, "failed", &message, &fallback());
            Some(meta.fallback)
        }
        Err(message) => {
            report_failure(meta, "panicked", &message, &fallback());
            Some(meta.fallback)
        }
    }
}

/// Frees what must not outlive a hook once it is done: connection data
/// after `smtp_in_close`, and after `smtp_out_*` (outgoing connections have
/// no close event).
pub(crate) fn after_async_hook(meta: &HookMeta, conn: *mut MQ_Connection) {
    if meta.hook.name == "smtp_in_close" || meta.hook.name.starts_with("smtp_out_") {
        let plugin = meta.plugin;
        // SAFETY: the connection of a hook whose chain this plugin holds;
        // dropping runs user Drop impls, which may panic.
        if let Err(message) = catch(|| unsafe { free_connection_data(conn) }) {
            crate::log::log_text(
                MQ_CRIT,
                &format!("[{plugin}] dropping connection data panicked: {message}"),
            );
        }
    }
}

/// Maps an SMTP hook's outcome to the C return value, scheduling the
/// resume on the loop when the hook took control.
unsafe fn finish_smtp(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    result: Result<Outcome, String>,
) -> bool {
    let Some(flow) = flow_of(meta, result) else {
        return true;
    };
    if flow == Flow::Continue {
        return false;
    }
    // SAFETY: live context and connection of this hook call.
    unsafe { schedule_resume(meta, ctx, conn, flow) }
}

struct PendingResume {
    conn: *mut MQ_Connection,
    flow: Flow,
}

/// Takes control and resumes with `flow` from a zero-delay timer, so the
/// resume happens on the loop and never inside the hook call.
unsafe fn schedule_resume(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    flow: Flow,
) -> bool {
    let pending = Box::into_raw(Box::new(PendingResume { conn, flow })).cast::<c_void>();
    // SAFETY: live context; the trampoline takes `pending` back.
    let timer = unsafe {
        host()
            .api
            .start_timer(ctx, 0.0, Some(resume_from_loop), pending)
    };
    if timer.is_null() {
        // SAFETY: the host did not keep `pending`.
        drop(unsafe { Box::from_raw(pending.cast::<PendingResume>()) });
        report_failure(
            meta,
            "could not schedule its resume",
            "MQ_startTimer failed",
            "continuing",
        );
        return false;
    }
    true
}

unsafe extern "C" fn resume_from_loop(data: *mut c_void) {
    // SAFETY: `data` is the PendingResume boxed by schedule_resume; the
    // one-shot timer fires once.
    let pending = unsafe { Box::from_raw(data.cast::<PendingResume>()) };
    // SAFETY: this plugin holds the chain of `conn`; we are on its loop.
    unsafe { crate::raw::resume(pending.conn, pending.flow) };
}

pub unsafe fn global<R: LifecycleReturn, F: FnOnce() -> R>(meta: &HookMeta, f: F) {
    enter(meta);
    let (what, message) = match catch(|| f().into_result()) {
        Ok(Ok(())) => return,
        Ok(Err(message)) => ("failed", message),
        Err(message) => ("panicked", message),
    };
    // A failed mq_initialize stops mq-host from starting; MailerQ cannot be
    // told, so there it is logged only.
    let refuse = (meta.hook.name == "initialize")
        .then(|| host().refuse_start)
        .flatten();
    let consequence = if refuse.is_some() {
        "the host will not start"
    } else {
        "the plugin may not work"
    };
    report_failure(meta, what, &message, consequence);
    if let Some(refuse) = refuse {
        let reason =
            std::ffi::CString::new(message.replace('\0', "\\0")).expect("NUL bytes were replaced");
        // SAFETY: mq-host's function, with a NUL-terminated string it copies.
        unsafe { refuse(reason.as_ptr()) };
    }
}

pub unsafe fn context<R: LifecycleReturn, F: FnOnce(&Context) -> R>(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    f: F,
) {
    enter(meta);
    // SAFETY: the host passed a live context.
    let result = catch(|| f(unsafe { Context::from_raw(ctx) }).into_result());
    match result {
        Ok(Ok(())) => {}
        Ok(Err(message)) => report_failure(meta, "failed", &message, "the plugin may not work"),
        Err(message) => report_failure(meta, "panicked", &message, "the plugin may not work"),
    }
}

pub unsafe fn connection<R: HookReturn, F: FnOnce(&Context, &Connection) -> R>(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    f: F,
) -> bool {
    enter(meta);
    // SAFETY: the host passed live objects for the duration of the call.
    let result =
        catch(|| unsafe { f(Context::from_raw(ctx), Connection::from_raw(conn)) }.into_outcome());
    after_async_hook(meta, conn);
    // SAFETY: as above.
    unsafe { finish_smtp(meta, ctx, conn, result) }
}

#[allow(clippy::too_many_arguments)]
pub unsafe fn authenticate<R: HookReturn, F: FnOnce(&Context, &Connection, &Credentials) -> R>(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    login: *const c_char,
    login_len: usize,
    password: *const c_char,
    password_len: usize,
    f: F,
) -> bool {
    enter(meta);
    // SAFETY: the host passed live objects and buffers for the call.
    let result = catch(|| unsafe {
        let credentials = Credentials::from_raw(login, login_len, password, password_len);
        f(
            Context::from_raw(ctx),
            Connection::from_raw(conn),
            &credentials,
        )
        .into_outcome()
    });
    // SAFETY: as above.
    unsafe { finish_smtp(meta, ctx, conn, result) }
}

pub unsafe fn address<R: HookReturn, F: FnOnce(&Context, &Connection, &Address) -> R>(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    addr: *mut MQ_Address,
    f: F,
) -> bool {
    enter(meta);
    // SAFETY: the host passed live objects for the duration of the call.
    let result = catch(|| unsafe {
        f(
            Context::from_raw(ctx),
            Connection::from_raw(conn),
            Address::from_raw(addr),
        )
        .into_outcome()
    });
    // SAFETY: as above.
    unsafe { finish_smtp(meta, ctx, conn, result) }
}

pub unsafe fn data<R: HookReturn, F: FnOnce(&Context, &Connection, &[u8]) -> R>(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    mime: *const c_char,
    size: usize,
    f: F,
) -> bool {
    enter(meta);
    // SAFETY: the host passed live objects and the buffer for the call.
    let result = catch(|| unsafe {
        f(
            Context::from_raw(ctx),
            Connection::from_raw(conn),
            raw_slice(mime, size),
        )
        .into_outcome()
    });
    // SAFETY: as above.
    unsafe { finish_smtp(meta, ctx, conn, result) }
}

pub unsafe fn message<R: HookReturn, F: FnOnce(&Context, &Connection, &mut Message) -> R>(
    meta: &HookMeta,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    msg: *mut MQ_Message,
    f: F,
) -> bool {
    enter(meta);
    // SAFETY: the host passed live objects for the duration of the call;
    // the message is borrowed mutably only here.
    let result = catch(|| unsafe {
        f(
            Context::from_raw(ctx),
            Connection::from_raw(conn),
            Message::from_raw_mut(msg),
        )
        .into_outcome()
    });
    after_async_hook(meta, conn);
    // SAFETY: as above.
    unsafe { finish_smtp(meta, ctx, conn, result) }
}

/// `mq_context_cleanup` as exported by the declaration: the author's hook
/// (if any), then the context's data is dropped.
pub unsafe fn context_cleanup_entry(user: Option<RawHook>, ctx: *mut MQ_Context) {
    if let Some(RawHook::Context(f)) = user {
        // SAFETY: the author's generated entry point of this exact shape.
        unsafe { f(ctx) };
    }
    let plugin = crate::log::plugin_name();
    // SAFETY: live context; runs user Drop impls, which may panic.
    if let Err(message) = catch(|| unsafe { free_context_data(ctx) }) {
        crate::log::log_text(
            MQ_CRIT,
            &format!("[{plugin}] dropping context data panicked: {message}"),
        );
    }
}

/// `mq_smtp_in_close` as exported by the declaration: the author's hook
/// (if any), then the connection's data is dropped.
pub unsafe fn smtp_in_close_entry(
    user: Option<RawHook>,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
) -> bool {
    // The author's hook frees the data itself when it is done (an async
    // hook may still use it after this call returns).
    if let Some(RawHook::Connection(f)) = user {
        // SAFETY: the author's generated entry point of this exact shape.
        return unsafe { f(ctx, conn) };
    }
    let plugin = crate::log::plugin_name();
    // SAFETY: live connection; runs user Drop impls, which may panic.
    if let Err(message) = catch(|| unsafe { free_connection_data(conn) }) {
        crate::log::log_text(
            MQ_CRIT,
            &format!("[{plugin}] dropping connection data panicked: {message}"),
        );
    }
    false
}

pub use crate::executor::TaskCache;

/// What a hook with `deadline = ".."` produced.
pub enum Deadline<R> {
    /// The hook finished in time.
    Done(R),
    /// The deadline passed first; the future was dropped.
    Elapsed(crate::time::Elapsed),
}

impl<R: HookReturn> HookReturn for Deadline<R> {
    fn into_outcome(self) -> Outcome {
        match self {
            Deadline::Done(value) => value.into_outcome(),
            Deadline::Elapsed(e) => Outcome::Failed(format!("its deadline passed ({e})")),
        }
    }
}

/// Runs an async hook's future for at most `limit` (`deadline = ".."`).
pub async fn with_deadline<R: HookReturn, F: std::future::Future<Output = R>>(
    limit: std::time::Duration,
    future: F,
) -> Deadline<F::Output> {
    match crate::time::timeout(limit, future).await {
        Ok(value) => Deadline::Done(value),
        Err(elapsed) => Deadline::Elapsed(elapsed),
    }
}

/// How many tasks one executor loop callback polls at most (for the executor's tests).
pub const POLL_BUDGET_FOR_TESTS: usize = crate::executor::POLL_BUDGET;

/// The MIME bytes of `smtp_in_data` for an async hook's future.
///
/// # Safety
/// `ptr` is valid for `len` bytes until the plugin resumes the chain.
pub unsafe fn mime_slice(ptr: *const c_char, len: usize) -> &'static [u8] {
    // SAFETY: the caller's promise.
    unsafe { raw_slice(ptr, len) }
}

/// An `async fn` hook: the future's first poll happens here, inside the
/// hook call; if it is not ready the hook takes control and the executor
/// resumes the chain exactly once when it completes.
///
/// # Safety
/// As `executor::run_hook`: live arguments of this hook call, kept alive by
/// the host until this plugin resumes; `cache` is this hook's own.
pub unsafe fn hook_async<R, F>(
    meta: &'static HookMeta,
    cache: &'static std::thread::LocalKey<TaskCache>,
    ctx: *mut MQ_Context,
    conn: *mut MQ_Connection,
    future: F,
) -> bool
where
    R: HookReturn,
    F: std::future::Future<Output = R> + 'static,
{
    enter(meta);
    // SAFETY: the caller's promise.
    match unsafe { crate::executor::run_hook(meta, cache, ctx, conn, future) } {
        Ok(None) => true,
        Ok(Some(result)) => {
            after_async_hook(meta, conn);
            // SAFETY: live arguments of this call.
            unsafe { finish_smtp(meta, ctx, conn, result) }
        }
        Err(why) => {
            let fallback = format!("taking fallback {}", meta.fallback);
            report_failure(meta, "could not start", &why, &fallback);
            // SAFETY: live arguments of this call.
            unsafe { finish_smtp(meta, ctx, conn, Ok(Outcome::Flow(meta.fallback))) }
        }
    }
}

/// `mq_version` as exported by the declaration.
pub const fn api_version() -> c_int {
    MQ_API_VERSION
}

/// The root module value for `mq-host` (leaked once per load).
pub fn root_module(
    name: &'static str,
    version: &'static str,
    description: &'static str,
    authored_hooks: u64,
) -> PluginModuleRef {
    crate::log::init(name);
    PluginModule {
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        framework_abi: FRAMEWORK_ABI_VERSION,
        api_version: MQ_API_VERSION,
        authored_hooks,
        attach_host,
        description: RStr::from_str(description),
    }
    .leak_into_prefix()
}

extern "C" fn attach_host(api: HostApiRef) {
    crate::boundary::guard_callback("attach_host", || crate::host::attach_table(api));
}
