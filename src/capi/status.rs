//! What every C call returns: one status enum, the message of the last error kept per
//! thread, and the panic boundary that turns a panic into a status.

use std::cell::RefCell;
use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::Error;

/// What a call did. `EVENTSPOOL_OK` is 0; every other value is a failure whose message
/// `eventspool_last_error` copies out on the same thread.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum eventspool_status {
    /// The call did what it was asked.
    EVENTSPOOL_OK = 0,
    /// An argument was NULL where a value is needed, not valid UTF-8, or not valid JSON.
    EVENTSPOOL_INVALID_ARGUMENT = 1,
    /// The configuration JSON has an unknown field or a value out of range.
    EVENTSPOOL_INVALID_CONFIG = 2,
    /// The event was refused: empty type, data that is not JSON, too large. Nothing
    /// was stored.
    EVENTSPOOL_INVALID_EVENT = 3,
    /// The channel to the writer was full and the overflow policy refused to wait.
    EVENTSPOOL_FULL = 4,
    /// `append`: the spool's filter dropped the event, so there is no seq.
    EVENTSPOOL_FILTERED = 5,
    /// The spool is closed: nothing more is accepted.
    EVENTSPOOL_CLOSED = 6,
    /// The deadline passed (`flush`, `close`), or no event came in time (`next`).
    EVENTSPOOL_TIMED_OUT = 7,
    /// Another spool (in this process or another) owns the file.
    EVENTSPOOL_LOCKED = 8,
    /// The file is not an eventspool file, or one from a newer version. Not modified.
    EVENTSPOOL_NOT_A_SPOOL = 9,
    /// The file, its write-ahead log or a stored event is damaged.
    EVENTSPOOL_CORRUPT = 10,
    /// The spool file was deleted or replaced while open (what it held was saved).
    EVENTSPOOL_FILE_GONE = 11,
    /// A read, a commit or a file operation failed (a full disk, an I/O error).
    EVENTSPOOL_STORAGE = 12,
    /// A consumer was misused: a second subscription for a name, an ack out of range,
    /// a sink's name used as a consumer.
    EVENTSPOOL_CONSUMER = 13,
    /// A delivery failed.
    EVENTSPOOL_DELIVERY = 14,
    /// A bug: the library panicked. The call was abandoned; nothing unwound into C.
    EVENTSPOOL_PANIC = 15,
    /// The file cannot be opened with the key given: the wrong key, no key for an
    /// encrypted file, or a key for a plain one. Not modified.
    EVENTSPOOL_WRONG_KEY = 16,
}

use eventspool_status::*;

/// A failed call: its status and the message `eventspool_last_error` gives.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: eventspool_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: eventspool_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn argument(message: impl Into<String>) -> Self {
        Failure::new(EVENTSPOOL_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::from(&error)
    }
}

