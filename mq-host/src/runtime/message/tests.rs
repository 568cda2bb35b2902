//! Unit tests of the message objects: setters, pinning, the live
//! libfastjson object.

use super::*;
use serde_json::json;

fn message(direction: Direction) -> Rc<MessageObj> {
    let Value::Object(map) =
        json!({"envelope": "a@x", "recipient": "b@y", "mime": "Subject: hi\r\n\r\nbody", "key": 1})
    else {
        unreachable!()
    };
    MessageObj::new(direction, map)
}

#[test]
fn incoming_setters_change_the_json() {
    let m = message(Direction::Incoming);
    m.set_recipient(b"c@z");
    m.set_mime(b"new");
    m.set_envelope(b"");
    let json = m.json();
    assert_eq!(json["recipient"], "c@z");
    assert_eq!(json["mime"], "new");
    assert_eq!(json["envelope"], "");
    assert_eq!(json["key"], 1, "other properties are kept");
    assert!(
        m.envelope().email_ptr().is_null(),
        "empty envelope reads as NULL"
    );
}

#[test]
fn outgoing_setters_change_only_the_smtp_view() {
    let m = message(Direction::Outgoing);
    m.set_recipient(b"c@z");
    assert_eq!(m.json()["recipient"], "b@y");
    assert_eq!(m.smtp_view().recipient, "c@z");
}

#[test]
fn a_pinned_message_keeps_the_buffers_it_handed_out() {
    let m = message(Direction::Incoming);
    m.pin();
    let mime = m.mime_ptr();
    let recipient = m.recipient_ptr();
    let envelope = m.envelope().email_ptr();
    m.set_mime(b"replaced");
    m.set_recipient(b"other@z");
    m.set_envelope(b"other@x");
    // SAFETY: kept alive by the pin; this is what the test checks.
    unsafe {
        assert_eq!(
            std::ffi::CStr::from_ptr(mime).to_bytes(),
            b"Subject: hi\r\n\r\nbody"
        );
        assert_eq!(std::ffi::CStr::from_ptr(recipient).to_bytes(), b"b@y");
        assert_eq!(std::ffi::CStr::from_ptr(envelope).to_bytes(), b"a@x");
    }
    assert_eq!(m.retired.kept.borrow().len(), 2, "mime, recipient");
    assert_eq!(m.envelope.retired.kept.borrow().len(), 1);
    m.unpin();
    assert!(m.retired.kept.borrow().is_empty(), "freed once unpinned");
    assert!(m.envelope.retired.kept.borrow().is_empty());
    m.set_mime(b"again");
    assert!(m.retired.kept.borrow().is_empty(), "not kept unpinned");
}

/// The live object as a plugin sees it (a reference of our own).
fn live(m: &MessageObj) -> Obj {
    let ptr = m.json_object();
    assert!(!ptr.is_null());
    // SAFETY: the message's live object.
    unsafe { Obj::from_borrowed(ptr) }
}

fn text(obj: Option<Obj>) -> Option<Vec<u8>> {
    obj.and_then(|o| o.string_bytes())
}

#[test]
fn the_live_object_is_one_object_with_the_json_and_mime() {
    let m = message(Direction::Incoming);
    assert_eq!(m.json_object(), m.json_object(), "the same object");
    let root = live(&m);
    assert_eq!(text(root.get(c"recipient")).unwrap(), b"b@y");
    assert_eq!(text(root.get(c"mime")).unwrap(), b"Subject: hi\r\n\r\nbody");
    assert_eq!(root.get(c"key").unwrap().to_text(), b"1");
}

