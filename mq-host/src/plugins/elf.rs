//! The checks of a plugin file's ELF headers, made before the dynamic
//! loader sees it: a file cut short (a half-finished copy) would otherwise
//! kill the host with SIGBUS when its segments are mapped. Only the native
//! class is parsed: anything else is refused before its layout matters.

use super::loader::{LoadError, LoadErrorKind};
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
    fn image(segments: &[(u32, u64, u64)], sections: &[(u32, u64, u64)], len: usize) -> Vec<u8> {
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
        let dir = std::env::temp_dir().join(format!("mq-host-elf-image-{}", std::process::id()));
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
