//! The arguments a hook gets besides its context and connection: the
//! message (`MQ_Message`, a wrapper over the MailerQ JSON object), its
//! addresses (`MQ_Address`), credentials and MIME data.
//!
//! What a held hook can reach stays alive and unchanged until its hold is
//! over: a chain's arguments are shared ([`ChainArgs`] holds `Rc`s), and
//! while an expired hold still uses a message (it is *pinned*), the buffers
//! that `MQ_mime`, `MQ_json`, `MQ_recipient` and `MQ_email` returned are
//! kept when another plugin replaces them, so the late plugin never reads
//! freed memory.

use crate::runtime::handles::{Handle, Kind, Registration};
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CString};
use std::marker::PhantomData;
use std::rc::Rc;

/// Whether a connection is one the host accepted or one it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// An SMTP client connected to the host (`smtp_in_*` hooks).
    Incoming,
    /// The host delivers to a remote server (`smtp_out_*` hooks).
    Outgoing,
}

/// Makes a host object `!Send`: it registers in its thread's handle
/// registry and must be dropped on that thread.
pub(crate) type NotSend = PhantomData<*const ()>;

/// The arguments of a chain's hook besides context and connection. Shared,
/// so that a plugin whose hold expired keeps what it was given alive.
#[derive(Clone)]
pub(crate) enum ChainArgs {
    None,
    Authenticate(Rc<Credentials>),
    Address(Rc<AddressObj>),
    Data(Rc<[u8]>),
    Message(Rc<MessageObj>),
}

/// The login and password of `smtp_in_authenticate`.
pub(crate) struct Credentials {
    pub(crate) login: Vec<u8>,
    pub(crate) password: Vec<u8>,
}

/// Buffers handed to plugins as C pointers: replaced ones are kept while
/// the owning object is pinned by an expired hold.
#[derive(Default)]
struct Retired {
    pins: Cell<u32>,
    kept: RefCell<Vec<CString>>,
    kept_bytes: RefCell<Vec<Rc<[u8]>>>,
}

impl Retired {
    /// Drops `old` now, or keeps it while pinned.
    fn retire(&self, old: Option<CString>) {
        if let Some(old) = old {
            if self.pins.get() > 0 {
                self.kept.borrow_mut().push(old);
            }
        }
    }

    /// Like [`Retired::retire`], for a byte buffer.
    fn retire_bytes(&self, old: Option<Rc<[u8]>>) {
        if let Some(old) = old {
            if self.pins.get() > 0 {
                self.kept_bytes.borrow_mut().push(old);
            }
        }
    }

    fn pin(&self) {
        self.pins.set(self.pins.get() + 1);
    }

    fn unpin(&self) {
        let pins = self.pins.get().saturating_sub(1);
        self.pins.set(pins);
        if pins == 0 {
            self.kept.borrow_mut().clear();
            self.kept_bytes.borrow_mut().clear();
        }
    }
}

/// `MQ_Address`: an envelope or recipient address.
pub(crate) struct AddressObj {
    email: RefCell<Option<CString>>,
    pub(crate) local: Cell<bool>,
    retired: Retired,
    pub(crate) registration: Registration,
    _not_send: NotSend,
}

impl AddressObj {
    pub(crate) fn new(email: Option<&str>) -> AddressObj {
        let obj = AddressObj {
            email: RefCell::new(None),
            local: Cell::new(false),
            retired: Retired::default(),
            registration: Registration::default(),
            _not_send: PhantomData,
        };
        obj.set_email(email.unwrap_or("").as_bytes());
        obj
    }

    pub(crate) fn set_email(&self, email: &[u8]) {
        let new = (!email.is_empty()).then(|| c_string(email));
        let old = std::mem::replace(&mut *self.email.borrow_mut(), new);
        self.retired.retire(old);
    }

    pub(crate) fn email_ptr(&self) -> *const c_char {
        self.email
            .borrow()
            .as_ref()
            .map_or(std::ptr::null(), |s| s.as_ptr())
    }

    pub(crate) fn email(&self) -> Option<String> {
        self.email
            .borrow()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
    }
}

/// What an outgoing message sends over SMTP (the setters' effect on an
/// outgoing message; its stored JSON stays as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpView {
    /// `MAIL FROM` (empty for `<>`).
    pub envelope: String,
    /// `RCPT TO`.
    pub recipient: String,
    /// The MIME data, if loaded.
    pub mime: Option<Vec<u8>>,
}

