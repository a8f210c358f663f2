//! One-shot answers from the writer to the threads blocked on it ([`Reply`] and
//! [`Answer`]), and the wake-up tree that hands out a commit's answers
//! ([`Wakeups`]).

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

use crate::config::Durability;

/// How often a caller on an application thread (`append`, `flush`, a consumer's `ack`)
/// yields its CPU, looking for its answer, before it sleeps: a caller still awake when
/// the commit ends costs no wake-up. None under [`Durability::Full`], where a commit
/// waits for an `fsync` (the figures: [`crate::guide::performance`]).
pub(crate) fn caller_yields(durability: Durability) -> u32 {
    match durability {
        Durability::Normal => 100,
        Durability::Full => 0,
    }
}

/// The writer's side of a one-shot answer to a caller blocked in
/// [`Answer::wait_yielding`].
///
/// Unlike a channel's receiver, the caller does not spin before it sleeps: with many
/// `append` callers on few cores, spinning callers take the CPU the writer needs to
/// answer them (they yield it instead, see [`caller_yields`]). Dropped
/// unanswered, it wakes the caller with nothing.
pub(crate) struct Reply<T>(Arc<Slot<T>>);

/// The caller's side of a [`Reply`].
pub(crate) struct Answer<T>(Arc<Slot<T>>);

struct Slot<T> {
    state: Mutex<State<T>>,
    caller: thread::Thread,
}

enum State<T> {
    Waiting,
    /// The answer, and the wake-ups the caller passes on once it has it.
    Answered(T, Option<Arc<Wakeups>>),
    Dropped,
}

/// A one-shot reply for the calling thread to wait on (only that thread may wait on
/// it: it is the one woken).
pub(crate) fn reply<T>() -> (Reply<T>, Answer<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting),
        caller: thread::current(),
    });
    (Reply(slot.clone()), Answer(slot))
}

/// The callers of one commit, woken as a tree: the writer wakes two, and every caller
/// that has its answer wakes two more. Waking a thread costs a system call; this way
/// the callers share that work instead of the writer doing it all before its next
/// batch.
///
/// The answers count only once [`release`](Wakeups::release)d: a caller that looked
/// while the writer was still handing them out could otherwise wake one whose answer
/// was not there yet, and that caller, back asleep, would never be woken again.
pub(crate) struct Wakeups {
    callers: Vec<thread::Thread>,
    next: AtomicUsize,
    released: AtomicBool,
}

impl Wakeups {
    pub(crate) fn new<'a, T: 'a>(replies: impl Iterator<Item = &'a Reply<T>>) -> Arc<Wakeups> {
        Arc::new(Wakeups {
            callers: replies.map(|r| r.0.caller.clone()).collect(),
            next: AtomicUsize::new(0),
            released: AtomicBool::new(false),
        })
    }

    /// Called once every reply was sent: the answers count, and the first two wake.
    pub(crate) fn release(&self) {
        self.released.store(true, Release);
        self.pass();
    }

    fn released(&self) -> bool {
        self.released.load(Acquire)
    }

    /// Wakes the next two callers that have not been woken yet.
    fn pass(&self) {
        for _ in 0..2 {
            match self.callers.get(self.next.fetch_add(1, Relaxed)) {
                Some(caller) => caller.unpark(),
                None => return,
            }
        }
    }
}

impl<T> Reply<T> {
    /// Hands `value` to the caller and wakes it.
    pub(crate) fn send(self, value: T) {
        self.settle(State::Answered(value, None));
    }

    /// Hands `value` to the caller, to be woken through `wakeups` once they are
    /// released.
    pub(crate) fn send_quietly(self, value: T, wakeups: Arc<Wakeups>) {
        self.settle(State::Answered(value, Some(wakeups)));
    }

    fn settle(&self, answer: State<T>) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Waiting = *state {
            let wake = matches!(answer, State::Answered(_, None) | State::Dropped);
            *state = answer;
            drop(state);
            if wake {
                self.0.caller.unpark();
            }
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        self.settle(State::Dropped);
    }
}

/// Why [`Answer::wait_until`] has no answer.
pub(crate) enum Gone {
    /// The deadline passed first.
    Late,
    /// The writer dropped the reply unanswered (it is closing).
    Dropped,
}

impl<T> Answer<T> {
    /// Waits for the answer (`None` if the writer dropped the reply unanswered), first
    /// yielding the CPU up to `yields` times, looking for it in between (see
    /// [`caller_yields`]).
    pub(crate) fn wait_yielding(&self, yields: u32) -> Option<T> {
        self.wait_for(None, yields).ok()
    }

