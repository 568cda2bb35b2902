//! Several plugins in one chain, in a given order: the C allow-list, the
//! Rust allow-list and the stamp (examples of this repository).

use mq_plugin_test::{message, ChainEnd, Flow, Plugin, TestHost};

fn chain() -> TestHost {
    TestHost::builder()
        .plugin(Plugin::package("mq-example-c-allowlist"))
        .plugin(Plugin::package("mq-example-allowlist"))
        .plugin(Plugin::package("mq-example-stamp"))
        .start()
}

#[test]
fn the_c_plugin_refuses_first_and_the_rest_are_skipped() {
    let host = chain();
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    let rcpt = smtp.rcpt_to("victim@evil.example");
    rcpt.assert_refused(550)
        .assert_reply(550, "recipient not on the allow-list");
    assert_eq!(rcpt.calls().len(), 1, "{:?}", rcpt.calls());
    assert!(matches!(rcpt.end(), ChainEnd::Completed { .. }));
    assert_eq!(rcpt.flow_of("mq-example-allowlist"), None, "skipped");
    assert!(
        rcpt.plugin_log()
            .iter()
            .any(|l| l.contains("c-allowlist: rejected victim@evil.example")),
        "{:?}",
        rcpt.plugin_log()
    );
}

#[test]
fn an_allowed_message_goes_through_every_plugin_in_order() {
    let host = chain();
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    smtp.mail_from("shop@example.com").assert_accepted();
    let rcpt = smtp.rcpt_to("alice@example.org");
    rcpt.assert_accepted()
        .assert_flow("mq-example-allowlist", Flow::Continue);
    let names: Vec<&str> = rcpt.calls().iter().map(|c| c.plugin.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names, ["mq_example_c_allowlist", "mq_example_allowlist"]);
    assert_eq!(*rcpt.end(), ChainEnd::Finished);
    smtp.data("Subject: hi\r\n\r\nhello\r\n").assert_accepted();
    let stored = smtp.message(message(
        "shop@example.com",
        "alice@example.org",
        "Subject: hi\r\n\r\nhello\r\n",
    ));
    stored.assert_accepted();
    let stamp = stored.header("X-Stamped-By").expect("the stamp's header");
    assert!(stamp.starts_with("mq-example-stamp"), "{stamp}");
    assert!(stored.mime_text().ends_with("Subject: hi\r\n\r\nhello\r\n"));
    smtp.close().assert_accepted();
    let counters = host.counters();
    assert_eq!(counters.double_resumes + counters.stray_resumes, 0);
    assert_eq!(counters.api_misuse + counters.invalid_handles, 0);
}
