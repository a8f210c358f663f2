//! The messages callers send to the writer, in one ordered channel.

use crossbeam_channel::Sender;

use crate::error::{Error, Result};
use crate::event::{Event, SeqNo};
use crate::reply::{Reply, reply};
use crate::store::Op;

/// What callers send to the writer, in one ordered channel.
pub(crate) enum Msg {
    /// An event from `emit`.
    Emit(Event),
    /// Events from `append`/`append_batch`; the reply carries the seq of the last one.
    Append(Vec<Event>, Reply<Result<SeqNo>>),
    /// Answered once everything sent before it is committed.
    Flush(Reply<()>),
    /// Like `Flush`, once no event is in flight any more; the writer then serves only
    /// consumer operations until `Stop`.
    Close(Reply<()>),
    /// Commits what is pending and ends the writer; the reply is an error if the file
    /// was found deleted or replaced (and what it held saved, see [`Error::FileGone`]).
    Stop(Reply<Result<()>>),
    /// A change to consumers or dead letters, committed with the next batch; the reply
    /// carries what [`store::apply`] yields.
    Op(Op, Reply<Result<u64>>),
    #[cfg(feature = "encryption")]
    /// Re-encrypt the file under this keying, now (readers are paused by the caller).
    Rekey(crate::store::Keying, Reply<Result<()>>),
    /// A consumer committed this many acknowledgements itself ([`Db::commit_cursor`]): what they
    /// made deletable is deleted once the writer is idle (or by its next commits), and
    /// they count toward the next checkpoint.
    Acked(u32),
}

/// Sends `op` to the writer and waits until it is committed, yielding first up to
/// `yields` times (for application threads: see [`crate::reply::caller_yields`]; sink
/// workers sleep at once: their yields cost the receiver they share the CPUs with more
/// than they save).
pub(crate) fn call(tx: &Sender<Msg>, op: Op, yields: u32) -> Result<u64> {
    let (reply, done) = reply();
    tx.send(Msg::Op(op, reply)).map_err(|_| Error::Closed)?;
    done.wait_yielding(yields).unwrap_or(Err(Error::Closed))
}
