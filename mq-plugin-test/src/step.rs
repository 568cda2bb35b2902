//! [`Step`]: what one hook chain did, and assertions on it that show the
//! plugins' log when they fail.

use crate::report;
use mq_host::{ChainEnd, EventResult, Flow, HookCall, Resume, SmtpView};
use serde_json::Value;
use std::time::Duration;

/// A reply line a plugin sent (`MQ_send`), which replaces the host's own:
/// what the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply code (`550`); 0 when the line does not start with one.
    pub code: u16,
    /// The rest of the line (`5.7.1 not here`).
    pub text: String,
}

impl Reply {
    fn parse(line: &str) -> Reply {
        let (code, text) = match line.get(..3).map(str::parse::<u16>) {
            Some(Ok(code)) => (code, line[3..].trim_start_matches([' ', '-'])),
            _ => (0, line),
        };
        Reply {
            code,
            text: text.to_owned(),
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// What one hook's chain did: the flow of each plugin, what a client would
/// see, the message after the chain, what the plugins logged, and how long
/// it took on the worker's clock.
///
/// The `assert_*` methods fail the test with the step (chain, reply) and
/// what the plugins logged during it; any other failing assertion of the
/// test gets the whole log printed by the [`TestHost`](crate::TestHost).
#[derive(Debug, Clone)]
pub struct Step {
    result: EventResult,
}

impl Step {
    pub(crate) fn new(result: EventResult) -> Step {
        Step { result }
    }

    /// The hook that ran (`smtp_in_rcptto`).
    pub fn hook(&self) -> &'static str {
        self.result.hook.name
    }

    /// The reply a plugin sent, if any; `None`: the client gets the host's
    /// own reply for the command.
    pub fn reply(&self) -> Option<Reply> {
        self.result.reply().map(|line| Reply::parse(&line))
    }

    /// Everything plugins sent to the client during the step.
    pub fn sent(&self) -> &[u8] {
        &self.result.sent
    }

    /// Whether a plugin refused the command (a 4xx or 5xx reply).
    pub fn refused(&self) -> bool {
        self.result.refused()
    }

    /// Fails unless the command went through: no plugin refused it and the
    /// chain was not cut for retrying too often.
    #[track_caller]
    pub fn assert_accepted(&self) -> &Self {
        if self.refused() || matches!(self.result.end, ChainEnd::RetryLimit) {
            self.fail("expected the step to be accepted");
        }
        self
    }

    /// Fails unless a plugin refused the command with reply code `code`.
    #[track_caller]
    pub fn assert_refused(&self, code: u16) -> &Self {
        match self.reply() {
            Some(reply) if self.refused() && reply.code == code => self,
            _ => self.fail(&format!("expected a {code} refusal")),
        }
    }

    /// Fails unless a plugin replied with `code` and a text containing
    /// `text`.
    #[track_caller]
    pub fn assert_reply(&self, code: u16, text: &str) -> &Self {
        match self.reply() {
            Some(reply) if reply.code == code && reply.text.contains(text) => self,
            _ => self.fail(&format!("expected a reply `{code} ...{text}...`")),
        }
    }

    /// How the chain ended: every plugin went on (`Finished`), one
    /// completed it, or it was cut after too many retries.
    pub fn end(&self) -> &ChainEnd {
        &self.result.end
    }

    /// The plugin that completed the step (later plugins were skipped).
    pub fn completed_by(&self) -> Option<&str> {
        match &self.result.end {
            ChainEnd::Completed { plugin } => Some(plugin),
            _ => None,
        }
    }

    /// Every hook call, in order (a retry calls plugins again).
    pub fn calls(&self) -> &[HookCall] {
        &self.result.calls
    }

    /// The flow `plugin`'s last call ended with (a plugin is named by its
    /// file, see [`Plugin::name`](crate::Plugin::name)): `Continue` when its hook
    /// returned false, else the flow it resumed with; `None` if it was not
    /// called, or its hold ended without a resume (cancelled or expired at
    /// the hold deadline).
    pub fn flow_of(&self, plugin: &str) -> Option<Flow> {
        let call = self
            .calls()
            .iter()
            .rev()
            .find(|c| same_plugin(&c.plugin, plugin))?;
        match (call.took_control, call.resumed) {
            (false, _) => Some(Flow::Continue),
            (true, Some(Resume::Flow(flow))) => Some(flow),
            (true, _) => None,
        }
    }

    /// Whether `plugin`'s last call took control (returned true: an async
    /// hook that waited, or a `Complete`/`Retry`).
    pub fn took_control(&self, plugin: &str) -> bool {
        self.calls()
            .iter()
            .rev()
            .find(|c| same_plugin(&c.plugin, plugin))
            .is_some_and(|c| c.took_control)
    }

    /// Fails unless `plugin`'s last call ended with `flow` (see
    /// [`Step::flow_of`]).
    #[track_caller]
    pub fn assert_flow(&self, plugin: &str, flow: Flow) -> &Self {
        if self.flow_of(plugin) != Some(flow) {
            self.fail(&format!("expected plugin `{plugin}` to end with {flow}"));
        }
        self
    }

    /// The message's JSON after the chain (incoming: what the host stores;
    /// outgoing: the stored JSON, which setters do not change). Panics for
    /// a step without a message.
    #[track_caller]
    pub fn message(&self) -> &Value {
        match &self.result.message {
            Some(message) => message,
            None => self.fail("the step has no message (it is no message hook)"),
        }
    }

    /// The message's MIME after the chain, byte for byte. Panics for a
    /// step without a message.
    #[track_caller]
    pub fn mime(&self) -> &[u8] {
        match &self.result.mime {
            Some(mime) => mime,
            None => self.fail("the step has no MIME (it is no message hook)"),
        }
    }

    /// [`Step::mime`] as text (invalid UTF-8 replaced).
    #[track_caller]
    pub fn mime_text(&self) -> String {
        String::from_utf8_lossy(self.mime()).into_owned()
    }

    /// The value of the first header field `name` (any case) of the MIME
    /// after the chain, unfolded; `None` if there is none.
    #[track_caller]
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.mime_text(), name)
    }

