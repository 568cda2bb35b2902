//! A Rust plugin's root module and the host's function table.
//!
//! A plugin built with `mq-plugin` exports, next to MailerQ's `mq_*` C
//! symbols, an abi_stable root module ([`PluginModule`]) that names the
//! plugin and carries [`FRAMEWORK_ABI_VERSION`]. `mq-host` checks its layout
//! on load and hands the plugin its functions as a [`HostApi`] table through
//! [`PluginModule::attach_host`]. A host that is not `mq-host` (MailerQ
//! itself) never calls `attach_host`; the plugin then resolves MailerQ's
//! global `MQ_*` symbols at run time instead.
//!
//! Both structs are abi_stable prefix types: a later version may append
//! fields after the last prefix field, read through their `Option`
//! accessors, so a newer host keeps running older plugins.

use crate::sys::*;
use abi_stable::{
    library::RootModule, package_version_strings, sabi_types::VersionStrings, std_types::RStr,
    StableAbi,
};
use std::ffi::{c_char, c_int, c_void};

/// The framework's ABI version, carried in every plugin's root module.
/// Bumped on any change that an old plugin or host cannot work with.
///
/// 2: the ABI types moved from `mq-plugin` into this crate (abi_stable
/// records the declaring crate in a layout, so plugins built before are
/// refused with a layout mismatch).
pub const FRAMEWORK_ABI_VERSION: u32 = 2;

/// The symbol under which a host finds a Rust plugin's root module.
pub const ROOT_MODULE_SYMBOL: &str = abi_stable::library::ROOT_MODULE_LOADER_NAME;

/// A Rust plugin's root module.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The plugin's name (its crate name unless the declaration sets one).
    pub name: RStr<'static>,
    /// The plugin's version (its crate version unless the declaration sets one).
    pub version: RStr<'static>,
    /// [`FRAMEWORK_ABI_VERSION`] of the `mq-plugin` the plugin was built with.
    pub framework_abi: u32,
    /// `MQ_API_VERSION` the plugin was built for.
    pub api_version: c_int,
    /// Bit `i` is set when the author wrote a hook for `mq_hook_table::HOOKS[i]`.
    pub authored_hooks: u64,
    /// Called by `mq-host` once, right after loading and before any hook,
    /// to hand the plugin its host functions.
    #[sabi(last_prefix_field)]
    pub attach_host: extern "C" fn(HostApiRef),
    /// One line about the plugin (its crate description). Added after the
    /// prefix: hosts read it with `description()`, which is `None` for
    /// plugins built before it existed.
    #[sabi(missing_field(option))]
    pub description: RStr<'static>,
    /// Ends a hook's hold that the host no longer waits for (its hold
    /// deadline passed, or the host shuts down): the plugin drops the
    /// hook's future — and every borrow of the hook's arguments — before
    /// this returns, and will not resume that take-over. Returns false if
    /// the plugin holds no cancellable take-over of that connection (then
    /// the host keeps the take-over's objects alive until a late resume).
    /// Added after the prefix: `None` for plugins built before it, which
    /// the host treats like C plugins.
    #[sabi(missing_field(option))]
    pub cancel_hold: extern "C" fn(*mut MQ_Context, *mut MQ_Connection) -> bool,
}

/// The C type of [`PluginModule::cancel_hold`].
pub type CancelHoldFn = extern "C" fn(*mut MQ_Context, *mut MQ_Connection) -> bool;

/// Checks that a plugin's root module layout can be used by this host.
///
/// The plugin's layout is the expected side, so a newer host (whose prefix
/// types have more fields) accepts older plugins; changed field types,
/// changed prefixes, another interface package or an incompatible version
/// of it are refused. On refusal, returns a one-line summary and the full
/// report.
pub fn check_plugin_layout(
    plugin: &'static abi_stable::type_layout::TypeLayout,
) -> Result<(), LayoutMismatch> {
    abi_stable::abi_stability::abi_checking::check_layout_compatibility(
        plugin,
        <PluginModuleRef as StableAbi>::LAYOUT,
    )
    .map_err(|errors| {
        let report = errors.to_string();
        LayoutMismatch {
            summary: summarize(&report),
            report,
        }
    })
}

