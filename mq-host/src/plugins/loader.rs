//! Loading plugins: a directory in byte order of file name, or listed
//! files. Each plugin is checked before anything of it runs, and refused
//! with a one-line error naming the file and the cause. Plugins are never
//! unloaded: the host keeps pointers into them for its whole life.
//!
//! A file goes through three gates:
//!
//! 1. [`elf::check`] reads its ELF headers: a shared object of this
//!    machine's class, byte order and instruction set, and complete: every
//!    segment and section its headers describe lies inside the file. The
//!    dynamic loader maps segments without comparing them with the file's
//!    size, so a copy cut short would be a SIGBUS in `dlopen` (or at the
//!    first touch of a missing page), not an error.
//! 2. [`open`] calls `dlopen` with `RTLD_NOW | RTLD_LOCAL`: every symbol is
//!    bound at load, so a symbol that nothing provides refuses the plugin
//!    here, instead of killing the process ("symbol lookup error") the first
//!    time the plugin calls it. abi_stable then opens the same path; the
//!    dynamic loader finds the object already loaded (by name) and returns
//!    it, bound.
//! 3. `mq_version`, the hooks and, for Rust plugins, the root module's ABI.
//!
//! Every library opened is kept in [`OPENED`] for the process's life, also
//! when it was refused after `dlopen` (its initializers have run; unloading
//! it could leave destructors pointing at unmapped code).
//!
//! What remains open: the file is checked by path and then opened by path,
//! so a file renamed into place between the two is loaded unchecked (it
//! still goes through `dlopen`'s own checks, so only a cut-short file
//! renamed in during those microseconds could still fault). Loading the
//! checked descriptor itself (`/proc/self/fd/N`) would close that window,
//! but the loader would then record that name for the plugin, and plugins
//! find their own file through `dladdr` (the probes read `<own path>.plan`),
//! as would debuggers. And no check at load can protect a plugin that is
//! rewritten in place (`cp new.so plugins/x.so`) while it is loaded: its
//! mapped pages change under it or vanish. Install plugins with an atomic
//! rename: copy under a temporary name, then `mv` it into place.

use super::elf;
use abi_stable::library::{
    lib_header_from_raw_library, RawLibrary, ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use mq_abi::sys::*;
use mq_abi::RawHook;
use mq_abi::{check_plugin_layout, HostApiRef, PluginModuleRef, FRAMEWORK_ABI_VERSION};
use mq_hook_table::{Hook, Shape, HOOKS, HOOK_COUNT};
use std::ffi::{c_int, c_void, CStr, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

/// What kind of plugin a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginKind {
    /// Built with `mq-plugin`: has a root module that passed the ABI check.
    Rust {
        /// The framework ABI version it was built with.
        framework_abi: u32,
    },
    /// Built with `mq-plugin`, but loaded without its root module because the
    /// host runs in global-symbols-only mode (as MailerQ would).
    RustWithoutRootModule,
    /// Any other shared object exporting MailerQ's C symbols.
    C,
}

/// What the host knows about a loaded plugin.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Its name: the file name without `.so` (unique within a directory;
    /// used in the host's log and results).
    pub name: String,
    /// For Rust plugins: the package name in its root module.
    pub package: Option<String>,
    /// Its version, when the root module says.
    pub version: Option<String>,
    /// Its one-line description, when the root module says.
    pub description: Option<String>,
    /// What `mq_version()` returned.
    pub api_version: i32,
    /// Rust or C.
    pub kind: PluginKind,
    /// The hooks it exports, in table order.
    pub hooks: Vec<&'static Hook>,
    /// For Rust plugins: the hooks its author wrote (the rest of `hooks` is
    /// framework housekeeping).
    pub authored_hooks: Option<Vec<&'static Hook>>,
}

/// A plugin ready to be called.
pub(crate) struct LoadedPlugin {
    pub(crate) info: PluginInfo,
    pub(crate) hooks: [Option<RawHook>; HOOK_COUNT],
    /// For Rust plugins with a checked root module: ends a held hook.
    pub(crate) cancel: Option<mq_abi::CancelHoldFn>,
}

/// How Rust plugins get the host's functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostMode {
    /// Through `mq-host`'s function table (the root module is checked and
    /// attached).
    #[default]
    Table,
    /// Only through the global `MQ_*` symbols, as in MailerQ: root modules
    /// are ignored. For proving that plugins run in MailerQ too.
    GlobalSymbolsOnly,
}

