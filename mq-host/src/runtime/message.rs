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
    /// The JSON's `envelope` and `recipient` members when last looked at
    /// (our references, as for `mime`): only a plugin that replaced one
    /// through libfastjson makes the host re-read it into the address it
    /// hands out — never a mere read, so that a buffer a plugin may be
    /// reading is never freed by another read.
    envelope: Option<Obj>,
    recipient: Option<Obj>,
    /// The JSON as it was when the object was made: what the message keeps
    /// (and says so in the log) in the unlikely case that plugins left a
    /// value JSON cannot hold (a NaN number).
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
    /// NULL, logged, only for JSON libfastjson cannot hold (a key with a NUL
    /// byte, nesting past 512 levels).
    pub(crate) fn json_object(&self) -> *mut FjsonObject {
        let mut json = self.json.borrow_mut();
        if let Json::Live(live) = &*json {
            return live.obj.as_ptr();
        }
        let Json::Map(map) = &*json else {
            unreachable!("not live")
        };
        let obj = match Obj::from_map(map) {
            Ok(obj) => obj,
            Err(why) => {
                log_critical(format!(
                    "MQ_json returns NULL: the message's JSON cannot be a libfastjson object ({why})"
                ));
                return std::ptr::null_mut();
            }
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
        *json = Json::Live(Live {
            envelope: obj.get(ENVELOPE),
            recipient: obj.get(RECIPIENT),
            obj,
            mime,
            base,
        });
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

    /// The live object's member `key` (`envelope` or `recipient`) if a
    /// plugin replaced it through libfastjson since the host last looked:
    /// `Some` with its string bytes (`None` inside for a removed or
    /// non-string member). `None` if nothing changed, or the JSON is not
    /// live.
    fn replaced_member(&self, key: &CStr) -> Option<Option<Vec<u8>>> {
        let mut json = self.json.borrow_mut();
        let Json::Live(live) = &mut *json else {
            return None;
        };
        let known = if key == ENVELOPE {
            &mut live.envelope
        } else {
            &mut live.recipient
        };
        let current = live.obj.get(key);
        let unchanged = match (&current, &*known) {
            (Some(now), Some(known)) => now.same(known),
            (None, None) => true,
            _ => false,
        };
        if unchanged {
            return None;
        }
        let bytes = current.as_ref().and_then(Obj::string_bytes);
        let old = std::mem::replace(known, current);
        self.retired.retire_json(old);
        Some(bytes)
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
                let old_member = live.obj.get(key);
                let new = Obj::string(value);
                match &new {
                    Some(new) => live.obj.add(key, new.clone()),
                    None => live.obj.del(key),
                }
                // The host's own change: not one to re-read.
                let known = if key == ENVELOPE {
                    &mut live.envelope
                } else {
                    &mut live.recipient
                };
                let old_known = std::mem::replace(known, new);
                let same = matches!((&old_known, &old_member), (Some(a), Some(b)) if a.same(b));
                if !same {
                    self.retired.retire_json(old_known);
                }
                self.retired.retire_json(old_member);
            }
        }
    }

    /// The envelope address; for an incoming message also one a plugin
    /// set through `MQ_json` (the JSON's `envelope`, as in MailerQ).
    pub(crate) fn envelope(&self) -> &Rc<AddressObj> {
        if self.direction == Direction::Incoming {
            if let Some(now) = self.replaced_member(ENVELOPE) {
                self.envelope.set_email(&now.unwrap_or_default());
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
            if let Some(now) = self.replaced_member(RECIPIENT) {
                let now = now.map(|b| c_string(&b));
                let old = std::mem::replace(&mut *self.recipient.borrow_mut(), now);
                self.retired.retire(old);
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
                // Read member by member, the object left as it is (a late
                // plugin may hold pointers into it); the MIME travels as
                // bytes, apart.
                let skip = live.mime.as_ref().map(|_| MIME);
                live.obj.to_map(skip).unwrap_or_else(|why| {
                    log_critical(format!(
                        "a message's JSON as plugins left it through MQ_json is not JSON \
                         ({why}); the JSON as it was before MQ_json is kept"
                    ));
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

/// Logs `text` as critical on this worker's log.
fn log_critical(text: String) {
    crate::runtime::worker::with_current(|w| w.log(Priority::Critical, text));
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
mod tests;
