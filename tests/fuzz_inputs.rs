//! Generated inputs with known answers for the parsers and validators that face the
//! outside world. (Arbitrary bytes for the same parsers are in the fuzzer, fuzz.rs.)

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use eventspool::{Error, Event, Spool, SpoolConfig, parse_retry_after};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn retry_after_reads_delta_seconds(secs in 0u64..1_000_000) {
        prop_assert_eq!(
            parse_retry_after(&secs.to_string(), SystemTime::now()),
            Some(Duration::from_secs(secs))
        );
    }

    #[test]
    fn retry_after_reads_http_dates(day in 1u32..29, hour in 0u32..24, min in 0u32..60) {
        let value = format!("Sun, {day:02} Feb 2099 {hour:02}:{min:02}:00 GMT");
        prop_assert!(parse_retry_after(&value, SystemTime::now()).is_some_and(|d| d > Duration::ZERO));
    }
}

fn config_value() -> impl Strategy<Value = serde_json::Value> {
    let num = prop_oneof![
        Just(serde_json::json!(0)),
        Just(serde_json::json!(1)),
        (0u64..100_000).prop_map(|n| serde_json::json!(n)),
        Just(serde_json::json!(-5)),
        Just(serde_json::json!("x"))
    ];
    (num.clone(), num.clone(), num.clone(), num, any::<bool>()).prop_map(|(a, b, c, d, full)| {
        serde_json::json!({
            "path": "ignored.db",
            "max_events": a, "batch_size": b, "channel_capacity": c, "max_event_bytes": d,
            "durability": if full { "full" } else { "normal" },
            "overflow": if full { serde_json::json!({"block_for_ms": 5}) } else { serde_json::json!("reject") },
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever an operator writes: parsed and opened, or refused with an error.
    #[test]
    fn operator_configs_open_or_are_refused(value in config_value()) {
        let Ok(mut config) = serde_json::from_value::<SpoolConfig>(value) else {
            return Ok(());
        };
        let (_dir, path) = temp_spool();
        config.path = path;
        match Spool::from_config(&config) {
            Ok(spool) => {
                let r = spool.append(numbered(1));
                prop_assert!(r.is_ok() || matches!(r, Err(Error::InvalidEvent(_))));
            }
            Err(e) => prop_assert!(matches!(e, Error::InvalidConfig(_)), "{}", e),
        }
    }

    /// Arbitrary text as event data: stored exactly when it is JSON, refused otherwise.
    #[test]
    fn event_json_is_stored_or_refused(text in ".{0,64}") {
        let (_dir, path) = temp_spool();
        let spool = Spool::open(&path).unwrap();
        match spool.append(Event::from_json("t", text.clone())) {
            Ok(seq) => {
                prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
                let stored = spool.query(&eventspool::EventQuery::new()).unwrap();
                prop_assert_eq!(stored[0].seq, seq);
                prop_assert_eq!(stored[0].data.get(), text.as_str());
            }
            Err(e) => {
                prop_assert!(matches!(e, Error::InvalidEvent(_)), "{}", e);
                prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
            }
        }
    }
}
