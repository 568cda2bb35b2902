//! The arguments a hook gets besides its context and connection: the
//! message (`MQ_Message`, a wrapper over the MailerQ JSON object), its
//! addresses (`MQ_Address`), credentials and MIME data.
//!
//! A message's JSON is, as in MailerQ, a live libfastjson object once a
//! plugin asked for it (`MQ_json`): the same object for every plugin of
//! every hook the message goes through, kept in sync with the setters
//! (on an incoming message; on an outgoing one the setters change only
//! what goes over SMTP), and read back whenever the host reads the
//! message, so that what plugins changed through libfastjson is what is
//! stored (incoming) or carried by the delivery's result (outgoing).
//!
//! What a held hook can reach stays alive and unchanged until its hold is
//! over: a chain's arguments are shared ([`ChainArgs`] holds `Rc`s), and
//! while an expired hold still uses a message (it is *pinned*), the buffers
//! that `MQ_mime`, `MQ_recipient` and `MQ_email` returned, and the
//! libfastjson values a setter replaced in the `MQ_json` object, are kept
//! when another plugin replaces them, so the late plugin never reads freed
//! memory. The `MQ_json` object itself never moves; it is freed with the
//! message.

use crate::observe::Priority;
use crate::runtime::fastjson::{FjsonObject, Obj};
use crate::runtime::handles::{Handle, Kind, Registration};
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
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
    kept_json: RefCell<Vec<Obj>>,
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

    /// Like [`Retired::retire`], for a libfastjson value (our reference).
    fn retire_json(&self, old: Option<Obj>) {
        if let Some(old) = old {
            if self.pins.get() > 0 {
                self.kept_json.borrow_mut().push(old);
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
            self.kept_json.borrow_mut().clear();
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
    /// The MIME data: the one a plugin set with `MQ_setMime`, else the
    /// JSON's `mime` (as a plugin may have changed it through `MQ_json`).
    pub mime: Option<Vec<u8>>,
}

/// A message's JSON: a map until a plugin asks for it with `MQ_json`, from
/// then on the live libfastjson object that plugin and every later one
/// read and change.
enum Json {
    Map(Map<String, Value>),
    Live(Live),
}

/// The live libfastjson object of a message.
struct Live {
    obj: Obj,
    /// The string object of the JSON's `mime` member when last looked at
    /// (our own reference, so its address is never reused while held).
    /// While the member is still this object the MIME is
    /// [`MessageObj::mime`]'s bytes; another value means a plugin changed
    /// `mime` through libfastjson.
    mime: Option<Obj>,
    /// The JSON as it was when the object was made: what the message keeps
    /// (and says so in the log) in the unlikely case that libfastjson
    /// writes a text that does not parse (a NaN number a plugin set).
    base: Map<String, Value>,
}

/// `MQ_Message`: a message and its JSON object.
///
/// The JSON's `mime` string is kept apart, as bytes ([`MessageObj::mime`]):
/// one buffer shared by the messages of a transaction, bytes that are not
/// UTF-8 kept exactly. When a plugin asks for the live object (`MQ_json`),
/// the object gets a `mime` string member holding those bytes (libfastjson
/// strings hold any bytes), as in MailerQ, whose incoming JSON has `mime`;
/// a plugin that replaces or removes that member through libfastjson
/// replaces or removes the message's MIME, exactly as `MQ_setMime` would
/// (incoming) or as the JSON's `mime` (outgoing: what is published, and
/// what is sent unless a plugin called `MQ_setMime`).
pub(crate) struct MessageObj {
    pub(crate) direction: Direction,
    json: RefCell<Json>,
    envelope: Rc<AddressObj>,
    recipient: RefCell<Option<CString>>,
    /// The JSON's `mime` string, byte for byte; shared (not copied) by the
    /// messages of one transaction until it is replaced.
    mime: RefCell<Option<Rc<[u8]>>>,
    /// An outgoing message's MIME as a plugin set it with `MQ_setMime`
    /// (what `MQ_mime` returns on an outgoing message: NULL until set).
    sent_mime: RefCell<Option<Rc<[u8]>>>,
    pub(crate) local: Cell<bool>,
    /// Cache for the pointer `MQ_mime` returned: valid until the next
    /// change (or, while pinned, until the message is unpinned).
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
            mime: RefCell::new(mime),
            sent_mime: RefCell::new(None),
            local: Cell::new(false),
            json: RefCell::new(Json::Map(json)),
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

    /// `MQ_json`: the message's live libfastjson object, made on the first
    /// call and the same object on every later one, freed with the message.
    /// NULL only if libfastjson refuses the JSON (it does not for a JSON
    /// object that serde wrote).
    pub(crate) fn json_object(&self) -> *mut FjsonObject {
        let mut json = self.json.borrow_mut();
        if let Json::Live(live) = &*json {
            return live.obj.as_ptr();
        }
        let Json::Map(map) = &*json else {
            unreachable!("not live")
        };
        let text = serde_json::to_string(map).unwrap_or_default();
        let Some(obj) = Obj::parse(&text).filter(Obj::is_object) else {
            return std::ptr::null_mut();
        };
        let mime = self.mime.borrow().as_deref().and_then(Obj::string);
        if let Some(mime) = &mime {
            obj.add(MIME, mime.clone());
        }
        let ptr = obj.as_ptr();
        let base = match std::mem::replace(&mut *json, Json::Map(Map::new())) {
            Json::Map(map) => map,
            Json::Live(_) => unreachable!("not live"),
        };
        *json = Json::Live(Live { obj, mime, base });
        ptr
    }

    /// Reads back what plugins did to the live object's `mime` member.
    fn sync_mime(&self) {
        let mut json = self.json.borrow_mut();
        let Json::Live(live) = &mut *json else { return };
        let current = live.obj.get(MIME);
        let unchanged = match (&current, &live.mime) {
            (Some(now), Some(known)) => now.same(known),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return;
        }
        let bytes = current.as_ref().and_then(Obj::string_bytes);
        let old_member = std::mem::replace(&mut live.mime, current.filter(|_| bytes.is_some()));
        self.retired.retire_json(old_member);
        let old = std::mem::replace(&mut *self.mime.borrow_mut(), bytes.map(Rc::from));
        if old.is_some() || self.mime.borrow().is_some() {
            self.retired.retire_bytes(old);
            if self.direction == Direction::Incoming {
                self.retired.retire(self.mime_c.borrow_mut().take());
            }
        }
    }

    /// The live object's string member `key`, if the JSON is live.
    fn live_string(&self, key: &CStr) -> Option<Option<Vec<u8>>> {
        match &*self.json.borrow() {
            Json::Live(live) => Some(live.obj.get(key).and_then(|v| v.string_bytes())),
            Json::Map(_) => None,
        }
    }

    /// A setter's change of an incoming message's JSON.
    fn changed(&self, key: &CStr, value: &[u8]) {
        if self.direction != Direction::Incoming {
            return;
        }
        match &mut *self.json.borrow_mut() {
            Json::Map(map) => {
                let text = String::from_utf8_lossy(value).into_owned();
                map.insert(key.to_string_lossy().into_owned(), Value::String(text));
            }
            Json::Live(live) => {
                // A late plugin may still hold the old value's pointer.
                self.retired.retire_json(live.obj.get(key));
                if let Some(new) = Obj::string(value) {
                    live.obj.add(key, new);
                }
            }
        }
    }

    /// The envelope address; for an incoming message also one a plugin
    /// set through `MQ_json` (the JSON's `envelope`, as in MailerQ).
    pub(crate) fn envelope(&self) -> &Rc<AddressObj> {
        if self.direction == Direction::Incoming {
            if let Some(now) = self.live_string(ENVELOPE) {
                let now = now.unwrap_or_default();
                let known = self
                    .envelope
                    .email
                    .borrow()
                    .as_ref()
                    .map(|s| s.as_bytes().to_vec());
                if known.unwrap_or_default() != c_string(&now).as_bytes() {
                    self.envelope.set_email(&now);
                }
            }
        }
        &self.envelope
    }

    pub(crate) fn set_envelope(&self, email: &[u8]) {
        self.envelope.set_email(email);
        self.changed(ENVELOPE, email);
    }

    /// `MQ_recipient`; for an incoming message also one a plugin set
    /// through `MQ_json` (the JSON's `recipient`, as in MailerQ).
    pub(crate) fn recipient_ptr(&self) -> *const c_char {
        if self.direction == Direction::Incoming {
            if let Some(now) = self.live_string(RECIPIENT) {
                let now = now.map(|b| c_string(&b));
                if *self.recipient.borrow() != now {
                    let old = std::mem::replace(&mut *self.recipient.borrow_mut(), now);
                    self.retired.retire(old);
                }
            }
        }
        self.recipient
            .borrow()
            .as_ref()
            .map_or(std::ptr::null(), |s| s.as_ptr())
    }

    pub(crate) fn set_recipient(&self, email: &[u8]) {
        let old = self.recipient.borrow_mut().replace(c_string(email));
        self.retired.retire(old);
        self.changed(RECIPIENT, email);
    }

    /// What `MQ_mime` shows: an incoming message's MIME (the JSON's
    /// `mime`), an outgoing message's only once a plugin set it.
    fn plugin_mime(&self) -> Option<Rc<[u8]>> {
        match self.direction {
            Direction::Incoming => self.mime(),
            Direction::Outgoing => self.sent_mime.borrow().clone(),
        }
    }

    pub(crate) fn mime_ptr(&self) -> *const c_char {
        let Some(bytes) = self.plugin_mime() else {
            return std::ptr::null();
        };
        let mut cache = self.mime_c.borrow_mut();
        cache.get_or_insert_with(|| c_string(&bytes)).as_ptr()
    }

    /// `MQ_mime`'s data with its length, for a plugin (NUL bytes
    /// included). Valid as long as [`MessageObj::mime_ptr`]'s pointer:
    /// until the next change of the MIME, or while the message is pinned,
    /// until it is unpinned (the replaced buffer is kept).
    pub(crate) fn mime_slice(&self) -> Option<(*const u8, usize)> {
        // The buffer stays referenced by the message (or kept retired).
        self.plugin_mime().map(|m| (m.as_ptr(), m.len()))
    }

    /// The JSON's `mime`, byte for byte (NUL bytes included), with what
    /// plugins did to it through `MQ_json`.
    pub(crate) fn mime(&self) -> Option<Rc<[u8]>> {
        self.sync_mime();
        self.mime.borrow().clone()
    }

    pub(crate) fn set_mime(&self, mime: &[u8]) {
        let mime: Rc<[u8]> = Rc::from(mime);
        self.retired.retire(self.mime_c.borrow_mut().take());
        if self.direction == Direction::Outgoing {
            let old = self.sent_mime.borrow_mut().replace(mime);
            self.retired.retire_bytes(old);
            return;
        }
        self.sync_mime();
        if let Json::Live(live) = &mut *self.json.borrow_mut() {
            let member = Obj::string(&mime);
            if let Some(member) = &member {
                live.obj.add(MIME, member.clone());
            } else {
                live.obj.del(MIME);
            }
            let old = std::mem::replace(&mut live.mime, member);
            self.retired.retire_json(old);
        }
        let old = self.mime.borrow_mut().replace(mime);
        self.retired.retire_bytes(old);
    }

    /// The message's JSON object, with its MIME as a `mime` string (bytes
    /// that are not UTF-8 are replaced: [`MessageObj::parts`] has them).
    pub(crate) fn json(&self) -> Value {
        let (mut json, mime) = self.parts();
        if let Some(mime) = mime {
            let text = String::from_utf8_lossy(&mime).into_owned();
            json.insert("mime".to_owned(), Value::String(text));
        }
        Value::Object(json)
    }

    /// The message's JSON object without its `mime` string, and its MIME
    /// data byte for byte (shared, not copied), with every change plugins
    /// made through `MQ_json`.
    pub(crate) fn parts(&self) -> (Map<String, Value>, Option<Rc<[u8]>>) {
        let mime = self.mime();
        let json = self.json.borrow();
        let map = match &*json {
            Json::Map(map) => map.clone(),
            Json::Live(live) => {
                // The MIME travels as bytes: out of the text, then back.
                let text = match &live.mime {
                    Some(member) => {
                        live.obj.del(MIME);
                        let text = live.obj.to_text();
                        live.obj.add(MIME, member.clone());
                        text
                    }
                    None => live.obj.to_text(),
                };
                map_of(&text).unwrap_or_else(|why| {
                    crate::runtime::worker::with_current(|w| {
                        w.log(
                            Priority::Critical,
                            format!(
                                "a message's JSON as plugins left it through MQ_json does not parse \
                                 ({why}); the JSON as it was before MQ_json is kept"
                            ),
                        )
                    });
                    live.base.clone()
                })
            }
        };
        (map, mime)
    }

    /// What would go over SMTP.
    pub(crate) fn smtp_view(&self) -> SmtpView {
        let sent = self.sent_mime.borrow().clone();
        SmtpView {
            envelope: self.envelope.email().unwrap_or_default(),
            recipient: self
                .recipient
                .borrow()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            mime: sent.or_else(|| self.mime()).as_deref().map(<[u8]>::to_vec),
        }
    }
}

const MIME: &CStr = c"mime";
const RECIPIENT: &CStr = c"recipient";
const ENVELOPE: &CStr = c"envelope";

/// The object of a JSON text libfastjson wrote (bytes that are not UTF-8,
/// which only a plugin can have put there, replaced).
fn map_of(text: &[u8]) -> Result<Map<String, Value>, serde_json::Error> {
    serde_json::from_str(&String::from_utf8_lossy(text))
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
        assert_eq!(
            unsafe { std::slice::from_raw_parts(ptr, len) },
            b"other \xe9\0tail"
        );
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
        assert_eq!(
            unsafe { std::ffi::CStr::from_ptr(m.mime_ptr()) }.to_bytes(),
            b"set"
        );
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
}
