//! Per-worker HTTP counters for `/metrics`: responses by status class, and how long
//! requests took, from the request head being read to the response's last byte being
//! handed to the client connection (Envoy's `downstream_rq_time`).
//!
//! A worker's tasks count into its own [`HttpStats`] (one cache line set per worker, no
//! sharing between cores); `/metrics` adds the workers up when scraped.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds of the duration histogram's buckets, in microseconds (Prometheus `le`,
/// from 100 µs to 10 s); a last bucket takes the rest (`+Inf`).
pub const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// One worker's HTTP counters.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Responses by status class: 1xx at 0 .. 5xx at 4.
    classes: [AtomicU64; 5],
    /// Requests per duration bucket (not cumulative); the last one is beyond every bound.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    /// Sum of the durations, in microseconds.
    sum_us: AtomicU64,
}

/// The counters of one or more workers, added up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpTotals {
    /// Responses by status class: 1xx at 0 .. 5xx at 4.
    pub classes: [u64; 5],
    /// Requests per duration bucket (not cumulative), as [`HttpStats`] keeps them.
    pub buckets: [u64; BOUNDS_US.len() + 1],
    /// Sum of the durations, in microseconds.
    pub sum_us: u64,
}

impl HttpStats {
    /// Counts a request answered with `status` after `took`. Statuses outside 100-599
    /// (which hyper does not send) are not counted.
    pub fn record(&self, status: u16, took: Duration) {
        let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) else {
            return;
        };
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.classes[usize::from(class)].fetch_add(1, Ordering::Relaxed);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Adds this worker's counters to `totals`.
    pub fn add_to(&self, totals: &mut HttpTotals) {
        for (t, c) in totals.classes.iter_mut().zip(&self.classes) {
            *t += c.load(Ordering::Relaxed);
        }
        for (t, b) in totals.buckets.iter_mut().zip(&self.buckets) {
            *t += b.load(Ordering::Relaxed);
        }
        totals.sum_us += self.sum_us.load(Ordering::Relaxed);
    }
}

impl HttpTotals {
    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(stats: &HttpStats) -> HttpTotals {
        let mut t = HttpTotals::default();
        stats.add_to(&mut t);
        t
    }

    #[test]
    fn a_request_lands_in_its_class_and_the_first_bucket_that_holds_it() {
        let stats = HttpStats::default();
        stats.record(200, Duration::from_micros(80));
        stats.record(204, Duration::from_micros(100));
        stats.record(404, Duration::from_micros(101));
        stats.record(503, Duration::from_millis(300));
        stats.record(101, Duration::from_secs(60));
        let t = totals(&stats);
        assert_eq!(t.classes, [1, 2, 0, 1, 1]);
        // le=100us holds 80 and 100 (bounds are inclusive); 101 goes to le=250us.
        assert_eq!(t.buckets[0], 2);
        assert_eq!(t.buckets[1], 1);
        // 300 ms: le=500ms is the 12th bound.
        assert_eq!(t.buckets[11], 1);
        // Beyond 10 s: the +Inf bucket.
        assert_eq!(t.buckets[BOUNDS_US.len()], 1);
        assert_eq!(t.count(), 5);
        assert_eq!(t.sum_us, 80 + 100 + 101 + 300_000 + 60_000_000);
    }

    #[test]
    fn statuses_hyper_never_sends_are_not_counted() {
        let stats = HttpStats::default();
        stats.record(0, Duration::from_micros(5));
        stats.record(99, Duration::from_micros(5));
        stats.record(600, Duration::from_micros(5));
        assert_eq!(totals(&stats), HttpTotals::default());
    }

    #[test]
    fn workers_add_up() {
        let (a, b) = (HttpStats::default(), HttpStats::default());
        a.record(200, Duration::from_micros(300));
        b.record(200, Duration::from_micros(700));
        b.record(502, Duration::from_micros(700));
        let mut t = HttpTotals::default();
        a.add_to(&mut t);
        b.add_to(&mut t);
        assert_eq!(t.classes, [0, 2, 0, 0, 1]);
        assert_eq!(t.buckets[2], 1);
        assert_eq!(t.buckets[3], 2);
        assert_eq!(t.sum_us, 1_700);
    }
}
