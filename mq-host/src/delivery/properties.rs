//! An outgoing message's own delivery properties (MailerQ's message JSON):
//! those mq-host implements make the attempt's [`Plan`]; every other one
//! that would change the delivery in MailerQ is reported, never silently
//! ignored.
//!
//! Implemented: `smarthost` (its `hostname` and `port` replace the
//! configured relay for this message) and `headers` (`remove`, `prepend`,
//! `append`/`add`, `replace`, `update` on the MIME's header fields, applied
//! to the message's MIME before `smtp_out_data`, so a plugin sees the edited
//! MIME, and a MIME a plugin sets with `MQ_setMime` is sent as set).
//! `envelope`, `recipient`, `mime` (a string), `key`, `keepmime`,
//! `nextattempt`, `maxdelivertime`, `maxattempts` and `retries` are the
//! engine's (`record`).
//!
//! Reported ([`NOT_IMPLEMENTED`]): a warning naming the property and what
//! mq-host does instead, once per property per delivery run, and the
//! `properties_not_implemented` counter for every message that has one.
//! Two of them end the message instead, as MailerQ would end it where mq-host
//! cannot do what it asks: `security` `required`/`verified` (mq-host has no
//! STARTTLS: a failure with state `process`, result `error`) and a nested
//! `mime` object (mq-host does not build MIME from JSON: state
//! `responsive`, result `error`).

use super::attempt::{Attempt, Step};
use super::relay::Broken;
use super::*;
use crate::observe::Counters;
use serde_json::{Map, Value};

/// Documented message properties that change a delivery in MailerQ and
/// that mq-host does not implement, each with what mq-host does instead.
pub(super) const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    (
        "ips",
        "mq-host sends from the local address the system chooses",
    ),
    (
        "pool",
        "mq-host has no IP pools: it sends from the local address the system chooses",
    ),
    ("data", "no personalization: the MIME is sent as it is"),
    ("force", "no conversion is made that could fail"),
    ("inlinecss", "the HTML is sent as it is"),
    ("dkim", "the message is not signed"),
    (
        "dsn",
        "no DSN parameters (NOTIFY, RET, ORCPT, ENVID) are sent",
    ),
    (
        "queues",
        "results go to the data directory's results/, success/, failures/ and retry/",
    ),
    (
        "tags",
        "mq-host has no console to show them; they stay in the result",
    ),
    (
        "priority",
        "messages are delivered in the order they are due",
    ),
];

/// What the message's properties make of its attempt.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// Where it goes: the configured relay, or its `smarthost`.
    pub(super) relay: String,
    /// Its `headers` edits.
    headers: Option<Map<String, Value>>,
}

impl Plan {
    /// `mime` with the message's `headers` edits applied.
    pub(super) fn edit_mime(&self, mime: Vec<u8>) -> Vec<u8> {
        match &self.headers {
            Some(edits) => edit_headers(&mime, edits),
            None => mime,
        }
    }
}

