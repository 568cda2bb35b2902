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

use abi_stable::library::{
    lib_header_from_raw_library, RawLibrary, ROOT_MODULE_LOADER_NAME_WITH_NUL,
};
use mq_hook_table::{Hook, Shape, HOOKS, HOOK_COUNT, MQ_API_VERSION};
use mq_plugin::abi::{check_plugin_layout, HostApiRef, PluginModuleRef, FRAMEWORK_ABI_VERSION};
use mq_plugin::sys::*;
use std::ffi::{c_int, c_void, CStr, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

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
    /// For Rust plugins with a checked root module: ends a held hook.
    pub(crate) cancel: Option<mq_plugin::abi::CancelHoldFn>,
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

/// The checks of a file's ELF headers, made before the dynamic loader sees
/// it (see the module docs). Only the native class is parsed: anything else
/// is refused before its layout matters.
mod elf {
    use super::{LoadError, LoadErrorKind};
    use std::fs::File;
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    const CLASS_64: bool = cfg!(target_pointer_width = "64");
    const NATIVE_CLASS: u8 = if CLASS_64 { 2 } else { 1 };
    const NATIVE_DATA: u8 = if cfg!(target_endian = "little") { 1 } else { 2 };
    /// `e_machine` of this host, where we can name it; `None` skips the check.
    const NATIVE_MACHINE: Option<u16> = if cfg!(target_arch = "x86_64") {
        Some(62)
    } else if cfg!(target_arch = "aarch64") {
        Some(183)
    } else if cfg!(target_arch = "x86") {
        Some(3)
    } else if cfg!(target_arch = "arm") {
        Some(40)
    } else if cfg!(any(target_arch = "riscv64", target_arch = "riscv32")) {
        Some(243)
    } else if cfg!(target_arch = "powerpc64") {
        Some(21)
    } else if cfg!(target_arch = "s390x") {
        Some(22)
    } else if cfg!(target_arch = "loongarch64") {
        Some(258)
    } else {
        None
    };
    const SHT_NULL: u32 = 0;
    const SHT_NOBITS: u32 = 8;

    /// Where the fields are in the native class (ELF64 or ELF32).
    struct Layout {
        ehdr: u64,
        e_phoff: usize,
        e_shoff: usize,
        e_phentsize: usize,
        e_phnum: usize,
        e_shentsize: usize,
        e_shnum: usize,
        phent: u64,
        p_offset: usize,
        p_filesz: usize,
        shent: u64,
        sh_offset: usize,
        sh_size: usize,
    }

    const L: Layout = if CLASS_64 {
        Layout {
            ehdr: 64,
            e_phoff: 32,
            e_shoff: 40,
            e_phentsize: 54,
            e_phnum: 56,
            e_shentsize: 58,
            e_shnum: 60,
            phent: 56,
            p_offset: 8,
            p_filesz: 32,
            shent: 64,
            sh_offset: 24,
            sh_size: 32,
        }
    } else {
        Layout {
            ehdr: 52,
            e_phoff: 28,
            e_shoff: 32,
            e_phentsize: 42,
            e_phnum: 44,
            e_shentsize: 46,
            e_shnum: 48,
            phent: 32,
            p_offset: 4,
            p_filesz: 16,
            shent: 40,
            sh_offset: 16,
            sh_size: 20,
        }
    };

    // Fields are read in native byte order: a file in another is refused first.
    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    /// An address-sized field (`Elf64_Off`, `Elf32_Off`, `Elf64_Xword`, ...).
    fn word_at(b: &[u8], at: usize) -> u64 {
        if CLASS_64 {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&b[at..at + 8]);
            u64::from_ne_bytes(bytes)
        } else {
            u64::from(u32_at(b, at))
        }
    }

    fn machine_name(machine: u16) -> String {
        let name = match machine {
            3 => "x86",
            8 => "MIPS",
            20 => "PowerPC",
            21 => "PowerPC64",
            22 => "S/390",
            40 => "ARM",
            62 => "x86-64",
            183 => "AArch64",
            243 => "RISC-V",
            258 => "LoongArch",
            _ => return format!("ELF machine {machine}"),
        };
        name.to_owned()
    }

    /// This host as the ELF headers describe it: `64-bit little-endian x86-64`.
    pub(super) fn host_description() -> String {
        let bits = if CLASS_64 { 64 } else { 32 };
        let order = if NATIVE_DATA == 1 { "little" } else { "big" };
        match NATIVE_MACHINE {
            Some(machine) => format!("{bits}-bit {order}-endian {}", machine_name(machine)),
            None => format!("{bits}-bit {order}-endian"),
        }
    }

    /// Checks that `path` is a complete ELF shared object for this machine.
    pub(super) fn check(path: &Path) -> Result<(), LoadError> {
        let fail = |kind| LoadError::new(path, kind);
        let not_so = |why| fail(LoadErrorKind::NotASharedObject(why));
        let unreadable = |e: std::io::Error| fail(LoadErrorKind::Unreadable(e.to_string()));
        let file = File::open(path).map_err(unreadable)?;
        let mut header = Vec::new();
        (&file)
            .take(L.ehdr)
            .read_to_end(&mut header)
            .map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        let truncated = |needed| fail(LoadErrorKind::Truncated { needed, size });
        let wrong_machine = |found: String| fail(LoadErrorKind::WrongMachine { found });

        if header.len() < 4 || header[..4] != *b"\x7fELF" {
            return Err(not_so("no ELF header"));
        }
        if header.len() < 6 {
            return Err(truncated(L.ehdr));
        }
        match header[4] {
            c if c == NATIVE_CLASS => {}
            1 => return Err(wrong_machine("32-bit".into())),
            2 => return Err(wrong_machine("64-bit".into())),
            _ => return Err(not_so("an unknown ELF class")),
        }
        match header[5] {
            d if d == NATIVE_DATA => {}
            1 => return Err(wrong_machine("little-endian".into())),
            2 => return Err(wrong_machine("big-endian".into())),
            _ => return Err(not_so("an unknown ELF byte order")),
        }
        if (header.len() as u64) < L.ehdr {
            return Err(truncated(L.ehdr));
        }
        if header[6] != 1 || u32_at(&header, 20) != 1 {
            return Err(not_so("an unknown ELF version"));
        }
        match u16_at(&header, 16) {
            3 => {}
            2 => return Err(not_so("an executable")),
            1 => return Err(not_so("an object file; link it with -shared")),
            _ => return Err(not_so("an ELF file of another type")),
        }
        let machine = u16_at(&header, 18);
        if NATIVE_MACHINE.is_some_and(|native| native != machine) {
            return Err(wrong_machine(format!("for {}", machine_name(machine))));
        }

        // `offset + count * entry`, refusing what overflows.
        let end = |offset: u64, count: u64, entry: u64| {
            count
                .checked_mul(entry)
                .and_then(|len| offset.checked_add(len))
                .ok_or_else(|| not_so("malformed ELF headers"))
        };
        // The table of `count` entries of `entry` bytes at `offset`, if it
        // is inside the file.
        let table = |offset: u64, count: u64, entry: u64, needed: u64| {
            let table_end = end(offset, count, entry)?;
            if table_end > size {
                return Err(truncated(needed.max(table_end)));
            }
            let mut bytes = vec![0; (table_end - offset) as usize];
            file.read_exact_at(&mut bytes, offset).map_err(unreadable)?;
            Ok((bytes, table_end))
        };
        let mut needed = L.ehdr;

        // The program headers: every segment the dynamic loader maps or reads.
        let phnum = u64::from(u16_at(&header, L.e_phnum));
        if phnum > 0 && u64::from(u16_at(&header, L.e_phentsize)) != L.phent {
            return Err(not_so("malformed program headers"));
        }
        let (phdrs, table_end) = table(word_at(&header, L.e_phoff), phnum, L.phent, needed)?;
        needed = needed.max(table_end);
        for ph in phdrs.chunks_exact(L.phent as usize) {
            needed = needed.max(end(word_at(ph, L.p_offset), 1, word_at(ph, L.p_filesz))?);
        }

        // The section headers and the sections with contents: the loader
        // does not read them, but a file that lacks them is cut short all the
        // same (they usually come last, so this catches any cut).
        let shoff = word_at(&header, L.e_shoff);
        if shoff != 0 {
            if u64::from(u16_at(&header, L.e_shentsize)) != L.shent {
                return Err(not_so("malformed section headers"));
            }
            let mut shnum = u64::from(u16_at(&header, L.e_shnum));
            if shnum == 0 {
                // More than 0xff00 sections: section 0's `sh_size` has the count.
                let (first, _) = table(shoff, 1, L.shent, needed)?;
                shnum = word_at(&first, L.sh_size);
            }
            let (shdrs, table_end) = table(shoff, shnum, L.shent, needed)?;
            needed = needed.max(table_end);
            for sh in shdrs.chunks_exact(L.shent as usize) {
                if !matches!(u32_at(sh, 4), SHT_NULL | SHT_NOBITS) {
                    needed = needed.max(end(word_at(sh, L.sh_offset), 1, word_at(sh, L.sh_size))?);
                }
            }
        }
        if needed > size {
            return Err(truncated(needed));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
            b[at..at + bytes.len()].copy_from_slice(bytes);
        }

        fn put_word(b: &mut [u8], at: usize, value: u64) {
            if CLASS_64 {
                put(b, at, &value.to_ne_bytes());
            } else {
                put(b, at, &(value as u32).to_ne_bytes());
            }
        }

        /// A native shared object of `len` bytes: the ELF header, then the
        /// program headers `(type, offset, filesz)`, then the section
        /// headers `(type, offset, size)`.
        fn image(
            segments: &[(u32, u64, u64)],
            sections: &[(u32, u64, u64)],
            len: usize,
        ) -> Vec<u8> {
            let mut b = vec![0; len];
            put(&mut b, 0, b"\x7fELF");
            b[4] = NATIVE_CLASS;
            b[5] = NATIVE_DATA;
            b[6] = 1;
            put(&mut b, 16, &3u16.to_ne_bytes());
            put(&mut b, 18, &NATIVE_MACHINE.unwrap_or(0).to_ne_bytes());
            put(&mut b, 20, &1u32.to_ne_bytes());
            let phoff = L.ehdr;
            let shoff = phoff + segments.len() as u64 * L.phent;
            put_word(&mut b, L.e_phoff, phoff);
            put_word(&mut b, L.e_shoff, shoff);
            put(&mut b, L.e_phentsize, &(L.phent as u16).to_ne_bytes());
            put(&mut b, L.e_phnum, &(segments.len() as u16).to_ne_bytes());
            put(&mut b, L.e_shentsize, &(L.shent as u16).to_ne_bytes());
            put(&mut b, L.e_shnum, &(sections.len() as u16).to_ne_bytes());
            for (i, &(kind, offset, filesz)) in segments.iter().enumerate() {
                let at = (phoff + i as u64 * L.phent) as usize;
                put(&mut b, at, &kind.to_ne_bytes());
                put_word(&mut b, at + L.p_offset, offset);
                put_word(&mut b, at + L.p_filesz, filesz);
            }
            for (i, &(kind, offset, size)) in sections.iter().enumerate() {
                let at = (shoff + i as u64 * L.shent) as usize;
                put(&mut b, at + 4, &kind.to_ne_bytes());
                put_word(&mut b, at + L.sh_offset, offset);
                put_word(&mut b, at + L.sh_size, size);
            }
            b
        }

        /// A complete image: a PT_LOAD and a PT_DYNAMIC up to 0x400, one
        /// section with contents and one without (`.bss`, past the end).
        fn whole() -> Vec<u8> {
            image(
                &[(1, 0, 0x400), (2, 0x300, 0x40)],
                &[(0, 0, 0), (1, 0x200, 0x180), (8, 0x400, 0x1000)],
                0x400,
            )
        }

        fn check_bytes(name: &str, bytes: &[u8]) -> Result<(), LoadError> {
            let dir =
                std::env::temp_dir().join(format!("mq-host-elf-image-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(name);
            std::fs::write(&file, bytes).unwrap();
            let checked = check(&file);
            std::fs::remove_file(&file).unwrap();
            checked
        }

        fn truncated(result: Result<(), LoadError>) -> (u64, u64) {
            match result.map_err(|e| e.kind) {
                Err(LoadErrorKind::Truncated { needed, size }) => (needed, size),
                other => panic!("expected Truncated, got {other:?}"),
            }
        }

        fn found(result: Result<(), LoadError>) -> String {
            let e = result.unwrap_err();
            let text = e.to_string();
            let LoadErrorKind::WrongMachine { found } = e.kind else {
                panic!("expected WrongMachine, got {text}")
            };
            assert!(
                text.contains(&format!("this host is {}", host_description())),
                "{text}"
            );
            found
        }

        #[test]
        fn complete_image_passes() {
            check_bytes("whole.so", &whole()).unwrap();
        }

        #[test]
        fn cut_in_a_segment() {
            let bytes = whole();
            assert_eq!(
                truncated(check_bytes("seg.so", &bytes[..0x3f0])),
                (0x400, 0x3f0)
            );
        }

        #[test]
        fn cut_in_the_program_headers() {
            let bytes = whole();
            let table_end = L.ehdr + 2 * L.phent;
            assert_eq!(
                truncated(check_bytes("ph.so", &bytes[..100])),
                (table_end, 100)
            );
        }

        #[test]
        fn cut_in_the_section_headers_names_the_segments_too() {
            let bytes = whole();
            let cut = (L.ehdr + 2 * L.phent + 10) as usize;
            assert_eq!(
                truncated(check_bytes("sh.so", &bytes[..cut])),
                (0x400, cut as u64)
            );
        }

        #[test]
        fn cut_in_a_section_after_the_segments() {
            let mut bytes = image(&[(1, 0, 0x200)], &[(0, 0, 0), (1, 0x200, 0x200)], 0x400);
            bytes.truncate(0x300);
            assert_eq!(truncated(check_bytes("sec.so", &bytes)), (0x400, 0x300));
        }

        #[test]
        fn cut_in_the_elf_header() {
            let bytes = whole();
            assert_eq!(truncated(check_bytes("eh.so", &bytes[..20])), (L.ehdr, 20));
            assert_eq!(truncated(check_bytes("eh5.so", &bytes[..5])), (L.ehdr, 5));
            let e = check_bytes("eh3.so", &bytes[..3]).unwrap_err();
            assert!(e.to_string().ends_with("(no ELF header)"), "{e}");
        }

        #[test]
        fn overflowing_offsets_are_malformed() {
            let bytes = image(&[(1, u64::MAX, 2)], &[], 0x200);
            let e = check_bytes("overflow.so", &bytes).unwrap_err();
            assert!(
                e.to_string()
                    .ends_with("not a shared object (malformed ELF headers)"),
                "{e}"
            );
        }

        #[test]
        fn foreign_class_byte_order_and_machine() {
            let mut bytes = whole();
            bytes[4] = 3 - NATIVE_CLASS;
            let other = if CLASS_64 { "32-bit" } else { "64-bit" };
            assert_eq!(found(check_bytes("class.so", &bytes)), other);

            let mut bytes = whole();
            bytes[5] = 3 - NATIVE_DATA;
            let other = if NATIVE_DATA == 1 {
                "big-endian"
            } else {
                "little-endian"
            };
            assert_eq!(found(check_bytes("order.so", &bytes)), other);

            if let Some(native) = NATIVE_MACHINE {
                let mut bytes = whole();
                let other: u16 = if native == 183 { 62 } else { 183 };
                put(&mut bytes, 18, &other.to_ne_bytes());
                let found = found(check_bytes("machine.so", &bytes));
                assert_eq!(found, format!("for {}", machine_name(other)));
            }
        }
    }
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

/// The load error for `dlopen`'s `message`.
fn open_error(path: &Path, message: &str) -> LoadError {
    let kind = match undefined_symbol(message) {
        Some(symbol) if symbol.starts_with("MQ_") && !crate::capi::host_symbols_exported() => {
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
/// attaches `host_api`.
pub(crate) fn load(
    path: &Path,
    mode: HostMode,
    host_api: Option<HostApiRef>,
) -> Result<LoadedPlugin, LoadError> {
    elf::check(path)?;
    let opened = open(path)?;
    let loaded = check_library(path, &opened.library, mode, host_api);
    keep(opened);
    loaded
}

/// The checks of an opened library, and its hooks.
fn check_library(
    path: &Path,
    library: &RawLibrary,
    mode: HostMode,
    host_api: Option<HostApiRef>,
) -> Result<LoadedPlugin, LoadError> {
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
    let mut cancel = None;
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
                    cancel = module.cancel_hold();
                }
            }
        }
    }
    let needs_globals = host_api.is_some() && !matches!(info.kind, PluginKind::Rust { .. });
    if needs_globals && !crate::capi::host_symbols_exported() {
        return Err(LoadError::new(path, LoadErrorKind::HostSymbolsNotExported));
    }
    Ok(LoadedPlugin {
        info,
        hooks,
        cancel,
    })
}

/// Loads and checks one plugin without attaching a host (`inspect`).
pub(crate) fn inspect(path: &Path) -> Result<PluginInfo, LoadError> {
    load(path, HostMode::Table, None).map(|p| p.info)
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
        if crate::capi::host_symbols_exported() {
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
