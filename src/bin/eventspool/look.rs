//! The commands that only read, beside a running owner: `stat`, `consumers list`,
//! `dead list|show` and `check` (and `check --repair`, which mends while nobody owns it).

use std::io::Write;
use std::path::Path;

use eventspool::CheckReport;

use crate::show::{age, bytes, table, time};
use crate::{Outcome, Result};

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

pub(crate) fn stat(path: &Path, json: bool) -> Result {
    let stat = crate::key::inspect(path)?.stat()?;
    if json {
        print_json(&stat)?;
        return Ok(Outcome::Done);
    }
    let mut out = String::new();
    out += &format!(
        "spool     {} (id {}, schema {})\n",
        stat.path.display(),
        stat.spool_id,
        stat.schema_version
    );
    let range = match stat.first_seq {
        Some(first) => format!("seq {first}..{}", stat.last_seq),
        None => format!("none stored, last seq {}", stat.last_seq),
    };
    out += &format!(
        "events    {} ({range}), {}\n",
        stat.events,
        bytes(stat.stored_bytes)
    );
    if let (Some(oldest), Some(newest)) = (stat.oldest_event_ms, stat.newest_event_ms) {
        out += &format!(
            "          oldest {}, newest {}\n",
            time(oldest),
            time(newest)
        );
    }
    out += &format!(
        "file      {} ({} free), write-ahead log {}\n",
        bytes(stat.file_bytes),
        bytes(stat.free_bytes),
        bytes(stat.wal_bytes)
    );
    if let (Some(durability), Some(at)) = (&stat.durability, stat.opened_at_ms) {
        let pid = stat
            .opened_by_pid
            .map_or(String::new(), |p| format!(" by pid {p}"));
        out += &format!(
            "owner     last opened {}{pid}, durability {durability}\n",
            time(at)
        );
    }
    out += &format!(
        "dead      {} letters ({})\n",
        stat.dead_letters,
        bytes(stat.dead_letter_bytes)
    );
    if !stat.consumers.is_empty() {
        out += "\n";
        out += &consumer_table(&stat.consumers);
    }
    if !stat.dead_letters_by_sink.is_empty() {
        out += "\n";
        out += &dead_table(&stat.dead_letters_by_sink);
    }
    print!("{out}");
    Ok(Outcome::Done)
}

fn consumer_table(consumers: &[eventspool::ConsumerInfo]) -> String {
    let rows: Vec<Vec<String>> = consumers
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.kind.to_string(),
                c.position.to_string(),
                c.lag.to_string(),
                age(c.oldest_unacked_age_ms),
            ]
        })
        .collect();
    table(
        &["consumer", "kind", "cursor", "lag", "oldest unacked"],
        &rows,
    )
}

fn dead_table(summary: &[eventspool::DeadLetterSummary]) -> String {
    let rows: Vec<Vec<String>> = summary
        .iter()
        .map(|d| {
            vec![
                d.sink.clone(),
                d.count.to_string(),
                bytes(d.bytes),
                d.requeued.to_string(),
                d.oldest_failed_at_ms.map_or("-".into(), time),
            ]
        })
        .collect();
    table(
        &[
            "dead letters of",
            "count",
            "bytes",
            "requeued",
            "oldest failure",
        ],
        &rows,
    )
}

pub(crate) fn consumers(path: &Path, json: bool) -> Result {
    let consumers = crate::key::inspect(path)?.consumers()?;
    match json {
        true => print_json(&consumers)?,
        false => print!("{}", consumer_table(&consumers)),
    }
    Ok(Outcome::Done)
}

pub(crate) fn dead_list(path: &Path, sink: Option<&str>, json: bool) -> Result {
    let inspector = crate::key::inspect(path)?;
    let Some(sink) = sink else {
        let summary = inspector.stat()?.dead_letters_by_sink;
        match json {
            true => print_json(&summary)?,
            false => print!("{}", dead_table(&summary)),
        }
        return Ok(Outcome::Done);
    };
    let letters = inspector.dead_letters(sink, usize::MAX)?;
    if json {
        print_json(&letters)?;
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            vec![
                d.event.seq.to_string(),
                d.event.event_type.clone(),
                d.attempts.to_string(),
                d.last_status.map_or("-".into(), |s| s.to_string()),
                time(d.failed_at_ms),
                if d.requeued { "yes" } else { "" }.into(),
                d.last_error.clone(),
            ]
        })
        .collect();
    let header = [
        "seq",
        "type",
        "attempts",
        "status",
        "failed at",
        "requeued",
        "last error",
    ];
    print!("{}", table(&header, &rows));
    Ok(Outcome::Done)
}

pub(crate) fn dead_show(path: &Path, sink: &str, limit: usize) -> Result {
    let letters = crate::key::inspect(path)?.dead_letters(sink, limit)?;
    let mut out = std::io::stdout().lock();
    for d in &letters {
        writeln!(
            out,
            "seq {}  {}  attempts {}  status {}  failed {}{}\n  error: {}\n  event: {}\n",
            d.event.seq,
            d.event.event_type,
            d.attempts,
            d.last_status.map_or("-".into(), |s| s.to_string()),
            time(d.failed_at_ms),
            if d.requeued { "  (requeued)" } else { "" },
            d.last_error,
            serde_json::to_string(&d.event)?
        )?;
    }
    Ok(Outcome::Done)
}

fn print_check(report: &CheckReport) {
    println!(
        "{}: {} events checked",
        report.path.display(),
        report.events_checked
    );
    if report.is_healthy() {
        println!("healthy");
        return;
    }
    let n = report.problems.len();
    println!("{n} problem{}:", if n == 1 { "" } else { "s" });
    for problem in &report.problems {
        println!("  {problem}");
    }
}

pub(crate) fn check(path: &Path, json: bool) -> Result {
    let report = crate::key::inspect(path)?.check()?;
    match json {
        true => print_json(&report)?,
        false => print_check(&report),
    }
    Ok(match report.is_healthy() {
        true => Outcome::Done,
        false => Outcome::Problems,
    })
}

pub(crate) fn repair(path: &Path, json: bool) -> Result {
    let report = crate::key::repair(path)?;
    if json {
        print_json(&report)?;
    } else {
        for moved in &report.moved {
            let to = match moved.to.is_empty() {
                true => "nobody (every consumer had passed it)".to_owned(),
                false => moved.to.join(", "),
            };
            println!(
                "moved seq {} to the dead letters of {to}: {}",
                moved.seq, moved.reason
            );
        }
        for fixed in report.counters_fixed.iter().chain(&report.cursors_moved) {
            println!("fixed: {fixed}");
        }
        if let Some(seqs) = report.lost_seqs_skipped {
            println!(
                "skipped {seqs} seqs that commits lost with the write-ahead log may have used"
            );
        }
        print_check(&report.after);
    }
    Ok(match report.after.is_healthy() {
        true => Outcome::Done,
        false => Outcome::Problems,
    })
}