/// The plan for `message`, its unimplemented properties reported; or the
/// attempt's end, if the message asks what mq-host cannot do.
pub(super) fn plan(
    host: &Host,
    outbox: &Outbox,
    config: &DeliveryConfig,
    message: &Map<String, Value>,
) -> Result<Plan, Attempt> {
    let report = |property: &str, instead: &str| report(host, outbox, property, instead);
    for (property, instead) in NOT_IMPLEMENTED {
        match message.get(*property) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(_) => report(property, instead),
        }
    }
    if let Some(Value::Object(_)) = message.get("mime") {
        report("mime", "a nested `mime` object is not made into MIME");
        let e = "mq-host does not build MIME from a JSON `mime` object";
        return Err(Attempt::error(Status::Failure, Step::Responsive, e));
    }
    match message.get("security").and_then(Value::as_str) {
        None | Some("optional") => {}
        Some(level @ ("required" | "verified")) => {
            report("security", "mq-host has no STARTTLS");
            let e = format!("`security` is {level:?}, and mq-host cannot secure a connection");
            return Err(Attempt::error(Status::Failure, Step::Process, e));
        }
        Some(_) => report("security", "mq-host has no STARTTLS: sent unencrypted"),
    }
    let relay = match message.get("smarthost") {
        None | Some(Value::Null) => config.relay.clone(),
        Some(smarthost) => smarthost_relay(smarthost).map_err(|e| {
            let e = Broken::invalid(format!("`smarthost`: {e}"));
            Attempt::error(Status::Failure, Step::Process, e)
        })?,
    };
    if let Some(Value::Object(smarthost)) = message.get("smarthost") {
        if smarthost.contains_key("username") || smarthost.contains_key("password") {
            report(
                "smarthost.username",
                "mq-host has no SMTP AUTH client: sent without login",
            );
        }
    }
    let headers = match message.get("headers") {
        None | Some(Value::Null) => None,
        Some(Value::Object(edits)) => {
            if let Err(e) = check_headers(edits) {
                let e = format!("`headers`: {e}");
                return Err(Attempt::error(
                    Status::Failure,
                    Step::Process,
                    Broken::invalid(e),
                ));
            }
            Some(edits.clone())
        }
        Some(_) => {
            let e =
                "`headers` must be an object of edits (remove, prepend, append, replace, update)";
            return Err(Attempt::error(
                Status::Failure,
                Step::Process,
                Broken::invalid(e),
            ));
        }
    };
    Ok(Plan { relay, headers })
}

/// A warning naming `property`, once per property per run, and the
/// counter, every time.
fn report(host: &Host, outbox: &Outbox, property: &str, instead: &str) {
    Counters::bump(&host.counters_live().properties_not_implemented);
    if outbox.first_report(property) {
        host.host_log(
            Priority::Warning,
            format!(
                "delivery: the message property `{property}` is not implemented by mq-host \
                 ({instead}); reported once per run, counted in properties_not_implemented"
            ),
        );
    }
}

/// `host:port` of a `smarthost` object (`port` 25 if not given).
fn smarthost_relay(smarthost: &Value) -> Result<String, String> {
    let hostname = smarthost
        .get("hostname")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .ok_or("it has no `hostname`")?;
    let port = match smarthost.get("port") {
        None | Some(Value::Null) => 25,
        Some(port) => port
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("its `port` is not a port number")?,
    };
    if hostname.contains(':') {
        // An IPv6 address.
        return Ok(format!("[{hostname}]:{port}"));
    }
    Ok(format!("{hostname}:{port}"))
}

/// One header field: its name and its whole text (with continuation lines
/// and line ends).
pub(super) struct Field {
    pub(super) name: String,
    pub(super) text: Vec<u8>,
}

/// Refuses `headers` edits that cannot be applied as written: an unknown
/// edit, a name that is no header field name (RFC 5322: printable ASCII
/// without `:` — so no name can carry a line end or end the header), a
/// value that is no string (or array of strings).
fn check_headers(edits: &Map<String, Value>) -> Result<(), String> {
    let field_name =
        |name: &str| !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    let bad_name = |name: &str| format!("{name:?} is not a header field name");
    for (edit, value) in edits {
        match (edit.as_str(), value) {
            ("remove", Value::String(name)) if field_name(name) => {}
            ("remove", Value::String(name)) => return Err(bad_name(name)),
            ("remove", Value::Array(names)) => {
                for name in names {
                    match name.as_str() {
                        Some(n) if field_name(n) => {}
                        Some(n) => return Err(bad_name(n)),
                        None => return Err(format!("`remove` holds {name}, not a name")),
                    }
                }
            }
            ("remove", other) => return Err(format!("`remove` is {other}, not a name or names")),
            ("replace" | "update" | "prepend" | "append" | "add", Value::Object(fields)) => {
                for (name, value) in fields {
                    if !field_name(name) {
                        return Err(bad_name(name));
                    }
                    let strings = match value {
                        Value::String(_) => true,
                        Value::Array(values) => values.iter().all(Value::is_string),
                        _ => false,
                    };
                    if !strings {
                        return Err(format!(
                            "`{edit}` gives {name:?} the value {value}, not a string or strings"
                        ));
                    }
                }
            }
            ("replace" | "update" | "prepend" | "append" | "add", other) => {
                return Err(format!("`{edit}` is {other}, not an object of fields"))
            }
            (other, _) => {
                return Err(format!(
                    "unknown edit `{other}` (remove, prepend, append, add, replace, update)"
                ))
            }
        }
    }
    Ok(())
}

