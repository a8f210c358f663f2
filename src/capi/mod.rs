//! The C API (feature `capi`): the spool from C, C++ and Python (through `ctypes`).
//!
//! The header is `src/capi/eventspool.h`, generated from these modules by cbindgen
//! (`tests/capi.rs` fails when it differs from what the code would generate; run
//! that test with `EVENTSPOOL_BLESS=1` to write it). Build the libraries with
//!
//! ```sh
//! cargo rustc --release --lib --features capi --crate-type cdylib,staticlib
//! ```
//!
//! which leaves `libeventspool.so` (`.dylib`) and `libeventspool.a` in
//! `target/release/`. The shape follows librdkafka's: opaque handles made by
//! `eventspool_open` / `eventspool_subscribe` and freed by their `_free` (which take
//! NULL); every call returns an [`eventspool_status`], and the message of the last
//! failure on a thread is copied out by [`eventspool_last_error`]; strings the library
//! returns are freed with [`eventspool_string_free`]; configuration is the
//! [`SpoolConfig`](crate::SpoolConfig) JSON, so the ABI does not grow a setter per
//! option. No panic unwinds into C: it becomes `EVENTSPOOL_PANIC`.
//!
//! `examples/c/` holds a C program and `examples/python/` a ctypes module.
#![allow(non_camel_case_types, unsafe_code)]

mod args;
mod builder;
mod sink;
mod spool;
mod status;
mod subscription;

use std::ffi::c_char;

pub use args::eventspool_string_free;
pub use builder::{
    eventspool_builder, eventspool_builder_add_sink, eventspool_builder_filter,
    eventspool_builder_free, eventspool_builder_new, eventspool_builder_on_error,
    eventspool_builder_open, eventspool_error_fn, eventspool_filter_fn, eventspool_open,
};
pub use sink::{
    EVENTSPOOL_DELIVERED, EVENTSPOOL_REFUSED, EVENTSPOOL_RETRY, eventspool_deliver_fn,
    eventspool_delivery_error,
};
pub use spool::{
    EVENTSPOOL_AFTER, EVENTSPOOL_BEGINNING, EVENTSPOOL_LAST_ACKNOWLEDGED, EVENTSPOOL_LATEST,
    eventspool_ack, eventspool_append, eventspool_append_event, eventspool_close,
    eventspool_consumers, eventspool_dead_letters, eventspool_emit, eventspool_emit_event,
    eventspool_flush, eventspool_free, eventspool_last_seq, eventspool_len,
    eventspool_metrics_json, eventspool_metrics_prometheus, eventspool_purge_dead_letters,
    eventspool_query, eventspool_requeue_dead_letters, eventspool_seek, eventspool_spool,
};
pub use status::{eventspool_last_error, eventspool_status, eventspool_status_name};
pub use subscription::{
    eventspool_subscribe, eventspool_subscription, eventspool_subscription_ack,
    eventspool_subscription_free, eventspool_subscription_next,
};

/// The library's version, such as `"0.1.0"`: a constant string, never freed.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn eventspool_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
