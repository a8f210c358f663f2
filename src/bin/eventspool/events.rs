//! Reading events out, beside a running owner: `tail` (and `-f`), `query` and `export`.

use std::collections::VecDeque;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use eventspool::{EventQuery, Inspector, StoredEvent};

use crate::show::event_line;
use crate::{Filter, Outcome, Result};

/// Events read at a time.
const PAGE: usize = 1000;
/// How often `tail -f` looks for new commits: each look is one short read.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// The time and seq bounds of `query`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) since: Option<i64>,
    pub(crate) until: Option<i64>,
    pub(crate) after_seq: Option<u64>,
    pub(crate) limit: usize,
}

fn base_query(filter: &Filter) -> EventQuery {
    let mut query = EventQuery::new().event_types(filter.types.iter().cloned());
    if let Some(subject) = &filter.subject {
        query = query.subject(subject);
    }
    if let Some(source) = &filter.source {
        query = query.source(source);
    }
    query
}

/// Every event after `after_seq` matching `query`, a page at a time.
fn each_event(
    inspector: &Inspector,
    query: &EventQuery,
    mut after_seq: u64,
    mut each: impl FnMut(StoredEvent) -> Result<()>,
) -> Result<u64> {
    loop {
        let page = inspector.query(&query.clone().after_seq(after_seq).limit(PAGE))?;
        let Some(last) = page.last() else {
            return Ok(after_seq);
        };
        after_seq = last.seq;
        for event in page {
            each(event)?;
        }
    }
}

fn write_event(out: &mut impl Write, event: &StoredEvent, json: bool) -> Result<()> {
    match json {
        true => serde_json::to_writer(&mut *out, event)?,
        false => out.write_all(event_line(event).as_bytes())?,
    }
    out.write_all(b"\n")?;
    Ok(())
}

pub(crate) fn tail(path: &Path, count: usize, follow: bool, filter: &Filter, json: bool) -> Result {
    let inspector = crate::key::inspect(path)?;
    let query = base_query(filter);
    let last_seq = inspector.stat()?.last_seq;
    let unfiltered = filter.types.is_empty() && filter.subject.is_none() && filter.source.is_none();
    // Without a filter the newest `count` are the last `count` seqs; with one, keep the
    // newest `count` that match while reading them all.
    let start = match unfiltered {
        true => last_seq.saturating_sub(count as u64),
        false => 0,
    };
    let mut newest = VecDeque::with_capacity(count.min(PAGE));
    let mut after = each_event(&inspector, &query, start, |event| {
        if newest.len() == count {
            newest.pop_front();
        }
        if count > 0 {
            newest.push_back(event);
        }
        Ok(())
    })?;
    let mut out = std::io::stdout().lock();
    for event in &newest {
        write_event(&mut out, event, json)?;
    }
    out.flush()?;
    if !follow {
        return Ok(Outcome::Done);
    }
    loop {
        std::thread::sleep(FOLLOW_EVERY); // a poll of the file, not a wait on a thread
        after = each_event(&inspector, &query, after, |event| {
            write_event(&mut out, &event, json)
        })?;
        out.flush()?;
    }
}

pub(crate) fn query(path: &Path, filter: &Filter, window: &Window) -> Result {
    let inspector = crate::key::inspect(path)?;
    let mut query = base_query(filter).limit(window.limit);
    if let Some(since) = window.since {
        query = query.since_ms(since);
    }
    if let Some(until) = window.until {
        query = query.until_ms(until);
    }
    if let Some(after) = window.after_seq {
        query = query.after_seq(after);
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for event in inspector.query(&query)? {
        write_event(&mut out, &event, true)?;
    }
    out.flush()?;
    Ok(Outcome::Done)
}

pub(crate) fn export(path: &Path, after_seq: u64, filter: &Filter) -> Result {
    let inspector = crate::key::inspect(path)?;
    let total = inspector.stat()?.events;
    let progress = progress_bar(total, "{pos}/{len} events");
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut written = 0u64;
    each_event(&inspector, &base_query(filter), after_seq, |event| {
        write_event(&mut out, &event, true)?;
        written += 1;
        progress.inc(1);
        Ok(())
    })?;
    out.flush()?;
    progress.finish_and_clear();
    if std::io::stderr().is_terminal() {
        eprintln!("exported {written} events");
    }
    Ok(Outcome::Done)
}

/// A progress bar on stderr when it is a terminal; hidden when piped. `counts` is how
/// it shows the position (`{pos}/{len} events`, `{bytes}/{total_bytes}`).
pub(crate) fn progress_bar(total: u64, counts: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{bar:40}} {counts} ({{per_sec}}, {{eta}} left)"
    ));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}
