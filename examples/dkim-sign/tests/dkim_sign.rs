//! DKIM signing in a delivery: the MIME that goes to the relay after
//! `smtp_out_data` carries a `DKIM-Signature` with the configured `d=`,
//! `s=` and `h=`, and mail-auth verifies it with the public key handed
//! to it directly (no DNS).
//!
//! The key is `tests/fixtures/ed25519-test-only.pem`, made for this test
//! only (`openssl genpkey -algorithm ed25519`); [`PUBLIC_KEY`] is its
//! public half as a DNS record would carry it. The plugin reads its
//! settings in `initialize`, when a host starts; tests in one process
//! share the environment, so each test holds `ENV` while it sets them and
//! starts its host.

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use mq_plugin_test::{message, Flow, TestHost};
use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The raw Ed25519 public key of the fixture, base64 (RFC 8463).
const PUBLIC_KEY: &str = "YmXQG8REvwJ7Xdeama3OoX4P8l0NJvUQ22cDyKSIYb0=";
const DOMAIN: &str = "example.com";
const SELECTOR: &str = "mq2026";

static ENV: Mutex<()> = Mutex::new(());

fn host(headers: Option<&str>) -> TestHost {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ed25519-test-only.pem"
    );
    std::env::set_var("MQ_DKIM_KEY_FILE", key);
    std::env::set_var("MQ_DKIM_DOMAIN", DOMAIN);
    std::env::set_var("MQ_DKIM_SELECTOR", SELECTOR);
    match headers {
        Some(list) => std::env::set_var("MQ_DKIM_HEADERS", list),
        None => std::env::remove_var("MQ_DKIM_HEADERS"),
    }
    TestHost::new()
}

/// A TXT "cache" holding the one key record: the verifier finds the key
/// there and never asks DNS.
struct Records(HashMap<Box<str>, Txt>);

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// Polls a future that needs no I/O (every lookup is answered from
/// [`Records`]) to its end.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
    }
    panic!("the verification waited for I/O: it did not find the key record");
}

/// The DKIM results of `signed`, verified against [`PUBLIC_KEY`].
fn verify(signed: &[u8]) -> Vec<DkimResult> {
    let record = format!("v=DKIM1; k=ed25519; p={PUBLIC_KEY}");
    let key = Arc::new(DomainKey::parse(record.as_bytes()).expect("a key record"));
    let name = format!("{SELECTOR}._domainkey.{DOMAIN}");
    let mut records = HashMap::new();
    for n in [format!("{name}."), name] {
        records.insert(n.into_boxed_str(), Txt::DomainKey(Arc::clone(&key)));
    }
    let records = Records(records);
    let message = AuthenticatedMessage::parse(signed).expect("a parsable message");
    // Never used: every lookup is answered by `records`.
    let resolver = MessageAuthenticator::new_cloudflare().unwrap();
    let outputs = ready(resolver.verify_dkim(Parameters::new(&message).with_txt_cache(&records)));
    outputs.iter().map(|o| o.result().clone()).collect()
}

/// The value of the first `DKIM-Signature` header, unfolded.
fn signature_of(mime: &str) -> String {
    let head = mime.split("\r\n\r\n").next().unwrap();
    let start = head
        .find("DKIM-Signature:")
        .expect("a DKIM-Signature header");
    let mut value = String::new();
    for (i, line) in head[start..].split("\r\n").enumerate() {
        if i > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        value.push_str(line.trim());
    }
    value
}

const MIME: &str = "From: Shop <shop@example.com>\nTo: alice@example.org\n\
                    Subject: your order\nDate: Tue, 1 Dec 2026 23:00:00 +0000\n\
                    Message-ID: <1@example.com>\n\nThank you.\n";

#[test]
fn the_message_to_the_relay_is_signed_and_verifies() {
    let host = host(None);
    let data = host
        .delivery()
        .data(message("shop@example.com", "alice@example.org", MIME));
    data.assert_accepted()
        .assert_flow("mq-example-dkim-sign", Flow::Continue);
    let sent = data.smtp().mime.clone().expect("the plugin set the MIME");
    let text = String::from_utf8(sent.clone()).unwrap();
    assert!(text.starts_with("DKIM-Signature:"), "{text}");
    // The message itself, with CRLF line ends as on the wire.
    assert!(text.ends_with(&MIME.replace('\n', "\r\n")), "{text}");
    let signature = signature_of(&text);
    for tag in [
        "d=example.com;",
        "s=mq2026;",
        "a=ed25519-sha256;",
        "c=relaxed/relaxed;",
    ] {
        assert!(signature.contains(tag), "{tag} in {signature}");
    }
    let h = signature
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("h="))
        .expect("h=")
        .to_ascii_lowercase();
    for field in [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
    ] {
        assert!(h.split(':').any(|f| f == field), "{field} in h={h}");
    }
    assert_eq!(verify(&sent), [DkimResult::Pass]);

    // Changed on the way, it no longer verifies.
    let tampered = text.replace("your order", "your 0rder").into_bytes();
    assert!(
        matches!(verify(&tampered)[..], [DkimResult::Fail(_)]),
        "{:?}",
        verify(&tampered)
    );
}

#[test]
fn the_configured_header_list_is_signed() {
    let host = host(Some("From:Subject"));
    let data = host
        .delivery()
        .data(message("shop@example.com", "alice@example.org", MIME));
    let sent = data.smtp().mime.clone().expect("the plugin set the MIME");
    let signature = signature_of(&String::from_utf8_lossy(&sent));
    let h = signature
        .split(';')
        .map(str::trim)
        .find_map(|t| t.strip_prefix("h="))
        .expect("h=")
        .to_ascii_lowercase();
    // In the order the signer met them, from the bottom of the header up.
    let mut fields: Vec<&str> = h.split(':').collect();
    fields.sort_unstable();
    assert_eq!(fields, ["from", "subject"], "{signature}");
    assert_eq!(verify(&sent), [DkimResult::Pass]);
}
