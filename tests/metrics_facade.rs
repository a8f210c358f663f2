//! The `metrics` feature: the spool's counters and gauges reach the `metrics` facade
//! under the names `to_prometheus` gives them, on a timer and once more at close, and
//! the recording thread ends with the spool.
#![cfg(feature = "metrics")]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::sinks::Collect;
use common::*;
use eventspool::{Error, Spool};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const T: Duration = Duration::from_secs(20);

/// The value recorded under `name` (with `label`, if given).
fn value(snapshotter: &Snapshotter, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            let key = key.key();
            let labelled = match label {
                Some((k, v)) => key.labels().any(|l| l.key() == k && l.value() == v),
                None => key.labels().next().is_none(),
            };
            (key.name() == name && labelled).then_some(match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => f64::NAN,
            })
        })
}

fn metrics_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "eventspool-metr") // cut to 15 bytes
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_spools_metrics_reach_the_facade_under_their_prometheus_names() -> TestResult {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let (_dir, path) = temp_spool();
    let refused = Spool::builder(&path)
        .record_metrics(Duration::ZERO)
        .open()
        .unwrap_err();
    assert!(matches!(refused, Error::InvalidConfig(_)), "{refused}");

    let spool = Spool::builder(&path)
        .record_metrics(Duration::from_millis(10))
        .sink(Collect::new("collect"))
        .open()?;
    // A thread names itself once it runs, so its name may come a moment after `open`.
    wait_until(T, "one metrics thread", || metrics_threads() == 1);
    for n in 0..100 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "the facade shows 100 committed and delivered", || {
        value(&snapshotter, "eventspool_committed_total", None) == Some(100.0)
            && value(
                &snapshotter,
                "eventspool_sink_delivered_total",
                Some(("sink", "collect")),
            ) == Some(100.0)
    });
    // Every name `to_prometheus` prints is recorded.
    let prometheus: BTreeSet<String> = spool
        .metrics()
        .to_prometheus()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let recorded: BTreeSet<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, _)| key.key().name().to_owned())
        .collect();
    assert_eq!(prometheus, recorded);

    spool.emit(numbered(100))?;
    spool.close(T)?;
    assert_eq!(
        value(&snapshotter, "eventspool_committed_total", None),
        Some(101.0),
        "a last record at close"
    );
    assert_eq!(metrics_threads(), 0, "the thread ended with the spool");
    Ok(())
}
