//! The delivery hooks in a real host: `smtp_out_data` puts the trace in
//! front of what goes to the relay, `smtp_out_sent` logs it.

use mq_plugin_test::{message, serde_json::json, Flow, TestHost};

const MIME: &str = "Subject: hi\r\n\r\nhello\r\n";

#[test]
fn the_first_attempt_is_traced_and_logged_when_sent() {
    let host = TestHost::new();
    let mut out = host.delivery();
    let data = out.data(message("shop@example.com", "alice@example.org", MIME));
    data.assert_accepted()
        .assert_flow("mq-example-out-trace", Flow::Continue);
    let smtp = data.smtp();
    assert_eq!(smtp.recipient, "alice@example.org");
    let sent = String::from_utf8(smtp.mime.clone().expect("a MIME was set")).unwrap();
    assert_eq!(
        sent,
        format!("X-Out-Trace: mq-example-out-trace 0.1.0; attempt 1\r\n{MIME}")
    );
    // The stored JSON is not changed by the setter.
    assert_eq!(data.message()["mime"], MIME);
    let done = out.sent();
    done.assert_accepted();
    assert_eq!(
        done.plugin_log(),
        [format!(
            "[mq-example-out-trace] sent {} bytes for alice@example.org to the relay",
            sent.len()
        )]
    );
}

#[test]
fn a_retry_counts_the_earlier_attempts() {
    let host = TestHost::new();
    let mut json = message("shop@example.com", "alice@example.org", MIME);
    json["results"] = json!([{"result": "deferred"}, {"result": "deferred"}]);
    let data = host.delivery().data(json);
    let sent = String::from_utf8_lossy(data.smtp().mime.as_deref().unwrap()).into_owned();
    assert!(
        sent.starts_with("X-Out-Trace: mq-example-out-trace 0.1.0; attempt 3\r\n"),
        "{sent}"
    );
}

#[test]
fn eight_bit_mime_is_traced_byte_for_byte() {
    let host = TestHost::new();
    let mime = b"Subject: caf\xe9\r\n\r\n\xff\xfe body\r\n";
    let json = json!({"envelope": "shop@example.com", "recipient": "alice@example.org"});
    let data = host.delivery().data_with_mime(json, mime);
    let sent = data.smtp().mime.clone().expect("a MIME was set");
    let trace = b"X-Out-Trace: mq-example-out-trace 0.1.0; attempt 1\r\n";
    assert_eq!(sent, [&trace[..], &mime[..]].concat());
}