/// Why a plugin was refused.
#[derive(Debug, Clone)]
pub struct LoadError {
    /// The file (or directory) concerned.
    pub file: PathBuf,
    /// The cause.
    pub kind: LoadErrorKind,
}

/// The causes of [`LoadError`].
#[derive(Debug, Clone)]
pub enum LoadErrorKind {
    /// The plugin directory could not be read.
    UnreadableDirectory(String),
    /// The file does not exist or cannot be read.
    Unreadable(String),
    /// The file is not an ELF shared object.
    NotASharedObject(&'static str),
    /// The file is an ELF object for another machine: another word size,
    /// byte order or instruction set than this host's.
    WrongMachine {
        /// What it is built for, as a phrase: `32-bit`, `big-endian`,
        /// `for AArch64`.
        found: String,
    },
    /// The file is cut short: its ELF headers describe more bytes than it
    /// has (typically a copy still being written). Refused before the
    /// dynamic loader maps it, where it would be a SIGBUS.
    Truncated {
        /// The bytes its headers describe, at least.
        needed: u64,
        /// The bytes it has.
        size: u64,
    },
    /// The plugin needs a symbol that neither the host nor the libraries
    /// it links provide (found at load: symbols are bound at `dlopen`).
    UnresolvedSymbol {
        /// The symbol's name.
        symbol: String,
    },
    /// The dynamic loader refused the file.
    OpenFailed(String),
    /// The file exports no `mq_version`.
    NoVersion,
    /// `mq_version()` returned another API version.
    WrongApiVersion {
        /// What the plugin returned.
        found: i32,
        /// What this host runs (`--api-version`, default
        /// [`MQ_API_VERSION`](mq_hook_table::MQ_API_VERSION)).
        expected: i32,
    },
    /// The root module's layout does not match this host's `mq-plugin`.
    AbiMismatch {
        /// One line from abi_stable's report.
        summary: String,
        /// abi_stable's full report, for `--verbose`.
        report: String,
    },
    /// The root module was built with an incompatible `mq-plugin` version.
    IncompatibleVersion(String),
    /// The root module carries another framework ABI version.
    WrongFrameworkAbi {
        /// The plugin's framework ABI version.
        found: u32,
    },
    /// The root module failed to initialize.
    RootModule(String),
    /// The executable does not export the host's `MQ_*` functions, so C
    /// plugins could not resolve them.
    HostSymbolsNotExported,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        match &self.kind {
            LoadErrorKind::UnreadableDirectory(e) => write!(f, "cannot read the plugin directory: {e}"),
            LoadErrorKind::Unreadable(e) => write!(f, "cannot read the file: {e}"),
            LoadErrorKind::NotASharedObject(why) => write!(f, "not a shared object ({why})"),
            LoadErrorKind::WrongMachine { found } => write!(
                f,
                "built for another machine: it is {found}, this host is {}; build it for this \
                 host's target",
                elf::host_description()
            ),
            LoadErrorKind::Truncated { needed, size } => write!(
                f,
                "the file is cut short: its ELF headers need at least {needed} bytes, the file \
                 has {size} (a half-finished copy? install plugins with an atomic rename: copy \
                 under a temporary name, then `mv` it into place)"
            ),
            LoadErrorKind::UnresolvedSymbol { symbol } => write!(
                f,
                "needs the symbol `{symbol}`, which neither this host nor its libraries provide \
                 (build against mailerq.h's functions only, or link the library that has it)"
            ),
            LoadErrorKind::OpenFailed(e) => write!(f, "the dynamic loader refused it: {e}"),
            LoadErrorKind::NoVersion => {
                write!(f, "exports no `mq_version`, so it is not a MailerQ plugin")
            }
            LoadErrorKind::WrongApiVersion { found, expected } => write!(
                f,
                "wrong API version: `mq_version()` returned {found}, this host runs {expected}; \
                 rebuild the plugin for it (`MQ_API_VERSION={expected} cargo build` with \
                 mq-plugin, `-DMQ_API_VERSION={expected}` in C) or start the host with \
                 `--api-version {found}`"
            ),
            LoadErrorKind::AbiMismatch { summary, .. } => write!(
                f,
                "ABI layout mismatch: built against an mq-plugin incompatible with this host (framework ABI {FRAMEWORK_ABI_VERSION}): {summary}"
            ),
            LoadErrorKind::IncompatibleVersion(e) => {
                write!(f, "built against an incompatible mq-plugin version: {e}")
            }
            LoadErrorKind::WrongFrameworkAbi { found } => write!(
                f,
                "wrong framework ABI version: the plugin has {found}, this host {FRAMEWORK_ABI_VERSION}"
            ),
            LoadErrorKind::RootModule(e) => write!(f, "its root module failed to initialize: {e}"),
            LoadErrorKind::HostSymbolsNotExported => write!(
                f,
                "this executable does not export the host's MQ_* functions, so C plugins cannot \
                 resolve them; link it with `-Wl,--export-dynamic-symbol=MQ_*` (see mq-host's docs)"
            ),
        }
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    pub(super) fn new(file: &Path, kind: LoadErrorKind) -> LoadError {
        LoadError {
            file: file.to_owned(),
            kind,
        }
    }

    /// abi_stable's full layout report, for ABI mismatches.
    pub fn report(&self) -> Option<&str> {
        match &self.kind {
            LoadErrorKind::AbiMismatch { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// Whether a directory entry's name looks like a shared object: `x.so`, or
/// a versioned `x.so.1`, `x.so.1.2` (not `x.so.plan`).
fn has_shared_object_name(name: &[u8]) -> bool {
    let Some(at) = name
        .windows(3)
        .rposition(|w| w == b".so")
        .filter(|&i| i > 0)
    else {
        return false;
    };
    let rest = &name[at + 3..];
    rest.is_empty()
        || (rest[0] == b'.'
            && rest[1..]
                .split(|b| *b == b'.')
                .all(|part| !part.is_empty() && part.iter().all(u8::is_ascii_digit)))
}

/// The shared objects in `dir`, in byte order of file name.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LoadError::new(dir, LoadErrorKind::UnreadableDirectory(e.to_string())))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| LoadError::new(dir, LoadErrorKind::UnreadableDirectory(e.to_string())))?;
        let path = entry.path();
        if has_shared_object_name(entry.file_name().as_bytes()) && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| {
        let name = |p: &PathBuf| {
            p.file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default()
        };
        name(a).cmp(&name(b))
    });
    Ok(files)
}

/// A `dlopen` handle. Never closed (it has no `Drop`).
struct DlHandle {
    _handle: NonNull<c_void>,
}

// SAFETY: a handle is a process-wide token that the dynamic loader accepts
// from any thread; this one is only kept, never used.
unsafe impl Send for DlHandle {}

/// A library opened for a plugin.
struct Opened {
    /// Opened with `RTLD_NOW`; never closed, so the library stays loaded
    /// whatever happens to `library`.
    _bound: DlHandle,
    /// The same library, through abi_stable, for its symbol lookups.
    library: RawLibrary,
}

/// Every library opened, for the process's life: hook pointers and
/// root-module references point into them. Held here rather than leaked, so
/// that a leak checker sees them as reachable.
static OPENED: Mutex<Vec<Opened>> = Mutex::new(Vec::new());

/// Opens `path` with every symbol bound now (see the module docs).
fn open(path: &Path) -> Result<Opened, LoadError> {
    // `dlopen` searches the library path for a name without a slash; the
    // user named a file.
    let dl_path = if path.as_os_str().as_bytes().contains(&b'/') {
        path.to_owned()
    } else {
        Path::new(".").join(path)
    };
    let c_path = CString::new(dl_path.as_os_str().as_bytes()).map_err(|_| {
        LoadError::new(
            path,
            LoadErrorKind::Unreadable("the path contains a NUL byte".into()),
        )
    })?;
    // SAFETY: `c_path` is NUL-terminated. Opening runs the library's
    // initializers, as loading any plugin does: the file passed the ELF
    // checks, and what its code does is the plugin's contract.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    let Some(handle) = NonNull::new(handle) else {
        return Err(open_error(path, &dlerror_text()));
    };
    // Finds the object just opened by its name, so it is the same, bound
    // one. Should this fail, `handle` is dropped unclosed: the library stays.
    let library = RawLibrary::load_at(&dl_path)
        .map_err(|e| LoadError::new(path, LoadErrorKind::OpenFailed(one_line(&e))))?;
    Ok(Opened {
        _bound: DlHandle { _handle: handle },
        library,
    })
}

/// Keeps `opened` for the process's life (see [`OPENED`]).
fn keep(opened: Opened) {
    OPENED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(opened);
}

/// This thread's last `dlopen` error.
fn dlerror_text() -> String {
    // SAFETY: dlerror takes no arguments; its state is per thread.
    let text = unsafe { libc::dlerror() };
    if text.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a non-null dlerror result is a NUL-terminated string, valid
    // until this thread's next dl* call.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// Whether the running executable exports the host's `MQ_*` functions, so
/// that a C plugin's `dlopen` can resolve them.
pub(crate) fn host_symbols_exported() -> bool {
    // SAFETY: a plain symbol lookup in the global scope.
    !unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"MQ_continue".as_ptr()) }.is_null()
}

/// The load error for `dlopen`'s `message`.
fn open_error(path: &Path, message: &str) -> LoadError {
    let kind = match undefined_symbol(message) {
        Some(symbol) if symbol.starts_with("MQ_") && !host_symbols_exported() => {
            LoadErrorKind::HostSymbolsNotExported
        }
        Some(symbol) => LoadErrorKind::UnresolvedSymbol {
            symbol: symbol.to_owned(),
        },
        None => LoadErrorKind::OpenFailed(one_line(&message)),
    };
    LoadError::new(path, kind)
}

/// The symbol in glibc's "OBJECT: undefined symbol: NAME[, version V]".
fn undefined_symbol(message: &str) -> Option<&str> {
    let (_, rest) = message.rsplit_once("undefined symbol: ")?;
    let name = rest.split(|c: char| c == ',' || c.is_whitespace()).next()?;
    (!name.is_empty()).then_some(name)
}

/// Loads and checks one plugin; for Rust plugins in [`HostMode::Table`],
/// attaches `host_api`. With `api_version`, `mq_version()` must return it
/// (as MailerQ requires its own number); without, any number is taken.
pub(crate) fn load(
    path: &Path,
    mode: HostMode,
    host_api: Option<HostApiRef>,
    api_version: Option<i32>,
) -> Result<LoadedPlugin, LoadError> {
    elf::check(path)?;
    let opened = open(path)?;
    let loaded = check_library(path, &opened.library, mode, host_api, api_version);
    keep(opened);
    loaded
}

/// The checks of an opened library, and its hooks.
fn check_library(
    path: &Path,
    library: &RawLibrary,
    mode: HostMode,
    host_api: Option<HostApiRef>,
    expected: Option<i32>,
) -> Result<LoadedPlugin, LoadError> {
    let api_version = api_version(path, library, expected)?;
    let hooks = exported_hooks(library);
    // SAFETY: only asks whether the symbol exists (typed as a pointer,
    // which is what the loader accepts for data symbols).
    let has_root_module =
        unsafe { library.get::<*const u8>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) }.is_ok();
    let file_stem = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".so").to_owned())
        .unwrap_or_default();
    let mut info = PluginInfo {
        file: path.to_owned(),
        name: file_stem,
        package: None,
        version: None,
        description: None,
        api_version,
        kind: PluginKind::C,
        hooks: HOOKS
            .iter()
            .zip(&hooks)
            .filter(|(_, f)| f.is_some())
            .map(|(h, _)| h)
            .collect(),
        authored_hooks: None,
    };
    let mut cancel = None;
    if has_root_module {
        match mode {
            HostMode::GlobalSymbolsOnly => info.kind = PluginKind::RustWithoutRootModule,
            HostMode::Table => {
                let module = check_root_module(path, library)?;
                describe_rust_plugin(&mut info, module);
                if let Some(api) = host_api {
                    (module.attach_host())(api);
                    cancel = module.cancel_hold();
                }
            }
        }
    }
    let needs_globals = host_api.is_some() && !matches!(info.kind, PluginKind::Rust { .. });
    if needs_globals && !host_symbols_exported() {
        return Err(LoadError::new(path, LoadErrorKind::HostSymbolsNotExported));
    }
    Ok(LoadedPlugin {
        info,
        hooks,
        cancel,
    })
}

