//! The `extracted` object MailerQ adds to a result, for logging: parts of
//! the MIME as sent (`from`, `to`, `subject`, every header field under
//! `headers`) and the two addresses split (`envelope`, `recipient`: each
//! `{"local": ..., "domain": ...}`).
//!
//! mq-host takes them from the MIME as it was sent (after `smtp_out_data`),
//! or, for an attempt that ended before the data, from the message's MIME;
//! an expiry without an attempt has none. Header values are unfolded and
//! not decoded (RFC 2047 words stay as they are); a field that occurs more
//! than once is an array of its values under `headers`, in order.

use super::properties::split_header;
use serde_json::{json, Map, Value};

/// The `extracted` object for a message from `envelope` to `recipient`
/// whose MIME header (at least) is `mime`.
pub(super) fn extracted(envelope: &str, recipient: &str, mime: Option<&[u8]>) -> Value {
    let mut out = Map::new();
    if let Some(mime) = mime {
        let (fields, _) = split_header(mime);
        let mut headers = Map::new();
        for field in &fields {
            let value = field_value(&field.text);
            let name = field.name.to_ascii_lowercase();
            match headers.get_mut(&name) {
                None => {
                    headers.insert(name, Value::String(value));
                }
                Some(Value::Array(values)) => values.push(Value::String(value)),
                Some(first) => *first = json!([first.take(), value]),
            }
        }
        let first = |name: &str| -> Option<String> {
            let field = fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))?;
            Some(field_value(&field.text))
        };
        if let Some(from) = first("from").and_then(|f| addresses(&f).into_iter().next()) {
            out.insert("from".into(), json!(from));
        }
        if let Some(to) = first("to") {
            out.insert("to".into(), json!(addresses(&to)));
        }
        if let Some(subject) = first("subject") {
            out.insert("subject".into(), json!(subject));
        }
        out.insert("headers".into(), Value::Object(headers));
    }
    for (key, address) in [("envelope", envelope), ("recipient", recipient)] {
        if let Some((local, domain)) = address.rsplit_once('@') {
            out.insert(key.into(), json!({"domain": domain, "local": local}));
        }
    }
    Value::Object(out)
}

/// A field's value: after its name and `:`, continuation lines unfolded,
/// trimmed.
fn field_value(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let value = text.split_once(':').map_or("", |(_, v)| v);
    let unfolded: String = value.split(['\r', '\n']).collect();
    unfolded.trim().to_owned()
}

/// The addresses of an address-list field: `Name <a@b>, c@d` → `a@b`,
/// `c@d` (commas inside quotes or angle brackets do not split).
fn addresses(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut start) = (false, false, 0);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
        .into_iter()
        .filter_map(|part| {
            let part = part.trim();
            let address = match (part.rfind('<'), part.rfind('>')) {
                (Some(open), Some(close)) if open < close => &part[open + 1..close],
                _ => part,
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_to_subject_headers_and_addresses() {
        let mime = b"From: \"Shop, Inc\" <a@shop.example>\r\nTo: b@example.net,\r\n \"C, D\" <c@example.net>\r\nSubject: =?utf-8?q?hi?=\r\nX-Tag: 1\r\nx-tag: 2\r\n\r\nFrom: body <not@header>\r\n";
        let extracted = extracted("bounce@shop.example", "b@example.net", Some(mime));
        assert_eq!(
            extracted,
            json!({
                "from": "a@shop.example",
                "to": ["b@example.net", "c@example.net"],
                "subject": "=?utf-8?q?hi?=",
                "headers": {
                    "from": "\"Shop, Inc\" <a@shop.example>",
                    "to": "b@example.net, \"C, D\" <c@example.net>",
                    "subject": "=?utf-8?q?hi?=",
                    "x-tag": ["1", "2"],
                },
                "envelope": {"domain": "shop.example", "local": "bounce"},
                "recipient": {"domain": "example.net", "local": "b"},
            })
        );
    }

    #[test]
    fn without_mime_only_the_addresses() {
        assert_eq!(
            extracted("", "b@example.net", None),
            json!({"recipient": {"domain": "example.net", "local": "b"}})
        );
    }
}
