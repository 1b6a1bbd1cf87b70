//! Waiting out what can be waited out (see `error` for what can): capped
//! exponential backoff, and one log line per episode of waiting rather than
//! one per attempt. Public, so that an application's own waits (its
//! database, its CMS) look the same in logs and metrics.

use std::time::{Duration, Instant};

/// Exponential backoff between attempts: from `first`, doubling up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling up to 5 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// From `first`, doubling up to `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, next: first }
    }

    /// The delay before the next attempt; the one after is twice as long.
    pub fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// How often a wait that goes on is logged again.
const REMIND: Duration = Duration::from_secs(30);

/// An episode of waiting for something (`"Kafka at host:9092"`): logged
/// when it starts, every 30 s while it lasts, and when it ends, with how
/// long it took.
#[derive(Debug)]
pub struct Waiting {
    what: String,
    since: Option<Instant>,
    logged: Instant,
    attempts: u64,
    backoff: Backoff,
}

impl Waiting {
    /// A wait for `what`, named so in the logs.
    pub fn new(what: impl Into<String>) -> Waiting {
        Waiting { what: what.into(), since: None, logged: Instant::now(), attempts: 0, backoff: Backoff::default() }
    }

    /// Records a failed attempt with `error`; returns how long to wait
    /// before the next one.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) -> Duration {
        self.attempts += 1;
        match self.since {
            None => {
                self.since = Some(Instant::now());
                self.logged = Instant::now();
                tracing::warn!(waiting_for = %self.what, %error, "waiting for {}", self.what);
            }
            Some(since) if self.logged.elapsed() >= REMIND => {
                self.logged = Instant::now();
                tracing::warn!(waiting_for = %self.what, %error, waited_s = since.elapsed().as_secs(),
                    attempts = self.attempts, "still waiting for {}", self.what);
            }
            Some(_) => {}
        }
        self.backoff.next()
    }

    /// Records a success: ends the episode, if one was going on, and
    /// returns how long it lasted.
    pub fn succeeded(&mut self) -> Option<Duration> {
        self.backoff.reset();
        let waited = self.since.take()?.elapsed();
        tracing::info!(waited_for = %self.what, waited_ms = waited.as_millis() as u64, attempts = self.attempts,
            "{} answered again", self.what);
        self.attempts = 0;
        Some(waited)
    }

    /// How long the current episode has lasted, if one is going on.
    pub fn waited(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..8).map(|_| backoff.next().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(100));
    }

    #[test]
    fn an_episode_lasts_from_the_first_failure_to_the_next_success() {
        let mut waiting = Waiting::new("Kafka");
        assert_eq!(waiting.succeeded(), None, "no episode without a failure");
        assert_eq!(waiting.failed(&"down"), Duration::from_millis(100));
        assert_eq!(waiting.failed(&"down"), Duration::from_millis(200));
        assert!(waiting.waited().is_some());
        assert!(waiting.succeeded().is_some());
        assert_eq!(waiting.waited(), None);
        assert_eq!(waiting.failed(&"down"), Duration::from_millis(100), "the backoff starts again");
    }
}
