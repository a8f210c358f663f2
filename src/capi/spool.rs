//! The spool from C once open (see [`super::builder`]): emit, append, flush, query,
//! consumers, dead letters, metrics, close and free.

use std::ffi::{c_char, c_int};
use std::time::Duration;

use super::args::{
    free_boxed, give_string, handle, optional_text, put, required, text, text_of_len,
};
use super::status::{Failure, eventspool_status, guard};
use crate::event::{Event, EventQuery, SeqNo};
use crate::spool::Spool;
use crate::store::SeekPosition;

/// Seek position: the oldest stored event.
pub const EVENTSPOOL_BEGINNING: c_int = 0;
/// Seek position: after the consumer's last acknowledgement (a new one: the beginning).
pub const EVENTSPOOL_LAST_ACKNOWLEDGED: c_int = 1;
/// Seek position: only events committed after the call.
pub const EVENTSPOOL_LATEST: c_int = 2;
/// Seek position: the events with a seq greater than the `after_seq` argument.
pub const EVENTSPOOL_AFTER: c_int = 3;

/// An open spool. Every call on it is thread-safe, except `eventspool_free`, which
/// must be the last.
#[derive(Debug)]
pub struct eventspool_spool {
    pub(crate) spool: Spool,
}

pub(crate) fn position(code: c_int, after_seq: SeqNo) -> Result<SeekPosition, Failure> {
    match code {
        EVENTSPOOL_BEGINNING => Ok(SeekPosition::Beginning),
        EVENTSPOOL_LAST_ACKNOWLEDGED => Ok(SeekPosition::LastAcknowledged),
        EVENTSPOOL_LATEST => Ok(SeekPosition::Latest),
        EVENTSPOOL_AFTER => Ok(SeekPosition::After(after_seq)),
        other => Err(Failure::argument(format!(
            "position {other} is none of EVENTSPOOL_BEGINNING, _LAST_ACKNOWLEDGED, _LATEST, _AFTER"
        ))),
    }
}

fn timeout(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, Failure> {
    serde_json::to_string(value).map_err(|e| Failure::argument(format!("encoding JSON: {e}")))
}

/// The event the arguments describe; checked (type, JSON, size) by emit/append.
///
/// # Safety
/// As `eventspool_emit`.
unsafe fn event(
    event_type: *const c_char,
    data: *const c_char,
    data_len: usize,
    subject: *const c_char,
    source: *const c_char,
) -> Result<Event, Failure> {
    // SAFETY: forwarded to the caller of the exported function.
    let (event_type, data, subject, source) = unsafe {
        (
            text(event_type, "event type")?,
            text_of_len(data, data_len, "data")?,
            optional_text(subject, "subject")?,
            optional_text(source, "source")?,
        )
    };
    let data = if data.is_empty() { "null" } else { data };
    let mut event = Event::from_json(event_type, data);
    event.subject = subject.map(str::to_owned);
    event.source = source.map(str::to_owned);
    Ok(event)
}

/// Hands an event to the spool without waiting for the commit. `data` is `data_len`
/// bytes of JSON (need not be NUL-terminated; length 0 stores `null`); `subject` and
/// `source` may be NULL. Checked here (type not empty, valid JSON, size), then queued:
/// when the channel is full, the configuration's `overflow` decides (`"block"`, the
/// default, waits; `"reject"` returns `EVENTSPOOL_FULL`; `"drop_newest"` drops and
/// counts it).
///
/// # Safety
/// `spool` is NULL or a live spool; `event_type`, `subject`, `source` are NULL or
/// NUL-terminated strings; `data` is NULL or points to `data_len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_emit(
    spool: *const eventspool_spool,
    event_type: *const c_char,
    data: *const c_char,
    data_len: usize,
    subject: *const c_char,
    source: *const c_char,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, event) = unsafe {
            (
                handle(spool, "spool")?,
                event(event_type, data, data_len, subject, source)?,
            )
        };
        Ok(spool.spool.emit(event)?)
    })
}

/// Hands over an event written as one JSON object of `len` bytes:
/// `{"type": ..., "data": ..., "subject": ..., "source": ..., "id": ..., "timestamp_ms": ...}`
/// (all but `type` optional), for a caller that sets the id or the time. Otherwise as
/// `eventspool_emit`.
///
/// # Safety
/// `spool` is NULL or a live spool; `event_json` is NULL or points to `len` readable
/// bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_emit_event(
    spool: *const eventspool_spool,
    event_json: *const c_char,
    len: usize,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, text) = unsafe {
            (
                handle(spool, "spool")?,
                text_of_len(event_json, len, "event")?,
            )
        };
        Ok(spool.spool.emit(Event::from_json_line(text)?)?)
    })
}

/// As `eventspool_emit_event`, but returns once the event is committed, with its seq
/// through `seq_out` (may be NULL).
///
/// # Safety
/// As `eventspool_emit_event`; `seq_out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_append_event(
    spool: *const eventspool_spool,
    event_json: *const c_char,
    len: usize,
    seq_out: *mut u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, text) = unsafe {
            (
                handle(spool, "spool")?,
                text_of_len(event_json, len, "event")?,
            )
        };
        let seq = spool.spool.append(Event::from_json_line(text)?)?;
        // SAFETY: as the caller promises.
        unsafe { put(seq_out, seq) };
        Ok(())
    })
}