/// `MQ_Message`: a message and its JSON object.
pub(crate) struct MessageObj {
    pub(crate) direction: Direction,
    json: RefCell<Map<String, Value>>,
    envelope: Rc<AddressObj>,
    recipient: RefCell<Option<CString>>,
    /// The MIME data, byte for byte; shared (not copied) by the messages
    /// of one transaction until a plugin replaces it. Not in `json`: the
    /// JSON views add it as a `mime` string.
    mime: RefCell<Option<Rc<[u8]>>>,
    /// An outgoing message's MIME as it came (its JSON stays as it came).
    published_mime: Option<Rc<[u8]>>,
    pub(crate) local: Cell<bool>,
    /// Caches for pointers returned to plugins: valid until the next change
    /// (or, while pinned, until the message is freed).
    json_text: RefCell<Option<CString>>,
    mime_c: RefCell<Option<CString>>,
    retired: Retired,
    pub(crate) registration: Registration,
    _not_send: NotSend,
}

impl MessageObj {
    /// A message from its JSON object; a `mime` string in it becomes the
    /// message's MIME data.
    pub(crate) fn new(direction: Direction, mut json: Map<String, Value>) -> Rc<MessageObj> {
        let mime = match json.remove("mime") {
            Some(Value::String(m)) => Some(Rc::from(m.into_bytes())),
            Some(other) => {
                // Not MIME text (e.g. MailerQ's MIME-as-object form): kept
                // as a property, no MIME data.
                json.insert("mime".to_owned(), other);
                None
            }
            None => None,
        };
        MessageObj::with_mime(direction, json, mime)
    }

    /// A message from its JSON object (without `mime`) and its MIME data,
    /// byte for byte; messages of one transaction share one buffer.
    pub(crate) fn with_mime(
        direction: Direction,
        json: Map<String, Value>,
        mime: Option<Rc<[u8]>>,
    ) -> Rc<MessageObj> {
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        let envelope = text("envelope");
        let recipient = text("recipient");
        Rc::new(MessageObj {
            direction,
            envelope: Rc::new(AddressObj::new(envelope.as_deref())),
            recipient: RefCell::new(recipient.map(|r| c_string(r.as_bytes()))),
            published_mime: match direction {
                Direction::Outgoing => mime.clone(),
                Direction::Incoming => None,
            },
            mime: RefCell::new(mime),
            local: Cell::new(false),
            json: RefCell::new(json),
            json_text: RefCell::new(None),
            mime_c: RefCell::new(None),
            retired: Retired::default(),
            registration: Registration::default(),
            _not_send: PhantomData,
        })
    }

    /// An expired hold may still read what the C functions returned.
    pub(crate) fn pin(&self) {
        self.retired.pin();
        self.envelope.retired.pin();
    }

    pub(crate) fn unpin(&self) {
        self.retired.unpin();
        self.envelope.retired.unpin();
    }

    fn changed(&self, key: &str, value: Value) {
        self.retired.retire(self.json_text.borrow_mut().take());
        if self.direction == Direction::Incoming {
            self.json.borrow_mut().insert(key.to_owned(), value);
        }
    }

    pub(crate) fn json_ptr(&self) -> *const c_char {
        let mut cache = self.json_text.borrow_mut();
        let text = cache.get_or_insert_with(|| {
            c_string(
                serde_json::to_string(&self.json())
                    .unwrap_or_default()
                    .as_bytes(),
            )
        });
        text.as_ptr()
    }

    /// The MIME the JSON views show: an incoming message's current one, an
    /// outgoing message's as it came.
    fn json_mime(&self) -> Option<Rc<[u8]>> {
        match self.direction {
            Direction::Incoming => self.mime(),
            Direction::Outgoing => self.published_mime.clone(),
        }
    }

    pub(crate) fn envelope(&self) -> &Rc<AddressObj> {
        &self.envelope
    }

    pub(crate) fn set_envelope(&self, email: &[u8]) {
        self.envelope.set_email(email);
        self.changed(
            "envelope",
            Value::String(String::from_utf8_lossy(email).into_owned()),
        );
    }

    pub(crate) fn recipient_ptr(&self) -> *const c_char {
        self.recipient
            .borrow()
            .as_ref()
            .map_or(std::ptr::null(), |s| s.as_ptr())
    }

