//! Destinations for stored events: the [`Sink`] trait and its errors.

use std::fmt;
use std::time::Duration;

use crate::event::StoredEvent;

pub(crate) mod signing;

/// A destination the spool delivers stored events to, in `seq` order.
///
/// `deliver` gets a batch of up to [`batch_size`](Sink::batch_size) events; returning
/// `Ok` acknowledges all of them (the spool then advances the sink's cursor). An error
/// acknowledges none: the whole batch is delivered again, so receivers de-duplicate
/// on [`StoredEvent::id`].
///
/// ```
/// use eventspool::{DeliveryError, Sink, StoredEvent};
///
/// struct Stdout;
///
/// impl Sink for Stdout {
///     fn name(&self) -> &str {
///         "stdout"
///     }
///     fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
///         for e in events {
///             println!("{} {} {}", e.seq, e.event_type, e.data);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Sink: Send {
    /// The sink's name: the key of its durable cursor in the spool file.
    fn name(&self) -> &str;

    /// Delivers `events` (never empty, in `seq` order).
    ///
    /// # Errors
    /// A [`DeliveryError`] saying whether a retry may succeed.
    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError>;

    /// The most events handed to one `deliver` call. Defaults to 1.
    fn batch_size(&self) -> usize {
        1
    }
}

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A later attempt may succeed (connection error, timeout, 408, 429, 5xx).
    Retryable {
        /// What went wrong.
        message: String,
        /// The receiver asked to wait this long (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Trying again will not help (other 4xx, redirects): the events go to dead letters.
    Permanent {
        /// What went wrong.
        message: String,
    },
}

impl DeliveryError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        DeliveryError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure worth retrying after `wait`, as the receiver asked.
    pub fn retry_after(message: impl Into<String>, wait: Duration) -> Self {
        DeliveryError::Retryable {
            message: message.into(),
            retry_after: Some(wait),
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError::Permanent {
            message: message.into(),
        }
    }

    /// True for [`DeliveryError::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable { .. })
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::Retryable {
                message,
                retry_after: Some(wait),
            } => write!(f, "{message} (retry after {wait:?})"),
            DeliveryError::Retryable { message, .. } => f.write_str(message),
            DeliveryError::Permanent { message } => write!(f, "{message} (permanent)"),
        }
    }
}

impl std::error::Error for DeliveryError {}