/// The plugin's `mq_version()`, which must be `expected` when given.
fn api_version(
    path: &Path,
    library: &RawLibrary,
    expected: Option<i32>,
) -> Result<c_int, LoadError> {
    // SAFETY: MailerQ's `int mq_version(void)`.
    let version: VersionFn = unsafe { library.get::<VersionFn>(b"mq_version\0") }
        .map(|s| *s)
        .map_err(|_| LoadError::new(path, LoadErrorKind::NoVersion))?;
    // SAFETY: calling the plugin's mq_version, as MailerQ does.
    let api_version = unsafe { version() } as c_int;
    match expected {
        Some(expected) if expected != api_version => Err(LoadError::new(
            path,
            LoadErrorKind::WrongApiVersion {
                found: api_version,
                expected,
            },
        )),
        _ => Ok(api_version),
    }
}

/// The hooks the library exports, by the hook table's index.
fn exported_hooks(library: &RawLibrary) -> [Option<RawHook>; HOOK_COUNT] {
    let mut hooks: [Option<RawHook>; HOOK_COUNT] = [None; HOOK_COUNT];
    for (i, hook) in HOOKS.iter().enumerate() {
        let symbol = format!("{}\0", hook.symbol);
        // SAFETY: looked up as an untyped pointer, typed below by the hook's shape.
        if let Ok(sym) = unsafe { library.get::<*mut std::ffi::c_void>(symbol.as_bytes()) } {
            let raw: *mut std::ffi::c_void = *sym;
            // SAFETY: MailerQ's symbols have the signature of their shape
            // (`mailerq.h`); a plugin exporting another signature under
            // that name breaks the API contract, as in MailerQ.
            hooks[i] = Some(unsafe { typed_hook(hook.shape, raw) });
        }
    }
    hooks
}

