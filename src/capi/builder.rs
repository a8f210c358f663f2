//! Opening a spool from C: the configuration JSON, and a builder for what JSON cannot
//! say (sinks, an error hook and a filter written in C).

use std::ffi::{c_char, c_int, c_void};

use super::args::{boxed, free_boxed, handle_mut, optional_text, put, required, text};
use super::sink::{CSink, SinkOptions, eventspool_deliver_fn};
use super::spool::eventspool_spool;
use super::status::{Failure, eventspool_status, guard};
use crate::config::SpoolConfig;
use crate::spool::{Spool, SpoolBuilder};

/// What a spool is opened with: the configuration and any C sinks. Used by one thread
/// at a time.
#[derive(Debug)]
pub struct eventspool_builder {
    builder: Option<SpoolBuilder>,
}

impl eventspool_builder {
    /// Applies `change` to the builder, unless it was opened already.
    fn change(&mut self, change: impl FnOnce(SpoolBuilder) -> SpoolBuilder) -> Result<(), Failure> {
        let taken = self
            .builder
            .take()
            .ok_or_else(|| Failure::argument("builder was already opened"))?;
        self.builder = Some(change(taken));
        Ok(())
    }
}

fn invalid_config(message: String) -> Failure {
    Failure::new(
        eventspool_status::EVENTSPOOL_INVALID_CONFIG,
        format!("invalid configuration: {message}"),
    )
}

/// The `SpoolConfig` from the JSON text (NULL: every default) and the path argument,
/// which stands in for the JSON's `"path"` (giving both, they must agree).
fn config(path: Option<&str>, json: Option<&str>) -> Result<SpoolConfig, Failure> {
    let mut value: serde_json::Value = match json {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| invalid_config(format!("the JSON does not parse: {e}")))?,
        None => serde_json::Value::Object(Default::default()),
    };
    let object = value
        .as_object_mut()
        .ok_or_else(|| invalid_config("the JSON must be an object".into()))?;
    match (path, object.get("path")) {
        (Some(path), None) => {
            object.insert("path".into(), path.into());
        }
        (Some(path), Some(given)) if given.as_str() != Some(path) => {
            return Err(invalid_config(format!(
                "two paths: {path:?} as the argument and {given} in the JSON"
            )));
        }
        (None, None) => {
            return Err(invalid_config(
                "no path: give one as the argument or as \"path\" in the JSON".into(),
            ));
        }
        _ => {}
    }
    serde_json::from_value(value).map_err(|e| invalid_config(e.to_string()))
}

/// Makes a builder for the spool at `path` with the configuration `config_json` (the
/// `SpoolConfig` JSON of the Rust API, webhook sinks included; NULL: every default).
/// `path` may be NULL when the JSON has a `"path"`. Add C sinks with
/// `eventspool_builder_add_sink`, then `eventspool_builder_open`.
///
/// # Safety
/// `path` and `config_json` are NULL or NUL-terminated strings; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_builder_new(
    path: *const c_char,
    config_json: *const c_char,
    out: *mut *mut eventspool_builder,
) -> eventspool_status {
    guard(|| {
        required(out, "out")?;
        // SAFETY: as the caller promises.
        let (path, json) = unsafe {
            (
                optional_text(path, "path")?,
                optional_text(config_json, "configuration")?,
            )
        };
        let config = config(path, json)?;
        let builder = eventspool_builder {
            builder: Some(SpoolBuilder::from_config(&config)),
        };
        // SAFETY: checked non-NULL above; the caller promises it is writable.
        unsafe { put(out, boxed(builder)) };
        Ok(())
    })
}

/// Adds a sink written in C: `deliver` is called with batches of events on the sink's
/// own thread (several threads at once when the options ask for a concurrency above 1
/// with an order other than `"total"`), with `user_data` as its first argument. The
/// events go out in seq order, are retried with backoff and dead-lettered as for any
/// sink; the sink's cursor moves when `deliver` returns `EVENTSPOOL_DELIVERED`.
/// `options_json` (NULL: every default) may hold `batch`, `commit_every`,
/// `max_retries` (null: forever), `backoff_min_ms`, `backoff_max_ms`, `event_types`,
/// `order`, `concurrency` and `window`, as a webhook in the configuration does.
/// `user_data` must stay valid until `eventspool_close` or `eventspool_free` returns.
///
/// # Safety
/// `builder` is NULL or a live builder; `name` and `options_json` are NULL or
/// NUL-terminated strings; `deliver` is NULL or a function of that signature.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_builder_add_sink(
    builder: *mut eventspool_builder,
    name: *const c_char,
    options_json: *const c_char,
    deliver: eventspool_deliver_fn,
    user_data: *mut c_void,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let (builder, name, options) = unsafe {
            (
                handle_mut(builder, "builder")?,
                text(name, "sink name")?,
                optional_text(options_json, "sink options")?,
            )
        };
        let deliver = deliver.ok_or_else(|| Failure::argument("deliver callback is NULL"))?;
        let options: SinkOptions = match options {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| invalid_config(format!("sink {name}: {e}")))?,
            None => SinkOptions::default(),
        };
        let sink = CSink::new(name, deliver, user_data, options);
        crate::sink::check_one(&sink)?;
        builder.change(|b| b.sink(sink))
    })
}