    pub(crate) fn set_recipient(&self, email: &[u8]) {
        let old = self.recipient.borrow_mut().replace(c_string(email));
        self.retired.retire(old);
        self.changed(
            "recipient",
            Value::String(String::from_utf8_lossy(email).into_owned()),
        );
    }

    pub(crate) fn mime_ptr(&self) -> *const c_char {
        let mime = self.mime.borrow();
        let Some(bytes) = mime.as_ref() else {
            return std::ptr::null();
        };
        let mut cache = self.mime_c.borrow_mut();
        cache.get_or_insert_with(|| c_string(bytes)).as_ptr()
    }

    /// The MIME data's address and length, for a plugin (NUL bytes
    /// included). Valid as long as [`MessageObj::mime_ptr`]'s pointer:
    /// until the next `set_mime`, or while the message is pinned, until it
    /// is unpinned (the replaced buffer is kept).
    pub(crate) fn mime_slice(&self) -> Option<(*const u8, usize)> {
        self.mime.borrow().as_ref().map(|m| (m.as_ptr(), m.len()))
    }

    /// The MIME data, byte for byte (NUL bytes included).
    pub(crate) fn mime(&self) -> Option<Rc<[u8]>> {
        self.mime.borrow().clone()
    }

    pub(crate) fn set_mime(&self, mime: &[u8]) {
        let old = self.mime.borrow_mut().replace(Rc::from(mime));
        self.retired.retire_bytes(old);
        self.retired.retire(self.mime_c.borrow_mut().take());
        if self.direction == Direction::Incoming {
            self.retired.retire(self.json_text.borrow_mut().take());
        }
    }

    /// The message's JSON object, with its MIME as a `mime` string (bytes
    /// that are not UTF-8 are replaced: [`MessageObj::parts`] has them).
    pub(crate) fn json(&self) -> Value {
        let mut json = self.json.borrow().clone();
        if let Some(mime) = self.json_mime() {
            let text = String::from_utf8_lossy(&mime).into_owned();
            json.insert("mime".to_owned(), Value::String(text));
        }
        Value::Object(json)
    }

    /// The message's JSON object without its MIME, and its MIME data byte
    /// for byte (shared, not copied).
    pub(crate) fn parts(&self) -> (Map<String, Value>, Option<Rc<[u8]>>) {
        (self.json.borrow().clone(), self.json_mime())
    }

    /// What would go over SMTP.
    pub(crate) fn smtp_view(&self) -> SmtpView {
        SmtpView {
            envelope: self.envelope.email().unwrap_or_default(),
            recipient: self
                .recipient
                .borrow()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            mime: self.mime().as_deref().map(<[u8]>::to_vec),
        }
    }
}

impl AddressObj {
    /// This address's handle for `plugin` (registered on first use).
    pub(crate) fn handle(self: &Rc<Self>, plugin: usize) -> Option<Handle> {
        self.registration.handle(Kind::Address, plugin, self)
    }
}

impl MessageObj {
    /// This message's handle for `plugin` (registered on first use).
    pub(crate) fn handle(self: &Rc<Self>, plugin: usize) -> Option<Handle> {
        self.registration.handle(Kind::Message, plugin, self)
    }
}

/// A C string of `bytes`, cut at the first NUL (as C would read it).
pub(crate) fn c_string(bytes: &[u8]) -> CString {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    CString::new(&bytes[..end]).expect("cut at the first NUL")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(direction: Direction) -> Rc<MessageObj> {
        let Value::Object(map) = json!({"envelope": "a@x", "recipient": "b@y", "mime": "Subject: hi\r\n\r\nbody", "key": 1})
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
        let json = m.json_ptr();
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
            assert!(std::ffi::CStr::from_ptr(json).to_bytes().starts_with(b"{"));
            assert_eq!(std::ffi::CStr::from_ptr(recipient).to_bytes(), b"b@y");
            assert_eq!(std::ffi::CStr::from_ptr(envelope).to_bytes(), b"a@x");
        }
        assert_eq!(
            m.retired.kept.borrow().len(),
            3,
            "mime, json text, recipient"
        );
        assert_eq!(m.envelope.retired.kept.borrow().len(), 1);
        m.unpin();
        assert!(m.retired.kept.borrow().is_empty(), "freed once unpinned");
        assert!(m.envelope.retired.kept.borrow().is_empty());
        m.set_mime(b"again");
        assert!(m.retired.kept.borrow().is_empty(), "not kept unpinned");
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
}