/// As `eventspool_emit`, but returns once the event is committed, with its seq
/// through `seq_out` (may be NULL). Concurrent callers share commits.
///
/// # Safety
/// As `eventspool_emit`; `seq_out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_append(
    spool: *const eventspool_spool,
    event_type: *const c_char,
    data: *const c_char,
    data_len: usize,
    subject: *const c_char,
    source: *const c_char,
    seq_out: *mut u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, event) = unsafe {
            (
                handle(spool, "spool")?,
                event(event_type, data, data_len, subject, source)?,
            )
        };
        let seq = spool.spool.append(event)?;
        // SAFETY: as the caller promises.
        unsafe { put(seq_out, seq) };
        Ok(())
    })
}

/// Waits until everything emitted before the call is committed, at most `timeout_ms`
/// (`EVENTSPOOL_TIMED_OUT` after it; UINT64_MAX waits as long as it takes).
///
/// # Safety
/// `spool` is NULL or a live spool.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_flush(
    spool: *const eventspool_spool,
    timeout_ms: u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let spool = unsafe { handle(spool, "spool")? };
        Ok(spool.spool.flush(timeout(timeout_ms))?)
    })
}

/// Closes the spool: commits what was emitted, lets the sinks deliver what they can,
/// stops every thread; waits at most `timeout_ms`. Idempotent; afterwards `emit` and
/// `append` return `EVENTSPOOL_CLOSED` and queries still work. The handle stays
/// valid until `eventspool_free`.
///
/// # Safety
/// `spool` is NULL or a live spool.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_close(
    spool: *const eventspool_spool,
    timeout_ms: u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let spool = unsafe { handle(spool, "spool")? };
        spool.spool.close(timeout(timeout_ms))?;
        Ok(())
    })
}

/// Frees a spool, closing it first if it is open (waiting at most 5 s). NULL is ignored.
/// No other call on the spool may be running or follow.
///
/// # Safety
/// `spool` is NULL or a spool not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_free(spool: *mut eventspool_spool) {
    // SAFETY: as the caller promises.
    unsafe { free_boxed(spool) };
}

/// The number of events in the file, through `out`.
///
/// # Safety
/// `spool` is NULL or a live spool; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_len(
    spool: *const eventspool_spool,
    out: *mut u64,
) -> eventspool_status {
    guard(|| {
        required(out, "out")?;
        // SAFETY: as the caller promises.
        let spool = unsafe { handle(spool, "spool")? };
        let len = spool.spool.len()?;
        // SAFETY: checked non-NULL above.
        unsafe { put(out, len) };
        Ok(())
    })
}

/// The highest seq ever committed (0 for a new spool), through `out`.
///
/// # Safety
/// `spool` is NULL or a live spool; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_last_seq(
    spool: *const eventspool_spool,
    out: *mut u64,
) -> eventspool_status {
    guard(|| {
        required(out, "out")?;
        // SAFETY: as the caller promises.
        let spool = unsafe { handle(spool, "spool")? };
        let seq = spool.spool.last_seq()?;
        // SAFETY: checked non-NULL above.
        unsafe { put(out, seq) };
        Ok(())
    })
}

/// Runs a query: `query_json` (NULL: every event, up to 1000) may hold `since_ms`,
/// `until_ms`, `event_types`, `subject`, `source`, `after_seq` and `limit`. The events
/// come back as a JSON array through `json_out` (free it with
/// `eventspool_string_free`), its length through `len_out` (may be NULL).
///
/// # Safety
/// `spool` is NULL or a live spool; `query_json` is NULL or a NUL-terminated string;
/// `json_out` is valid for a write; `len_out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_query(
    spool: *const eventspool_spool,
    query_json: *const c_char,
    json_out: *mut *mut c_char,
    len_out: *mut usize,
) -> eventspool_status {
    guard(|| {
        required(json_out, "json_out")?;
        // SAFETY: as the caller promises.
        let (spool, query) =
            unsafe { (handle(spool, "spool")?, optional_text(query_json, "query")?) };
        let query: EventQuery = match query {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Failure::argument(format!("invalid query: {e}")))?,
            None => EventQuery::new(),
        };
        let events = spool.spool.query(&query)?;
        // SAFETY: checked non-NULL above; as the caller promises.
        unsafe { give_string(json(&events)?, json_out, len_out) }
    })
}

/// Moves consumer `name` to `position` (one of `EVENTSPOOL_BEGINNING`,
/// `_LAST_ACKNOWLEDGED`, `_LATEST`, `_AFTER` with `after_seq`), registering it if new;
/// the seq it now reads after comes back through `seq_out` (may be NULL).
///
/// # Safety
/// `spool` is NULL or a live spool; `name` is NULL or a NUL-terminated string;
/// `seq_out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_seek(
    spool: *const eventspool_spool,
    name: *const c_char,
    position: c_int,
    after_seq: u64,
    seq_out: *mut u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, name) = unsafe { (handle(spool, "spool")?, text(name, "consumer name")?) };
        let seq = spool
            .spool
            .seek(name, self::position(position, after_seq)?)?;
        // SAFETY: as the caller promises.
        unsafe { put(seq_out, seq) };
        Ok(())
    })
}

