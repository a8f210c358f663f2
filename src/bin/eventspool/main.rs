//! `eventspool`: look inside a spool file, repair it, move events in and out, or run the
//! whole library as a forwarding process. Built with the `cli` feature:
//! `cargo install eventspool --features cli`.
//!
//! Reading commands (`stat`, `tail`, `query`, `export`, `check`, and `list`/`show`)
//! read beside a running owner without taking its lock; commands that change the file
//! (`dead requeue|purge`, `consumers seek|remove`, `check --repair`, `import`) take
//! it, and refuse while another process holds it. Exit status: 0 done (and, for
//! `check`, healthy), 1 failed (or unhealthy, or lines rejected), 2 bad usage.

mod admin;
mod events;
mod forward;
mod key;
mod lines;
mod look;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Look inside an eventspool file, repair it, move events in and out, or forward
/// events from stdin to the spool's sinks.
#[derive(Debug, Parser)]
#[command(name = "eventspool", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    key: key::KeyArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Events, sizes, cursors, lag and dead letters of a spool file.
    Stat {
        /// The spool file.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The newest events; with -f, follow new commits as they come.
    Tail {
        /// The spool file.
        path: PathBuf,
        /// How many of the newest events to print first.
        #[arg(short = 'n', long = "lines", default_value_t = 10)]
        count: usize,
        /// Keep printing events as they are committed (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        filter: Filter,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Events matching a query, as JSON lines.
    Query {
        /// The spool file.
        path: PathBuf,
        #[command(flatten)]
        filter: Filter,
        /// Events at or after this time: RFC 3339 (2026-12-06T10:00:00Z) or an age (1h30m).
        #[arg(long)]
        since: Option<String>,
        /// Events before this time, as --since takes it.
        #[arg(long)]
        until: Option<String>,
        /// Events with a seq above this one.
        #[arg(long)]
        after_seq: Option<u64>,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// The dead letters of a sink: list, show, requeue or purge them.
    Dead {
        /// The spool file.
        path: PathBuf,
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Consumer groups and sink cursors: list, seek or remove them.
    Consumers {
        /// The spool file.
        path: PathBuf,
        #[command(subcommand)]
        action: ConsumersAction,
    },
    /// Check the file: SQLite's integrity check and the spool's own invariants.
    Check {
        /// The spool file.
        path: PathBuf,
        /// Mend what can be mended (damaged events go to the dead letters of whoever had
        /// not passed them); needs the spool's lock.
        #[arg(long)]
        repair: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write events as JSON lines to stdout.
    Export {
        /// The spool file.
        path: PathBuf,
        /// Only events with a seq above this one.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        #[command(flatten)]
        filter: Filter,
    },
    /// Append events from JSON lines (a file, or stdin), in order; bad lines are
    /// reported with their line numbers and the rest committed.
    Import {
        /// The spool file (made when missing).
        path: PathBuf,
        /// The JSON lines to read; stdin when absent or `-`.
        file: Option<PathBuf>,
    },
    /// Run the spool and its sinks from a TOML configuration, reading events as JSON
    /// lines from stdin (or a Unix socket named in the configuration).
    Forward {
        /// The configuration: a SpoolConfig, with an optional [forward] table.
        #[arg(long)]
        config: PathBuf,
    },
    /// Re-encrypt an encrypted spool under a new key (the current one from --key-env
    /// or --key-file). Takes the lock.
    #[cfg(feature = "encryption")]
    Rekey {
        /// The spool file.
        path: PathBuf,
        #[command(flatten)]
        new: key::NewKeyArgs,
    },
    /// Copy a plain spool into a new file encrypted under --key-env or --key-file.
    #[cfg(feature = "encryption")]
    Encrypt {
        /// The plain spool (not modified; nobody may own it meanwhile).
        from: PathBuf,
        /// The new encrypted file (must not exist).
        to: PathBuf,
    },
    /// Copy an encrypted spool into a new plain file.
    #[cfg(feature = "encryption")]
    Decrypt {
        /// The encrypted spool (not modified; nobody may own it meanwhile).
        from: PathBuf,
        /// The new plain file (must not exist).
        to: PathBuf,
    },
}

/// Which events: by type pattern and subject.
#[derive(Debug, Clone, Args)]
struct Filter {
    /// Only events of this type; a trailing * matches a prefix (order.*). Repeatable.
    #[arg(long = "type", value_name = "PATTERN")]
    types: Vec<String>,
    /// Only events with this subject.
    #[arg(long)]
    subject: Option<String>,
    /// Only events with this source.
    #[arg(long)]
    source: Option<String>,
}

#[derive(Debug, Subcommand)]
enum DeadAction {
    /// Dead letters of each sink (counts), or of one sink (one line each).
    List {
        /// The sink; all sinks when absent.
        sink: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The dead letters of a sink in full: attempts, status, last error and the event.
    Show {
        /// The sink.
        sink: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put a sink's dead letters back in line for delivery.
    Requeue {
        /// The sink.
        sink: String,
    },
    /// Drop a sink's dead letters.
    Purge {
        /// The sink.
        sink: String,
        /// Only those that failed longer ago than this (30m, 7d).
        #[arg(long)]
        older_than: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConsumersAction {
    /// Consumer groups and sink cursors, with lag.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move a consumer (or a sink no longer configured) to `beginning`, `latest` or
    /// after a seq.
    Seek {
        /// The consumer.
        name: String,
        /// beginning, latest, or a seq to read after.
        position: String,
    },
    /// Remove a consumer, so it no longer holds back the deletion of events.
    Remove {
        /// The consumer.
        name: String,
    },
}

/// How a command ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    /// It ran, but found something wrong (an unhealthy file, rejected lines).
    Problems,
}

type Result<T = Outcome> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(command: Command) -> Result {
    match command {
        Command::Stat { path, json } => look::stat(&path, json),
        Command::Tail {
            path,
            count,
            follow,
            filter,
            json,
        } => events::tail(&path, count, follow, &filter, json),
        Command::Query {
            path,
            filter,
            since,
            until,
            after_seq,
            limit,
        } => {
            let window = events::Window {
                since: since.as_deref().map(show::parse_time).transpose()?,
                until: until.as_deref().map(show::parse_time).transpose()?,
                after_seq,
                limit,
            };
            events::query(&path, &filter, &window)
        }
        Command::Dead { path, action } => match action {
            DeadAction::List { sink, json } => look::dead_list(&path, sink.as_deref(), json),
            DeadAction::Show { sink, limit } => look::dead_show(&path, &sink, limit),
            DeadAction::Requeue { sink } => admin::requeue(&path, &sink),
            DeadAction::Purge { sink, older_than } => {
                let age = older_than.as_deref().map(show::parse_age).transpose()?;
                admin::purge(&path, &sink, age)
            }
        },
        Command::Consumers { path, action } => match action {
            ConsumersAction::List { json } => look::consumers(&path, json),
            ConsumersAction::Seek { name, position } => admin::seek(&path, &name, &position),
            ConsumersAction::Remove { name } => admin::remove(&path, &name),
        },
        Command::Check { path, repair, json } => match repair {
            true => look::repair(&path, json),
            false => look::check(&path, json),
        },
        Command::Export {
            path,
            after_seq,
            filter,
        } => events::export(&path, after_seq, &filter),
        Command::Import { path, file } => lines::import(&path, file.as_deref()),
        Command::Forward { config } => forward::run(&config),
        #[cfg(feature = "encryption")]
        Command::Rekey { path, new } => key::rekey(&path, &new.as_key_args()),
        #[cfg(feature = "encryption")]
        Command::Encrypt { from, to } => key::copy(&from, &to, true),
        #[cfg(feature = "encryption")]
        Command::Decrypt { from, to } => key::copy(&from, &to, false),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("EVENTSPOOL_LOG", "warn"))
        .init();
    let outcome = cli
        .key
        .install()
        .map_err(Into::into)
        .and_then(|()| run(cli.command));
    match outcome {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::FAILURE,
        Err(e) => {
            // A reader that went away (`| head`) is not an error worth a message.
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && io.kind() == std::io::ErrorKind::BrokenPipe
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("eventspool: {e}");
            ExitCode::FAILURE
        }
    }
}
