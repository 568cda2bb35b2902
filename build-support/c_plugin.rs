// Builds one C MailerQ plugin from a build script. Shared by the crates that
// wrap a C plugin; use it with
//
//     include!("../../build-support/c_plugin.rs");
//
// from a build.rs two directories below the workspace root. Only std, fully
// qualified, and no `use` items, so that it can sit next to the including
// script's own imports.

/// Compiles `source` (one C file) into the shared object
/// `$OUT_DIR/<output_name>` with the system C compiler (`$CC`, else `cc`),
/// copies it into the cargo profile directory (`target/<profile>/`, where
/// binaries and tests find it next to themselves) and returns `$OUT_DIR`.
///
/// Relative paths are taken from the including package's directory.
/// Panics, naming the file and showing the compiler's output, when the
/// compiler cannot be run or fails.
#[allow(dead_code)]
pub fn build_c_plugin(
    source: &std::path::Path,
    include_dir: &std::path::Path,
    output_name: &str,
) -> std::path::PathBuf {
    let manifest_dir = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let source = manifest_dir.join(source);
    let include_dir = manifest_dir.join(include_dir);
    let out_dir =
        std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let output = out_dir.join(output_name);

    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-changed={}", include_dir.join("mailerq.h").display());
    println!("cargo:rerun-if-env-changed=CC");

    // `$CC` may carry arguments ("ccache gcc", "gcc -m64").
    let cc = std::env::var("CC")
        .ok()
        .filter(|cc| !cc.trim().is_empty())
        .unwrap_or_else(|| "cc".to_string());
    let mut words = cc.split_whitespace();
    let program = words.next().expect("CC is not blank");
    let mut command = std::process::Command::new(program);
    command
        .args(words)
        .args([
            "-std=c11", "-shared", "-fPIC", "-O2", "-g", "-Wall", "-Wextra", "-Werror",
            "-D_GNU_SOURCE",
        ])
        .arg(format!("-I{}", include_dir.display()))
        .arg("-o")
        .arg(&output)
        .arg(&source)
        // Threads and dladdr(); part of libc on glibc >= 2.34, harmless there.
        .args(["-lpthread", "-ldl"]);

    let result = command.output().unwrap_or_else(|e| {
        panic!(
            "cannot build C plugin {}: cannot run the C compiler `{}` ({}); \
             install a C compiler or set CC",
            source.display(),
            cc,
            e
        )
    });
    if !result.status.success() {
        panic!(
            "cannot build C plugin {}: `{}` failed ({})\ncommand: {:?}\n--- compiler output ---\n{}{}",
            source.display(),
            cc,
            result.status,
            command,
            String::from_utf8_lossy(&result.stdout),
            String::from_utf8_lossy(&result.stderr),
        );
    }

    // OUT_DIR is target/<profile>/build/<package>-<hash>/out. Copy under a
    // temporary name and rename, so that a binary never loads half a file.
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .unwrap_or_else(|| panic!("OUT_DIR {} has no profile directory", out_dir.display()));
    let staged = profile_dir.join(format!(".{}.{}.tmp", output_name, std::process::id()));
    let installed = profile_dir.join(output_name);
    std::fs::copy(&output, &staged)
        .and_then(|_| std::fs::rename(&staged, &installed))
        .unwrap_or_else(|e| {
            let _ = std::fs::remove_file(&staged);
            panic!("cannot copy {} to {}: {}", output.display(), installed.display(), e)
        });

    out_dir
}
