//! libfastjson, the JSON library whose objects `MQ_json` hands out.
//!
//! MailerQ gives a plugin its message's JSON as a live `struct
//! fjson_object *` of the real libfastjson, which the plugin reads and
//! changes with libfastjson's own functions; mq-host does the same, so it
//! links the system's libfastjson (`-lfastjson`, Debian's
//! `libfastjson-dev`) and hands out that library's objects. The few
//! functions the host needs are declared here by hand; [`Obj`] is the one
//! place that owns a reference to such an object.

use serde_json::{Map, Number, Value};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;

/// libfastjson's `struct fjson_object`, opaque.
#[repr(C)]
pub(crate) struct FjsonObject {
    _opaque: [u8; 0],
    _not_send: PhantomData<*mut u8>,
}

/// libfastjson's `enum fjson_type`.
const TYPE_NULL: c_int = 0;
const TYPE_BOOLEAN: c_int = 1;
const TYPE_DOUBLE: c_int = 2;
const TYPE_INT: c_int = 3;
const TYPE_OBJECT: c_int = 4;
const TYPE_ARRAY: c_int = 5;
const TYPE_STRING: c_int = 6;

/// How deep a JSON value may nest for the host to convert it (both
/// ways): deeper than any message needs, shallow enough for the stack.
const MAX_DEPTH: usize = 512;

/// libfastjson's `struct fjson_object_iterator` (returned by value).
#[repr(C)]
struct ObjectIter {
    objs_remain: c_int,
    curr_idx: c_int,
    pg: *const c_void,
}
/// `FJSON_TO_STRING_PLAIN`: no spaces, no newlines.
const TO_STRING_PLAIN: c_int = 0;

#[link(name = "fastjson")]
extern "C" {
    #[cfg(test)]
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
    fn fjson_object_get_type(obj: *mut FjsonObject) -> c_int;
    fn fjson_object_get_boolean(obj: *mut FjsonObject) -> c_int;
    fn fjson_object_get_int64(obj: *mut FjsonObject) -> i64;
    fn fjson_object_array_length(obj: *mut FjsonObject) -> c_int;
    fn fjson_object_array_get_idx(obj: *mut FjsonObject, idx: c_int) -> *mut FjsonObject;
    fn fjson_object_array_add(obj: *mut FjsonObject, val: *mut FjsonObject) -> c_int;
    fn fjson_object_new_object() -> *mut FjsonObject;
    fn fjson_object_new_array() -> *mut FjsonObject;
    fn fjson_object_new_boolean(value: c_int) -> *mut FjsonObject;
    fn fjson_object_new_int64(value: i64) -> *mut FjsonObject;
    fn fjson_object_new_double_s(value: f64, text: *const c_char) -> *mut FjsonObject;
    fn fjson_object_iter_begin(obj: *mut FjsonObject) -> ObjectIter;
    fn fjson_object_iter_end(obj: *const FjsonObject) -> ObjectIter;
    fn fjson_object_iter_next(iter: *mut ObjectIter);
    fn fjson_object_iter_peek_name(iter: *const ObjectIter) -> *const c_char;
    fn fjson_object_iter_peek_value(iter: *const ObjectIter) -> *mut FjsonObject;
    fn fjson_object_iter_equal(a: *const ObjectIter, b: *const ObjectIter) -> c_int;
    #[cfg(test)]
    fn fjson_object_new_double(value: f64) -> *mut FjsonObject;
}

/// One counted reference to a libfastjson object: dropped with
/// `fjson_object_put`, cloned with `fjson_object_get`. `!Send`: the host
/// and its plugins use a message's object on the message's worker only.
pub(crate) struct Obj(NonNull<FjsonObject>);

impl Obj {
    /// The object of a JSON text (`None` if libfastjson refuses it).
    #[cfg(test)]
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
    #[cfg(test)]
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
    #[cfg(test)]
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

impl Obj {
    /// The libfastjson object of a JSON object, built member by member
    /// (no text parsed: libfastjson's parser stops at 32 levels and changes
    /// the process's numeric locale while it runs). Integers are kept
    /// exactly, other numbers with their JSON text. `Err` names what
    /// libfastjson cannot hold (a key with a NUL byte, a string past its
    /// `int` length, nesting past [`MAX_DEPTH`]).
    pub(crate) fn from_map(map: &Map<String, Value>) -> Result<Obj, String> {
        build_object(map, 0)
    }

