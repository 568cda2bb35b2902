//! libfastjson, the JSON library whose objects `MQ_json` hands out.
//!
//! MailerQ gives a plugin its message's JSON as a live `struct
//! fjson_object *` of the real libfastjson, which the plugin reads and
//! changes with libfastjson's own functions; mq-host does the same, so it
//! links the system's libfastjson (`-lfastjson`, Debian's
//! `libfastjson-dev`) and hands out that library's objects. The few
//! functions the host needs are declared here by hand; [`Obj`] is the one
//! place that owns a reference to such an object.

use std::ffi::{c_char, c_int, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// libfastjson's `struct fjson_object`, opaque.
#[repr(C)]
pub(crate) struct FjsonObject {
    _opaque: [u8; 0],
    _not_send: PhantomData<*mut u8>,
}

/// `fjson_type_object` of libfastjson's `enum fjson_type`.
const TYPE_OBJECT: c_int = 4;
/// `fjson_type_string` of libfastjson's `enum fjson_type`.
const TYPE_STRING: c_int = 6;
/// `FJSON_TO_STRING_PLAIN`: no spaces, no newlines.
const TO_STRING_PLAIN: c_int = 0;

#[link(name = "fastjson")]
extern "C" {
    fn fjson_tokener_parse(text: *const c_char) -> *mut FjsonObject;
    fn fjson_object_get(obj: *mut FjsonObject) -> *mut FjsonObject;
    fn fjson_object_put(obj: *mut FjsonObject) -> c_int;
    fn fjson_object_is_type(obj: *mut FjsonObject, kind: c_int) -> c_int;
    fn fjson_object_object_add(obj: *mut FjsonObject, key: *const c_char, val: *mut FjsonObject);
    fn fjson_object_object_get_ex(
        obj: *mut FjsonObject,
        key: *const c_char,
        value: *mut *mut FjsonObject,
    ) -> c_int;
    fn fjson_object_object_del(obj: *mut FjsonObject, key: *const c_char);
    fn fjson_object_to_json_string_ext(obj: *mut FjsonObject, flags: c_int) -> *const c_char;
    fn fjson_object_new_string_len(text: *const c_char, len: c_int) -> *mut FjsonObject;
    fn fjson_object_get_string(obj: *mut FjsonObject) -> *const c_char;
    fn fjson_object_get_string_len(obj: *mut FjsonObject) -> c_int;
    #[cfg(test)]
    fn fjson_object_new_double(value: f64) -> *mut FjsonObject;
}

/// One counted reference to a libfastjson object: dropped with
/// `fjson_object_put`, cloned with `fjson_object_get`. `!Send`: the host
/// and its plugins use a message's object on the message's worker only.
pub(crate) struct Obj(NonNull<FjsonObject>);

impl Obj {
    /// The object of a JSON text (`None` if libfastjson refuses it).
    pub(crate) fn parse(text: &str) -> Option<Obj> {
        let text = CString::new(text).ok()?;
        // SAFETY: a NUL-terminated text; the result is a new reference or NULL.
        NonNull::new(unsafe { fjson_tokener_parse(text.as_ptr()) }).map(Obj)
    }

    /// A new string object holding `bytes` exactly (any bytes, NUL too);
    /// `None` past libfastjson's `int` length.
    pub(crate) fn string(bytes: &[u8]) -> Option<Obj> {
        let len = c_int::try_from(bytes.len()).ok()?;
        // SAFETY: `bytes` is valid for `len` bytes; libfastjson copies them.
        NonNull::new(unsafe { fjson_object_new_string_len(bytes.as_ptr().cast(), len) }).map(Obj)
    }

    /// A reference of our own to an object a plugin was handed (what a
    /// plugin's `fjson_object_get` does).
    ///
    /// # Safety
    /// `ptr` is a live libfastjson object.
    #[cfg(test)]
    pub(crate) unsafe fn from_borrowed(ptr: *mut FjsonObject) -> Obj {
        // SAFETY: the caller's promise; the result is the same pointer.
        Obj(NonNull::new(unsafe { fjson_object_get(ptr) }).expect("a live object"))
    }

    /// A new number object (what a plugin's `fjson_object_new_double` makes).
    #[cfg(test)]
    pub(crate) fn double(value: f64) -> Obj {
        // SAFETY: makes a new object, our reference.
        Obj(NonNull::new(unsafe { fjson_object_new_double(value) }).expect("allocated"))
    }

    /// The object's address, as handed to plugins.
    pub(crate) fn as_ptr(&self) -> *mut FjsonObject {
        self.0.as_ptr()
    }

    /// Whether `self` and `other` are the same object.
    pub(crate) fn same(&self, other: &Obj) -> bool {
        self.0 == other.0
    }

    /// Whether this is a JSON object (not an array, string, ...).
    pub(crate) fn is_object(&self) -> bool {
        // SAFETY: a live object (we hold a reference).
        unsafe { fjson_object_is_type(self.as_ptr(), TYPE_OBJECT) != 0 }
    }

    /// The member `key` of this object, with a reference of its own (so it
    /// outlives its removal from the object).
    pub(crate) fn get(&self, key: &CStr) -> Option<Obj> {
        let mut value = std::ptr::null_mut();
        // SAFETY: a live object, a NUL-terminated key, a writable out pointer.
        let found = unsafe { fjson_object_object_get_ex(self.as_ptr(), key.as_ptr(), &mut value) };
        if found == 0 {
            return None;
        }
        // SAFETY: `value` is a member of the object (or NULL for a JSON
        // null); taking a reference keeps it alive on its own.
        NonNull::new(unsafe { fjson_object_get(value) }).map(Obj)
    }

    /// Sets member `key` to `value` (the object takes this reference; the
    /// member's previous value loses the object's reference).
    pub(crate) fn add(&self, key: &CStr, value: Obj) {
        let value = std::mem::ManuallyDrop::new(value);
        // SAFETY: a live object and value; the reference moves into the object.
        unsafe { fjson_object_object_add(self.as_ptr(), key.as_ptr(), value.as_ptr()) }
    }

    /// Removes member `key` (its value loses the object's reference).
    pub(crate) fn del(&self, key: &CStr) {
        // SAFETY: a live object and a NUL-terminated key.
        unsafe { fjson_object_object_del(self.as_ptr(), key.as_ptr()) }
    }

    /// The JSON text, copied (libfastjson's buffer lives until the next change).
    pub(crate) fn to_text(&self) -> Vec<u8> {
        // SAFETY: a live object; the result is NULL or a NUL-terminated
        // string owned by the object, copied at once.
        unsafe {
            let text = fjson_object_to_json_string_ext(self.as_ptr(), TO_STRING_PLAIN);
            if text.is_null() {
                return b"null".to_vec();
            }
            CStr::from_ptr(text).to_bytes().to_vec()
        }
    }

    /// The bytes of a string object (all of them, NUL included); `None`
    /// for any other type.
    pub(crate) fn string_bytes(&self) -> Option<Vec<u8>> {
        // SAFETY: a live object; a string object's text is valid for its length.
        unsafe {
            if fjson_object_is_type(self.as_ptr(), TYPE_STRING) == 0 {
                return None;
            }
            let text = fjson_object_get_string(self.as_ptr());
            let len = usize::try_from(fjson_object_get_string_len(self.as_ptr())).ok()?;
            if text.is_null() {
                return Some(Vec::new());
            }
            Some(std::slice::from_raw_parts(text.cast::<u8>(), len).to_vec())
        }
    }
}

impl Clone for Obj {
    fn clone(&self) -> Obj {
        // SAFETY: a live object; one more reference, returned as the same pointer.
        unsafe { fjson_object_get(self.as_ptr()) };
        Obj(self.0)
    }
}

impl Drop for Obj {
    fn drop(&mut self) {
        // SAFETY: we own exactly this one reference.
        unsafe { fjson_object_put(self.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_keep_every_byte() {
        let s = Obj::string(b"a\0\xe9b").unwrap();
        assert_eq!(s.string_bytes().unwrap(), b"a\0\xe9b");
        assert!(Obj::parse("{}").unwrap().string_bytes().is_none());
    }

    #[test]
    fn members_outlive_their_removal_when_held() {
        let o = Obj::parse(r#"{"a":"x","b":[1,2]}"#).unwrap();
        assert!(o.is_object());
        let a = o.get(c"a").unwrap();
        o.del(c"a");
        assert_eq!(a.string_bytes().unwrap(), b"x", "our reference keeps it");
        o.add(c"c", Obj::string(b"y").unwrap());
        assert!(o.get(c"a").is_none());
        let text: serde_json::Value = serde_json::from_slice(&o.to_text()).unwrap();
        assert_eq!(text, serde_json::json!({"b": [1, 2], "c": "y"}));
        assert!(o.get(c"b").unwrap().same(&o.get(c"b").unwrap()));
    }
}