/// Acknowledges every event up to `seq` for consumer `name` (durably).
///
/// # Safety
/// `spool` is NULL or a live spool; `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_ack(
    spool: *const eventspool_spool,
    name: *const c_char,
    seq: u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, name) = unsafe { (handle(spool, "spool")?, text(name, "consumer name")?) };
        Ok(spool.spool.ack(name, seq)?)
    })
}

/// The consumers and sinks recorded in the file, as a JSON array of
/// `{"name","kind","position"}` through `json_out` (free it with `eventspool_string_free`).
///
/// # Safety
/// As `eventspool_query`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_consumers(
    spool: *const eventspool_spool,
    json_out: *mut *mut c_char,
    len_out: *mut usize,
) -> eventspool_status {
    guard(|| {
        required(json_out, "json_out")?;
        // SAFETY: as the caller promises.
        let spool = unsafe { handle(spool, "spool")? };
        let consumers = spool.spool.consumers()?;
        // SAFETY: checked non-NULL above; as the caller promises.
        unsafe { give_string(json(&consumers)?, json_out, len_out) }
    })
}

/// Up to `limit` dead letters of sink `sink`, oldest first, as a JSON array of
/// `{"event","attempts","last_status","last_error","failed_at_ms","requeued"}`
/// through `json_out` (free it with `eventspool_string_free`).
///
/// # Safety
/// As `eventspool_query`; `sink` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_dead_letters(
    spool: *const eventspool_spool,
    sink: *const c_char,
    limit: usize,
    json_out: *mut *mut c_char,
    len_out: *mut usize,
) -> eventspool_status {
    guard(|| {
        required(json_out, "json_out")?;
        // SAFETY: as the caller promises.
        let (spool, sink) = unsafe { (handle(spool, "spool")?, text(sink, "sink name")?) };
        let letters = spool.spool.dead_letters(sink, limit)?;
        // SAFETY: checked non-NULL above; as the caller promises.
        unsafe { give_string(json(&letters)?, json_out, len_out) }
    })
}

/// Puts the dead letters of sink `sink` back in line for delivery; how many through
/// `count_out` (may be NULL).
///
/// # Safety
/// `spool` is NULL or a live spool; `sink` is NULL or a NUL-terminated string;
/// `count_out` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_requeue_dead_letters(
    spool: *const eventspool_spool,
    sink: *const c_char,
    count_out: *mut u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, sink) = unsafe { (handle(spool, "spool")?, text(sink, "sink name")?) };
        let count = spool.spool.requeue_dead_letters(sink)?;
        // SAFETY: as the caller promises.
        unsafe { put(count_out, count) };
        Ok(())
    })
}

/// Deletes the dead letters of sink `sink`; how many through `count_out` (may be NULL).
///
/// # Safety
/// As `eventspool_requeue_dead_letters`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_purge_dead_letters(
    spool: *const eventspool_spool,
    sink: *const c_char,
    count_out: *mut u64,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (spool, sink) = unsafe { (handle(spool, "spool")?, text(sink, "sink name")?) };
        let count = spool.spool.purge_dead_letters(sink)?;
        // SAFETY: as the caller promises.
        unsafe { put(count_out, count) };
        Ok(())
    })
}

/// The spool's counters as JSON (the fields of the Rust `MetricsSnapshot`, with
/// `sinks` and `consumers` arrays) through `json_out` (free it with
/// `eventspool_string_free`).
///
/// # Safety
/// `spool` is NULL or a live spool; `json_out` is valid for a write; `len_out` is NULL
/// or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_metrics_json(
    spool: *const eventspool_spool,
    json_out: *mut *mut c_char,
    len_out: *mut usize,
) -> eventspool_status {
    guard(|| {
        required(json_out, "json_out")?;
        // SAFETY: as the caller promises.
        let spool = unsafe { handle(spool, "spool")? };
        // SAFETY: checked non-NULL above; as the caller promises.
        unsafe { give_string(json(&spool.spool.metrics())?, json_out, len_out) }
    })
}

/// The spool's counters in the Prometheus text format (`eventspool_` names) through
/// `text_out` (free it with `eventspool_string_free`).
///
/// # Safety
/// As `eventspool_metrics_json`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_metrics_prometheus(
    spool: *const eventspool_spool,
    text_out: *mut *mut c_char,
    len_out: *mut usize,
) -> eventspool_status {
    guard(|| {
        required(text_out, "text_out")?;
        // SAFETY: as the caller promises.
        let spool = unsafe { handle(spool, "spool")? };
        let text = spool.spool.metrics().to_prometheus();
        // SAFETY: checked non-NULL above; as the caller promises.
        unsafe { give_string(text, text_out, len_out) }
    })
}
