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
            "{}: wrong API version: `mq_version()` returned 99, this host implements 1",
            so.display()
        )
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
    // A shared object the dynamic loader cannot resolve (a missing variable).
    let so = cc(
        dir.path(),
        "unresolved.so",
        "extern int no_such_variable;\nint mq_version(void) { return no_such_variable; }",
        &["-shared", "-fPIC"],
    );
    let e = start_with(&so);
    let line = one_line(&e);
    assert!(
        line.starts_with(&format!("{}: the dynamic loader refused it:", so.display())),
        "{line}"
    );
    assert!(line.contains("no_such_variable"), "{line}");
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
