//! Loading plugins: a directory in byte order of file name, or listed
//! files. Each plugin is checked before anything of it runs, and refused
//! with a one-line error naming the file and the cause. Plugins are never
//! unloaded: the host keeps pointers into them for its whole life.

use abi_stable::library::{
    lib_header_from_raw_library, RawLibrary, ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use mq_hook_table::{Hook, Shape, HOOKS, HOOK_COUNT, MQ_API_VERSION};
use mq_plugin::abi::{check_plugin_layout, HostApiRef, PluginModuleRef, FRAMEWORK_ABI_VERSION};
use mq_plugin::sys::*;
use std::ffi::c_int;
use std::fmt;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A hook's entry point in a loaded plugin, typed by its shape.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HookFn {
    Global(GlobalHookFn),
    Context(ContextHookFn),
    Connection(ConnectionHookFn),
    Authenticate(AuthenticateHookFn),
    Address(AddressHookFn),
    Data(DataHookFn),
    Message(MessageHookFn),
}

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
    pub(crate) hooks: [Option<HookFn>; HOOK_COUNT],
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
    /// The dynamic loader refused the file.
    OpenFailed(String),
    /// The file exports no `mq_version`.
    NoVersion,
    /// `mq_version()` returned another API version.
    WrongApiVersion {
        /// What the plugin returned.
        found: i32,
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
            LoadErrorKind::OpenFailed(e) => write!(f, "the dynamic loader refused it: {e}"),
            LoadErrorKind::NoVersion => {
                write!(f, "exports no `mq_version`, so it is not a MailerQ plugin")
            }
            LoadErrorKind::WrongApiVersion { found } => write!(
                f,
                "wrong API version: `mq_version()` returned {found}, this host implements {MQ_API_VERSION}"
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
    fn new(file: &Path, kind: LoadErrorKind) -> LoadError {
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

/// Checks the ELF header: a shared object (`ET_DYN`).
fn check_elf(path: &Path) -> Result<(), LoadError> {
    let mut header = [0u8; 18];
    let mut file = std::fs::File::open(path)
        .map_err(|e| LoadError::new(path, LoadErrorKind::Unreadable(e.to_string())))?;
    let read = file
        .read(&mut header)
        .map_err(|e| LoadError::new(path, LoadErrorKind::Unreadable(e.to_string())))?;
    if read < header.len() || &header[..4] != b"\x7fELF" {
        return Err(LoadError::new(
            path,
            LoadErrorKind::NotASharedObject("no ELF header"),
        ));
    }
    let e_type = if header[5] == 2 {
        u16::from_be_bytes([header[16], header[17]])
    } else {
        u16::from_le_bytes([header[16], header[17]])
    };
    match e_type {
        3 => Ok(()),
        2 => Err(LoadError::new(
            path,
            LoadErrorKind::NotASharedObject("an executable"),
        )),
        1 => Err(LoadError::new(
            path,
            LoadErrorKind::NotASharedObject("an object file; link it with -shared"),
        )),
        _ => Err(LoadError::new(
            path,
            LoadErrorKind::NotASharedObject("an ELF file of another type"),
        )),
    }
}

/// Loads and checks one plugin; for Rust plugins in [`HostMode::Table`],
/// attaches `host_api`.
pub(crate) fn load(
    path: &Path,
    mode: HostMode,
    host_api: Option<HostApiRef>,
) -> Result<LoadedPlugin, LoadError> {
    check_elf(path)?;
    let library = RawLibrary::load_at(path)
        .map_err(|e| LoadError::new(path, LoadErrorKind::OpenFailed(one_line(&e))))?;
    // Never unloaded: hook pointers and root-module references point into it.
    let library: &'static RawLibrary = Box::leak(Box::new(library));

    // SAFETY: MailerQ's `int mq_version(void)`.
    let version: VersionFn = unsafe { library.get::<VersionFn>(b"mq_version\0") }
        .map(|s| *s)
        .map_err(|_| LoadError::new(path, LoadErrorKind::NoVersion))?;
    // SAFETY: calling the plugin's mq_version, as MailerQ does.
    let api_version = unsafe { version() } as c_int;
    if api_version != MQ_API_VERSION {
        return Err(LoadError::new(
            path,
            LoadErrorKind::WrongApiVersion { found: api_version },
        ));
    }

    let mut hooks: [Option<HookFn>; HOOK_COUNT] = [None; HOOK_COUNT];
    for (i, hook) in HOOKS.iter().enumerate() {
        let symbol = format!("{}\0", hook.symbol);
        // SAFETY: looked up as an untyped pointer, typed below by the hook's shape.
        if let Ok(sym) = unsafe { library.get::<*mut std::ffi::c_void>(symbol.as_bytes()) } {
            let raw: *mut std::ffi::c_void = *sym;
            // SAFETY: MailerQ's symbols have the signature of their shape
            // (mailerq-api.md); a plugin exporting another signature under
            // that name breaks the API contract, as in MailerQ.
            hooks[i] = Some(unsafe { typed_hook(hook.shape, raw) });
        }
    }

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
    if has_root_module {
        match mode {
            HostMode::GlobalSymbolsOnly => info.kind = PluginKind::RustWithoutRootModule,
            HostMode::Table => {
                let module = check_root_module(path, library)?;
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
                if let Some(api) = host_api {
                    (module.attach_host())(api);
                }
            }
        }
    }
    let needs_globals = host_api.is_some() && !matches!(info.kind, PluginKind::Rust { .. });
    if needs_globals && !crate::capi::host_symbols_exported() {
        return Err(LoadError::new(path, LoadErrorKind::HostSymbolsNotExported));
    }
    Ok(LoadedPlugin { info, hooks })
}

/// Loads and checks one plugin without attaching a host (`inspect`).
pub(crate) fn inspect(path: &Path) -> Result<PluginInfo, LoadError> {
    load(path, HostMode::Table, None).map(|p| p.info)
}

fn check_root_module(
    path: &Path,
    library: &'static RawLibrary,
) -> Result<PluginModuleRef, LoadError> {
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
    // the expected side (see design.md: a newer host accepts older plugins).
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
unsafe fn typed_hook(shape: Shape, raw: *mut std::ffi::c_void) -> HookFn {
    // SAFETY: the caller's promise; function and data pointers have one size here.
    unsafe {
        use std::mem::transmute as t;
        match shape {
            Shape::Global => HookFn::Global(t::<*mut std::ffi::c_void, GlobalHookFn>(raw)),
            Shape::Context => HookFn::Context(t::<*mut std::ffi::c_void, ContextHookFn>(raw)),
            Shape::Connection => {
                HookFn::Connection(t::<*mut std::ffi::c_void, ConnectionHookFn>(raw))
            }
            Shape::Authenticate => {
                HookFn::Authenticate(t::<*mut std::ffi::c_void, AuthenticateHookFn>(raw))
            }
            Shape::Address => HookFn::Address(t::<*mut std::ffi::c_void, AddressHookFn>(raw)),
            Shape::Data => HookFn::Data(t::<*mut std::ffi::c_void, DataHookFn>(raw)),
            Shape::Message => HookFn::Message(t::<*mut std::ffi::c_void, MessageHookFn>(raw)),
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
        let err = check_elf(&text).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("text.so: not a shared object (no ELF header)"),
            "{err}"
        );
        let exe = std::env::current_exe().unwrap();
        let err = check_elf(&exe);
        // Test binaries are position-independent (ET_DYN) or plain executables.
        if let Err(err) = err {
            assert!(err.to_string().contains("an executable"), "{err}");
        }
        assert!(matches!(
            check_elf(&dir.join("missing.so")).unwrap_err().kind,
            LoadErrorKind::Unreadable(_)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
