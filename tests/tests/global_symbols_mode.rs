//! The same Rust plugin in a host that offers only MailerQ's global `MQ_*`
//! symbols (no function table, root module ignored), as in MailerQ.

use mq_e2e::*;
use mq_host::{Direction, Event, HostMode, PluginKind};

#[test]
fn rust_plugins_run_on_global_symbols_alone() {
    let dir = PluginDir::new("globals");
    dir.add(
        "10-p.so",
        &rust_probe(),
        "smtp_in_message exercise\nsmtp_in_connect exercise\nsmtp_in_rcptto timers\nsmtp_in_data io\n",
    );
    let host = dir
        .builder()
        .mode(HostMode::GlobalSymbolsOnly)
        .start()
        .unwrap();
    assert_eq!(host.plugins()[0].kind, PluginKind::RustWithoutRootModule);
    let r = run_message(&host);
    let lines = probe_lines(&r);
    assert_no_failures(&lines);
    assert!(lines.contains(&"10-p ok set-mime".to_owned()), "{lines:#?}");
    assert_eq!(
        r.message.unwrap()["recipient"],
        "probe-recipient@example.org"
    );
    let mut s = host.open(Direction::Incoming).unwrap();
    let r = s.run(Event::Connect).unwrap();
    assert_no_failures(&probe_lines(&r));
    assert_eq!(r.sent, b"250-probe 10-p\r\n");
    let r = s.run(Event::RcptTo("a@b".into())).unwrap();
    assert!(probe_lines(&r).contains(&"10-p ok timers".to_owned()));
    let r = s.run(Event::Data(b"x".to_vec())).unwrap();
    assert!(
        probe_lines(&r).contains(&"10-p ok io-stale-unwatch".to_owned()),
        "{:#?}",
        probe_lines(&r)
    );
}

#[test]
fn the_stamp_example_runs_on_global_symbols_alone() {
    let dir = PluginDir::new("globals-stamp");
    dir.add("10-stamp.so", &plugin_so("mq-example-stamp"), "");
    let host = dir
        .builder()
        .mode(HostMode::GlobalSymbolsOnly)
        .start()
        .unwrap();
    let r = run_message(&host);
    assert!(r.message.unwrap()["mime"]
        .as_str()
        .unwrap()
        .starts_with("X-Stamped-By: mq-example-stamp"));
}
