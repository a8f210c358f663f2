//! The thread that records the spool's metrics through the `metrics` facade on a timer
//! (feature `metrics`, [`SpoolBuilder::record_metrics`](super::SpoolBuilder::record_metrics)).

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

use crate::error::{Error, Result};
use crate::shared::Shared;
use crate::store::ReaderPool;
use crate::writer::Msg;

/// The recorder's thread and what stops it.
pub(super) struct Recorder {
    thread: JoinHandle<()>,
    stop: Sender<()>,
}

impl Recorder {
    /// Records every `every` until [`stop`](Recorder::stop), and once more then.
    pub(super) fn start(
        every: Duration,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        pool: ReaderPool,
    ) -> Result<Recorder> {
        let (stop, stopped) = bounded::<()>(0);
        let thread = thread::Builder::new()
            .name("eventspool-metrics".into())
            .spawn(move || {
                loop {
                    let tick = stopped.recv_timeout(every);
                    super::snapshot(&shared, &tx, &pool).record();
                    if tick != Err(RecvTimeoutError::Timeout) {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("cannot spawn the metrics thread", e))?;
        Ok(Recorder { thread, stop })
    }

    /// Records a last time and ends the thread.
    pub(super) fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            log::error!("the eventspool metrics thread panicked");
        }
    }
}
