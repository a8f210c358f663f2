//! Concurrent delivery, for a sink whose order is not `Total`: the worker thread takes
//! what its reader read into a window above the durable cursor and dispatches batches
//! to request threads ([`Lanes`]), as many in flight as the limit allows
//! ([`Limiter`]); under `Order::PerKey` never two of one key.
//!
//! The durable cursor is the low watermark: every event at or below it is done
//! (acknowledged, dead-lettered, filtered or expired). Nothing is dispatched more than
//! `window` events above the oldest event not done, so a crash replays at most the
//! window. A key that keeps failing holds its events, and once the window is full,
//! everything, until its retries run out and it goes to the dead letters.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, never, select, unbounded};

use crate::error::{DeliveryError, Error};
use crate::event::{SeqNo, StoredEvent};
use crate::sink::Sink;
use crate::sink::order::Order;
use crate::store::{Decoded, Op, seq_of};

use super::PROGRESS_RETRY;
use super::attempt::{Retrier, Step};
use super::limit::{Limiter, pressure};
use super::worker::Worker;

/// How long a request thread waits for work before it ends.
const LANE_IDLE: Duration = Duration::from_secs(2);

/// One event in the window.
struct Slot {
    key: u64,
    /// Taken when dispatched; `None` once in flight or done.
    event: Option<StoredEvent>,
    done: bool,
}

/// A batch for a request thread: events of one key (under `PerKey`), in seq order.
struct Job {
    key: u64,
    events: Vec<StoredEvent>,
}

/// What a request thread reports.
enum Report {
    /// One attempt's round trip, and whether it met back-pressure.
    Attempted(Duration, bool),
    /// The job is over: delivered (`None`), or given up after `attempts`.
    Finished {
        job: Job,
        failure: Option<(DeliveryError, u32)>,
    },
    /// Told to stop before the job was over: its events stay for the next start.
    Stopped(Job),
}

/// A token bucket: `rate` requests a second, bursts up to `burst`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until there is one.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// The request threads of one sink: started as the requests in flight need them, each
/// with a sink of its own; they end when idle for [`LANE_IDLE`].
struct Lanes {
    jobs: Option<Sender<Job>>,
    jobs_rx: Receiver<Job>,
    reports: Sender<Report>,
    threads: Vec<JoinHandle<()>>,
    /// Threads waiting for a job.
    idle: Arc<AtomicUsize>,
    bucket: Option<Arc<Mutex<Bucket>>>,
}