    /// Waits for the answer until `deadline`, yielding first as
    /// [`wait_yielding`](Answer::wait_yielding) does.
    pub(crate) fn wait_until(
        &self,
        deadline: Instant,
        yields: u32,
    ) -> std::result::Result<T, Gone> {
        self.wait_for(Some(deadline), yields)
    }

    fn wait_for(&self, deadline: Option<Instant>, mut yields: u32) -> std::result::Result<T, Gone> {
        loop {
            let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
            let ready = match &*state {
                State::Waiting => false,
                State::Answered(_, Some(wakeups)) => wakeups.released(),
                State::Answered(_, None) | State::Dropped => true,
            };
            if ready {
                // What is left behind makes a later `settle` (the writer's drop) a no-op.
                return match std::mem::replace(&mut *state, State::Dropped) {
                    State::Answered(value, wakeups) => {
                        drop(state);
                        if let Some(wakeups) = wakeups {
                            wakeups.pass();
                        }
                        Ok(value)
                    }
                    _ => Err(Gone::Dropped),
                };
            }
            drop(state);
            if yields > 0 && deadline.is_none_or(|d| Instant::now() < d) {
                yields -= 1;
                thread::yield_now();
                continue;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => thread::park_timeout(left),
                    _ => return Err(Gone::Late),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::Receiver;
    use std::time::Duration;

    /// Callers blocked on replies, as `append` callers are: each sends its reply to
    /// the test and reports back once its answer arrived. Every other one yields
    /// first, as application threads do, and so may find its answer without being
    /// woken.
    fn callers(n: usize) -> (Vec<Reply<usize>>, Receiver<usize>) {
        let (replies_tx, replies) = crossbeam_channel::unbounded();
        let (woke_tx, woke) = crossbeam_channel::unbounded();
        for i in 0..n {
            let (replies_tx, woke_tx) = (replies_tx.clone(), woke_tx.clone());
            thread::spawn(move || {
                let (reply, answer) = reply();
                replies_tx.send(reply).unwrap();
                let answer = match i % 2 {
                    0 => answer.wait_yielding(0),
                    _ => answer.wait_yielding(caller_yields(Durability::Normal)),
                };
                if let Some(value) = answer {
                    woke_tx.send(value).unwrap();
                }
            });
        }
        (replies.iter().take(n).collect(), woke)
    }

    #[test]
    fn every_caller_of_a_commit_wakes_through_the_tree() {
        let (replies, woke) = callers(100);
        let wakeups = Wakeups::new(replies.iter());
        for (i, reply) in replies.into_iter().enumerate() {
            reply.send_quietly(i, wakeups.clone());
        }
        wakeups.release();
        let mut got: Vec<usize> = (0..100)
            .map(|_| {
                woke.recv_timeout(Duration::from_secs(30))
                    .expect("a caller never woke")
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn an_answer_counts_only_once_every_answer_of_the_commit_is_out() {
        // This thread is the first caller of a commit of two and finds its answer
        // before the writer has handed out the second one. Taking it then would wake
        // the second caller too early, and nothing would wake it again.
        let (first, answer) = reply();
        let (mut others, woke) = callers(1);
        let wakeups = Wakeups::new([&first, &others[0]].into_iter());
        first.send_quietly(0, wakeups.clone());
        assert!(matches!(
            answer.wait_until(Instant::now() + Duration::from_millis(20), 0),
            Err(Gone::Late)
        ));
        others.remove(0).send_quietly(1, wakeups.clone());
        wakeups.release();
        assert_eq!(answer.wait_yielding(0), Some(0));
        assert_eq!(woke.recv_timeout(Duration::from_secs(30)), Ok(1));
    }

    #[test]
    fn a_reply_dropped_unanswered_wakes_its_caller_with_nothing() {
        let (replies, woke) = callers(1);
        drop(replies);
        assert_eq!(
            woke.recv_timeout(Duration::from_secs(30)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn waiting_until_a_deadline_gives_up_then_and_not_before() {
        let (reply, answer) = reply::<()>();
        let start = Instant::now();
        assert!(matches!(
            answer.wait_until(start + Duration::from_millis(50), 0),
            Err(Gone::Late)
        ));
        assert!(start.elapsed() >= Duration::from_millis(50));
        reply.send(());
        assert!(answer.wait_until(Instant::now(), 0).is_ok());
    }
}