/// What failed where no caller sees it (a delivery given up on, a commit that failed
/// and is retried, the file deleted while open): called on the spool's own threads
/// with its status and message (valid only during the call). It must return quickly
/// and must not call into the spool.
pub type eventspool_error_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, status: eventspool_status, message: *const c_char),
>;

/// The caller's pointer, handed back to its error or filter callback.
struct HookData(*mut c_void);

// SAFETY: the header documents that the callback gets `user_data` on the spool's
// threads, at any time; making that safe is the C caller's side of the contract.
unsafe impl Send for HookData {}
// SAFETY: as above.
unsafe impl Sync for HookData {}

/// Calls `on_error` for every failure no caller sees (see `eventspool_error_fn`), with
/// `user_data`, which must stay valid until `eventspool_close` or `eventspool_free`
/// returns. Replaces an earlier one.
///
/// # Safety
/// `builder` is NULL or a live builder; `on_error` is NULL (no hook) or a function of
/// that signature.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_builder_on_error(
    builder: *mut eventspool_builder,
    on_error: eventspool_error_fn,
    user_data: *mut c_void,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let builder = unsafe { handle_mut(builder, "builder")? };
        let callback = on_error.ok_or_else(|| Failure::argument("on_error callback is NULL"))?;
        let data = HookData(user_data);
        builder.change(|b| {
            b.on_error(move |error| {
                let failure = Failure::from(error);
                let message =
                    std::ffi::CString::new(failure.message.replace('\0', " ")).unwrap_or_default();
                let data = &data;
                // SAFETY: the caller's function and pointer, as it promised.
                unsafe { callback(data.0, failure.status, message.as_ptr()) };
            })
        })
    })
}

/// Which events to keep: called with the event's type and subject (NULL when it has
/// none), both valid only during the call, on the thread that called `emit` or
/// `append`, before the event is queued; non-zero keeps it, 0 drops it (counted in
/// `filtered`; `append` then returns `EVENTSPOOL_FILTERED`).
pub type eventspool_filter_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        event_type: *const c_char,
        subject: *const c_char,
    ) -> c_int,
>;

/// Keeps only the events `keep` says yes to (see `eventspool_filter_fn`), with
/// `user_data`, which must stay valid until `eventspool_free` returns. Replaces an
/// earlier one.
///
/// # Safety
/// `builder` is NULL or a live builder; `keep` is NULL (refused) or a function of that
/// signature.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_builder_filter(
    builder: *mut eventspool_builder,
    keep: eventspool_filter_fn,
    user_data: *mut c_void,
) -> eventspool_status {
    guard(|| {
        // SAFETY: as the caller promises.
        let builder = unsafe { handle_mut(builder, "builder")? };
        let keep = keep.ok_or_else(|| Failure::argument("filter callback is NULL"))?;
        let data = HookData(user_data);
        builder.change(|b| {
            b.filter(move |event| {
                // A type or subject with a NUL byte cannot reach C: such an event is kept.
                let Ok(event_type) = std::ffi::CString::new(event.event_type.as_str()) else {
                    return true;
                };
                let subject = match event.subject.as_deref().map(std::ffi::CString::new) {
                    Some(Ok(subject)) => Some(subject),
                    Some(Err(_)) => return true,
                    None => None,
                };
                let subject_ptr = subject.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
                let data = &data;
                // SAFETY: the caller's function and pointer, as it promised; the strings
                // live through the call.
                unsafe { keep(data.0, event_type.as_ptr(), subject_ptr) != 0 }
            })
        })
    })
}

/// Opens the spool the builder describes: checks the configuration, takes the file's
/// lock, starts the writer and the sinks. The builder is spent either way: free it
/// with `eventspool_builder_free`.
///
/// # Safety
/// `builder` is NULL or a live builder; `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_builder_open(
    builder: *mut eventspool_builder,
    out: *mut *mut eventspool_spool,
) -> eventspool_status {
    guard(|| {
        required(out, "out")?;
        // SAFETY: as the caller promises.
        let builder = unsafe { handle_mut(builder, "builder")? };
        let builder = builder
            .builder
            .take()
            .ok_or_else(|| Failure::argument("builder was already opened"))?;
        let spool = eventspool_spool {
            spool: builder.open()?,
        };
        // SAFETY: checked non-NULL above; the caller promises it is writable.
        unsafe { put(out, boxed(spool)) };
        Ok(())
    })
}

/// Frees a builder. NULL is ignored.
///
/// # Safety
/// `builder` is NULL or a builder not freed before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_builder_free(builder: *mut eventspool_builder) {
    // SAFETY: as the caller promises.
    unsafe { free_boxed(builder) };
}

/// Opens the spool at `path` with the configuration `config_json` (see
/// `eventspool_builder_new`), for spools without C sinks.
///
/// # Safety
/// As `eventspool_builder_new`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_open(
    path: *const c_char,
    config_json: *const c_char,
    out: *mut *mut eventspool_spool,
) -> eventspool_status {
    guard(|| {
        required(out, "out")?;
        // SAFETY: as the caller promises.
        let (path, json) = unsafe {
            (
                optional_text(path, "path")?,
                optional_text(config_json, "configuration")?,
            )
        };
        let spool = Spool::from_config(&config(path, json)?)?;
        // SAFETY: checked non-NULL above; the caller promises it is writable.
        unsafe { put(out, boxed(eventspool_spool { spool })) };
        Ok(())
    })
}
