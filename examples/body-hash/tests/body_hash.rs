//! The body hash in a real host: the digest is computed on the plugin's
//! blocking pool while the hook holds control, then put in front.

use mq_plugin_test::{message, Flow, TestHost};

#[test]
fn the_mime_gets_its_sha256_in_front() {
    let host = TestHost::new();
    let stored = host
        .smtp()
        .message(message("a@example.com", "b@example.org", "test"));
    stored
        .assert_accepted()
        .assert_flow("mq-example-body-hash", Flow::Continue);
    assert!(
        stored.took_control("mq-example-body-hash"),
        "it awaited the pool"
    );
    // SHA-256 of "test" (FIPS 180-2 test vectors list it too).
    assert_eq!(
        stored.mime_text(),
        "X-Body-SHA256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\r\ntest"
    );
    // The virtual clock waited for the pool instead of jumping ahead.
    assert_eq!(host.counters().hold_reports, 0);
}

#[test]
fn a_message_without_mime_gets_no_digest() {
    let host = TestHost::new();
    let stored = host.smtp().message(mq_plugin_test::serde_json::json!({
        "envelope": "a@example.com", "recipient": "b@example.org"
    }));
    stored.assert_accepted();
    assert!(!stored.took_control("mq-example-body-hash"));
    assert_eq!(stored.plugin_log().len(), 1, "{:?}", stored.plugin_log());
    assert!(stored.plugin_log()[0].contains("message without MIME data: no digest"));
}
