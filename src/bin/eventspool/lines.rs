//! Events as JSON lines, the way `import` and `forward` read them (and `export`
//! writes them): `{"type": "order.paid", "data": {...}}`, with optional `subject`,
//! `source`, `id` and `timestamp_ms`; other fields (an exported `seq`) are ignored.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Duration;

use eventspool::{Error, Event, Spool};

use crate::{Outcome, Result};

/// The event a line describes, or why it is refused.
pub(crate) fn parse(line: &[u8]) -> std::result::Result<Event, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8: {e}"))?;
    Event::from_json_line(text).map_err(|e| match e {
        Error::InvalidEvent(why) => why,
        other => other.to_string(),
    })
}

/// What reading lines into a spool came to.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
}

/// Emits each line of `input` as an event, in order, until the input ends; a line that
/// is not an event (or that the spool refuses as invalid) is reported on stderr with
/// its number and skipped. `read` is told the bytes of each line.
pub(crate) fn emit_lines(
    spool: &Spool,
    mut input: impl BufRead,
    mut read: impl FnMut(usize),
) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        read(line.len());
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let refused = match parse(text) {
            Ok(event) => match spool.emit(event) {
                Ok(()) => None,
                Err(Error::InvalidEvent(why)) => Some(why),
                Err(e) => return Err(e.into()),
            },
            Err(why) => Some(why),
        };
        match refused {
            None => tally.accepted += 1,
            Some(why) => {
                tally.rejected += 1;
                eprintln!("line {number}: rejected: {why}");
            }
        }
    }
    Ok(tally)
}

pub(crate) fn import(path: &Path, file: Option<&Path>) -> Result {
    let (input, size): (Box<dyn BufRead>, u64) = match file.filter(|f| *f != Path::new("-")) {
        Some(file) => {
            let opened = std::fs::File::open(file)
                .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
            let size = opened.metadata().map_or(0, |m| m.len());
            (Box::new(BufReader::new(opened)), size)
        }
        None => (Box::new(std::io::stdin().lock()), 0),
    };
    let spool = crate::key::open(path)?;
    let progress = crate::events::progress_bar(size, "{bytes}/{total_bytes}");
    let tally = emit_lines(&spool, input, |n| progress.inc(n as u64))?;
    spool.flush(Duration::MAX)?;
    spool.close(Duration::from_secs(10))?;
    progress.finish_and_clear();
    eprintln!(
        "imported {} events into {}; rejected {} lines",
        tally.accepted,
        path.display(),
        tally.rejected
    );
    Ok(match tally.rejected {
        0 => Outcome::Done,
        _ => Outcome::Problems,
    })
}