    /// For outgoing messages: what goes over SMTP (envelope, recipient,
    /// and the MIME a plugin set). Panics for other steps.
    #[track_caller]
    pub fn smtp(&self) -> &SmtpView {
        match &self.result.smtp {
            Some(smtp) => smtp,
            None => self.fail("the step has no SMTP view (it is no smtp_out hook)"),
        }
    }

    /// For message and recipient steps: whether it is local (`MQ_setLocal`).
    pub fn local(&self) -> Option<bool> {
        self.result.local
    }

    /// Whether the connection is authenticated after the step.
    pub fn authenticated(&self) -> bool {
        self.result.authenticated
    }

    /// How long the chain took on the worker's clock: on the virtual
    /// clock, the time its hooks waited (a 30 s sleep is 30 s here, and a
    /// few microseconds of real time).
    pub fn elapsed(&self) -> Duration {
        self.result.elapsed
    }

    /// What plugins logged during the step (texts).
    pub fn plugin_log(&self) -> Vec<String> {
        self.result.plugin_log()
    }

    /// mq-host's whole result.
    pub fn result(&self) -> &EventResult {
        &self.result
    }

    #[track_caller]
    fn fail(&self, what: &str) -> ! {
        panic!("{what}\n{}", report::describe(&self.result))
    }
}

/// Whether plugin names `a` and `b` are the same, `-` and `_` alike (a
/// package name finds its library's file).
pub(crate) fn same_plugin(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || matches!((x, y), (b'-', b'_') | (b'_', b'-')))
}

/// The value of header field `name` in `mime`'s header, unfolded.
fn header(mime: &str, name: &str) -> Option<String> {
    let head = mime
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("");
    let mut found: Option<String> = None;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(value) = found.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((field, value)) = line.split_once(':') {
            if field.eq_ignore_ascii_case(name) {
                found = Some(value.trim().to_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_split_into_code_and_text() {
        assert_eq!(
            Reply::parse("550 5.7.1 not here"),
            Reply {
                code: 550,
                text: "5.7.1 not here".into()
            }
        );
        assert_eq!(Reply::parse("250-first").text, "first");
        assert_eq!(Reply::parse("hello").code, 0);
    }

    #[test]
    fn headers_are_found_in_any_case_and_unfolded() {
        let mime = "X-One: 1\r\nSubject: a\r\n long one\r\nX-Two: 2\r\n\r\nX-Body: no\r\n";
        assert_eq!(header(mime, "subject").as_deref(), Some("a long one"));
        assert_eq!(header(mime, "X-Two").as_deref(), Some("2"));
        assert_eq!(header(mime, "X-Body"), None);
    }
}
