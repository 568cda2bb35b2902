//! How the runtime reaches the host's `MQ_*` functions.
//!
//! `mq-host` hands a plugin a [`HostApi`] table through the root module
//! before any hook runs. Any other host (MailerQ itself) does not know about
//! the table: the runtime then resolves MailerQ's global `MQ_*` symbols with
//! `dlsym(RTLD_DEFAULT, ..)` on first use. Resolving at run time (instead of
//! linking against undefined symbols) keeps `dlopen` of a plugin from ever
//! failing for lack of a host symbol. A function a host does not offer is
//! reported once through `MQ_log` (or stderr) and answers with a neutral
//! value.
//!
//! `MQ_json` returns a live libfastjson object in every host (MailerQ and
//! `mq-host` both link libfastjson): the runtime reaches libfastjson's
//! functions the same way, from the process's global scope ([`fastjson`]),
//! so a plugin's JSON code runs the same path in both.

use crate::sys::*;
use mq_abi::{HostApiRef, IoCallbackParam, TimerCallbackParam};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// The host functions in use by this plugin, whichever way they were found.
pub(crate) struct HostFns {
    pub(crate) api: HostApiShim,
    /// True when the functions came from `mq-host`'s table.
    pub(crate) from_table: bool,
    /// `mq-host`'s extension for a failed `mq_initialize`, when offered.
    pub(crate) refuse_start: Option<unsafe extern "C" fn(*const c_char)>,
    /// `mq-host`'s extension for counting the plugin's panics, when offered.
    pub(crate) panicked: Option<unsafe extern "C" fn()>,
    /// `mq-host`'s length-aware `MQ_mime`, when offered; without it the
    /// MIME is read with `MQ_mime`, which a NUL byte ends.
    pub(crate) mime_bytes: Option<mq_abi::MimeBytesFn>,
    /// `mq-host`'s clock extensions (`clock.rs`), when offered.
    pub(crate) clock_offset: Option<unsafe extern "C" fn(*mut MQ_Context) -> u64>,
    pub(crate) hold_clock: Option<unsafe extern "C" fn(*mut MQ_Context) -> *mut c_void>,
    pub(crate) release_clock: Option<unsafe extern "C" fn(*mut c_void)>,
}

static HOST: OnceLock<HostFns> = OnceLock::new();

/// The host functions; resolves MailerQ's globals on first use when no
/// table was attached.
pub(crate) fn host() -> &'static HostFns {
    HOST.get_or_init(HostFns::from_globals)
}

/// Installs `mq-host`'s table. The first host wins: a plugin file is loaded
/// once per process, and every `mq-host` in a process offers the same
/// functions.
pub(crate) fn attach(api: HostApiRef) {
    let _ = HOST.set(HostFns {
        api: HostApiShim::from_table(api),
        from_table: true,
        refuse_start: api.refuse_start(),
        panicked: api.plugin_panicked(),
        mime_bytes: api.mime_bytes(),
        clock_offset: api.clock_offset(),
        hold_clock: api.hold_clock(),
        release_clock: api.release_clock(),
    });
}

/// Whether the functions came from `mq-host`'s table (true) or from global
/// symbols (false). Resolves them if that has not happened yet.
pub fn uses_host_table() -> bool {
    host().from_table
}

macro_rules! host_fns {
    ($( $field:ident : $c_name:literal => fn($($arg:ident : $ty:ty),*) $(-> $ret:ty)? = $default:expr; )*) => {
        /// One optional function pointer per `MQ_*` function.
        #[derive(Clone, Copy)]
        pub(crate) struct HostApiShim {
            $( $field: Option<unsafe extern "C" fn($($ty),*) $(-> $ret)?>, )*
        }

        impl HostApiShim {
            fn from_table(api: HostApiRef) -> Self {
                HostApiShim { $( $field: Some(table_fn!(api, $field)), )* }
            }

            fn from_globals_fns() -> Self {
                HostApiShim {
                    $( $field: {
                        let symbol = global_symbol(concat!($c_name, "\0"));
                        // SAFETY: the symbol is MailerQ's function of this exact C
                        // signature (`for_each_host_function!`); a null pointer becomes None.
                        unsafe { std::mem::transmute::<*mut c_void, Option<unsafe extern "C" fn($($ty),*) $(-> $ret)?>>(symbol) }
                    }, )*
                }
            }

            $(
                #[allow(clippy::unused_unit)]
                pub(crate) unsafe fn $field(&self, $($arg: $ty),*) $(-> $ret)? {
                    match self.$field {
                        // SAFETY: the caller passes handles it received from the
                        // host, as the C API requires.
                        Some(f) => unsafe { f($($arg),*) },
                        None => {
                            report_missing($c_name);
                            $default
                        }
                    }
                }
            )*
        }
    };
}

macro_rules! table_fn {
    ($api:ident, io_watch) => {{
        // The table wraps nested callbacks; unwrap them here so every shim
        // function has the plain C signature.
        unsafe extern "C" fn io_watch(
            ctx: *mut MQ_Context,
            fd: c_int,
            events: c_int,
            cb: Option<MQ_IOCallback>,
            data: *mut c_void,
        ) -> *mut MQ_IOWatcher {
            let api = table_api();
            // SAFETY: forwarded unchanged to the host's MQ_ioWatch.
            unsafe { (api.io_watch())(ctx, fd, events, IoCallbackParam { callback: cb }, data) }
        }
        io_watch
    }};
    ($api:ident, start_timer) => {{
        unsafe extern "C" fn start_timer(
            ctx: *mut MQ_Context,
            seconds: f32,
            cb: Option<MQ_TimerCallback>,
            data: *mut c_void,
        ) -> *mut MQ_Timer {
            let api = table_api();
            // SAFETY: forwarded unchanged to the host's MQ_startTimer.
            unsafe { (api.start_timer())(ctx, seconds, TimerCallbackParam { callback: cb }, data) }
        }
        start_timer
    }};
    ($api:ident, $field:ident) => {
        $api.$field()
    };
}