    /// The JSON value of this object, member by member (no text written:
    /// libfastjson's writer stops a string at a NUL byte), without the
    /// top-level member `skip`. Strings that are not UTF-8 (only a plugin
    /// can have made one) are read lossily. `Err` names what JSON cannot
    /// hold (a number that is NaN or infinite) or nesting past
    /// [`MAX_DEPTH`].
    pub(crate) fn to_map(&self, skip: Option<&CStr>) -> Result<Map<String, Value>, String> {
        match value_of(self.as_ptr(), 0, skip)? {
            Value::Object(map) => Ok(map),
            _ => Err("the JSON is no longer an object".to_owned()),
        }
    }
}

/// Hands `value`'s reference over to C (NULL, libfastjson's JSON null, for
/// `None`).
fn into_raw(value: Option<Obj>) -> *mut FjsonObject {
    value.map_or(std::ptr::null_mut(), |v| {
        std::mem::ManuallyDrop::new(v).as_ptr()
    })
}

/// A new object from a libfastjson constructor's result.
fn made(ptr: *mut FjsonObject) -> Result<Obj, String> {
    NonNull::new(ptr)
        .map(Obj)
        .ok_or_else(|| "libfastjson could not allocate".to_owned())
}

fn build_object(map: &Map<String, Value>, depth: usize) -> Result<Obj, String> {
    // SAFETY: makes a new object, our reference.
    let obj = made(unsafe { fjson_object_new_object() })?;
    for (key, value) in map {
        let key = CString::new(key.as_str())
            .map_err(|_| format!("the key {key:?} holds a NUL byte, which libfastjson cannot"))?;
        let value = build(value, depth + 1)?;
        // SAFETY: a live object, a NUL-terminated key; the value's
        // reference (or NULL for null) moves into the object.
        unsafe { fjson_object_object_add(obj.as_ptr(), key.as_ptr(), into_raw(value)) };
    }
    Ok(obj)
}

/// The libfastjson value of `value`; `None` for JSON null.
fn build(value: &Value, depth: usize) -> Result<Option<Obj>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the JSON nests deeper than {MAX_DEPTH} levels"));
    }
    let obj = match value {
        Value::Null => return Ok(None),
        // SAFETY: makes a new object, our reference.
        Value::Bool(b) => made(unsafe { fjson_object_new_boolean(c_int::from(*b)) })?,
        Value::Number(n) => match n.as_i64() {
            // SAFETY: makes a new object, our reference.
            Some(i) => made(unsafe { fjson_object_new_int64(i) })?,
            None => {
                // Past i64 or not an integer: a double that libfastjson
                // writes with this exact text.
                let text = CString::new(n.to_string()).expect("a number has no NUL");
                let f = n.as_f64().unwrap_or(0.0);
                // SAFETY: a NUL-terminated text libfastjson copies; makes a
                // new object, our reference.
                made(unsafe { fjson_object_new_double_s(f, text.as_ptr()) })?
            }
        },
        Value::String(s) => Obj::string(s.as_bytes())
            .ok_or_else(|| "a string longer than libfastjson holds".to_owned())?,
        Value::Array(items) => {
            // SAFETY: makes a new array, our reference.
            let array = made(unsafe { fjson_object_new_array() })?;
            for item in items {
                let item = build(item, depth + 1)?;
                // SAFETY: a live array; the item's reference moves into it.
                unsafe { fjson_object_array_add(array.as_ptr(), into_raw(item)) };
            }
            array
        }
        Value::Object(map) => build_object(map, depth)?,
    };
    Ok(Some(obj))
}

