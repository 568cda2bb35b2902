//! The stamp in a real host: every incoming message gets the plugin's
//! name and version, and its sequence number on the worker.

use mq_plugin_test::{message, Flow, TestHost};

const MIME: &str = "Subject: hi\r\n\r\nhello\r\n";

#[test]
fn messages_are_stamped_in_sequence() {
    let host = TestHost::new();
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    smtp.mail_from("shop@example.com").assert_accepted();
    smtp.rcpt_to("alice@example.com").assert_accepted();
    smtp.rcpt_to("bob@example.com").assert_accepted();
    smtp.data(MIME).assert_accepted();
    for (n, rcpt) in [(1, "alice@example.com"), (2, "bob@example.com")] {
        let stored = smtp.message(message("shop@example.com", rcpt, MIME));
        stored
            .assert_accepted()
            .assert_flow("mq-example-stamp", Flow::Continue);
        assert_eq!(
            stored.header("X-Stamped-By").as_deref(),
            Some("mq-example-stamp 0.1.0")
        );
        assert_eq!(
            stored.header("X-Stamp-Sequence").as_deref(),
            Some(n.to_string().as_str())
        );
        assert!(stored.mime_text().ends_with(MIME), "{}", stored.mime_text());
        assert_eq!(
            stored.plugin_log(),
            [format!(
                "[mq-example-stamp] stamped message #{n} for {rcpt}"
            )]
        );
    }
    smtp.close().assert_accepted();
    assert_eq!(host.counters().plugin_panics, 0);
}

#[test]
fn a_message_without_mime_is_left_alone_with_a_warning() {
    let host = TestHost::new();
    let stored = host.smtp().message(mq_plugin_test::serde_json::json!({
        "envelope": "shop@example.com", "recipient": "alice@example.com"
    }));
    stored.assert_accepted();
    assert!(
        stored.message().get("mime").is_none(),
        "{}",
        stored.message()
    );
    assert!(
        stored.plugin_log()[0].contains("has no MIME data; not stamped"),
        "{:?}",
        stored.plugin_log()
    );
}
