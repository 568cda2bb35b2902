//! Typed access to a message's JSON through libfastjson.
//!
//! `MQ_json` returns the message's live libfastjson object in MailerQ and
//! in `mq-host` alike; these methods read and change it with libfastjson's
//! own functions (found in the process, see [`crate::host::fastjson`]), so
//! a plugin's JSON code runs the same path in both hosts. Values cross as
//! JSON text: serde on our side, libfastjson's parser and writer on the
//! host's.

use crate::handles::Message;
use crate::host::{fastjson, host, FastJson, FjsonObject, FJSON_TYPE_STRING};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ffi::CString;

impl Message {
    /// The message's live JSON object and libfastjson's functions.
    fn json_object(&self) -> Result<(&'static FastJson, *mut FjsonObject), JsonError> {
        let fastjson = fastjson().ok_or(JsonError::NoFastJson)?;
        // SAFETY: live message.
        let obj = unsafe { host().api.json(self.as_raw()) };
        if obj.is_null() {
            return Err(JsonError::Missing);
        }
        Ok((fastjson, obj.cast_mut()))
    }

    /// The message's JSON text (a copy), or `None` if it cannot be had
    /// ([`Message::json`] says why).
    pub fn json_text(&self) -> Option<String> {
        let (fastjson, obj) = self.json_object().ok()?;
        // SAFETY: the message's live object.
        Some(unsafe { fastjson.text(obj) })
    }

    /// The message's whole JSON object, parsed (a copy), as libfastjson
    /// writes it: a string ends at a NUL byte there, so read the MIME with
    /// [`Message::mime`] or [`Message::property_bytes`]. To read one
    /// property, [`Message::property`] is cheaper: it does not copy the
    /// MIME.
    pub fn json(&self) -> Result<serde_json::Value, JsonError> {
        let (fastjson, obj) = self.json_object()?;
        // SAFETY: the message's live object.
        let text = unsafe { fastjson.text(obj) };
        serde_json::from_str(&text).map_err(JsonError::Invalid)
    }

    /// The JSON property `key` as a `T`: `Ok(None)` if the message has no
    /// such property, an error if it has one that is not a `T`.
    ///
    /// ```no_run
    /// use mq_plugin::prelude::*;
    ///
    /// #[mq_hook(smtp_in_message)]
    /// fn tag(msg: &mut Message) -> Flow {
    ///     let recipient: Option<String> = msg.property("recipient").unwrap_or(None);
    ///     let seen = serde_json::json!({ "by": "tag", "recipient": recipient });
    ///     if let Err(e) = msg.set_property("x-tag", &seen) {
    ///         mq_plugin::log::write(mq_plugin::log::Priority::Warning, &e.to_string());
    ///     }
    ///     Flow::Continue
    /// }
    /// # mq_plugin::declare_plugin!();
    /// # fn main() {}
    /// ```
    pub fn property<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, JsonError> {
        let (fastjson, obj) = self.json_object()?;
        let c_key = c_key(key)?;
        let mut value = std::ptr::null_mut();
        // SAFETY: the message's live object, a NUL-terminated key, a
        // writable out pointer; `value` is borrowed from the object and
        // used before anything can change it.
        let parsed = unsafe {
            if (fastjson.object_get_ex)(obj, c_key.as_ptr(), &mut value) == 0 {
                return Ok(None);
            }
            if !value.is_null() && (fastjson.is_type)(value, FJSON_TYPE_STRING) != 0 {
                // A string is read by its length, not through libfastjson's
                // writer (which ends a string at a NUL byte); bytes that
                // are not UTF-8 are replaced (`property_bytes` has them).
                let text = (fastjson.get_string)(value);
                let len = usize::try_from((fastjson.get_string_len)(value)).unwrap_or(0);
                let bytes = if text.is_null() {
                    &[][..]
                } else {
                    std::slice::from_raw_parts(text.cast::<u8>(), len)
                };
                let string = String::from_utf8_lossy(bytes).into_owned();
                serde_json::from_value(serde_json::Value::String(string))
            } else {
                serde_json::from_str(&fastjson.text(value))
            }
        };
        parsed.map(Some).map_err(|source| JsonError::Property {
            key: key.to_owned(),
            source,
        })
    }

    /// The string property `key`, byte for byte (bytes that are not UTF-8
    /// and NUL bytes included; [`Message::property`] reads text). For an
    /// outgoing message's `mime`, which [`Message::mime`] does not show
    /// until a plugin set one. `Ok(None)` if there is no such property, an
    /// error if it is not a string.
    pub fn property_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, JsonError> {
        let (fastjson, obj) = self.json_object()?;
        let c_key = c_key(key)?;
        let mut value = std::ptr::null_mut();
        // SAFETY: the message's live object, a NUL-terminated key, a
        // writable out pointer; `value` is borrowed from the object and
        // copied before anything can change it; a string object's text is
        // valid for its length.
        unsafe {
            if (fastjson.object_get_ex)(obj, c_key.as_ptr(), &mut value) == 0 {
                return Ok(None);
            }
            if value.is_null() || (fastjson.is_type)(value, FJSON_TYPE_STRING) == 0 {
                return Err(JsonError::NotAString(key.to_owned()));
            }
            let text = (fastjson.get_string)(value);
            let len = usize::try_from((fastjson.get_string_len)(value)).unwrap_or(0);
            if text.is_null() || len == 0 {
                return Ok(Some(Vec::new()));
            }
            Ok(Some(
                std::slice::from_raw_parts(text.cast::<u8>(), len).to_vec(),
            ))
        }
    }