/// `mime` with the `headers` edits applied: `remove` (a name or names),
/// then `replace` (the first field of each name gets the new value, the
/// others go; appended if there was none), `update` (like `replace`,
/// nothing appended), `prepend` and `append` (or `add`) (a value or an
/// array of values per name). Values are put on one line: a CR or LF in
/// them becomes a space, so no edit can add a line of its own.
fn edit_headers(mime: &[u8], edits: &Map<String, Value>) -> Vec<u8> {
    let crlf = mime.windows(2).any(|w| w == b"\r\n");
    let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let (mut fields, body) = split_header(mime);
    let is = |field: &Field, name: &str| field.name.eq_ignore_ascii_case(name);
    let new_field = |name: &str, value: &str| Field {
        name: name.to_owned(),
        text: [
            format!("{name}: {}", value.replace(['\r', '\n'], " ")).as_bytes(),
            eol,
        ]
        .concat(),
    };
    match edits.get("remove") {
        Some(Value::String(name)) => fields.retain(|f| !is(f, name)),
        Some(Value::Array(names)) => {
            for name in names.iter().filter_map(Value::as_str) {
                fields.retain(|f| !is(f, name));
            }
        }
        _ => {}
    }
    for (edit, append_missing) in [("replace", true), ("update", false)] {
        for (name, value) in each_value(edits.get(edit)) {
            match fields.iter().position(|f| is(f, name)) {
                Some(first) => {
                    fields[first] = new_field(name, value);
                    let mut n = 0;
                    fields.retain(|f| {
                        n += 1;
                        n - 1 == first || !is(f, name)
                    });
                }
                None if append_missing => fields.push(new_field(name, value)),
                None => {}
            }
        }
    }
    let prepended: Vec<Field> = each_value(edits.get("prepend"))
        .map(|(name, value)| new_field(name, value))
        .collect();
    fields.splice(0..0, prepended);
    for edit in ["append", "add"] {
        for (name, value) in each_value(edits.get(edit)) {
            fields.push(new_field(name, value));
        }
    }
    // A header without an empty line after it may end without a line end:
    // each field gets one before another follows it.
    let mut out: Vec<u8> = Vec::with_capacity(mime.len() + 256);
    for field in fields {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(&field.text);
    }
    out.extend_from_slice(body);
    out
}

