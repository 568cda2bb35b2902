//! A failing test says why: the step, and what the plugins logged.

use mq_plugin_test::{Plugin, TestHost};

#[test]
#[should_panic(expected = "c-allowlist: rejected victim@evil.example")]
fn a_failing_step_assertion_shows_what_the_plugin_logged() {
    let host = TestHost::builder()
        .plugin(Plugin::package("mq-example-c-allowlist"))
        .start();
    host.smtp().rcpt_to("victim@evil.example").assert_accepted();
}

#[test]
#[should_panic(expected = "expected a 451 refusal")]
fn a_wrong_refusal_code_fails() {
    let host = TestHost::builder()
        .plugin(Plugin::package("mq-example-allowlist"))
        .start();
    host.smtp()
        .rcpt_to("victim@evil.example")
        .assert_refused(451);
}

#[test]
#[should_panic(expected = "is not next to this test binary")]
fn a_crate_without_a_cdylib_is_told_what_to_do() {
    // This crate builds no plugin of its own.
    let _ = TestHost::new();
}

#[test]
#[should_panic(expected = "did not end within")]
fn a_plugin_that_never_resumes_fails_the_step_instead_of_hanging() {
    // `smtp_out_data` of the async probe never completes; on the virtual
    // clock its hold reports pass in no time, so only the real limit ends it.
    let host = TestHost::builder()
        .plugin(Plugin::package("mq-test-async-probe"))
        .step_limit(std::time::Duration::from_millis(200))
        .start();
    host.delivery().data(mq_plugin_test::message(
        "a@example.com",
        "b@example.org",
        "x",
    ));
}
