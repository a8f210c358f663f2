//! Model-based test: random sequences of emit / append / flush / ack / seek /
//! subscribe-read / eviction by cap / close-and-reopen run against the real spool and
//! a simple in-memory model; every observable must agree after each step.
//!
//! A sink named `s` that refuses every event for good runs beside the two consumers:
//! each step waits until it has caught up, so its dead letters are exact too (kept
//! within their cap of `MAX_EVENTS`, the oldest evicted first), and steps that use its
//! name through the consumer APIs must be refused without changing anything. Timeouts
//! are taken at their extremes (`Duration::MAX` and zero).
//!
//! Observables that acknowledged-but-not-yet-deleted events would make timing-dependent
//! (the writer deletes those lazily) are compared through what a consumer can see:
//! the events after the lowest consumer position, which are exact.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::sinks::Refuses;
use common::*;
use eventspool::{Error, EventQuery, SeekPosition, Spool};
use proptest::prelude::*;

const MAX_EVENTS: u64 = 12;
const CONSUMERS: [&str; 2] = ["a", "b"];
/// The sink: it dead-letters every event.
const SINK: &str = "s";
const T: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Step {
    Emit(u8),
    Append(u8),
    /// Consumer reads up to this many events and acks the last one read.
    ReadAck(usize, u8),
    /// Consumer reads up to this many events without acking (reads are not durable).
    Read(usize, u8),
    /// Consumer seeks after `last_seq - back` (never below the lowest position).
    SeekBack(usize, u8),
    SeekLatest(usize),
    /// A consumer API used with the sink's name (which API: 0..5).
    UseSinkName(u8),
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u8..6).prop_map(Step::Emit),
        2 => (1u8..6).prop_map(Step::Append),
        3 => (0usize..2, 1u8..8).prop_map(|(c, n)| Step::ReadAck(c, n)),
        1 => (0usize..2, 1u8..4).prop_map(|(c, n)| Step::Read(c, n)),
        1 => (0usize..2, 0u8..6).prop_map(|(c, b)| Step::SeekBack(c, b)),
        1 => (0usize..2).prop_map(Step::SeekLatest),
        1 => (0u8..5).prop_map(Step::UseSinkName),
        1 => Just(Step::Reopen),
    ]
}

/// What the spool should hold: the events after the lowest position (seq → number),
/// the last seq, each consumer's position, and how many events the cap evicted.
#[derive(Debug, Default)]
struct Model {
    events: BTreeMap<u64, u64>,
    last_seq: u64,
    positions: [u64; 2],
    evicted: u64,
    next_number: u64,
    /// Every seq the sink gave up on, in order (the dead letters are its last
    /// `MAX_EVENTS`).
    dead: Vec<u64>,
}

impl Model {
    fn min_position(&self) -> u64 {
        self.positions.iter().copied().min().unwrap_or(0)
    }

    /// Commits `k` events; acknowledged ones go first, then the oldest beyond the cap.
    fn commit(&mut self, k: u64) {
        for _ in 0..k {
            self.last_seq += 1;
            self.events.insert(self.last_seq, self.next_number);
            self.dead.push(self.last_seq);
            self.next_number += 1;
        }
        self.collect();
        while self.events.len() as u64 > MAX_EVENTS {
            self.events.pop_first();
            self.evicted += 1;
        }
    }

    /// Forgets what every consumer acknowledged (the spool deletes it, maybe later).
    fn collect(&mut self) {
        let min = self.min_position();
        self.events.retain(|&seq, _| seq > min);
    }

    fn dead_letters(&self) -> &[u64] {
        &self.dead[self.dead.len().saturating_sub(MAX_EVENTS as usize)..]
    }

    fn after(&self, seq: u64) -> Vec<(u64, u64)> {
        self.events
            .range(seq + 1..)
            .map(|(&s, &n)| (s, n))
            .collect()
    }
}