impl Lanes {
    /// Hands `job` to a request thread, starting one if none is free.
    fn send(&mut self, worker: &mut Worker, job: Job) -> Result<(), Error> {
        self.threads.retain(|t| !t.is_finished());
        if self.idle.load(SeqCst) == 0 {
            let sink = worker.sink.try_clone().ok_or_else(|| {
                Error::InvalidConfig(format!("sink {}: try_clone() gave none", worker.name))
            })?;
            let lane = Lane {
                sink,
                retrier: worker.retrier.fork(),
                jobs: self.jobs_rx.clone(),
                reports: self.reports.clone(),
                stop: worker.control.stop.clone(),
                idle: self.idle.clone(),
                bucket: self.bucket.clone(),
                rate_limit_waits: worker.counters.clone(),
            };
            let thread = thread::Builder::new()
                .name(format!("eventspool-send-{}", worker.name))
                .spawn(move || lane.run())
                .map_err(|e| Error::io("cannot spawn a request thread", e))?;
            self.threads.push(thread);
        }
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|_| Error::Closed),
            None => Err(Error::Closed),
        }
    }

    /// Ends the request threads once they have finished their jobs.
    fn join(&mut self) {
        drop(self.jobs.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One request thread.
struct Lane {
    sink: Box<dyn Sink>,
    retrier: Retrier,
    jobs: Receiver<Job>,
    reports: Sender<Report>,
    stop: Receiver<()>,
    idle: Arc<AtomicUsize>,
    bucket: Option<Arc<Mutex<Bucket>>>,
    rate_limit_waits: Arc<crate::metrics::SinkCounters>,
}

impl Lane {
    fn run(mut self) {
        loop {
            self.idle.fetch_add(1, SeqCst);
            let job = self.jobs.recv_timeout(LANE_IDLE);
            self.idle.fetch_sub(1, SeqCst);
            let Ok(job) = job else { return };
            let report = self.deliver(job);
            if self.reports.send(report).is_err() {
                return;
            }
        }
    }

    /// Delivers `job` until it is acknowledged, given up, or the lane is told to stop.
    fn deliver(&mut self, job: Job) -> Report {
        let mut retries = 0;
        let mut rtt = Duration::ZERO;
        loop {
            if !self.wait_for_token() {
                return Report::Stopped(job);
            }
            let step = self
                .retrier
                .attempt(&mut *self.sink, &job.events, retries, &mut rtt);
            let pushed_back = matches!(&step, Step::Wait(_, e) | Step::GiveUp(e) if pressure(e));
            let _ = self.reports.send(Report::Attempted(rtt, pushed_back));
            match step {
                Step::Delivered => return Report::Finished { job, failure: None },
                Step::GiveUp(error) => {
                    return Report::Finished {
                        job,
                        failure: Some((error, retries + 1)),
                    };
                }
                Step::Wait(wait, _) => {
                    retries += 1;
                    select! {
                        recv(self.stop) -> _ => return Report::Stopped(job),
                        default(wait) => {}
                    }
                }
            }
        }
    }

    /// Waits for the rate limit's token; false when told to stop meanwhile.
    fn wait_for_token(&self) -> bool {
        let Some(bucket) = &self.bucket else {
            return true;
        };
        loop {
            let wait = bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(Instant::now());
            let Some(wait) = wait else { return true };
            self.rate_limit_waits.rate_limit_waits.fetch_add(1, Relaxed);
            select! {
                recv(self.stop) -> _ => return false,
                default(wait) => {}
            }
        }
    }
}

/// The window above the durable cursor, and what is in flight.
struct Window {
    order: Order,
    size: usize,
    max_age: Option<Duration>,
    slots: BTreeMap<SeqNo, Slot>,
    /// Keys with a request in flight (`PerKey`).
    busy: HashSet<u64>,
    in_flight: usize,
    /// The window was full the last time rows waited: counted once per stall.
    full: bool,
}

impl Window {
    /// Whether an event with `seq` may enter: within `size` of the oldest not done.
    fn admits(&self, seq: SeqNo) -> bool {
        self.slots
            .first_key_value()
            .is_none_or(|(&first, _)| seq < first.saturating_add(self.size as u64))
    }

    /// The next batch to dispatch: the oldest waiting event whose key is free, and the
    /// waiting events of its key after it (`PerKey`), or the oldest waiting events
    /// (`Unordered`), up to `batch` of them.
    fn next_job(&mut self, batch: usize) -> Option<Job> {
        let order = self.order;
        let busy = &self.busy;
        let (_, first) = self.slots.iter().find(|(_, s)| {
            s.event.is_some() && (order == Order::Unordered || !busy.contains(&s.key))
        })?;
        let key = first.key;
        let mut events = Vec::new();
        for slot in self.slots.values_mut() {
            if events.len() == batch {
                break;
            }
            if slot.event.is_some() && (order == Order::Unordered || slot.key == key) {
                events.extend(slot.event.take());
            }
        }
        if order == Order::PerKey {
            self.busy.insert(key);
        }
        self.in_flight += 1;
        Some(Job { key, events })
    }

    /// Takes in `seq` already done (filtered, quarantined, expired).
    fn done_on_arrival(&mut self, seq: SeqNo) {
        self.slots.insert(
            seq,
            Slot {
                key: 0,
                event: None,
                done: true,
            },
        );
    }

    /// Marks `seq` done.
    fn done(&mut self, seq: SeqNo) {
        if let Some(slot) = self.slots.get_mut(&seq) {
            slot.done = true;
        }
    }

    /// Puts a job's events back to be dispatched again.
    fn put_back(&mut self, job: Job) {
        for event in job.events {
            if let Some(slot) = self.slots.get_mut(&event.seq) {
                slot.event = Some(event);
            }
        }
    }

    /// Removes the done events at the front; returns them as contiguous ranges.
    fn take_done(&mut self) -> Vec<(SeqNo, SeqNo)> {
        let mut ranges: Vec<(SeqNo, SeqNo)> = Vec::new();
        while let Some(entry) = self.slots.first_entry() {
            if !entry.get().done {
                break;
            }
            let seq = entry.remove_entry().0;
            match ranges.last_mut() {
                Some((_, to)) if *to + 1 == seq => *to = seq,
                _ => ranges.push((seq, seq)),
            }
        }
        ranges
    }
}

impl Worker {
    /// Delivers concurrently (see the module docs) until told to stop, or caught up
    /// while the spool closes.
    pub(super) fn work_concurrently(&mut self) {
        let (reports, reports_rx) = unbounded();
        let (jobs, jobs_rx) = unbounded();
        let mut limiter = Limiter::new(self.sink.concurrency());
        let bucket = self.sink.rate_limit().map(|rate| {
            let burst = (self.sink.concurrency().max() as f64).max(1.0);
            Arc::new(Mutex::new(Bucket {
                rate,
                burst,
                tokens: burst,
                at: Instant::now(),
            }))
        });
        let mut lanes = Lanes {
            jobs: Some(jobs),
            jobs_rx,
            reports,
            threads: Vec::new(),
            idle: Arc::new(AtomicUsize::new(0)),
            bucket,
        };
        let mut window = Window {
            order: self.sink.order(),
            size: self.sink.window(),
            max_age: self.sink.max_age(),
            slots: BTreeMap::new(),
            busy: HashSet::new(),
            in_flight: 0,
            full: false,
        };
        self.dispatch(&mut window, &mut lanes, &mut limiter, &reports_rx);
        // Told to stop, or caught up at close: what is in flight ends first (a request
        // thread in a backoff wait ends at once when told to stop).
        while window.in_flight > 0 {
            let Ok(report) = reports_rx.recv() else { break };
            self.reported(&mut window, &mut limiter, report);
        }
        self.acknowledge_done(&mut window);
        lanes.join();
        self.counters.in_flight.store(0, Relaxed);
    }

    fn dispatch(
        &mut self,
        window: &mut Window,
        lanes: &mut Lanes,
        limiter: &mut Limiter,
        reports: &Receiver<Report>,
    ) {
        loop {
            if self.stopped() {
                return;
            }
            // Requeued dead letters go out first, on this thread, once nothing is in
            // flight (they are rare).
            if window.in_flight == 0 {
                match self.requeued_batch() {
                    Ok(Some(batch)) => {
                        if !self.deliver(batch) {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::error!("sink {}: cannot read its requeued events: {e}", self.name);
                        self.shared.report(&e);
                    }
                }
            }
            // The watermark first: the window is counted from it.
            self.acknowledge_done(window);
            if let Err(e) = self.fill(window) {
                log::error!("sink {}: cannot record progress: {e}", self.name);
                self.shared.report(&e);
                if self.pause(PROGRESS_RETRY) {
                    return;
                }
            }
            while window.in_flight < limiter.limit() {
                let Some(job) = window.next_job(self.batch_size) else {
                    break;
                };
                if let Err(e) = lanes.send(self, job) {
                    log::error!("sink {}: {e}", self.name);
                    self.shared.report(&e);
                    return;
                }
            }
            self.counters
                .in_flight
                .store(window.in_flight as u64, Relaxed);
            self.acknowledge_done(window);
            let idle = window.in_flight == 0 && window.slots.is_empty() && self.ahead.is_empty();
            if idle {
                // Nothing in hand: what was acknowledged is committed now.
                if let Err(e) = self.commit() {
                    log::error!("sink {}: cannot record progress: {e}", self.name);
                    self.shared.report(&e);
                }
                if self.caught_up || self.reader_ended {
                    self.counters.oldest_pending_ms.store(0, Relaxed);
                    self.tell_writer();
                    if self.reader_ended {
                        return;
                    }
                }
            }
            // Rows are taken only while the window has room for them.
            let room = self.ahead.is_empty() && !self.reader_ended;
            let rows = if room {
                self.reader.rows.clone()
            } else {
                never()
            };
            let stop = self.control.stop.clone();
            select! {
                recv(reports) -> report => {
                    if let Ok(report) = report {
                        self.reported(window, limiter, report);
                    }
                }
                recv(rows) -> rows => self.received(rows.ok()),
                recv(stop) -> _ => return,
            }
        }
    }

    /// Moves rows read ahead into the window while it has room: damaged rows are
    /// quarantined, events the sink does not take are filtered, events past `max_age`
    /// expire; the rest wait to be dispatched.
    fn fill(&mut self, window: &mut Window) -> Result<(), Error> {
        let first_stored = self.shared.counters.first_seq();
        self.top_up();
        while let Some(row) = self.ahead.front() {
            let seq = seq_of(row);
            if seq < first_stored {
                self.ahead.pop_front(); // evicted by the caps since it was read
                continue;
            }
            if !window.admits(seq) {
                if !window.full {
                    window.full = true;
                    self.counters.window_full_waits.fetch_add(1, Relaxed);
                }
                break;
            }
            window.full = false;
            let Some(row) = self.ahead.pop_front() else {
                break;
            };
            if let Err(refused) = self.admit(window, row) {
                let (row, e) = *refused;
                self.ahead.push_front(row); // taken in again after a pause
                return Err(e);
            }
        }
        if let Some((_, slot)) = window.slots.first_key_value()
            && let Some(event) = &slot.event
        {
            self.counters
                .oldest_pending_ms
                .store(event.timestamp_ms.max(1), Relaxed);
        }
        Ok(())
    }

    /// Takes one row into the window (see [`fill`](Worker::fill)); gives it back with
    /// the error when what became of it could not be committed.
    fn admit(&mut self, window: &mut Window, row: Decoded) -> Result<(), Box<(Decoded, Error)>> {
        let seq = seq_of(&row);
        let event = match row {
            Err(corrupt) => {
                self.shared.report(&corrupt.error());
                if let Err(e) = self.commit_op(corrupt.quarantine(&self.name, false)) {
                    return Err(Box::new((Err(corrupt), e)));
                }
                self.counters.dead_lettered.fetch_add(1, Relaxed);
                window.done_on_arrival(seq);
                return Ok(());
            }
            Ok(event) => event,
        };
        if !self.accepts_guarded(&event.event_type) {
            self.counters.filtered.fetch_add(1, Relaxed);
            window.done_on_arrival(seq);
            return Ok(());
        }
        if let Some(max_age) = window.max_age {
            let age = Duration::from_millis(crate::time::age_ms(event.timestamp_ms.max(1)));
            if age > max_age {
                let expired = Op::DeadLetter {
                    sink: self.name.clone(),
                    seqs: vec![seq],
                    held: vec![event.clone()],
                    attempts: 0,
                    status: None,
                    error: format!("expired: {} ms old, more than max_age", age.as_millis()),
                    ack: None,
                };
                if let Err(e) = self.commit_op(expired) {
                    return Err(Box::new((Ok(event), e)));
                }
                self.counters.expired.fetch_add(1, Relaxed);
                self.counters.dead_lettered.fetch_add(1, Relaxed);
                window.done_on_arrival(seq);
                return Ok(());
            }
        }
        let key = match window.order {
            Order::PerKey => self.sink.key(&event),
            _ => 0,
        };
        window.slots.insert(
            seq,
            Slot {
                key,
                event: Some(event),
                done: false,
            },
        );
        Ok(())
    }

    /// Takes in what a request thread reported.
    fn reported(&mut self, window: &mut Window, limiter: &mut Limiter, report: Report) {
        let job = match report {
            Report::Attempted(rtt, pushed_back) => {
                limiter.attempted(rtt, pushed_back, Instant::now());
                let c = &self.counters;
                c.concurrency_limit.store(limiter.limit() as u64, Relaxed);
                c.rtt_us.store(limiter.rtt().as_micros() as u64, Relaxed);
                return;
            }
            Report::Stopped(job) => {
                window.in_flight -= 1;
                window.busy.remove(&job.key);
                window.put_back(job);
                return;
            }
            Report::Finished { job, failure: None } => job,
            Report::Finished {
                job,
                failure: Some((error, attempts)),
            } => {
                if let Err(e) = self.dead_letter(&job, &error, attempts) {
                    // Not recorded: the events go out again (at least once).
                    log::error!("sink {}: cannot record progress: {e}", self.name);
                    self.shared.report(&e);
                    window.in_flight -= 1;
                    window.busy.remove(&job.key);
                    window.put_back(job);
                    self.pause(PROGRESS_RETRY);
                    return;
                }
                job
            }
        };
        window.in_flight -= 1;
        window.busy.remove(&job.key);
        for event in &job.events {
            window.done(event.seq);
        }
        self.reader.give_back(job.events);
    }

    /// Records a job the sink gave up on in its dead letters (the cursor is the
    /// watermark's: it does not move here).
    fn dead_letter(
        &mut self,
        job: &Job,
        error: &DeliveryError,
        attempts: u32,
    ) -> crate::error::Result<()> {
        let n = job.events.len();
        log::error!(
            "sink {}: gave up on {n} events from seq {} after {attempts} attempts: {error}",
            self.name,
            job.events[0].seq,
        );
        self.shared.report(&Error::Delivery {
            delivered: 0,
            source: Box::new(error.clone()),
        });
        self.commit_op(Op::DeadLetter {
            sink: self.name.clone(),
            seqs: job.events.iter().map(|e| e.seq).collect(),
            held: job.events.clone(),
            attempts,
            status: error.status(),
            error: error.to_string(),
            ack: None,
        })?;
        // Counted once committed, so that the count never runs ahead of the rows.
        self.counters.dead_lettered.fetch_add(n as u64, Relaxed);
        Ok(())
    }

    /// Moves the watermark over the done events at the front of the window.
    fn acknowledge_done(&mut self, window: &mut Window) {
        for (from, to) in window.take_done() {
            if let Err(e) = self.acknowledge(from, to) {
                log::error!("sink {}: cannot record progress: {e}", self.name);
                self.shared.report(&e);
            }
            self.advance(to);
        }
    }
}