/// What a Rust plugin's root module says about it: package, version,
/// description, framework ABI and the hooks its author wrote.
fn describe_rust_plugin(info: &mut PluginInfo, module: PluginModuleRef) {
    info.package = Some(module.name().to_string());
    info.version = Some(module.version().to_string());
    info.description = module
        .description()
        .map(|d| d.to_string())
        .filter(|d| !d.is_empty());
    info.kind = PluginKind::Rust {
        framework_abi: module.framework_abi(),
    };
    let authored = module.authored_hooks();
    info.authored_hooks = Some(
        HOOKS
            .iter()
            .enumerate()
            .filter(|(i, _)| authored & (1 << i) != 0)
            .map(|(_, h)| h)
            .collect(),
    );
}

/// Loads and checks one plugin without attaching a host (`inspect`); any
/// API version is taken (the caller compares it).
pub(crate) fn inspect(path: &Path) -> Result<PluginInfo, LoadError> {
    load(path, HostMode::Table, None, None).map(|p| p.info)
}

fn check_root_module(path: &Path, library: &RawLibrary) -> Result<PluginModuleRef, LoadError> {
    // SAFETY: the symbol exists (checked by the caller) and is abi_stable's header.
    let header = unsafe { lib_header_from_raw_library(library) }
        .map_err(|e| LoadError::new(path, LoadErrorKind::RootModule(one_line(&e))))?;
    if let Some(layout) = header.layout() {
        check_plugin_layout(layout).map_err(|m| {
            LoadError::new(
                path,
                LoadErrorKind::AbiMismatch {
                    summary: m.summary,
                    report: m.report,
                },
            )
        })?;
    }
    // SAFETY: the layout was checked just above, with the plugin's layout as
    // the expected side (a newer host accepts older plugins).
    let module = unsafe { header.init_root_module_with_unchecked_layout::<PluginModuleRef>() }
        .map_err(|e| {
            let kind = match e {
                abi_stable::library::LibraryError::IncompatibleVersionNumber { .. } => {
                    LoadErrorKind::IncompatibleVersion(one_line(&e))
                }
                _ => LoadErrorKind::RootModule(one_line(&e)),
            };
            LoadError::new(path, kind)
        })?;
    if module.framework_abi() != FRAMEWORK_ABI_VERSION {
        return Err(LoadError::new(
            path,
            LoadErrorKind::WrongFrameworkAbi {
                found: module.framework_abi(),
            },
        ));
    }
    Ok(module)
}

