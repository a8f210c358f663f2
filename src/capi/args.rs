//! Arguments from C: pointers checked for NULL, text checked for UTF-8, and strings
//! handed back that only `eventspool_string_free` may free.

use std::ffi::{CStr, CString, c_char};

use super::status::Failure;

/// The text at `ptr`, or a failure naming `what` when it is NULL or not UTF-8.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded to the caller.
    unsafe { optional_text(ptr, what) }?.ok_or_else(|| Failure::argument(format!("{what} is NULL")))
}

/// As [`text`], with NULL meaning none.
///
/// # Safety
/// As [`text`].
pub(crate) unsafe fn optional_text<'a>(
    ptr: *const c_char,
    what: &str,
) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: a NUL-terminated string, as the caller promises.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str()
        .map(Some)
        .map_err(|e| Failure::argument(format!("{what} is not valid UTF-8: {e}")))
}

/// `len` bytes at `ptr` as UTF-8 text; NULL with `len` 0 is the empty text.
///
/// # Safety
/// `ptr` is NULL or points to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn text_of_len<'a>(
    ptr: *const c_char,
    len: usize,
    what: &str,
) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return match len {
            0 => Ok(""),
            _ => Err(Failure::argument(format!(
                "{what} is NULL with length {len}"
            ))),
        };
    }
    // SAFETY: `len` readable bytes, as the caller promises.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    std::str::from_utf8(bytes)
        .map_err(|e| Failure::argument(format!("{what} is not valid UTF-8: {e}")))
}

/// The object a handle points to, or a failure naming `what` when it is NULL.
///
/// # Safety
/// `ptr` is NULL or a live handle made by this library, not freed during `'a`.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: forwarded to the caller.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::argument(format!("{what} handle is NULL")))
}

/// As [`handle`], for a handle the call changes.
///
/// # Safety
/// As [`handle`], and no other call uses the handle meanwhile.
pub(crate) unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: forwarded to the caller.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::argument(format!("{what} handle is NULL")))
}

/// Fails when a required out-pointer is NULL, before the call does anything.
pub(crate) fn required<T>(ptr: *mut T, what: &str) -> Result<(), Failure> {
    match ptr.is_null() {
        true => Err(Failure::argument(format!("{what} is NULL"))),
        false => Ok(()),
    }
}

/// Writes `value` through `ptr` unless it is NULL (an answer the caller did not want).
///
/// # Safety
/// `ptr` is NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(ptr: *mut T, value: T) {
    if !ptr.is_null() {
        // SAFETY: valid for writes, as the caller promises.
        unsafe { ptr.write(value) };
    }
}

/// Hands `text` to C as a NUL-terminated string the caller frees with
/// `eventspool_string_free`, with its length (without the NUL) through `len`.
///
/// # Safety
/// `out` is valid for a write (checked with [`required`] before the work was done);
/// `len` is NULL or valid for a write.
pub(crate) unsafe fn give_string(
    text: String,
    out: *mut *mut c_char,
    len: *mut usize,
) -> Result<(), Failure> {
    let n = text.len();
    let text = CString::new(text)
        .map_err(|_| Failure::argument("the answer holds a NUL byte and cannot be a C string"))?;
    // SAFETY: as the caller promises.
    unsafe {
        put(out, text.into_raw());
        put(len, n);
    }
    Ok(())
}

/// Hands a new handle to C.
pub(crate) fn boxed<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Frees a handle made by [`boxed`] (NULL is ignored); a panic while dropping it is
/// caught, not unwound into C.
///
/// # Safety
/// `ptr` is NULL or made by [`boxed`] with the same `T`, not freed before.
pub(crate) unsafe fn free_boxed<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: as the caller promises.
        let owned = unsafe { Box::from_raw(ptr) };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(owned)));
    }
}

/// Frees a string this library returned (query results, events, metrics). NULL is
/// ignored. Thread-safe.
///
/// # Safety
/// `text` is NULL or a string returned by this library, not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_string_free(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: made by CString::into_raw in give_string, as the caller promises.
        drop(unsafe { CString::from_raw(text) });
    }
}