    /// Sets the JSON property `key` to `value` (replacing what was there).
    ///
    /// On an incoming message this is what is stored; on an outgoing one
    /// what the delivery's result carries. `recipient`, `envelope` and
    /// `mime` are the message's own: on an incoming message changing them
    /// here is the same as [`Message::set_recipient`],
    /// [`Message::set_envelope`], [`Message::set_mime`] (in MailerQ the
    /// setters are aliases of the JSON there); on an outgoing message the
    /// setters change only what goes over SMTP, and these properties only
    /// the JSON.
    pub fn set_property<T: Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), JsonError> {
        let (fastjson, obj) = self.json_object()?;
        let c_key = c_key(key)?;
        let text = serde_json::to_string(value).map_err(|source| JsonError::Serialize {
            key: key.to_owned(),
            source,
        })?;
        let member = if text == "null" {
            // libfastjson's null is the NULL object.
            std::ptr::null_mut()
        } else {
            // serde_json escapes every NUL in a string, so there is none.
            let c_text = CString::new(text).map_err(|_| JsonError::Rejected(key.to_owned()))?;
            // SAFETY: a NUL-terminated JSON text; the result is a new
            // object (our reference) or NULL.
            let member = unsafe { (fastjson.tokener_parse)(c_text.as_ptr()) };
            if member.is_null() {
                return Err(JsonError::Rejected(key.to_owned()));
            }
            member
        };
        // SAFETY: the message's live object; our reference to `member`
        // moves into it.
        unsafe { (fastjson.object_add)(obj, c_key.as_ptr(), member) };
        Ok(())
    }

    /// Removes the JSON property `key`; whether it was there.
    ///
    /// Removing `mime` removes the MIME of an incoming message (see
    /// [`Message::set_property`]).
    pub fn remove_property(&mut self, key: &str) -> Result<bool, JsonError> {
        let (fastjson, obj) = self.json_object()?;
        let c_key = c_key(key)?;
        // SAFETY: the message's live object and a NUL-terminated key.
        unsafe {
            let found = (fastjson.object_get_ex)(obj, c_key.as_ptr(), std::ptr::null_mut()) != 0;
            if found {
                (fastjson.object_del)(obj, c_key.as_ptr());
            }
            Ok(found)
        }
    }
}

fn c_key(key: &str) -> Result<CString, JsonError> {
    CString::new(key).map_err(|_| JsonError::Key(key.to_owned()))
}

/// Why reading or changing a message's JSON failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum JsonError {
    /// The host returned no JSON object for the message.
    Missing,
    /// The process has no libfastjson (reported once in the log).
    NoFastJson,
    /// The message's JSON text did not parse.
    Invalid(serde_json::Error),
    /// A property name holds a NUL byte.
    Key(String),
    /// The property is there but is not of the type asked for.
    Property {
        /// The property.
        key: String,
        /// What serde found.
        source: serde_json::Error,
    },
    /// The value could not be written as JSON.
    Serialize {
        /// The property.
        key: String,
        /// What serde found.
        source: serde_json::Error,
    },
    /// libfastjson refused the value's JSON text (e.g. nested too deeply).
    Rejected(String),
    /// [`Message::property_bytes`]: the property is not a string.
    NotAString(String),
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonError::Missing => f.write_str("the host returned no JSON for the message"),
            JsonError::NoFastJson => f.write_str(
                "the host offers no libfastjson, so the message's JSON cannot be reached",
            ),
            JsonError::Invalid(e) => write!(f, "the message's JSON does not parse: {e}"),
            JsonError::Key(key) => write!(
                f,
                "property name `{}` holds a NUL byte; use a name without one",
                key.escape_debug()
            ),
            JsonError::Property { key, source } => {
                write!(
                    f,
                    "property `{}` is not of the type asked for: {source}",
                    key.escape_debug()
                )
            }
            JsonError::Serialize { key, source } => {
                write!(
                    f,
                    "the value for property `{}` cannot be written as JSON: {source}",
                    key.escape_debug()
                )
            }
            JsonError::NotAString(key) => {
                write!(f, "property `{}` is not a string", key.escape_debug())
            }
            JsonError::Rejected(key) => write!(
                f,
                "libfastjson refused the value for property `{}` (nested too deeply?)",
                key.escape_debug()
            ),
        }
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JsonError::Invalid(e)
            | JsonError::Property { source: e, .. }
            | JsonError::Serialize { source: e, .. } => Some(e),
            _ => None,
        }
    }
}
