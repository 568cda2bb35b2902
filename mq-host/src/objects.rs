//! The host's side of the C handles.
//!
//! Every object handed to a plugin is `#[repr(C)]` and starts with a type
//! tag, so a host function can refuse a pointer of the wrong kind (and
//! `MQ_local`/`MQ_setLocal` can take a message or a recipient address).
//! Contexts and connections are handed out as per-plugin *views*: each
//! plugin sees its own `MQ_contextData`/`MQ_connectionData` slot, and a
//! resume says which plugin it comes from.

use crate::chain::Chain;
use serde_json::{Map, Value};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CString};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::thread::ThreadId;

pub(crate) const CONTEXT_TAG: u32 = u32::from_be_bytes(*b"MQcx");
pub(crate) const CONNECTION_TAG: u32 = u32::from_be_bytes(*b"MQcn");
pub(crate) const MESSAGE_TAG: u32 = u32::from_be_bytes(*b"MQms");
pub(crate) const ADDRESS_TAG: u32 = u32::from_be_bytes(*b"MQad");

/// Reads the tag of an object a plugin passed, or `None` for null.
///
/// # Safety
/// `ptr` must be null or point to one of the host's tagged objects (the C
/// API's contract: plugins pass back what they were given).
pub(crate) unsafe fn tag_of(ptr: *const c_void) -> Option<u32> {
    // SAFETY: the caller's promise; every tagged object starts with a u32.
    (!ptr.is_null()).then(|| unsafe { *ptr.cast::<u32>() })
}

/// Whether a connection is one the host accepted or one it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// An SMTP client connected to the host (`smtp_in_*` hooks).
    Incoming,
    /// The host delivers to a remote server (`smtp_out_*` hooks).
    Outgoing,
}

/// `MQ_Context`: one per plugin per worker.
#[repr(C)]
pub(crate) struct ContextObj {
    tag: u32,
    pub(crate) worker: usize,
    pub(crate) plugin: usize,
    pub(crate) data: Cell<*mut c_void>,
}

impl ContextObj {
    pub(crate) fn new(worker: usize, plugin: usize) -> ContextObj {
        ContextObj {
            tag: CONTEXT_TAG,
            worker,
            plugin,
            data: Cell::new(std::ptr::null_mut()),
        }
    }

    pub(crate) fn as_raw(&self) -> *mut mq_plugin::sys::MQ_Context {
        self as *const Self as *mut _
    }
}

/// The result of `smtp_in_authenticate` so far.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AuthState {
    pub(crate) authenticated: bool,
    /// A plugin said no: the login fails whatever others say.
    pub(crate) refused: bool,
}

/// One SMTP connection, owned by its worker.
pub(crate) struct ConnectionState {
    pub(crate) id: u64,
    pub(crate) fd: Cell<RawFd>,
    pub(crate) secure: Cell<bool>,
    pub(crate) auth: Cell<AuthState>,
    /// Bytes plugins sent with `MQ_send` since the host last took them.
    pub(crate) sent: RefCell<Vec<u8>>,
    /// One view per plugin, in plugin order.
    pub(crate) views: Box<[ConnectionView]>,
    /// The chain running on this connection, if any.
    pub(crate) chain: RefCell<Option<Box<Chain>>>,
    /// The last take-over on this connection and whether it ended, for
    /// telling double resumes from stray ones.
    pub(crate) last_takeover: Cell<Option<(usize, TakeoverEnd)>>,
    /// The message between `smtp_out_data` and `smtp_out_sent`.
    pub(crate) outgoing_message: RefCell<Option<Box<MessageObj>>>,
}

/// How the last take-over on a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TakeoverEnd {
    Held,
    Resumed,
    Expired,
}

/// `MQ_Connection`: one connection as one plugin sees it.
#[repr(C)]
pub(crate) struct ConnectionView {
    tag: u32,
    pub(crate) plugin: usize,
    /// Immutable after creation: read by resumes from any thread.
    pub(crate) owner: ThreadId,
    pub(crate) conn: Cell<*const ConnectionState>,
    pub(crate) data: Cell<*mut c_void>,
    /// The host's shared state (thread-safe), for refusing resumes from
    /// other threads without touching the connection.
    pub(crate) shared: *const crate::worker::Shared,
}

impl ConnectionState {
    pub(crate) fn new(
        id: u64,
        fd: RawFd,
        plugins: usize,
        shared: *const crate::worker::Shared,
    ) -> Rc<ConnectionState> {
        let owner = std::thread::current().id();
        let views = (0..plugins)
            .map(|plugin| ConnectionView {
                tag: CONNECTION_TAG,
                plugin,
                owner,
                conn: Cell::new(std::ptr::null()),
                data: Cell::new(std::ptr::null_mut()),
                shared,
            })
            .collect();
        let conn = Rc::new(ConnectionState {
            id,
            fd: Cell::new(fd),
            secure: Cell::new(false),
            auth: Cell::new(AuthState::default()),
            sent: RefCell::new(Vec::new()),
            views,
            chain: RefCell::new(None),
            last_takeover: Cell::new(None),
            outgoing_message: RefCell::new(None),
        });
        for view in conn.views.iter() {
            view.conn.set(Rc::as_ptr(&conn));
        }
        conn
    }

