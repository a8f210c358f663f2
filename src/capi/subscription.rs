//! Consumer groups from C: a subscription reads at its own pace and acknowledges durably.

use std::ffi::{c_char, c_int};
use std::time::Duration;

use super::args::{boxed, free_boxed, give_string, handle, handle_mut, put, required, text};
use super::spool::{eventspool_spool, position};
use super::status::{Failure, eventspool_status, guard};
use crate::subscribe::Subscription;

/// A consumer group's reader. Used by one thread at a time; it may outlive its
/// spool's handle only to be freed (its calls then return `EVENTSPOOL_CLOSED`).
#[derive(Debug)]
pub struct eventspool_subscription {
    subscription: Subscription,
}

/// Opens consumer group `name` at `position` (see `eventspool_seek`), registering it
/// if new; one open subscription per name. Free it with `eventspool_subscription_free`.
///
/// # Safety
/// `spool` is NULL or a live spool; `name` is NULL or a NUL-terminated string; `out`
/// is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_subscribe(
    spool: *const eventspool_spool,
    name: *const c_char,
    position: c_int,
    after_seq: u64,
    out: *mut *mut eventspool_subscription,
) -> eventspool_status {
    guard(|| {
        required(out, "out")?;
        // SAFETY: as the caller promises.
        let (spool, name) = unsafe { (handle(spool, "spool")?, text(name, "consumer name")?) };
        let subscription = spool
            .spool
            .subscribe(name, self::position(position, after_seq)?)?;
        let handle = boxed(eventspool_subscription { subscription });
        // SAFETY: checked non-NULL above.
        unsafe { put(out, handle) };
        Ok(())
    })
}

/// The next event, waiting at most `timeout_ms` for one to be committed: its seq
/// through `seq_out` (may be NULL) and the event as a JSON object through
/// `event_json` (free it with `eventspool_string_free`). `EVENTSPOOL_TIMED_OUT` with
/// `*event_json` set to NULL when none came in time.
///
/// # Safety
/// `subscription` is NULL or a live subscription; `event_json` is valid for a write;
/// `seq_out` and `len_out` are NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_subscription_next(
    subscription: *mut eventspool_subscription,
    timeout_ms: u64,
    seq_out: *mut u64,
    event_json: *mut *mut c_char,
    len_out: *mut usize,
) -> eventspool_status {
    guard(|| {
        required(event_json, "event_json")?;
        // SAFETY: checked non-NULL above: no event yet.
        unsafe { put(event_json, std::ptr::null_mut()) };
        // SAFETY: as the caller promises.
        let reader = unsafe { handle_mut(subscription, "subscription")? };
        let waited = Duration::from_millis(timeout_ms);
        let Some(event) = reader.subscription.next_timeout(waited)? else {
            return Err(Failure::new(
                eventspool_status::EVENTSPOOL_TIMED_OUT,
                format!("timed out: no event within {timeout_ms} ms"),
            ));
        };
        let encoded = serde_json::to_string(&event)
            .map_err(|e| Failure::argument(format!("encoding JSON: {e}")))?;
        // SAFETY: as the caller promises.
        unsafe {
            put(seq_out, event.seq);
            give_string(encoded, event_json, len_out)
        }
    })
}

/// Acknowledges every event up to `seq` (durably): a restart resumes after it.
///
/// # Safety
/// `subscription` is NULL or a live subscription.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_subscription_ack(
    subscription: *const eventspool_subscription,
    seq: u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let reader = unsafe { handle(subscription, "subscription")? };
        Ok(reader.subscription.ack(seq)?)
    })
}

/// Frees a subscription (its position stays in the file). NULL is ignored.
///
/// # Safety
/// `subscription` is NULL or a subscription not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_subscription_free(subscription: *mut eventspool_subscription) {
    // SAFETY: as the caller promises.
    unsafe { free_boxed(subscription) };
}
