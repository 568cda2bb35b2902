//! The allow-list in a real host, with its built-in list (`@example.com`,
//! `@example.org`, `postmaster@localhost`).

use mq_plugin_test::{ChainEnd, Flow, TestHost};

#[test]
fn listed_recipients_go_on_and_others_are_refused() {
    let host = TestHost::new();
    let mut smtp = host.smtp();
    smtp.connect().assert_accepted();
    smtp.mail_from("shop@example.net").assert_accepted();
    for allowed in [
        "alice@example.com",
        "Bob@EXAMPLE.org",
        "postmaster@localhost",
    ] {
        smtp.rcpt_to(allowed)
            .assert_accepted()
            .assert_flow("mq-example-allowlist", Flow::Continue);
    }
    let refused = smtp.rcpt_to("victim@example.net");
    refused.assert_reply(550, "<victim@example.net>: recipient not on the allow-list");
    refused.assert_flow("mq-example-allowlist", Flow::Complete);
    assert!(matches!(refused.end(), ChainEnd::Completed { .. }));
}

#[test]
fn an_address_that_does_not_parse_is_refused_by_its_parsed_domain() {
    let host = TestHost::new();
    let mut smtp = host.smtp();
    // Ends in "@example.com", but is no example.com mailbox.
    smtp.rcpt_to("victim@evil.net\n@example.com")
        .assert_reply(553, "recipient is not a valid mailbox");
    smtp.rcpt_to("").assert_refused(553);
    assert_eq!(host.counters().api_misuse, 0);
}