/// Why a plugin's layout was refused.
#[derive(Debug, Clone)]
pub struct LayoutMismatch {
    /// One line: the innermost error abi_stable reported.
    pub summary: String,
    /// abi_stable's full report (hundreds of lines).
    pub report: String,
}

fn summarize(report: &str) -> String {
    // The useful part of abi_stable's report is its last `Error:` block.
    let tail = report
        .rsplit_once("Error:")
        .map(|(_, t)| t)
        .unwrap_or(report);
    let mut words = tail.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.len() > 240 {
        let cut = (0..=240)
            .rev()
            .find(|i| words.is_char_boundary(*i))
            .unwrap_or(0);
        words.truncate(cut);
        words.push_str(" ...");
    }
    words
}

impl RootModule for PluginModuleRef {
    abi_stable::declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "mq_plugin";
    const NAME: &'static str = "mq_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// An `MQ_IOWatcher` callback as passed through [`HostApi::io_watch`]
/// (abi_stable needs nested function pointers wrapped).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy)]
pub struct IoCallbackParam {
    /// The C callback; `None` is a null pointer.
    pub callback: Option<unsafe extern "C" fn(*mut MQ_IOWatcher, c_int, c_int, *mut c_void)>,
}

/// An `MQ_Timer` callback as passed through [`HostApi::start_timer`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy)]
pub struct TimerCallbackParam {
    /// The C callback; `None` is a null pointer.
    pub callback: Option<unsafe extern "C" fn(*mut c_void)>,
}

/// The host's functions: every `MQ_*` function of the MailerQ API.
///
/// Field names are the C names without `MQ_`, in snake case; `MQ_continue`
/// is `continue_`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostApiRef)))]
#[sabi(missing_field(panic))]
#[allow(missing_docs)]
pub struct HostApi {
    pub log: unsafe extern "C" fn(c_int, *const c_char),
    pub context_data: unsafe extern "C" fn(*mut MQ_Context) -> *mut c_void,
    pub set_context_data: unsafe extern "C" fn(*mut MQ_Context, *mut c_void),
    pub ev: unsafe extern "C" fn(*mut MQ_Context) -> *mut c_void,
    pub io_watch: unsafe extern "C" fn(
        *mut MQ_Context,
        c_int,
        c_int,
        IoCallbackParam,
        *mut c_void,
    ) -> *mut MQ_IOWatcher,
    pub io_unwatch: unsafe extern "C" fn(*mut MQ_IOWatcher),
    pub start_timer: unsafe extern "C" fn(
        *mut MQ_Context,
        f32,
        TimerCallbackParam,
        *mut c_void,
    ) -> *mut MQ_Timer,
    pub stop_timer: unsafe extern "C" fn(*mut MQ_Timer),
    pub reset_timer: unsafe extern "C" fn(*mut MQ_Timer, f32),
    pub file_descriptor: unsafe extern "C" fn(*mut MQ_Connection) -> c_int,
    pub send: unsafe extern "C" fn(*mut MQ_Connection, *const c_void, usize) -> usize,
    pub authenticated: unsafe extern "C" fn(*mut MQ_Connection) -> bool,
    pub set_authenticated: unsafe extern "C" fn(*mut MQ_Connection, bool),
    pub secure: unsafe extern "C" fn(*mut MQ_Connection) -> bool,
    pub connection_data: unsafe extern "C" fn(*mut MQ_Connection) -> *mut c_void,
    pub set_connection_data: unsafe extern "C" fn(*mut MQ_Connection, *mut c_void),
    pub continue_: unsafe extern "C" fn(*mut MQ_Connection),
    pub complete: unsafe extern "C" fn(*mut MQ_Connection),
    pub retry: unsafe extern "C" fn(*mut MQ_Connection),
    /// `MQ_json`: the message's live libfastjson object (`struct fjson_object *`).
    pub json: unsafe extern "C" fn(*mut MQ_Message) -> *const c_void,
    pub envelope: unsafe extern "C" fn(*mut MQ_Message) -> *mut MQ_Address,
    pub set_envelope: unsafe extern "C" fn(*mut MQ_Message, *const c_char, usize),
    pub recipient: unsafe extern "C" fn(*mut MQ_Message) -> *const c_char,
    pub set_recipient: unsafe extern "C" fn(*mut MQ_Message, *const c_char, usize),
    pub mime: unsafe extern "C" fn(*mut MQ_Message) -> *const c_char,
    pub set_mime: unsafe extern "C" fn(*mut MQ_Message, *const c_char, usize),
    /// `MQ_local`: takes an `MQ_Message*` or a recipient's `MQ_Address*`.
    pub local: unsafe extern "C" fn(*mut MQ_Message) -> bool,
    /// `MQ_setLocal`: takes an `MQ_Message*` or a recipient's `MQ_Address*`.
    pub set_local: unsafe extern "C" fn(*mut MQ_Message, bool),
    #[sabi(last_prefix_field)]
    pub email: unsafe extern "C" fn(*mut MQ_Address) -> *const c_char,
    /// Not in MailerQ's API: a plugin whose `mq_initialize` failed asks the
    /// host not to start, with the reason. Added after the prefix, so read
    /// it with `refuse_start()`: `None` in hosts without it.
    #[sabi(missing_field(option))]
    pub refuse_start: unsafe extern "C" fn(*const c_char),
    /// Not in MailerQ's API: the plugin caught a panic of its own (it has
    /// logged it with `MQ_log`); the host counts it. Read it with
    /// `plugin_panicked()`: `None` in hosts without it.
    #[sabi(missing_field(option))]
    pub plugin_panicked: unsafe extern "C" fn(),
    /// Not in MailerQ's API: `MQ_mime` with its length. Returns the
    /// message's MIME, byte for byte (NUL bytes included: `MQ_mime` is a C
    /// string, which a NUL byte ends), and writes its length to `size`
    /// (if not NULL); NULL and 0 when the message has no MIME. The bytes
    /// stay valid as long as `MQ_mime`'s would: until the MIME is replaced.
    /// Read it with `mime_bytes()`: `None` in hosts without it (fall back
    /// to `MQ_mime`).
    #[sabi(missing_field(option))]
    pub mime_bytes: unsafe extern "C" fn(*mut MQ_Message, *mut usize) -> *const c_char,
    /// Not in MailerQ's API: how far the clock of the context's worker is
    /// ahead of the real clock, in nanoseconds (0 on the real clock; a test
    /// host's virtual clock jumps ahead). `time::Interval` adds it to
    /// `Instant::now()`. `None` in hosts without it (and MailerQ): 0.
    #[sabi(missing_field(option))]
    pub clock_offset: unsafe extern "C" fn(*mut MQ_Context) -> u64,
    /// Not in MailerQ's API: keeps the virtual clock of the context's worker
    /// from jumping while work on another thread runs (`spawn_blocking`),
    /// until the returned hold is passed to `release_clock` (once, from any
    /// thread). NULL on the real clock.
    #[sabi(missing_field(option))]
    pub hold_clock: unsafe extern "C" fn(*mut MQ_Context) -> *mut c_void,
    /// Not in MailerQ's API: releases a hold of `hold_clock` (NULL: nothing).
    #[sabi(missing_field(option))]
    pub release_clock: unsafe extern "C" fn(*mut c_void),
}

/// The C type of [`HostApi::mime_bytes`].
pub type MimeBytesFn = unsafe extern "C" fn(*mut MQ_Message, *mut usize) -> *const c_char;

#[cfg(test)]
mod tests {
    //! Older and changed root modules, declared in this package (as a
    //! plugin built against another release of it would carry them).

