//! How the commands print: times, ages, sizes, aligned tables, events as text, and the
//! time arguments they take.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventspool::StoredEvent;

/// Milliseconds since the epoch as RFC 3339 UTC, to the millisecond.
pub(crate) fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// An age in milliseconds, to the second (`3m 12s`); `-` for none.
pub(crate) fn age(ms: u64) -> String {
    match ms {
        0 => "-".into(),
        ms => humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string(),
    }
}

/// A byte count with a binary unit.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// Rows under a header, each column as wide as its widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// An event on one line: seq, time, type, subject, data.
pub(crate) fn event_line(event: &StoredEvent) -> String {
    format!(
        "{:>8}  {}  {}  {}  {}",
        event.seq,
        time(event.timestamp_ms),
        event.event_type,
        event.subject.as_deref().unwrap_or("-"),
        event.data.get()
    )
}

/// A time argument: RFC 3339 (`2026-12-06T10:00:00Z`) or an age before now (`1h30m`),
/// as milliseconds since the epoch.
pub(crate) fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        return Ok(ms as i64);
    }
    let age = parse_age(text)?;
    let at = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
    Ok(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as i64)
}

/// An age argument such as `30m`, `7d` or `1h30m`.
pub(crate) fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is neither a time (2026-12-06T10:00:00Z) nor an age (1h30m): {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_times_and_tables_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(age(0), "-");
        assert_eq!(age(61_000), "1m 1s");
        let t = table(&["a", "bb"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "a     bb\nlong  x\n");
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Ok(1000));
    }
}