fn open(path: &std::path::Path) -> Spool {
    let spool = Spool::builder(path)
        .max_events(MAX_EVENTS)
        .sink(Refuses(SINK))
        .open()
        .expect("open");
    for name in CONSUMERS {
        drop(
            spool
                .subscribe(name, SeekPosition::LastAcknowledged)
                .expect("register"),
        );
    }
    spool
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let (_dir, path) = temp_spool();
    let mut spool = open(&path);
    let mut model = Model::default();
    // Read positions are not durable: a reopen restarts each consumer at its position.
    let mut read = [0u64; 2];
    // Metrics restart at zero on reopen: what earlier opens counted.
    let (mut evicted_before, mut committed_before) = (0, 0);
    for step in steps {
        match step {
            Step::Emit(k) => {
                for _ in 0..k {
                    spool.emit(numbered(model.next_number)).unwrap();
                    model.commit(1);
                }
                spool.flush(Duration::MAX).unwrap();
            }
            Step::Append(k) => {
                let first = model.next_number;
                let seqs = spool
                    .append_batch((first..first + u64::from(k)).map(numbered).collect())
                    .unwrap();
                model.commit(u64::from(k));
                prop_assert_eq!(seqs.last().copied(), Some(model.last_seq));
            }
            Step::ReadAck(c, n) | Step::Read(c, n) => {
                let mut sub = spool
                    .subscribe(
                        CONSUMERS[c],
                        SeekPosition::After(read[c].max(model.positions[c])),
                    )
                    .unwrap();
                // Subscribing After(x) sets the position to x (a seek): mirror it.
                model.positions[c] = read[c].max(model.positions[c]);
                model.collect();
                let expected = model.after(model.positions[c]);
                let mut got = Vec::new();
                while got.len() < usize::from(n) {
                    // Nothing more is coming: a zero wait is a look.
                    match sub.next_timeout(Duration::ZERO).unwrap() {
                        Some(e) => got.push((e.seq, number_of(&e))),
                        None => break,
                    }
                }
                let want: Vec<_> = expected.into_iter().take(usize::from(n)).collect();
                prop_assert_eq!(&got, &want, "consumer {} read", CONSUMERS[c]);
                if let Some(&(last, _)) = got.last() {
                    read[c] = last;
                    if matches!(step, Step::ReadAck(..)) {
                        sub.ack(last).unwrap();
                        model.positions[c] = last;
                        model.collect();
                    }
                }
            }
            Step::SeekBack(c, back) => {
                let to = model
                    .last_seq
                    .saturating_sub(u64::from(back))
                    .max(model.min_position());
                prop_assert_eq!(
                    spool.seek(CONSUMERS[c], SeekPosition::After(to)).unwrap(),
                    to
                );
                model.positions[c] = to;
                read[c] = to;
                model.collect();
            }
            Step::SeekLatest(c) => {
                prop_assert_eq!(
                    spool.seek(CONSUMERS[c], SeekPosition::Latest).unwrap(),
                    model.last_seq
                );
                model.positions[c] = model.last_seq;
                read[c] = model.last_seq;
                model.collect();
            }
            Step::UseSinkName(api) => {
                let refused = match api {
                    0 => spool.subscribe(SINK, SeekPosition::Beginning).map(drop),
                    1 => spool.seek(SINK, SeekPosition::Beginning).map(drop),
                    2 => spool.ack(SINK, model.last_seq),
                    3 => spool.remove_consumer(SINK).map(drop),
                    _ => spool.drain_to(&mut Refuses(SINK)).map(drop),
                };
                prop_assert!(
                    matches!(refused, Err(Error::Consumer(_))),
                    "api {} on the sink's name: {:?}",
                    api,
                    refused
                );
            }
            Step::Reopen => {
                evicted_before += spool.metrics().evicted;
                committed_before += spool.metrics().committed;
                spool.close(Duration::MAX).unwrap();
                drop(spool);
                spool = open(&path);
                read = model.positions;
            }
        }
        // The sink has caught up: every event committed is dead-lettered.
        wait_until(T, "the sink caught up", || {
            spool.metrics().sinks[0].cursor == model.last_seq
        });
        // Every observable agrees with the model after every step.
        prop_assert_eq!(spool.last_seq().unwrap(), model.last_seq);
        let dead: Vec<u64> = (spool.dead_letters(SINK, usize::MAX).unwrap().iter())
            .map(|d| d.event.seq)
            .collect();
        prop_assert_eq!(&dead[..], model.dead_letters());
        prop_assert_eq!(spool.metrics().dead_letters, dead.len() as u64);
        let visible: Vec<(u64, u64)> = spool
            .query(
                &EventQuery::new()
                    .after_seq(model.min_position())
                    .limit(usize::MAX),
            )
            .unwrap()
            .iter()
            .map(|e| (e.seq, number_of(e)))
            .collect();
        prop_assert_eq!(visible, model.after(model.min_position()));
        let positions: Vec<u64> = spool
            .consumers()
            .unwrap()
            .iter()
            .map(|c| c.position)
            .collect();
        // By name: a, b, then the sink, caught up.
        let mut want = model.positions.to_vec();
        want.push(model.last_seq);
        prop_assert_eq!(positions, want);
        // Acknowledged events are deleted lazily, so the file may hold more than the
        // model's events, but always one contiguous range ending at the last seq,
        // within the cap.
        let stored: Vec<u64> = all_events(&spool).iter().map(|e| e.seq).collect();
        let len = spool.len().unwrap();
        prop_assert_eq!(len, stored.len() as u64);
        prop_assert!(
            len >= model.events.len() as u64 && len <= MAX_EVENTS,
            "len {}",
            len
        );
        if let (Some(&first), Some(&last)) = (stored.first(), stored.last()) {
            prop_assert_eq!(last, model.last_seq);
            prop_assert_eq!(last - first + 1, len, "contiguous");
        }
        let m = spool.metrics();
        prop_assert_eq!(evicted_before + m.evicted, model.evicted);
        prop_assert_eq!(committed_before + m.committed, model.last_seq);
        prop_assert_eq!(
            m.emitted,
            m.committed,
            "nothing dropped, rejected or in flight"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_spool_behaves_like_the_model(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps)?;
    }
}
