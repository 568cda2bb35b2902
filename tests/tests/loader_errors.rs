//! Every loader error: one line naming the file and the cause, and the
//! host refuses to start.

use mq_e2e::*;
use mq_host::{Host, LoadErrorKind, StartError};
use std::path::{Path, PathBuf};
use std::process::Command;

fn start_with(file: &Path) -> StartError {
    Host::builder()
        .plugin_file(file)
        .workers(1)
        .start()
        .err()
        .expect("the plugin must be refused")
}

fn cc(dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run the C compiler");
    assert!(status.success());
    out
}

fn one_line(e: &StartError) -> String {
    let text = e.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

#[test]
fn not_a_shared_object() {
    let dir = PluginDir::new("notso");
    let text = dir.path().join("notes.so");
    std::fs::write(&text, "hello").unwrap();
    let e = start_with(&text);
    assert_eq!(
        one_line(&e),
        format!("{}: not a shared object (no ELF header)", text.display())
    );
    let object = cc(
        dir.path(),
        "object.so",
        "int x(void) { return 1; }",
        &["-c", "-fPIC"],
    );
    let e = start_with(&object);
    assert!(
        one_line(&e)
            .ends_with("object.so: not a shared object (an object file; link it with -shared)"),
        "{e}"
    );
    let missing = dir.path().join("missing.so");
    let e = start_with(&missing);
    assert!(
        one_line(&e).starts_with(&format!("{}: cannot read the file:", missing.display())),
        "{e}"
    );
}

#[test]
fn no_mq_version() {
    let dir = PluginDir::new("noversion");
    let so = cc(
        dir.path(),
        "noversion.so",
        "int mq_smtp_in_connect(void *a, void *b) { return 0; }",
        &["-shared", "-fPIC"],
    );
    let e = start_with(&so);
    assert_eq!(
        one_line(&e),
        format!(
            "{}: exports no `mq_version`, so it is not a MailerQ plugin",
            so.display()
        )
    );
}

#[test]
fn wrong_api_version() {
    let dir = PluginDir::new("wrongversion");
    let so = cc(
        dir.path(),
        "old.so",
        "int mq_version(void) { return 99; }",
        &["-shared", "-fPIC"],
    );
    let e = start_with(&so);
    assert_eq!(
        one_line(&e),
        format!(
            "{}: wrong API version: `mq_version()` returned 99, this host runs 1; rebuild the \
             plugin for it (`MQ_API_VERSION=1 cargo build` with mq-plugin, `-DMQ_API_VERSION=1` \
             in C) or start the host with `--api-version 99`",
            so.display()
        )
    );
}

/// A C plugin built with our `mailerq.h` for another MailerQ
/// (`-DMQ_API_VERSION=7`) is refused by a host that runs the default, and
/// loaded by one that runs 7 — which refuses a plugin built for the default.
#[test]
fn a_plugin_built_for_another_mailerq_needs_that_api_version() {
    let dir = PluginDir::new("api-version-7");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let so = cc(
        dir.path(),
        "for7.so",
        "#include <mailerq.h>\nint mq_version(void) { return MQ_API_VERSION; }\n",
        &[
            "-shared",
            "-fPIC",
            "-DMQ_API_VERSION=7",
            "-I",
            include.to_str().unwrap(),
        ],
    );
    let e = start_with(&so);
    assert!(
        one_line(&e).ends_with(
            "wrong API version: `mq_version()` returned 7, this host runs 1; rebuild the plugin \
             for it (`MQ_API_VERSION=1 cargo build` with mq-plugin, `-DMQ_API_VERSION=1` in C) \
             or start the host with `--api-version 7`"
        ),
        "{e}"
    );
    let host = Host::builder()
        .plugin_file(&so)
        .api_version(7)
        .workers(1)
        .start()
        .expect("--api-version 7 loads it");
    assert_eq!(host.plugins()[0].api_version, 7);
    drop(host);
    // A Rust plugin built with the default returns 1: a host for 7 refuses it.
    let e = Host::builder()
        .plugin_file(rust_probe())
        .api_version(7)
        .workers(1)
        .start()
        .err()
        .expect("refused");
    assert!(
        one_line(&e).contains("`mq_version()` returned 1, this host runs 7;"),
        "{e}"
    );
    // The binary: the same refusal, and `--api-version 7` loads it.
    let run = |extra: &[&str]| {
        Command::new(host_binary())
            .args(["run", "--quiet", "--plugin", so.to_str().unwrap()])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run mq-host")
    };
    let refused = run(&[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("returned 7, this host runs 1;") && err.contains("`--api-version 7`"),
        "{err}"
    );
    let loaded = run(&["--api-version", "7"]);
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
}

#[test]
fn abi_layout_mismatch() {
    let so = plugin_so("mq-test-abi-mismatch");
    let e = start_with(&so);
    let line = one_line(&e);
    assert!(
        line.starts_with(&format!(
            "{}: ABI layout mismatch: built against an mq-plugin incompatible with this host",
            so.display()
        )),
        "{line}"
    );
    let StartError::Load(load) = e else {
        panic!("a load error")
    };
    assert!(matches!(load.kind, LoadErrorKind::AbiMismatch { .. }));
    assert!(
        load.report().unwrap().lines().count() > 5,
        "the full report is kept for --verbose"
    );
}

#[test]
fn unloadable_file() {
    let dir = PluginDir::new("unloadable");
    // Linked against a library that is gone by the time it loads.
    let gone = cc(
        dir.path(),
        "libgone.so",
        "int gone(void) { return 1; }",
        &["-shared", "-fPIC"],
    );
    let so = cc(
        dir.path(),
        "needs-gone.so",
        "int gone(void);\nint mq_version(void) { return gone(); }",
        &[
            "-shared",
            "-fPIC",
            "-L",
            dir.path().to_str().unwrap(),
            "-Wl,--no-as-needed",
            "-lgone",
        ],
    );
    std::fs::remove_file(gone).unwrap();
    let e = start_with(&so);
    let line = one_line(&e);
    assert!(
        line.starts_with(&format!("{}: the dynamic loader refused it:", so.display())),
        "{line}"
    );
    assert!(line.contains("libgone.so"), "{line}");
}

#[test]
fn unreadable_directory() {
    let missing = std::env::temp_dir().join("mq-e2e-no-such-dir");
    let e = Host::builder().plugin_dir(&missing).start().err().unwrap();
    assert!(
        one_line(&e).starts_with(&format!(
            "{}: cannot read the plugin directory:",
            missing.display()
        )),
        "{e}"
    );
}

#[test]
fn c_plugins_load_without_a_root_module() {
    let dir = PluginDir::new("c-only");
    dir.add("10-c.so", &c_probe(), "");
    let host = dir.start();
    let info = &host.plugins()[0];
    assert_eq!(info.kind, mq_host::PluginKind::C);
    assert_eq!(info.name, "10-c");
    assert_eq!(info.hooks.len(), mq_host::hook_table::HOOKS.len());
}

/// Copies of a real plugin cut short: in its segments (the dynamic loader
/// would map pages past the end of the file: SIGBUS) and in the middle
/// (segments whole, the rest missing).
fn truncated_copies(dir: &PluginDir) -> Vec<(PathBuf, u64)> {
    let bytes = std::fs::read(plugin_so("mq-example-stamp")).unwrap();
    [("head.so", 5_000), ("half.so", bytes.len() / 2)]
        .into_iter()
        .map(|(name, len)| {
            let cut = dir.path().join(name);
            std::fs::write(&cut, &bytes[..len]).unwrap();
            (cut, len as u64)
        })
        .collect()
}

#[test]
fn truncated_plugin_is_refused() {
    let dir = PluginDir::new("truncated");
    for (cut, len) in truncated_copies(&dir) {
        let e = start_with(&cut);
        let line = one_line(&e);
        assert!(
            line.starts_with(&format!("{}: the file is cut short:", cut.display())),
            "{line}"
        );
        assert!(line.contains(&format!(", the file has {len} ")), "{line}");
        assert!(line.contains("atomic rename"), "{line}");
        let StartError::Load(load) = e else {
            panic!("a load error")
        };
        assert!(
            matches!(load.kind, LoadErrorKind::Truncated { needed, size } if size == len && needed > len),
            "{:?}",
            load.kind
        );
    }
}

#[test]
fn truncated_plugin_stops_the_binary_with_one_line() {
    let dir = PluginDir::new("truncated-cli");
    for (cut, _) in truncated_copies(&dir) {
        let out = Command::new(host_binary())
            .arg("run")
            .arg("--plugin")
            .arg(&cut)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run mq-host");
        assert!(
            out.status.code().is_some_and(|code| code != 0),
            "a failure exit code, not a signal: {:?}",
            out.status
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].starts_with(&format!(
                "mq-host: {}: the file is cut short:",
                cut.display()
            )),
            "{stderr}"
        );
    }
}

/// A missing variable was always found at load (data is bound then); a
/// missing function is bound at load too, not at its first call, where it
/// would kill the process ("symbol lookup error", exit 127).
fn unresolved_message(so: &Path, symbol: &str) -> String {
    format!(
        "{}: needs the symbol `{symbol}`, which neither this host nor its libraries provide \
         (build against mailerq.h's functions only, or link the library that has it)",
        so.display()
    )
}

#[test]
fn unresolved_variable_is_refused_at_load() {
    let dir = PluginDir::new("unresolved-var");
    let so = cc(
        dir.path(),
        "unresolved.so",
        "extern int no_such_variable;\nint mq_version(void) { return no_such_variable; }",
        &["-shared", "-fPIC"],
    );
    let e = start_with(&so);
    assert_eq!(one_line(&e), unresolved_message(&so, "no_such_variable"));
}

#[test]
fn unresolved_function_is_refused_at_load() {
    let dir = PluginDir::new("unresolved-fn");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let so = cc(
        dir.path(),
        "lazy.so",
        "#include <mailerq.h>\n\
         void mq_test_missing_function(void);\n\
         int mq_version(void) { return MQ_API_VERSION; }\n\
         bool mq_smtp_in_connect(MQ_Context *context, MQ_Connection *connection) {\n\
             (void)context; (void)connection;\n\
             mq_test_missing_function();\n\
             return false;\n\
         }\n",
        &["-shared", "-fPIC", "-I", include.to_str().unwrap()],
    );
    let e = start_with(&so);
    assert_eq!(
        one_line(&e),
        unresolved_message(&so, "mq_test_missing_function")
    );
    let StartError::Load(load) = e else {
        panic!("a load error")
    };
    assert!(
        matches!(&load.kind, LoadErrorKind::UnresolvedSymbol { symbol } if symbol == "mq_test_missing_function")
    );
}

/// `dlopen` searches the library path for a name without a slash; a user
/// who names `plugin.so` means the file in the current directory.
#[test]
fn bare_file_name_is_the_file_in_the_current_directory() {
    let dir = PluginDir::new("bare-name");
    dir.add("bare.so", &plugin_so("mq-example-stamp"), "");
    let out = Command::new(host_binary())
        .args(["inspect", "bare.so"])
        .current_dir(dir.path())
        .output()
        .expect("run mq-host");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("package:     mq-example-stamp"));
}