    use super::*;

    #[allow(dead_code)]
    mod older {
        //! A release before `description` was appended after the prefix.
        use super::super::HostApiRef;
        use abi_stable::{std_types::RStr, StableAbi};
        use std::ffi::c_int;

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
        #[sabi(missing_field(panic))]
        pub struct PluginModule {
            pub name: RStr<'static>,
            pub version: RStr<'static>,
            pub framework_abi: u32,
            pub api_version: c_int,
            pub authored_hooks: u64,
            #[sabi(last_prefix_field)]
            pub attach_host: extern "C" fn(HostApiRef),
        }
    }

    #[allow(dead_code)]
    mod changed {
        //! A release where a prefix field changed type.
        use super::super::HostApiRef;
        use abi_stable::{std_types::RStr, StableAbi};
        use std::ffi::c_int;

        #[repr(C)]
        #[derive(StableAbi)]
        #[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
        #[sabi(missing_field(panic))]
        pub struct PluginModule {
            pub name: RStr<'static>,
            pub version: RStr<'static>,
            pub framework_abi: u64,
            pub api_version: c_int,
            pub authored_hooks: u64,
            #[sabi(last_prefix_field)]
            pub attach_host: extern "C" fn(HostApiRef),
        }
    }

    /// A plugin's root module with the host table as it was before
    /// `mime_bytes` (or, with a second name, one with a function after it
    /// that this release does not know).
    macro_rules! host_table_release {
        ($module:ident $(, $next:ident)?) => {
            #[allow(dead_code, missing_docs)]
            mod $module {
                use crate::module::{IoCallbackParam, TimerCallbackParam};
                use crate::sys::*;
                use abi_stable::{std_types::RStr, StableAbi};
                use std::ffi::{c_char, c_int, c_void};

                #[repr(C)]
                #[derive(StableAbi)]
                #[sabi(kind(Prefix(prefix_ref = HostApiRef)))]
                #[sabi(missing_field(panic))]
                pub struct HostApi {
                    pub log: unsafe extern "C" fn(c_int, *const c_char),
                    pub context_data: unsafe extern "C" fn(*mut MQ_Context) -> *mut c_void,
                    pub set_context_data: unsafe extern "C" fn(*mut MQ_Context, *mut c_void),
                    pub ev: unsafe extern "C" fn(*mut MQ_Context) -> *mut c_void,
                    pub io_watch: unsafe extern "C" fn(*mut MQ_Context, c_int, c_int, IoCallbackParam, *mut c_void) -> *mut MQ_IOWatcher,
                    pub io_unwatch: unsafe extern "C" fn(*mut MQ_IOWatcher),
                    pub start_timer: unsafe extern "C" fn(*mut MQ_Context, f32, TimerCallbackParam, *mut c_void) -> *mut MQ_Timer,
                    pub stop_timer: unsafe extern "C" fn(*mut MQ_Timer),
                    pub reset_timer: unsafe extern "C" fn(*mut MQ_Timer, f32),
                    pub file_descriptor: unsafe extern "C" fn(*mut MQ_Connection) -> c_int,
                    pub send: unsafe extern "C" fn(*mut MQ_Connection, *const c_void, usize) -> usize,
                    pub authenticated: unsafe extern "C" fn(*mut MQ_Connection) -> bool,
                    pub set_authenticated: unsafe extern "C" fn(*mut MQ_Connection, bool),
                    pub secure: unsafe extern "C" fn(*mut MQ_Connection) -> bool,
                    pub connection_data: unsafe extern "C" fn(*mut MQ_Connection) -> *mut c_void,
                    pub set_connection_data: unsafe extern "C" fn(*mut MQ_Connection, *mut c_void),
                    pub continue_: unsafe extern "C" fn(*mut MQ_Connection),
                    pub complete: unsafe extern "C" fn(*mut MQ_Connection),
                    pub retry: unsafe extern "C" fn(*mut MQ_Connection),
                    pub json: unsafe extern "C" fn(*mut MQ_Message) -> *const c_void,
                    pub envelope: unsafe extern "C" fn(*mut MQ_Message) -> *mut MQ_Address,
                    pub set_envelope: unsafe extern "C" fn(*mut MQ_Message, *const c_char, usize),
                    pub recipient: unsafe extern "C" fn(*mut MQ_Message) -> *const c_char,
                    pub set_recipient: unsafe extern "C" fn(*mut MQ_Message, *const c_char, usize),
                    pub mime: unsafe extern "C" fn(*mut MQ_Message) -> *const c_char,
                    pub set_mime: unsafe extern "C" fn(*mut MQ_Message, *const c_char, usize),
                    pub local: unsafe extern "C" fn(*mut MQ_Message) -> bool,
                    pub set_local: unsafe extern "C" fn(*mut MQ_Message, bool),
                    #[sabi(last_prefix_field)]
                    pub email: unsafe extern "C" fn(*mut MQ_Address) -> *const c_char,
                    #[sabi(missing_field(option))]
                    pub refuse_start: unsafe extern "C" fn(*const c_char),
                    #[sabi(missing_field(option))]
                    pub plugin_panicked: unsafe extern "C" fn(),
                    $(
                        #[sabi(missing_field(option))]
                        pub mime_bytes: unsafe extern "C" fn(*mut MQ_Message, *mut usize) -> *const c_char,
                        #[sabi(missing_field(option))]
                        pub clock_offset: unsafe extern "C" fn(*mut MQ_Context) -> u64,
                        #[sabi(missing_field(option))]
                        pub hold_clock: unsafe extern "C" fn(*mut MQ_Context) -> *mut c_void,
                        #[sabi(missing_field(option))]
                        pub release_clock: unsafe extern "C" fn(*mut c_void),
                        #[sabi(missing_field(option))]
                        pub $next: unsafe extern "C" fn(),
                    )?
                }

                #[repr(C)]
                #[derive(StableAbi)]
                #[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
                #[sabi(missing_field(panic))]
                pub struct PluginModule {
                    pub name: RStr<'static>,
                    pub version: RStr<'static>,
                    pub framework_abi: u32,
                    pub api_version: c_int,
                    pub authored_hooks: u64,
                    #[sabi(last_prefix_field)]
                    pub attach_host: extern "C" fn(HostApiRef),
                    #[sabi(missing_field(option))]
                    pub description: RStr<'static>,
                    #[sabi(missing_field(option))]
                    pub cancel_hold: extern "C" fn(*mut MQ_Context, *mut MQ_Connection) -> bool,
                }
            }
        };
    }