#[test]
fn a_plugins_changes_to_the_live_object_are_kept_incoming() {
    let m = message(Direction::Incoming);
    let root = live(&m);
    root.add(c"added", Obj::parse(r#"{"nested":[1,"two"]}"#).unwrap());
    root.add(c"recipient", Obj::string(b"new@z").unwrap());
    root.del(c"key");
    let (json, mime) = m.parts();
    assert_eq!(json["added"], json!({"nested": [1, "two"]}));
    assert_eq!(json["recipient"], "new@z");
    assert!(json.get("key").is_none(), "removed");
    assert!(json.get("mime").is_none(), "the MIME travels as bytes");
    assert_eq!(&*mime.unwrap(), b"Subject: hi\r\n\r\nbody");
    // SAFETY: a NUL-terminated string of the message.
    let recipient = unsafe { std::ffi::CStr::from_ptr(m.recipient_ptr()) };
    assert_eq!(recipient.to_bytes(), b"new@z", "MQ_recipient is the JSON's");
    root.add(c"envelope", Obj::string(b"env@z").unwrap());
    assert_eq!(m.envelope().email().as_deref(), Some("env@z"));
    assert!(m.parts().0.get("mime").is_none());
    assert!(
        root.get(c"mime").is_some(),
        "the member is back after reading"
    );
}

#[test]
fn the_live_object_follows_the_setters_incoming() {
    let m = message(Direction::Incoming);
    let root = live(&m);
    m.set_recipient(b"set@z");
    m.set_envelope(b"env@x");
    m.set_mime(b"new \xff mime");
    assert_eq!(text(root.get(c"recipient")).unwrap(), b"set@z");
    assert_eq!(text(root.get(c"envelope")).unwrap(), b"env@x");
    assert_eq!(text(root.get(c"mime")).unwrap(), b"new \xff mime");
    assert_eq!(&*m.parts().1.unwrap(), b"new \xff mime", "byte for byte");
}

#[test]
fn mime_changed_through_the_live_object_is_the_mime() {
    let m = message(Direction::Incoming);
    let root = live(&m);
    assert!(!m.mime_ptr().is_null());
    root.add(c"mime", Obj::string(b"other \xe9\0tail").unwrap());
    assert_eq!(&*m.mime().unwrap(), b"other \xe9\0tail");
    let (ptr, len) = m.mime_slice().unwrap();
    // SAFETY: the message's MIME buffer, valid until the next change.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    assert_eq!(bytes, b"other \xe9\0tail");
    // SAFETY: a NUL-terminated string of the message.
    let c = unsafe { std::ffi::CStr::from_ptr(m.mime_ptr()) };
    assert_eq!(
        c.to_bytes(),
        b"other \xe9",
        "MQ_mime: the new MIME, to its NUL"
    );
    root.del(c"mime");
    assert_eq!(m.parts().1, None, "a removed `mime` removes the MIME");
    assert!(m.mime_ptr().is_null());
}

#[test]
fn outgoing_mime_is_null_until_set_and_the_json_stays() {
    let m = message(Direction::Outgoing);
    assert!(
        m.mime_ptr().is_null(),
        "MQ_mime: NULL until a plugin set it"
    );
    assert!(m.mime_slice().is_none());
    assert_eq!(
        m.smtp_view().mime.as_deref(),
        Some(&b"Subject: hi\r\n\r\nbody"[..]),
        "the delivery still sends the JSON's mime"
    );
    let root = live(&m);
    assert_eq!(text(root.get(c"mime")).unwrap(), b"Subject: hi\r\n\r\nbody");
    root.add(c"mime", Obj::string(b"from json").unwrap());
    root.add(c"seen", Obj::parse("true").unwrap());
    assert_eq!(m.smtp_view().mime.as_deref(), Some(&b"from json"[..]));
    m.set_recipient(b"c@z");
    m.set_mime(b"set");
    assert_eq!(
        text(root.get(c"recipient")).unwrap(),
        b"b@y",
        "JSON unchanged"
    );
    // SAFETY: a NUL-terminated string of the message.
    let set = unsafe { std::ffi::CStr::from_ptr(m.mime_ptr()) };
    assert_eq!(set.to_bytes(), b"set");
    let view = m.smtp_view();
    assert_eq!(
        (view.recipient.as_str(), view.mime.as_deref()),
        ("c@z", Some(&b"set"[..]))
    );
    let (json, mime) = m.parts();
    assert_eq!(
        (json["seen"].clone(), json["recipient"].clone()),
        (json!(true), json!("b@y"))
    );
    assert_eq!(&*mime.unwrap(), b"from json", "published: the JSON's mime");
}

#[test]
fn json_that_does_not_parse_back_keeps_the_json_from_before() {
    let m = message(Direction::Incoming);
    let root = live(&m);
    root.add(c"added", Obj::string(b"x").unwrap());
    root.add(c"bad", Obj::double(f64::NAN));
    let (json, mime) = m.parts();
    assert!(
        json.get("added").is_none() && json.get("bad").is_none(),
        "{json:?}"
    );
    assert_eq!(json["recipient"], "b@y");
    assert!(mime.is_some(), "the MIME is kept");
}

#[test]
fn a_pinned_message_keeps_replaced_json_values() {
    let m = message(Direction::Incoming);
    let root = live(&m);
    let recipient = root.get(c"recipient").unwrap().as_ptr();
    let mime = root.get(c"mime").unwrap().as_ptr();
    m.pin();
    m.set_recipient(b"other@z");
    m.set_mime(b"other");
    assert_eq!(m.retired.kept_json.borrow().len(), 2, "recipient, mime");
    // SAFETY: kept alive by the pin; this is what the test checks.
    let (old_recipient, old_mime) =
        unsafe { (Obj::from_borrowed(recipient), Obj::from_borrowed(mime)) };
    assert_eq!(text(Some(old_recipient)).unwrap(), b"b@y");
    assert_eq!(text(Some(old_mime)).unwrap(), b"Subject: hi\r\n\r\nbody");
    m.unpin();
    assert!(
        m.retired.kept_json.borrow().is_empty(),
        "freed once unpinned"
    );
    m.set_recipient(b"again@z");
    assert!(m.retired.kept_json.borrow().is_empty(), "not kept unpinned");
    assert_eq!(
        m.json_object(),
        root.as_ptr(),
        "the object itself never moves"
    );
}

#[test]
fn mime_bytes_are_kept_byte_for_byte_and_shared() {
    let mime: Rc<[u8]> = Rc::from(&b"Subject: \xe9t\xe9\r\n\r\na\0b"[..]);
    let Value::Object(map) = json!({"recipient": "b@y"}) else {
        unreachable!()
    };
    let first = MessageObj::with_mime(Direction::Incoming, map.clone(), Some(Rc::clone(&mime)));
    let second = MessageObj::with_mime(Direction::Incoming, map, Some(Rc::clone(&mime)));
    let (json, bytes) = first.parts();
    assert!(json.get("mime").is_none());
    assert!(Rc::ptr_eq(&bytes.unwrap(), &mime), "shared, not copied");
    assert_eq!(Rc::strong_count(&mime), 3);
    second.set_mime(b"own");
    assert_eq!(&*second.parts().1.unwrap(), b"own");
    assert_eq!(
        &*first.mime().unwrap(),
        &*mime,
        "the other keeps the original"
    );
    assert!(first.json()["mime"]
        .as_str()
        .unwrap()
        .starts_with("Subject: \u{fffd}t"));
}

#[test]
fn c_strings_stop_at_nul() {
    assert_eq!(c_string(b"ab\0cd").as_bytes(), b"ab");
}

#[test]
fn reads_never_replace_what_a_plugin_may_be_reading() {
    // A setter's bytes that are not UTF-8, before the object is live: the
    // JSON has them lossily, the address exactly. Reading afterwards (also
    // once the object is live) must not swap the address's buffer, which a
    // plugin may be reading through a borrow.
    let m = message(Direction::Incoming);
    m.set_envelope(b"caf\xe9@x");
    m.set_recipient(b"r\xe9@y");
    let envelope = m.envelope().email_ptr();
    let recipient = m.recipient_ptr();
    let root = live(&m);
    for _ in 0..3 {
        assert_eq!(m.envelope().email_ptr(), envelope, "the envelope's buffer");
        assert_eq!(m.recipient_ptr(), recipient, "the recipient's buffer");
        let _ = m.parts();
    }
    // SAFETY: still the message's buffer (the pointer did not change).
    let bytes = unsafe { CStr::from_ptr(envelope) }.to_bytes().to_vec();
    assert_eq!(bytes, b"caf\xe9@x");
    // A plugin that replaces the member through libfastjson is followed.
    root.add(c"envelope", Obj::string(b"new@x").unwrap());
    root.add(c"recipient", Obj::string(b"other@y").unwrap());
    assert_eq!(m.envelope().email().as_deref(), Some("new@x"));
    // SAFETY: the pointer the host just returned.
    let now = unsafe { CStr::from_ptr(m.recipient_ptr()) };
    assert_eq!(now.to_bytes(), b"other@y");
    // And a setter afterwards is the host's own change, not re-read.
    m.set_recipient(b"set@y");
    let set = m.recipient_ptr();
    assert_eq!(m.recipient_ptr(), set);
}

#[test]
fn json_deeper_than_libfastjsons_parser_allows_is_live_all_the_same() {
    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!({ "d": deep });
    }
    let Value::Object(mut map) = json!({"recipient": "b@y", "big": 18446744073709551615u64}) else {
        unreachable!()
    };
    map.insert("deep".into(), deep.clone());
    let m = MessageObj::new(Direction::Outgoing, map);
    assert!(!m.json_object().is_null());
    let (json, _) = m.parts();
    assert_eq!(json["deep"], deep);
    assert_eq!(json["big"], json!(18446744073709551615u64), "kept exactly");
}
