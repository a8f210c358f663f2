//! Test sinks more than one test file uses.

use eventspool::{DeliveryError, Sink, StoredEvent};

/// Takes every event; `batch` events per call.
pub struct Collect {
    pub name: &'static str,
    pub batch: usize,
    /// What it was given, in order.
    pub events: Vec<StoredEvent>,
}

impl Collect {
    pub fn new(name: &'static str) -> Self {
        Collect {
            name,
            batch: 1,
            events: Vec::new(),
        }
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.events.iter().map(|e| e.seq).collect()
    }
}

impl Sink for Collect {
    fn name(&self) -> &str {
        self.name
    }
    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        self.events.extend_from_slice(events);
        Ok(())
    }
    fn batch_size(&self) -> usize {
        self.batch
    }
}

/// Refuses every event for good (HTTP 400): each one is dead-lettered.
pub struct Refuses(pub &'static str);

impl Sink for Refuses {
    fn name(&self) -> &str {
        self.0
    }
    fn deliver(&mut self, _: &[StoredEvent]) -> Result<(), DeliveryError> {
        Err(DeliveryError::permanent("no, thanks").with_status(400))
    }
}