    pub(crate) fn view(&self, plugin: usize) -> *mut mq_plugin::sys::MQ_Connection {
        &self.views[plugin] as *const ConnectionView as *mut _
    }

    /// Takes the bytes plugins sent.
    pub(crate) fn take_sent(&self) -> Vec<u8> {
        std::mem::take(&mut *self.sent.borrow_mut())
    }
}

/// `MQ_Address`: an envelope or recipient address.
#[repr(C)]
pub(crate) struct AddressObj {
    tag: u32,
    email: RefCell<Option<CString>>,
    pub(crate) local: Cell<bool>,
}

impl AddressObj {
    pub(crate) fn new(email: Option<&str>) -> AddressObj {
        let obj = AddressObj {
            tag: ADDRESS_TAG,
            email: RefCell::new(None),
            local: Cell::new(false),
        };
        obj.set_email(email.unwrap_or("").as_bytes());
        obj
    }

    pub(crate) fn set_email(&self, email: &[u8]) {
        *self.email.borrow_mut() = (!email.is_empty()).then(|| c_string(email));
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

    pub(crate) fn as_raw(&self) -> *mut mq_plugin::sys::MQ_Address {
        self as *const Self as *mut _
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
#[repr(C)]
pub(crate) struct MessageObj {
    tag: u32,
    pub(crate) direction: Direction,
    json: RefCell<Map<String, Value>>,
    envelope: AddressObj,
    recipient: RefCell<Option<CString>>,
    mime: RefCell<Option<Vec<u8>>>,
    pub(crate) local: Cell<bool>,
    /// Caches for pointers returned to plugins: valid until the next change.
    json_text: RefCell<Option<CString>>,
    mime_c: RefCell<Option<CString>>,
}

impl MessageObj {
    pub(crate) fn new(direction: Direction, json: Map<String, Value>) -> Box<MessageObj> {
        let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
        let envelope = text("envelope");
        let recipient = text("recipient");
        let mime = text("mime").map(String::into_bytes);
        Box::new(MessageObj {
            tag: MESSAGE_TAG,
            direction,
            envelope: AddressObj::new(envelope.as_deref()),
            recipient: RefCell::new(recipient.map(|r| c_string(r.as_bytes()))),
            mime: RefCell::new(mime),
            local: Cell::new(false),
            json: RefCell::new(json),
            json_text: RefCell::new(None),
            mime_c: RefCell::new(None),
        })
    }

    pub(crate) fn as_raw(&self) -> *mut mq_plugin::sys::MQ_Message {
        self as *const Self as *mut _
    }

    fn changed(&self, key: &str, value: Value) {
        *self.json_text.borrow_mut() = None;
        if self.direction == Direction::Incoming {
            self.json.borrow_mut().insert(key.to_owned(), value);
        }
    }

    pub(crate) fn json_ptr(&self) -> *const c_char {
        let mut cache = self.json_text.borrow_mut();
        let text = cache.get_or_insert_with(|| {
            // Serialized from the borrow: no copy of the message (and its MIME).
            c_string(
                serde_json::to_string(&*self.json.borrow())
                    .unwrap_or_default()
                    .as_bytes(),
            )
        });
        text.as_ptr()
    }

    pub(crate) fn envelope(&self) -> &AddressObj {
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
        *self.recipient.borrow_mut() = Some(c_string(email));
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

    pub(crate) fn set_mime(&self, mime: &[u8]) {
        *self.mime.borrow_mut() = Some(mime.to_vec());
        *self.mime_c.borrow_mut() = None;
        self.changed(
            "mime",
            Value::String(String::from_utf8_lossy(mime).into_owned()),
        );
    }

    /// The stored JSON object.
    pub(crate) fn json(&self) -> Value {
        Value::Object(self.json.borrow().clone())
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
            mime: self.mime.borrow().clone(),
        }
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

    fn message(direction: Direction) -> Box<MessageObj> {
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
    fn tags_tell_objects_apart() {
        let m = message(Direction::Incoming);
        let a = AddressObj::new(Some("x@y"));
        // SAFETY: both are tagged host objects.
        unsafe {
            assert_eq!(tag_of(m.as_raw().cast()), Some(MESSAGE_TAG));
            assert_eq!(tag_of(a.as_raw().cast()), Some(ADDRESS_TAG));
            assert_eq!(tag_of(std::ptr::null()), None);
        }
    }

    #[test]
    fn c_strings_stop_at_nul() {
        assert_eq!(c_string(b"ab\0cd").as_bytes(), b"ab");
    }
}
