//! How many requests a concurrent sink may have in flight: fixed, or adaptive.
//!
//! The adaptive rule (additive increase, multiplicative decrease, in the spirit of
//! Vector's adaptive request concurrency):
//! - every attempt's round-trip time feeds a moving average (weight 1/8);
//! - an attempt that meets back-pressure (429, 503, a timeout or a connection error:
//!   [`pressure`]) or takes more than twice the average halves the limit, at most once
//!   per average round trip (the requests already in flight answer to the old limit);
//! - any other attempt adds 1 until the first back-pressure (the limit doubles each
//!   round trip: a slow start), then `1 / (2 × limit)`, so the limit grows by one every
//!   two round trips and meets the receiver's ceiling seldom;
//! - the limit stays within `1..=max`.

use std::time::{Duration, Instant};

use crate::error::DeliveryError;
use crate::sink::order::Concurrency;

/// The limit on requests in flight, and what the adaptive one goes by.
#[derive(Debug)]
pub(super) struct Limiter {
    adaptive: bool,
    limit: f64,
    max: f64,
    /// The moving average of round trips, in seconds (`None` before the first).
    rtt: Option<f64>,
    /// When the limit was last halved (`None`: never, still in the slow start).
    decreased: Option<Instant>,
}

impl Limiter {
    pub(super) fn new(concurrency: Concurrency) -> Self {
        match concurrency {
            Concurrency::Fixed(n) => Limiter {
                adaptive: false,
                limit: n.max(1) as f64,
                max: n.max(1) as f64,
                rtt: None,
                decreased: None,
            },
            Concurrency::Adaptive { max } => Limiter {
                adaptive: true,
                limit: 1.0,
                max: max.max(1) as f64,
                rtt: None,
                decreased: None,
            },
        }
    }

    /// Requests that may be in flight now.
    pub(super) fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The moving average of round trips.
    pub(super) fn rtt(&self) -> Duration {
        Duration::from_secs_f64(self.rtt.unwrap_or(0.0))
    }

    /// Takes in one attempt's round trip and whether it met back-pressure, at `now`.
    pub(super) fn attempted(&mut self, rtt: Duration, pressure: bool, now: Instant) {
        let secs = rtt.as_secs_f64();
        let average = *self.rtt.get_or_insert(secs);
        let slow = secs > 2.0 * average;
        self.rtt = Some(average + (secs - average) / 8.0);
        if !self.adaptive {
            return;
        }
        if pressure || slow {
            let recent = self
                .decreased
                .is_some_and(|at| now.duration_since(at).as_secs_f64() < average);
            if !recent {
                self.limit = (self.limit / 2.0).max(1.0);
                self.decreased = Some(now);
            }
        } else {
            let step = if self.decreased.is_none() {
                1.0
            } else {
                0.5 / self.limit
            };
            self.limit = (self.limit + step).min(self.max);
        }
    }
}

/// Whether a failed attempt says the receiver is overloaded: 429, 503, or no answer
/// at all (a timeout, a refused or reset connection).
pub(super) fn pressure(error: &DeliveryError) -> bool {
    match error.status() {
        Some(status) => status == 429 || status == 503,
        None => error.is_retryable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated receiver that serves 8 requests at a time and answers 429 beyond:
    /// each round trip, the limiter sends `limit` requests; those past 8 are refused.
    #[test]
    fn the_adaptive_limit_settles_near_what_the_receiver_serves() {
        let mut limiter = Limiter::new(Concurrency::Adaptive { max: 64 });
        let rtt = Duration::from_millis(20);
        let mut now = Instant::now();
        let (mut sent, mut refused, mut limits) = (0, 0, Vec::new());
        for round in 0..2000 {
            let n = limiter.limit();
            for i in 0..n {
                let pressure = i >= 8;
                limiter.attempted(rtt, pressure, now);
                if round >= 50 {
                    sent += 1;
                    refused += usize::from(pressure);
                }
            }
            if round >= 50 {
                limits.push(n);
            }
            now += rtt;
        }
        let mean = limits.iter().sum::<usize>() as f64 / limits.len() as f64;
        assert!((4.0..=16.0).contains(&mean), "mean limit {mean}");
        let share = refused as f64 / sent as f64;
        assert!(share < 0.05, "{refused} of {sent} refused");
    }

    #[test]
    fn slow_round_trips_halve_the_limit_and_fixed_stays_fixed() {
        let mut limiter = Limiter::new(Concurrency::Adaptive { max: 64 });
        let mut now = Instant::now();
        for _ in 0..200 {
            limiter.attempted(Duration::from_millis(10), false, now);
            now += Duration::from_millis(1);
        }
        let before = limiter.limit();
        assert!(before > 10, "{before}");
        now += Duration::from_secs(1);
        limiter.attempted(Duration::from_millis(100), false, now);
        assert!(limiter.limit() <= before / 2 + 1, "{}", limiter.limit());

        let mut fixed = Limiter::new(Concurrency::Fixed(16));
        fixed.attempted(Duration::from_secs(5), true, now);
        assert_eq!(fixed.limit(), 16);
        assert_eq!(Limiter::new(Concurrency::Adaptive { max: 0 }).limit(), 1);
    }

    #[test]
    fn pressure_is_overload_not_refusal() {
        assert!(pressure(&DeliveryError::retryable("x").with_status(429)));
        assert!(pressure(&DeliveryError::retryable("x").with_status(503)));
        assert!(pressure(&DeliveryError::retryable("connection refused")));
        assert!(!pressure(&DeliveryError::retryable("x").with_status(500)));
        assert!(!pressure(&DeliveryError::permanent("x").with_status(400)));
    }
}