/// # Safety
/// `raw` must be a function of the C signature of `shape`.
unsafe fn typed_hook(shape: Shape, raw: *mut std::ffi::c_void) -> RawHook {
    // SAFETY: the caller's promise; function and data pointers have one size here.
    unsafe {
        use std::mem::transmute as t;
        match shape {
            Shape::Global => RawHook::Global(t::<*mut std::ffi::c_void, GlobalHookFn>(raw)),
            Shape::Context => RawHook::Context(t::<*mut std::ffi::c_void, ContextHookFn>(raw)),
            Shape::Connection => {
                RawHook::Connection(t::<*mut std::ffi::c_void, ConnectionHookFn>(raw))
            }
            Shape::Authenticate => {
                RawHook::Authenticate(t::<*mut std::ffi::c_void, AuthenticateHookFn>(raw))
            }
            Shape::Address => RawHook::Address(t::<*mut std::ffi::c_void, AddressHookFn>(raw)),
            Shape::Data => RawHook::Data(t::<*mut std::ffi::c_void, DataHookFn>(raw)),
            Shape::Message => RawHook::Message(t::<*mut std::ffi::c_void, MessageHookFn>(raw)),
        }
    }
}

fn one_line(e: &dyn fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_object_names() {
        assert!(has_shared_object_name(b"10-a.so"));
        assert!(has_shared_object_name(b"libx.so.1"));
        assert!(!has_shared_object_name(b"notes.txt"));
        assert!(!has_shared_object_name(b"x.sox"));
        assert!(has_shared_object_name(b"libx.so.1.22"));
        assert!(!has_shared_object_name(b"10-a.so.plan"));
        assert!(!has_shared_object_name(b"x.so."));
        assert!(!has_shared_object_name(b".so"));
    }

    #[test]
    fn discovery_sorts_by_bytes_and_skips_other_files() {
        let dir = std::env::temp_dir().join(format!("mq-host-discover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub.so")).unwrap();
        for name in ["b.so", "a.so", "B.so", "10-z.so", "readme.txt"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let names: Vec<String> = discover(&dir)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-z.so", "B.so", "a.so", "b.so"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn elf_checks_name_the_cause() {
        let dir = std::env::temp_dir().join(format!("mq-host-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("text.so");
        std::fs::write(&text, b"hello, this is not ELF").unwrap();
        let err = elf::check(&text).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("text.so: not a shared object (no ELF header)"),
            "{err}"
        );
        let exe = std::env::current_exe().unwrap();
        let err = elf::check(&exe);
        // Test binaries are position-independent (ET_DYN) or plain executables.
        if let Err(err) = err {
            assert!(err.to_string().contains("an executable"), "{err}");
        }
        assert!(matches!(
            elf::check(&dir.join("missing.so")).unwrap_err().kind,
            LoadErrorKind::Unreadable(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn undefined_symbols_from_dlerror() {
        let parse = undefined_symbol;
        assert_eq!(
            parse("/p/lazy.so: undefined symbol: mq_test_missing_function"),
            Some("mq_test_missing_function")
        );
        assert_eq!(
            parse("/p/x.so: undefined symbol: memfrob2, version GLIBC_2.99"),
            Some("memfrob2")
        );
        assert_eq!(
            parse("libgone.so: cannot open shared object file: No such file or directory"),
            None
        );
        assert_eq!(parse("/p/x.so: undefined symbol: "), None);
    }

    /// A C plugin that calls a host function, in an executable that does
    /// not export them (this test binary: mq-host's build script exports
    /// them from its binaries only).
    #[test]
    fn host_symbols_not_exported_is_named_at_load() {
        if host_symbols_exported() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("mq-host-noexport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("uses-host.c");
        std::fs::write(
            &src,
            "void MQ_continue(void *connection);\n\
             int mq_version(void) { return 1; }\n\
             int mq_smtp_in_connect(void *ctx, void *conn) { MQ_continue(conn); return 1; }\n",
        )
        .unwrap();
        let so = dir.join("uses-host.so");
        let status =
            std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
                .args(["-shared", "-fPIC", "-o"])
                .arg(&so)
                .arg(&src)
                .status()
                .expect("run the C compiler");
        assert!(status.success());
        let err = inspect(&so).unwrap_err();
        assert!(
            matches!(err.kind, LoadErrorKind::HostSymbolsNotExported),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