impl From<&Error> for Failure {
    fn from(error: &Error) -> Self {
        let status = match error {
            Error::InvalidEvent(_) => EVENTSPOOL_INVALID_EVENT,
            Error::InvalidConfig(_) => EVENTSPOOL_INVALID_CONFIG,
            Error::Full(_) => EVENTSPOOL_FULL,
            Error::Filtered => EVENTSPOOL_FILTERED,
            Error::Closed => EVENTSPOOL_CLOSED,
            Error::Timeout { .. } => EVENTSPOOL_TIMED_OUT,
            Error::Locked(_) => EVENTSPOOL_LOCKED,
            Error::NotASpool(_) | Error::NewerSchema { .. } => EVENTSPOOL_NOT_A_SPOOL,
            Error::WrongKey { .. } => EVENTSPOOL_WRONG_KEY,
            Error::WalLost(_) | Error::Corrupt { .. } | Error::CorruptEvent { .. } => {
                EVENTSPOOL_CORRUPT
            }
            Error::FileGone { .. } => EVENTSPOOL_FILE_GONE,
            Error::Commit(_) | Error::Storage(_) | Error::Io { .. } => EVENTSPOOL_STORAGE,
            Error::Consumer(_) => EVENTSPOOL_CONSUMER,
            Error::Delivery { .. } => EVENTSPOOL_DELIVERY,
        };
        Failure::new(status, error.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

fn remember(message: &str) {
    LAST_ERROR.with(|last| {
        let mut last = last.borrow_mut();
        last.clear();
        last.push_str(message);
    });
}

/// Runs the body of an exported function: a failure is remembered for
/// `eventspool_last_error` and returned as its status; a panic becomes
/// `EVENTSPOOL_PANIC` instead of unwinding into C.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> eventspool_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => EVENTSPOOL_OK,
        Ok(Err(failure)) => {
            remember(&failure.message);
            failure.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            remember(&format!(
                "panic inside eventspool (a bug, please report it): {what}"
            ));
            EVENTSPOOL_PANIC
        }
    }
}

/// Copies the message of the last failed call on this thread into `buffer` (at most
/// `capacity` bytes, NUL included; cut on a character boundary) and returns the
/// message's whole length without the NUL, so a caller can size a buffer: call with
/// `capacity` 0 first. The message stays until the next failure on this thread; a call
/// that succeeds does not clear it. Thread-safe.
///
/// # Safety
/// `buffer` must be NULL (then nothing is copied) or point to `capacity` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_last_error(buffer: *mut c_char, capacity: usize) -> usize {
    catch_unwind(|| {
        LAST_ERROR.with(|last| {
            let last = last.borrow();
            if !buffer.is_null() && capacity > 0 {
                let mut n = last.len().min(capacity - 1);
                while !last.is_char_boundary(n) {
                    n -= 1;
                }
                // SAFETY: the caller gives `capacity` writable bytes; n + 1 <= capacity.
                unsafe {
                    std::ptr::copy_nonoverlapping(last.as_ptr(), buffer.cast::<u8>(), n);
                    *buffer.add(n) = 0;
                }
            }
            last.len()
        })
    })
    .unwrap_or(0)
}

/// A constant, NUL-terminated name for a status (`"EVENTSPOOL_LOCKED"`), or
/// `"EVENTSPOOL_UNKNOWN"` for a value that is none. Never freed. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn eventspool_status_name(status: std::ffi::c_int) -> *const c_char {
    let name: &'static [u8] = match status {
        0 => b"EVENTSPOOL_OK\0",
        1 => b"EVENTSPOOL_INVALID_ARGUMENT\0",
        2 => b"EVENTSPOOL_INVALID_CONFIG\0",
        3 => b"EVENTSPOOL_INVALID_EVENT\0",
        4 => b"EVENTSPOOL_FULL\0",
        5 => b"EVENTSPOOL_FILTERED\0",
        6 => b"EVENTSPOOL_CLOSED\0",
        7 => b"EVENTSPOOL_TIMED_OUT\0",
        8 => b"EVENTSPOOL_LOCKED\0",
        9 => b"EVENTSPOOL_NOT_A_SPOOL\0",
        10 => b"EVENTSPOOL_CORRUPT\0",
        11 => b"EVENTSPOOL_FILE_GONE\0",
        12 => b"EVENTSPOOL_STORAGE\0",
        13 => b"EVENTSPOOL_CONSUMER\0",
        14 => b"EVENTSPOOL_DELIVERY\0",
        15 => b"EVENTSPOOL_PANIC\0",
        16 => b"EVENTSPOOL_WRONG_KEY\0",
        _ => b"EVENTSPOOL_UNKNOWN\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_name() {
        for status in 0..=16 {
            // SAFETY: the names are static NUL-terminated strings.
            let name = unsafe { std::ffi::CStr::from_ptr(eventspool_status_name(status)) };
            assert_ne!(name.to_str().unwrap(), "EVENTSPOOL_UNKNOWN", "{status}");
        }
        let panic = EVENTSPOOL_PANIC as i32;
        // SAFETY: as above.
        let name = unsafe { std::ffi::CStr::from_ptr(eventspool_status_name(panic)) };
        assert_eq!(name.to_str().unwrap(), "EVENTSPOOL_PANIC");
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, EVENTSPOOL_PANIC);
        let mut buffer = [0 as c_char; 16];
        // SAFETY: 16 writable bytes.
        let len = unsafe { eventspool_last_error(buffer.as_mut_ptr(), buffer.len()) };
        // SAFETY: eventspool_last_error ends what it copies with a NUL.
        let text = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) };
        assert_eq!(text.to_str().unwrap(), "panic inside ev");
        let whole = "panic inside eventspool (a bug, please report it): boom";
        assert_eq!(len, whole.len(), "the whole length, not the copied one");
    }
}