/// `(name, value)` of an edit's object: a string value, or each string of
/// an array.
fn each_value(edit: Option<&Value>) -> impl Iterator<Item = (&str, &str)> {
    let object = edit.and_then(Value::as_object);
    object.into_iter().flatten().flat_map(|(name, value)| {
        let values: Vec<&str> = match value {
            Value::String(v) => vec![v.as_str()],
            Value::Array(vs) => vs.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        values.into_iter().map(move |v| (name.as_str(), v))
    })
}

/// The MIME's header fields, and the rest (the empty line and the body).
pub(super) fn split_header(mime: &[u8]) -> (Vec<Field>, &[u8]) {
    let mut fields: Vec<Field> = Vec::new();
    let mut at = 0;
    while at < mime.len() {
        let end = mime[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(mime.len(), |n| at + n + 1);
        let line = &mime[at..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match (line[0], fields.last_mut()) {
            (b' ' | b'\t', Some(field)) => field.text.extend_from_slice(line),
            _ => {
                let name = line.split(|&b| b == b':').next().unwrap_or(line);
                fields.push(Field {
                    name: String::from_utf8_lossy(name).trim().to_owned(),
                    text: line.to_vec(),
                });
            }
        }
        at = end;
    }
    (fields, &mime[at..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn edited(mime: &str, edits: Value) -> String {
        let Value::Object(edits) = edits else {
            unreachable!()
        };
        String::from_utf8(edit_headers(mime.as_bytes(), &edits)).unwrap()
    }

    #[test]
    fn edits_that_would_inject_or_cannot_apply_are_refused() {
        let check = |edits: Value| {
            let Value::Object(edits) = edits else {
                unreachable!()
            };
            check_headers(&edits)
        };
        assert!(
            check(json!({"append": {"X-A": "1", "X-B": ["2", "3"]}, "remove": ["Bcc"]})).is_ok()
        );
        for bad in [
            json!({"append": {"X-A: 1\r\nBcc": "victim@x"}}),
            json!({"prepend": {"\r\n": "x"}}),
            json!({"replace": {"": "x"}}),
            json!({"append": {"X-A": 5}}),
            json!({"append": {"X-A": ["ok", 5]}}),
            json!({"remove": ["Bcc", 5]}),
            json!({"remove": "Bad Name"}),
            json!({"append": "X-A: 1"}),
            json!({"delete": {"X-A": "1"}}),
        ] {
            assert!(check(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_field_appended_after_a_last_line_without_line_end_gets_its_own_line() {
        assert_eq!(
            edited("Subject: s", json!({"append": {"X-A": "v"}})),
            "Subject: s\nX-A: v\n"
        );
    }

    #[test]
    fn headers_are_removed_prepended_appended_replaced_and_updated() {
        let mime = "From: ex@ex.com\r\nTo: info@ex.com\r\nDummy: xyz\r\n  more\r\nBcc: b@x\r\nSubject: s\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody\r\nDummy: not a header\r\n";
        let out = edited(
            mime,
            json!({
                "remove": ["dummy", "BCC"],
                "prepend": {"cc": "cc@ex.com", "x-example": ["example 1", "example 2"]},
                "append": {"x-end": "e"},
                "add": {"x-add": "a"},
                "replace": {"from": "xe@xe.com", "x-a": "one", "x-new": "n"},
                "update": {"subject": "t", "x-missing": "m"},
            }),
        );
        assert_eq!(
            out,
            "cc: cc@ex.com\r\nx-example: example 1\r\nx-example: example 2\r\n\
             from: xe@xe.com\r\nTo: info@ex.com\r\nsubject: t\r\nx-a: one\r\nx-new: n\r\n\
             x-end: e\r\nx-add: a\r\n\r\nbody\r\nDummy: not a header\r\n"
        );
    }

    #[test]
    fn header_values_cannot_add_lines() {
        let out = edited(
            "Subject: s\n\nbody\n",
            json!({"append": {"x-evil": "a\r\nBcc: victim@x"}}),
        );
        assert_eq!(out, "Subject: s\nx-evil: a  Bcc: victim@x\n\nbody\n");
    }

    #[test]
    fn smarthost_addresses() {
        let relay = |v: Value| smarthost_relay(&v);
        assert_eq!(
            relay(json!({"hostname": "mail.example", "port": 2525})).unwrap(),
            "mail.example:2525"
        );
        assert_eq!(
            relay(json!({"hostname": "mail.example"})).unwrap(),
            "mail.example:25"
        );
        assert_eq!(
            relay(json!({"hostname": "::1", "port": 26})).unwrap(),
            "[::1]:26"
        );
        assert!(relay(json!({"port": 25})).is_err());
        assert!(relay(json!({"hostname": "x", "port": 70000})).is_err());
    }
}
