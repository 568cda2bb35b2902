//! Lifecycle order: mq_initialize after all plugins are loaded, then
//! mq_context_initialize per worker before traffic; at shutdown
//! mq_context_cleanup per worker, then mq_cleanup — always in plugin order.

use mq_e2e::*;
use mq_host::{Direction, Event};

#[test]
fn lifecycle_hooks_run_in_plugin_order() {
    let dir = PluginDir::new("lifecycle");
    dir.add("10-a.so", &c_probe(), "");
    dir.add("20-b.so", &rust_probe(), "");
    let host = dir.builder().workers(2).start().unwrap();
    let r = host.run_event(Direction::Incoming, Event::Connect).unwrap();
    assert_eq!(called(&r), ["10-a", "20-b"]);
    let report = host.shutdown();
    let lines: Vec<String> = report
        .log
        .iter()
        .filter_map(|r| {
            r.text
                .strip_prefix("probe ")
                .map(|t| format!("{}:{t}", r.worker.map_or("main".into(), |w| w.to_string())))
        })
        .filter(|l| !l.contains("smtp_in_"))
        .collect();
    let per_worker =
        |w: &str, hook: &str| vec![format!("{w}:10-a {hook}"), format!("{w}:20-b {hook}")];
    let mut expected = vec![
        "main:10-a initialize".to_owned(),
        "main:20-b initialize".to_owned(),
    ];
    expected.extend(per_worker("0", "context_initialize"));
    expected.extend(per_worker("1", "context_initialize"));
    // Context cleanups: the Rust probe reports its context-data counter.
    let cleanups: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("context_cleanup"))
        .cloned()
        .collect();
    assert_eq!(cleanups.len(), 4, "{lines:#?}");
    for w in ["0", "1"] {
        let here: Vec<&String> = cleanups
            .iter()
            .filter(|l| l.starts_with(&format!("{w}:")))
            .collect();
        assert!(
            here[0].starts_with(&format!("{w}:10-a context_cleanup")),
            "{lines:#?}"
        );
        assert!(
            here[1].starts_with(&format!("{w}:20-b context_cleanup")),
            "{lines:#?}"
        );
    }
    let non_cleanup: Vec<String> = lines
        .iter()
        .filter(|l| !l.contains("context_cleanup"))
        .cloned()
        .collect();
    expected.extend([
        "main:10-a cleanup".to_owned(),
        "main:20-b cleanup".to_owned(),
    ]);
    assert_eq!(non_cleanup, expected);
    // Context cleanups come after every context_initialize and before cleanup.
    let pos = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
    assert!(pos("context_cleanup") > pos("1:20-b context_initialize"));
    assert!(
        pos("10-a cleanup")
            > lines
                .iter()
                .rposition(|l| l.contains("context_cleanup"))
                .unwrap()
    );
}

#[test]
fn initialize_sees_all_plugins_loaded_first() {
    // A refused plugin anywhere stops the start before any mq_initialize runs.
    let dir = PluginDir::new("lifecycle-refused");
    dir.add("10-a.so", &c_probe(), "");
    std::fs::write(dir.path().join("20-bad.so"), "not a plugin").unwrap();
    let err = dir.builder().start().err().expect("refused");
    assert!(
        err.to_string().contains("20-bad.so: not a shared object"),
        "{err}"
    );
}

#[test]
fn a_rust_plugin_whose_initialize_fails_stops_the_start() {
    let dir = PluginDir::new("lifecycle-init-fails");
    dir.add("10-a.so", &c_probe(), "");
    dir.add("20-b.so", &rust_probe(), "initialize fail\n");
    dir.add("30-c.so", &c_probe(), "");
    let err = dir.builder().start().err().expect("refused");
    match &err {
        mq_host::StartError::Refused { plugin, reason, .. } => {
            assert_eq!(plugin, "20-b");
            assert_eq!(reason, "probe 20-b refuses to start as planned");
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().ends_with("20-b.so: mq_initialize failed, so the host does not start: probe 20-b refuses to start as planned"));
    // The same plugin in MailerQ's mode cannot refuse: it logs and runs.
    // (Fresh copies: a loaded file keeps the host table it was given.)
    let dir = PluginDir::new("lifecycle-init-fails-globals");
    dir.add("20-b.so", &rust_probe(), "initialize fail\n");
    let host = dir
        .builder()
        .mode(mq_host::HostMode::GlobalSymbolsOnly)
        .start()
        .unwrap();
    assert!(host.log().iter().any(|l| l.text.contains("hook initialize (fn initialize) failed: probe 20-b refuses to start as planned; the plugin may not work")));
}