    host_table_release!(before_mime_bytes);
    host_table_release!(after_mime_bytes, later_function);

    /// A plugin built before `mime_bytes` gets a table with it: accepted,
    /// and it never reads the field.
    #[test]
    fn a_plugin_built_before_mime_bytes_is_accepted() {
        let older = <before_mime_bytes::PluginModuleRef as StableAbi>::LAYOUT;
        if let Err(e) = check_plugin_layout(older) {
            panic!("refused: {}\n{}", e.summary, e.report);
        }
    }

    /// The other way round is refused: a plugin built for a longer table
    /// than this host offers fails the layout check (it is the expected
    /// side), so it never calls a function the host lacks. Only hosts
    /// without a table at all (MailerQ) leave it to the plugin's fallbacks.
    #[test]
    fn a_plugin_built_for_a_longer_table_is_refused() {
        let newer = <after_mime_bytes::PluginModuleRef as StableAbi>::LAYOUT;
        let e = check_plugin_layout(newer).expect_err("more fields than the host has");
        assert!(e.summary.contains("too many fields"), "{}", e.summary);
    }

    #[test]
    fn the_current_layout_is_accepted() {
        assert!(check_plugin_layout(<PluginModuleRef as StableAbi>::LAYOUT).is_ok());
    }

    #[test]
    fn a_newer_host_accepts_an_older_plugin() {
        let older = <older::PluginModuleRef as StableAbi>::LAYOUT;
        if let Err(e) = check_plugin_layout(older) {
            panic!("refused: {}\n{}", e.summary, e.report);
        }
    }

    #[test]
    fn a_changed_field_type_is_refused_with_a_short_summary() {
        let changed = <changed::PluginModuleRef as StableAbi>::LAYOUT;
        let e = check_plugin_layout(changed).expect_err("a changed field type must be refused");
        assert!(!e.summary.contains('\n'));
        assert!(e.summary.len() <= 250, "{}", e.summary);
        assert!(e.report.len() > e.summary.len());
    }
}