/// The JSON value of the libfastjson value `ptr` (NULL: null).
fn value_of(ptr: *mut FjsonObject, depth: usize, skip: Option<&CStr>) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("the JSON nests deeper than {MAX_DEPTH} levels"));
    }
    // SAFETY: `ptr` is NULL or a live value, a member of an object we hold
    // a reference to (nothing changes it while this runs: one thread).
    unsafe {
        Ok(match fjson_object_get_type(ptr) {
            TYPE_NULL => Value::Null,
            TYPE_BOOLEAN => Value::Bool(fjson_object_get_boolean(ptr) != 0),
            TYPE_INT => Value::from(fjson_object_get_int64(ptr)),
            TYPE_DOUBLE => {
                // Its JSON text: exact for a number made with a text.
                let text = fjson_object_to_json_string_ext(ptr, TO_STRING_PLAIN);
                let text = if text.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(text).to_string_lossy().into_owned()
                };
                match serde_json::from_str::<Number>(&text) {
                    Ok(n) => Value::Number(n),
                    Err(_) => return Err(format!("the number {text} is not JSON")),
                }
            }
            TYPE_STRING => {
                let text = fjson_object_get_string(ptr);
                let len = usize::try_from(fjson_object_get_string_len(ptr)).unwrap_or(0);
                if text.is_null() {
                    Value::String(String::new())
                } else {
                    let bytes = std::slice::from_raw_parts(text.cast::<u8>(), len);
                    Value::String(String::from_utf8_lossy(bytes).into_owned())
                }
            }
            TYPE_ARRAY => {
                let len = fjson_object_array_length(ptr).max(0);
                let mut items = Vec::with_capacity(len as usize);
                for i in 0..len {
                    items.push(value_of(
                        fjson_object_array_get_idx(ptr, i),
                        depth + 1,
                        None,
                    )?);
                }
                Value::Array(items)
            }
            TYPE_OBJECT => {
                let mut map = Map::new();
                let mut it = fjson_object_iter_begin(ptr);
                let end = fjson_object_iter_end(ptr);
                while fjson_object_iter_equal(&it, &end) == 0 {
                    let name = CStr::from_ptr(fjson_object_iter_peek_name(&it));
                    if skip != Some(name) {
                        let value = value_of(fjson_object_iter_peek_value(&it), depth + 1, None)?;
                        map.insert(name.to_string_lossy().into_owned(), value);
                    }
                    fjson_object_iter_next(&mut it);
                }
                Value::Object(map)
            }
            other => return Err(format!("a value of unknown libfastjson type {other}")),
        })
    }
}

impl std::fmt::Debug for Obj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Obj({:p})", self.0)
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
    fn maps_go_both_ways_exactly() {
        let json = serde_json::json!({
            "s": "a\0b", "i": -5, "big": 18446744073709551615u64, "f": 1.5,
            "t": true, "n": null, "a": [1, "x", null, [2.25]], "o": {"p": {"q": []}}
        });
        let serde_json::Value::Object(map) = json else {
            unreachable!()
        };
        let obj = Obj::from_map(&map).unwrap();
        assert_eq!(obj.to_map(None).unwrap(), map);
        let mut without = map.clone();
        without.remove("s");
        assert_eq!(obj.to_map(Some(c"s")).unwrap(), without);
    }

    #[test]
    fn deep_json_converts_past_the_parsers_32_levels() {
        let mut value = serde_json::json!("leaf");
        for _ in 0..100 {
            value = serde_json::json!({ "d": value });
        }
        let serde_json::Value::Object(map) = value else {
            unreachable!()
        };
        let obj = Obj::from_map(&map).unwrap();
        assert_eq!(obj.to_map(None).unwrap(), map);
        let mut too_deep = serde_json::json!(1);
        for _ in 0..MAX_DEPTH + 1 {
            too_deep = serde_json::json!([too_deep]);
        }
        let mut outer = Map::new();
        outer.insert("x".into(), too_deep);
        assert!(Obj::from_map(&outer).unwrap_err().contains("deeper"));
    }

    #[test]
    fn what_libfastjson_cannot_hold_is_named() {
        let mut map = Map::new();
        map.insert("a\0b".into(), serde_json::json!(1));
        assert!(Obj::from_map(&map).unwrap_err().contains("NUL"));
        let obj = Obj::parse("{}").unwrap();
        obj.add(c"nan", Obj::double(f64::NAN));
        assert!(obj.to_map(None).unwrap_err().contains("not JSON"));
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
