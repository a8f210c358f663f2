//! `forward`: the whole library as a process of its own, for programs in any language.
//! It opens the spool and its sinks from a TOML `SpoolConfig`, emits the JSON lines it
//! reads (stdin, or a Unix socket named in `[forward]`), shows a status line on a
//! terminal, and on SIGINT / SIGTERM (or the end of stdin) flushes and closes within
//! `close_timeout_ms`. What was committed survives a crash: the next start delivers it.

use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use eventspool::{Spool, SpoolConfig};
use serde::Deserialize;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::lines::emit_lines;
use crate::{Outcome, Result};

/// The `[forward]` table of the configuration; the rest of it is the `SpoolConfig`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ForwardConfig {
    /// Read JSON lines from connections to this Unix socket instead of stdin.
    socket: Option<PathBuf>,
    /// How long closing may take (flush, then the sinks' last deliveries).
    close_timeout_ms: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            socket: None,
            close_timeout_ms: 10_000,
        }
    }
}

/// Set once a signal asked to stop: a failing emit then is the close, not an error.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn load(path: &Path) -> Result<(SpoolConfig, ForwardConfig)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let forward = match table.remove("forward") {
        Some(value) => value
            .try_into()
            .map_err(|e| format!("{}: [forward]: {e}", path.display()))?,
        None => ForwardConfig::default(),
    };
    let spool = toml::Value::Table(table)
        .try_into()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((spool, forward))
}

/// Flushes and closes, saying what the sinks left for the next start; false when
/// something was not committed in time.
fn finish(spool: &Spool, timeout: Duration) -> bool {
    let started = Instant::now();
    let flushed = spool.flush(timeout);
    let left = timeout.saturating_sub(started.elapsed());
    match spool.close(left) {
        Ok(report) => {
            for behind in &report.undelivered {
                eprintln!(
                    "eventspool: sink {}: {} events left for the next start",
                    behind.sink, behind.events
                );
            }
            if let Err(e) = flushed {
                eprintln!("eventspool: flush: {e}");
                return false;
            }
            true
        }
        Err(e) => {
            eprintln!("eventspool: close: {e}");
            false
        }
    }
}

/// Stops on SIGINT or SIGTERM: flush, close, exit.
fn on_signals(spool: Arc<Spool>, timeout: Duration) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("eventspool-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                STOPPING.store(true, Ordering::SeqCst);
                eprintln!(
                    "eventspool: signal {signal}: flushing and closing (at most {})",
                    humantime::format_duration(timeout)
                );
                let code = if finish(&spool, timeout) { 0 } else { 1 };
                std::process::exit(code);
            }
        })?;
    Ok(())
}

/// A status line on a terminal: events in per second, committed, and per sink what
/// was delivered, what is left and how many retries.
fn status_line(spool: Arc<Spool>) -> Result<()> {
    if !std::io::stderr().is_terminal() {
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new_spinner();
    std::thread::Builder::new()
        .name("eventspool-status".into())
        .spawn(move || {
            let mut before = (Instant::now(), spool.metrics().emitted);
            loop {
                std::thread::sleep(Duration::from_millis(500)); // a display refresh
                let m = spool.metrics();
                let now = Instant::now();
                let rate = (m.emitted - before.1) as f64 / (now - before.0).as_secs_f64();
                before = (now, m.emitted);
                let sinks: Vec<String> = m
                    .sinks
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} delivered, lag {}, {} retries",
                            s.name, s.delivered, s.lag, s.retries
                        )
                    })
                    .collect();
                bar.set_message(format!(
                    "{rate:.0} events/s in, {} committed | {}",
                    m.committed,
                    sinks.join(" | ")
                ));
                bar.tick();
            }
        })?;
    Ok(())
}

/// Accepts connections on `path` for ever, each read on a thread of its own.
fn listen(spool: &Arc<Spool>, path: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_err() && path.exists() {
        std::fs::remove_file(path)?; // a socket left by a process that is gone
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    for connection in listener.incoming() {
        let connection = connection?;
        let spool = spool.clone();
        std::thread::Builder::new()
            .name("eventspool-input".into())
            .spawn(move || {
                if let Err(e) = emit_lines(&spool, BufReader::new(connection), |_| {})
                    && !STOPPING.load(Ordering::SeqCst)
                {
                    eprintln!("eventspool: input connection: {e}");
                }
            })?;
    }
    Ok(())
}

pub(crate) fn run(config: &Path) -> Result {
    let (spool_config, forward) = load(config)?;
    let timeout = Duration::from_millis(forward.close_timeout_ms);
    let spool = Arc::new(Spool::from_config(&spool_config)?);
    on_signals(spool.clone(), timeout)?;
    status_line(spool.clone())?;
    if let Some(socket) = &forward.socket {
        listen(&spool, socket)?;
    }
    let read = emit_lines(&spool, std::io::stdin().lock(), |_| {});
    if STOPPING.load(Ordering::SeqCst) {
        loop {
            std::thread::park(); // the signal thread closes and exits
        }
    }
    let tally = read?;
    let closed = finish(&spool, timeout);
    Ok(match closed && tally.rejected == 0 {
        true => Outcome::Done,
        false => Outcome::Problems,
    })
}
