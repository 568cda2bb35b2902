//! One hook table: the header, the macro's symbols, the runtime's adapters
//! and the host's dispatcher all agree with `mq_hook_table::HOOKS`.

use mq_e2e::*;
use mq_host::hook_table::{c_prototype, HOOKS};
use mq_host::{Direction, Event, PluginKind};

#[test]
fn the_header_declares_every_hook_exactly() {
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../include/mailerq.h"))
            .unwrap();
    for hook in HOOKS {
        let line = format!("MQ_EXPORT {};", c_prototype(hook));
        assert!(
            header.lines().any(|l| l.trim() == line),
            "mailerq.h lacks `{line}`"
        );
    }
    assert!(header
        .lines()
        .any(|l| l.trim() == "MQ_EXPORT int mq_version(void);"));
    let declared = header
        .lines()
        .filter(|l| l.trim_start().starts_with("MQ_EXPORT ") && l.contains(" mq_"))
        .count();
    assert_eq!(declared, HOOKS.len() + 1, "no hook outside the table");
    assert!(header.contains(&format!(
        "#define MQ_API_VERSION {}",
        mq_host::hook_table::MQ_API_VERSION
    )));
}

/// The one list of host functions (`mq_abi::for_each_host_function!`):
/// `mailerq.h` declares each, and mq-host exports each as a C symbol (the
/// table's fields follow the list too: `mq-abi`'s own test).
#[test]
fn the_header_and_the_host_have_every_host_function() {
    let header =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../include/mailerq.h"))
            .unwrap();
    for (f, _) in mq_abi::HOST_FUNCTIONS {
        assert!(
            header.contains(&format!(" {f}(")) || header.contains(&format!("*{f}(")),
            "mailerq.h lacks {f}"
        );
        let name = std::ffi::CString::new(*f).unwrap();
        // SAFETY: a plain lookup of a NUL-terminated name in the global scope.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        assert!(!symbol.is_null(), "mq-host does not export {f}");
    }
}

#[test]
fn macro_runtime_and_dispatcher_agree_for_every_hook() {
    let dir = PluginDir::new("table");
    dir.add("10-rust.so", &rust_probe(), "");
    dir.add("20-c.so", &c_probe(), "");
    let host = dir.start();
    let plugins = host.plugins();
    // The macro exported every hook under its table symbol...
    assert!(matches!(plugins[0].kind, PluginKind::Rust { .. }));
    assert_eq!(plugins[0].hooks, HOOKS.iter().collect::<Vec<_>>());
    assert_eq!(
        plugins[0].authored_hooks.as_ref().unwrap(),
        &HOOKS.iter().collect::<Vec<_>>()
    );
    assert_eq!(plugins[1].hooks, HOOKS.iter().collect::<Vec<_>>());
    // ...and the host calls each with its shape: every probe logs the hook
    // it was entered through.
    let mut s = host.open(Direction::Incoming).unwrap();
    let events = [
        Event::Connect,
        Event::Secure,
        Event::Authenticate {
            login: b"u".to_vec(),
            password: b"p".to_vec(),
        },
        Event::MailFrom("a@b".into()),
        Event::RcptTo("c@d".into()),
        Event::Data(b"mime".to_vec()),
        Event::Message(message()),
        Event::Close,
    ];
    for event in events {
        let hook = event.hook().name;
        let r = s.run(event).unwrap();
        assert_eq!(
            probe_lines(&r),
            [format!("10-rust {hook}"), format!("20-c {hook}")]
        );
    }
    let mut out = host.open(Direction::Outgoing).unwrap();
    for event in [Event::OutData(message()), Event::OutSent] {
        let hook = event.hook().name;
        let r = out.run(event).unwrap();
        assert_eq!(
            probe_lines(&r),
            [format!("10-rust {hook}"), format!("20-c {hook}")]
        );
    }
}
