//! The wall clock the scheduler reads for everything that happens at a
//! time of day: schedule fire times, SLA deadlines, time sensors.
//!
//! It is a trait so that tests drive time by hand ([`ManualClock`]) and see
//! a year of cron fires, daylight-saving changes included, in milliseconds.
//! Retry backoffs and liveness timeouts are durations, not instants, and
//! stay on tokio's timer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_common::time::Micros;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

/// A future that completes at (or soon after) a wall-clock instant.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// Completes once `now() >= at`. May complete early (the caller checks
    /// the time again): a real clock wakes at least every
    /// [`SystemClock::MAX_SLEEP`] so that a wall-clock step is noticed.
    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep;

    fn now_micros(&self) -> Micros {
        self.now().timestamp_micros()
    }
}

pub type ClockRef = Arc<dyn Clock>;

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl SystemClock {
    /// Longest single sleep: if the wall clock is stepped (NTP, a VM
    /// resumed), a fire time is still met within this.
    pub const MAX_SLEEP: Duration = Duration::from_secs(30);
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let wait = (at - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(Self::MAX_SLEEP);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to, for tests.
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    changed: watch::Sender<DateTime<Utc>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Arc<Self> {
        let (changed, _) = watch::channel(start);
        Arc::new(Self {
            now: Mutex::new(start),
            changed,
        })
    }

    /// Moves the clock to `at` (never backwards) and wakes the sleepers due.
    pub fn set(&self, at: DateTime<Utc>) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        if at > *now {
            *now = at;
            self.changed.send_replace(at);
        }
    }

    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.set(self.now() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(&self, at: DateTime<Utc>) -> Sleep {
        let mut changed = self.changed.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first.
            let _ = changed.wait_for(|now| *now >= at).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_sleepers_wake_when_the_clock_passes_their_time() {
        let start = DateTime::parse_from_rfc3339("2026-03-29T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        let due = start + chrono::Duration::seconds(10);
        let sleeper = tokio::spawn(clock.sleep_until(due));
        clock.advance(Duration::from_secs(5));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its time");
        clock.advance(Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woke at its time")
            .unwrap();
        // A time already passed completes at once.
        tokio::time::timeout(Duration::from_secs(5), clock.sleep_until(start))
            .await
            .expect("past instants do not wait");
    }
}