static TABLE: OnceLock<HostApiRef> = OnceLock::new();

fn table_api() -> HostApiRef {
    *TABLE
        .get()
        .expect("the host table is attached before it is used")
}

mq_abi::for_each_host_function!(host_fns);

impl HostFns {
    fn from_globals() -> HostFns {
        HostFns {
            api: HostApiShim::from_globals_fns(),
            from_table: false,
            refuse_start: None,
            panicked: None,
            mime_bytes: None,
            clock_offset: None,
            hold_clock: None,
            release_clock: None,
        }
    }
}

/// Records the table so that the wrapped functions can reach it.
pub(crate) fn attach_table(api: HostApiRef) {
    let _ = TABLE.set(api);
    attach(api);
}

fn global_symbol(name_nul: &str) -> *mut c_void {
    debug_assert!(name_nul.ends_with('\0'));
    // SAFETY: RTLD_DEFAULT searches the global scope; the name is NUL-terminated.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name_nul.as_ptr().cast()) }
}

fn report_missing(c_name: &str) {
    static REPORTED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let first = {
        let mut seen = REPORTED.lock().unwrap_or_else(|e| e.into_inner());
        let known = seen.contains(&c_name);
        if !known {
            seen.push(Box::leak(c_name.to_owned().into_boxed_str()));
        }
        !known
    };
    if first {
        crate::log::log_text(
            MQ_CRIT,
            &format!("mq-plugin: the host does not offer {c_name}; calls to it do nothing"),
        );
    }
}

/// libfastjson's `struct fjson_object`, opaque.
pub(crate) type FjsonObject = c_void;

macro_rules! fastjson_fns {
    ($( $field:ident : $c_name:literal => fn($($ty:ty),*) $(-> $ret:ty)?; )*) => {
        /// The libfastjson functions the runtime uses, from the process's
        /// global scope (the host's libfastjson).
        pub(crate) struct FastJson {
            $( pub(crate) $field: unsafe extern "C" fn($($ty),*) $(-> $ret)?, )*
        }

        impl FastJson {
            fn resolve() -> Result<FastJson, &'static str> {
                Ok(FastJson {
                    $( $field: {
                        let symbol = global_symbol(concat!($c_name, "\0"));
                        if symbol.is_null() {
                            return Err($c_name);
                        }
                        // SAFETY: libfastjson's function of this exact C
                        // signature (libfastjson/json_object.h, json_tokener.h).
                        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) $(-> $ret)?>(symbol) }
                    }, )*
                })
            }
        }
    };
}

fastjson_fns! {
    tokener_parse: "fjson_tokener_parse" => fn(*const c_char) -> *mut FjsonObject;
    object_get_ex: "fjson_object_object_get_ex" => fn(*mut FjsonObject, *const c_char, *mut *mut FjsonObject) -> c_int;
    object_add: "fjson_object_object_add" => fn(*mut FjsonObject, *const c_char, *mut FjsonObject);
    object_del: "fjson_object_object_del" => fn(*mut FjsonObject, *const c_char);
    to_json_string_ext: "fjson_object_to_json_string_ext" => fn(*mut FjsonObject, c_int) -> *const c_char;
    is_type: "fjson_object_is_type" => fn(*mut FjsonObject, c_int) -> c_int;
    get_string: "fjson_object_get_string" => fn(*mut FjsonObject) -> *const c_char;
    get_string_len: "fjson_object_get_string_len" => fn(*mut FjsonObject) -> c_int;
}

/// `fjson_type_string` of libfastjson's `enum fjson_type`.
pub(crate) const FJSON_TYPE_STRING: c_int = 6;

/// `FJSON_TO_STRING_PLAIN`.
pub(crate) const FJSON_TO_STRING_PLAIN: c_int = 0;

/// libfastjson's functions, or `None` (reported once) in a process
/// without libfastjson in its global scope.
pub(crate) fn fastjson() -> Option<&'static FastJson> {
    static FASTJSON: OnceLock<Option<FastJson>> = OnceLock::new();
    FASTJSON
        .get_or_init(|| match FastJson::resolve() {
            Ok(f) => Some(f),
            Err(missing) => {
                crate::log::log_text(
                    MQ_CRIT,
                    &format!(
                        "mq-plugin: the host offers no libfastjson (`{missing}` not found in the process); \
                         a message's JSON cannot be read or changed"
                    ),
                );
                None
            }
        })
        .as_ref()
}

impl FastJson {
    /// The JSON text of `obj`, copied.
    ///
    /// # Safety
    /// `obj` is a live libfastjson object (or NULL, the JSON null).
    pub(crate) unsafe fn text(&self, obj: *mut FjsonObject) -> String {
        if obj.is_null() {
            return "null".to_owned();
        }
        // SAFETY: the caller's promise; the text lives until the object
        // changes and is copied at once.
        let text = unsafe { (self.to_json_string_ext)(obj, FJSON_TO_STRING_PLAIN) };
        if text.is_null() {
            return "null".to_owned();
        }
        // SAFETY: libfastjson returns a NUL-terminated string.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}
