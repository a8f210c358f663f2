//! A sink written in C: a callback the spool's delivery calls with a JSON array of
//! events, with the spool's ordering, retries, dead letters and cursor around it.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::time::Duration;

use serde::Deserialize;

use crate::error::DeliveryError;
use crate::event::{StoredEvent, matches_any};
use crate::sink::order::{Concurrency, DEFAULT_WINDOW, Order};
use crate::sink::{Backoff, Sink};
use crate::sink::{DEFAULT_BACKOFF, DEFAULT_MAX_RETRIES};

/// What a deliver callback returns: the events were taken; the cursor moves past them.
pub const EVENTSPOOL_DELIVERED: c_int = 0;
/// What a deliver callback returns: a failure worth retrying after the sink's backoff.
/// (A positive number asks for a retry after that many milliseconds instead.)
pub const EVENTSPOOL_RETRY: c_int = -1;
/// What a deliver callback returns: a failure no retry will mend; the events go to the
/// sink's dead letters at once. Any other negative number means the same.
pub const EVENTSPOOL_REFUSED: c_int = -2;

/// A sink's deliver callback. `events_json` is a NUL-terminated JSON array of `len`
/// bytes (the NUL not counted) holding the batch, in seq order, each event as
/// `{"id","seq","type","source","subject","timestamp_ms","data"}`, valid only during
/// the call. It returns `EVENTSPOOL_DELIVERED`, `EVENTSPOOL_RETRY`, a positive number
/// of milliseconds to wait before the retry, or `EVENTSPOOL_REFUSED`; before a
/// failure it may call `eventspool_delivery_error` to say why.
pub type eventspool_deliver_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, events_json: *const c_char, len: usize) -> c_int,
>;

/// The callback with its non-NULL function pointer.
type DeliverFn =
    unsafe extern "C" fn(user_data: *mut c_void, events_json: *const c_char, len: usize) -> c_int;

/// The options JSON of a C sink; every field has the default of the matching
/// [`Sink`] method.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SinkOptions {
    batch: usize,
    commit_every: usize,
    max_retries: Option<u32>,
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    event_types: Vec<String>,
    order: Order,
    concurrency: Concurrency,
    window: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            batch: 1,
            commit_every: 1,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_min_ms: crate::time::millis(DEFAULT_BACKOFF.min()),
            backoff_max_ms: crate::time::millis(DEFAULT_BACKOFF.max()),
            event_types: Vec::new(),
            order: Order::Total,
            concurrency: Concurrency::Fixed(1),
            window: DEFAULT_WINDOW,
        }
    }
}

/// The caller's pointer, handed back to its callback on the sink's threads.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);

// SAFETY: the header documents that the callback gets `user_data` on the sink's
// threads; making that safe is the C caller's side of the contract.
unsafe impl Send for UserData {}

/// A [`Sink`] that calls C.
pub(crate) struct CSink {
    name: String,
    deliver: DeliverFn,
    user_data: UserData,
    options: SinkOptions,
    /// The JSON handed to the callback, reused from batch to batch.
    buffer: Vec<u8>,
}

impl CSink {
    pub(crate) fn new(
        name: &str,
        deliver: DeliverFn,
        user_data: *mut c_void,
        options: SinkOptions,
    ) -> Self {
        CSink {
            name: name.to_owned(),
            deliver,
            user_data: UserData(user_data),
            options,
            buffer: Vec::new(),
        }
    }
}

impl std::fmt::Debug for CSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CSink")
            .field("name", &self.name)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// What `eventspool_delivery_error` said during the callback on this thread.
    static DELIVERY_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

impl Sink for CSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        self.buffer.clear();
        serde_json::to_writer(&mut self.buffer, events)
            .map_err(|e| DeliveryError::permanent(format!("events do not encode: {e}")))?;
        let len = self.buffer.len();
        self.buffer.push(0);
        DELIVERY_ERROR.with(|said| said.borrow_mut().take());
        // SAFETY: the callback and its user_data are the C caller's, who promised they
        // stay valid while the spool runs; the buffer is NUL-terminated and outlives the call.
        let code = unsafe { (self.deliver)(self.user_data.0, self.buffer.as_ptr().cast(), len) };
        let said = DELIVERY_ERROR.with(|said| said.borrow_mut().take());
        let message = |default: String| said.unwrap_or(default);
        match code {
            EVENTSPOOL_DELIVERED => Ok(()),
            EVENTSPOOL_RETRY => Err(DeliveryError::retryable(message(
                "the C sink asked for a retry".into(),
            ))),
            ms if ms > 0 => Err(DeliveryError::retry_after(
                message(format!("the C sink asked for a retry in {ms} ms")),
                Duration::from_millis(ms as u64),
            )),
            refused => Err(DeliveryError::permanent(message(format!(
                "the C sink refused the events (it returned {refused})"
            )))),
        }
    }

    fn batch_size(&self) -> usize {
        self.options.batch
    }

    fn commit_every(&self) -> usize {
        self.options.commit_every
    }

    fn max_retries(&self) -> Option<u32> {
        self.options.max_retries
    }

    fn backoff(&self) -> Backoff {
        Backoff::exponential(
            Duration::from_millis(self.options.backoff_min_ms),
            Duration::from_millis(self.options.backoff_max_ms),
        )
    }

    fn accepts(&self, event_type: &str) -> bool {
        matches_any(&self.options.event_types, event_type)
    }

    fn order(&self) -> Order {
        self.options.order
    }

    fn concurrency(&self) -> Concurrency {
        self.options.concurrency
    }

    fn window(&self) -> usize {
        self.options.window
    }

    fn try_clone(&self) -> Option<Box<dyn Sink>> {
        Some(Box::new(CSink::new(
            &self.name,
            self.deliver,
            self.user_data.0,
            self.options.clone(),
        )))
    }
}

/// Sets the reason for the failure a deliver callback is about to return: it becomes
/// the dead letter's last error and the sink's `last_error` in the metrics. Call it
/// from inside the callback, on the thread that called it; elsewhere it has no effect.
/// NULL or text that is not UTF-8 is ignored (the default reason is kept).
///
/// # Safety
/// `message` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn eventspool_delivery_error(message: *const c_char) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: as the caller promises.
        if let Ok(Some(text)) = unsafe { super::args::optional_text(message, "message") } {
            DELIVERY_ERROR.with(|said| *said.borrow_mut() = Some(text.to_owned()));
        }
    });
}
