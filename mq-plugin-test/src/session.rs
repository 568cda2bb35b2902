//! Connections of a [`TestHost`]: an incoming SMTP session ([`Smtp`]) and
//! an outgoing delivery ([`Delivery`]), driven one hook chain at a time.

use crate::host::TestHost;
use crate::step::Step;
use mq_host::{Event, RunError, Session};
use serde_json::Value;

/// Runs `event` on `session` and waits for its chain, at most the host's
/// step limit of real time.
fn run(host: &TestHost, session: &Session<'_>, event: Event) -> Step {
    let hook = event.hook().name;
    let pending = session
        .submit(event)
        .unwrap_or_else(|e| panic!("mq-plugin-test: `{hook}` could not start: {e}"));
    match pending.wait_timeout(host.step_limit()) {
        Some(Ok(result)) => Step::new(result),
        Some(Err(e)) => panic!("mq-plugin-test: `{hook}` did not run: {e}"),
        None => panic!(
            "mq-plugin-test: the `{hook}` chain did not end within {:?} of real time: a plugin \
             holds control and never resumes (its log follows)",
            host.step_limit()
        ),
    }
}

/// An incoming SMTP connection, one hook chain per step, in the order a
/// client's session runs them: [`connect`](Smtp::connect),
/// [`secure`](Smtp::secure), [`authenticate`](Smtp::authenticate),
/// [`mail_from`](Smtp::mail_from), [`rcpt_to`](Smtp::rcpt_to),
/// [`data`](Smtp::data), then [`message`](Smtp::message) for each
/// recipient, and [`close`](Smtp::close) (also run on drop).
///
/// EHLO, RSET and QUIT have no hook in MailerQ's API, so they are no steps.
///
/// ```no_run
/// use mq_plugin_test::{message, TestHost};
///
/// let host = TestHost::new();
/// let mut smtp = host.smtp();
/// smtp.connect().assert_accepted();
/// smtp.mail_from("shop@example.com").assert_accepted();
/// smtp.rcpt_to("alice@example.org").assert_accepted();
/// smtp.data("Subject: hi\r\n\r\nhello\r\n").assert_accepted();
/// let stored = smtp.message(message("shop@example.com", "alice@example.org", "Subject: hi\r\n\r\nhello\r\n"));
/// assert!(stored.mime_text().starts_with("X-Stamped-By:"));
/// smtp.close();
/// ```
pub struct Smtp<'h> {
    host: &'h TestHost,
    session: Option<Session<'h>>,
}

impl<'h> Smtp<'h> {
    pub(crate) fn new(host: &'h TestHost, session: Session<'h>) -> Smtp<'h> {
        Smtp {
            host,
            session: Some(session),
        }
    }

    fn step(&mut self, event: Event) -> Step {
        let session = self
            .session
            .as_ref()
            .expect("mq-plugin-test: the connection is closed");
        run(self.host, session, event)
    }

    /// `smtp_in_connect`: a client connected.
    pub fn connect(&mut self) -> Step {
        self.step(Event::Connect)
    }

    /// `smtp_in_secure`: the connection is now TLS (STARTTLS done).
    pub fn secure(&mut self) -> Step {
        self.step(Event::Secure)
    }

    /// `smtp_in_authenticate` with the client's credentials.
    pub fn authenticate(&mut self, login: &str, password: &str) -> Step {
        self.step(Event::Authenticate {
            login: login.as_bytes().to_vec(),
            password: password.as_bytes().to_vec(),
        })
    }

    /// `smtp_in_mailfrom` (`""` for the null sender `<>`).
    pub fn mail_from(&mut self, address: &str) -> Step {
        self.step(Event::MailFrom(address.to_owned()))
    }

    /// `smtp_in_rcptto`.
    pub fn rcpt_to(&mut self, address: &str) -> Step {
        self.step(Event::RcptTo(address.to_owned()))
    }

    /// `smtp_in_data` with the message's MIME, as the client sent it.
    pub fn data(&mut self, mime: impl AsRef<[u8]>) -> Step {
        self.step(Event::Data(mime.as_ref().to_vec()))
    }

    /// `smtp_in_message` for one recipient's MailerQ JSON message (see
    /// [`message`](crate::message)); the step's [`Step::message`] and
    /// [`Step::mime`] are what the host would store.
    pub fn message(&mut self, json: Value) -> Step {
        self.step(Event::Message(json))
    }

    /// `smtp_in_close`; the connection is closed afterwards.
    pub fn close(&mut self) -> Step {
        let step = self.step(Event::Close);
        // The close chain closed the connection on the worker; dropping
        // the session finds it closed.
        drop(self.session.take());
        step
    }

    /// mq-host's session, for what this type does not wrap (`submit` an
    /// event without waiting, ...).
    pub fn session(&self) -> &Session<'h> {
        self.session
            .as_ref()
            .expect("mq-plugin-test: the connection is closed")
    }
}

impl Drop for Smtp<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Runs `smtp_in_close` (plugins free their connection data).
            let _: Result<_, RunError> = session.close();
        }
    }
}

/// An outgoing delivery: [`data`](Delivery::data) runs `smtp_out_data`
/// (the message as it goes to the relay), [`sent`](Delivery::sent) runs
/// `smtp_out_sent` for the same message.
///
/// ```no_run
/// use mq_plugin_test::{message, TestHost};
///
/// let host = TestHost::new();
/// let mut out = host.delivery();
/// let data = out.data(message("shop@example.com", "alice@example.org", "Subject: hi\r\n\r\nhello\r\n"));
/// assert!(data.smtp().mime.is_some(), "a plugin changed what is sent");
/// out.sent().assert_accepted();
/// ```
pub struct Delivery<'h> {
    host: &'h TestHost,
    session: Session<'h>,
}

impl<'h> Delivery<'h> {
    pub(crate) fn new(host: &'h TestHost, session: Session<'h>) -> Delivery<'h> {
        Delivery { host, session }
    }

    /// `smtp_out_data` for a MailerQ JSON message (its MIME in `mime`).
    pub fn data(&mut self, json: Value) -> Step {
        run(self.host, &self.session, Event::OutData(json))
    }

    /// `smtp_out_data` for a message whose MIME is given byte for byte.
    pub fn data_with_mime(&mut self, json: Value, mime: impl AsRef<[u8]>) -> Step {
        let event = Event::OutDataWithMime(json, mime.as_ref().to_vec());
        run(self.host, &self.session, event)
    }

    /// `smtp_out_sent` for the message of the last [`Delivery::data`]
    /// (the relay accepted it).
    pub fn sent(&mut self) -> Step {
        run(self.host, &self.session, Event::OutSent)
    }

    /// mq-host's session, for what this type does not wrap.
    pub fn session(&self) -> &Session<'h> {
        &self.session
    }
}

/// A MailerQ JSON message as an incoming session makes it: `envelope`,
/// `recipient` and the `mime` (add any other property with
/// `json["key"] = ...`).
///
/// ```
/// let json = mq_plugin_test::message("a@example.com", "b@example.org", "Subject: hi\r\n\r\nhello");
/// assert_eq!(json["recipient"], "b@example.org");
/// ```
pub fn message(envelope: &str, recipient: &str, mime: &str) -> Value {
    serde_json::json!({"envelope": envelope, "recipient": recipient, "mime": mime})
}
