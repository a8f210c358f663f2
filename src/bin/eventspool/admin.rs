//! The commands that change the file: they take the spool's lock (refused, naming the
//! lock file, while another process holds it): `dead requeue|purge` and
//! `consumers seek|remove`.

use std::path::Path;
use std::time::Duration;

use eventspool::{SeekPosition, Spool};

use crate::{Outcome, Result};

/// How long closing waits for what the command wrote.
const CLOSE: Duration = Duration::from_secs(10);

/// The spool at `path`, owned by this process until it is closed; a missing file is an
/// error, not a new spool.
fn owned(path: &Path) -> Result<Spool> {
    if !path.exists() {
        return Err(format!("no spool file at {}", path.display()).into());
    }
    Ok(crate::key::open(path)?)
}

pub(crate) fn requeue(path: &Path, sink: &str) -> Result {
    let spool = owned(path)?;
    let n = spool.requeue_dead_letters(sink)?;
    spool.close(CLOSE)?;
    println!("requeued {n} dead letters of {sink}: its next start delivers them again");
    Ok(Outcome::Done)
}

pub(crate) fn purge(path: &Path, sink: &str, older_than: Option<Duration>) -> Result {
    let spool = owned(path)?;
    let n = match older_than {
        Some(age) => spool.purge_dead_letters_older_than(sink, age)?,
        None => spool.purge_dead_letters(sink)?,
    };
    spool.close(CLOSE)?;
    println!("purged {n} dead letters of {sink}");
    Ok(Outcome::Done)
}

fn position(text: &str) -> Result<SeekPosition> {
    match text {
        "beginning" => Ok(SeekPosition::Beginning),
        "latest" => Ok(SeekPosition::Latest),
        seq => seq
            .parse()
            .map(SeekPosition::After)
            .map_err(|_| format!("position {seq:?} is none of beginning, latest or a seq").into()),
    }
}

pub(crate) fn seek(path: &Path, name: &str, to: &str) -> Result {
    let to = position(to)?;
    let spool = owned(path)?;
    let seq = spool.seek(name, to)?;
    spool.close(CLOSE)?;
    println!("{name} now reads after seq {seq}");
    Ok(Outcome::Done)
}

pub(crate) fn remove(path: &Path, name: &str) -> Result {
    let spool = owned(path)?;
    let removed = spool.remove_consumer(name)?;
    spool.close(CLOSE)?;
    match removed {
        true => println!("removed {name}"),
        false => return Err(format!("no consumer named {name} in {}", path.display()).into()),
    }
    Ok(Outcome::Done)
}
