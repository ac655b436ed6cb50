//! Keeping the round trip to xpud off the caller's path for periodic monitors.
//!
//! A monitor reads every device in bursts, once a period (1 s for a 1 Hz loop). Each burst
//! would find the snapshot expired and pay a round trip to xpud on its first call. The
//! library learns the period from the bursts and fetches the next snapshot a little before
//! the next burst is due, on its own thread and connection, so the burst finds it fresh.
//! Readings are never older than the cache lifetime; a monitor that stops costs one unused
//! fetch; callers without a steady period just refresh on demand as before.

use crate::xpud::{Connection, Telemetry};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// A period shorter than this is served by the cache alone; a longer one is not a loop.
const MIN_PERIOD: Duration = Duration::from_millis(250);
const MAX_PERIOD: Duration = Duration::from_secs(60);

/// When bursts start, and the period between the last two.
#[derive(Default)]
pub struct Cadence {
    last_burst: Option<Instant>,
    period: Option<Duration>,
}

impl Cadence {
    /// A burst starts now: when should the next snapshot be fetched, if the period is steady?
    pub fn burst(&mut self, now: Instant, lead: Duration) -> Option<Instant> {
        let previous = self.last_burst.replace(now);
        let period =
            previous.map(|p| now.duration_since(p)).filter(|p| (MIN_PERIOD..=MAX_PERIOD).contains(p));
        // Two similar periods in a row: a loop, not two coincidences.
        let steady = match (self.period, period) {
            (Some(a), Some(b)) => a.abs_diff(b) < lead,
            _ => false,
        };
        self.period = period;
        steady.then(|| now + period.unwrap_or_default() - lead)
    }
}

struct Plan {
    due: Option<Instant>,
    stop: bool,
}

struct Shared {
    plan: Mutex<Plan>,
    wake: Condvar,
}

fn lock(shared: &Shared) -> MutexGuard<'_, Plan> {
    shared.plan.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fetching thread; `deliver` stores a fetched snapshot where queries find it.
pub struct Prefetcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub fn start(socket: PathBuf, deliver: impl Fn(Arc<Telemetry>) + Send + 'static) -> Prefetcher {
        let shared =
            Arc::new(Shared { plan: Mutex::new(Plan { due: None, stop: false }), wake: Condvar::new() });
        let mine = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nvml-prefetch".into())
            .spawn(move || {
                let mut conn = Connection::new(socket);
                while let Some(()) = next_due(&mine) {
                    if let Ok(snapshot) = conn.get::<Telemetry>("/v1/telemetry") {
                        deliver(Arc::new(snapshot));
                    }
                }
            })
            .ok();
        Prefetcher { shared, thread }
    }

    pub fn schedule(&self, at: Instant) {
        lock(&self.shared).due = Some(at);
        self.shared.wake.notify_all();
    }

    /// Ends the thread and waits for it; call without the library lock (it delivers under it).
    pub fn stop(mut self) {
        lock(&self.shared).stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sleeps until a fetch is due; None when told to stop.
fn next_due(shared: &Shared) -> Option<()> {
    let mut plan = lock(shared);
    loop {
        if plan.stop {
            return None;
        }
        match plan.due {
            Some(at) if at <= Instant::now() => {
                plan.due = None;
                return Some(());
            }
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                plan = shared.wake.wait_timeout(plan, wait).unwrap_or_else(|e| e.into_inner()).0;
            }
            None => plan = shared.wake.wait(plan).unwrap_or_else(|e| e.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAD: Duration = Duration::from_millis(50);

    fn bursts(gaps_ms: &[u64]) -> Vec<Option<Duration>> {
        let start = Instant::now();
        let mut cadence = Cadence::default();
        let mut at = start;
        let mut plans = vec![cadence.burst(at, LEAD).map(|due| due - start)];
        for gap in gaps_ms {
            at += Duration::from_millis(*gap);
            plans.push(cadence.burst(at, LEAD).map(|due| due - start));
        }
        plans
    }

    #[test]
    fn a_steady_loop_is_fetched_for_just_before_its_next_burst() {
        let ms = Duration::from_millis;
        assert_eq!(bursts(&[1000, 1000, 1000]), [None, None, Some(ms(2950)), Some(ms(3950))]);
    }

    #[test]
    fn irregular_fast_or_stopped_callers_get_no_prefetch() {
        assert!(bursts(&[1000, 400, 1700]).iter().all(Option::is_none));
        assert!(bursts(&[100, 100, 100]).iter().all(Option::is_none)); // the cache serves these
        assert!(bursts(&[120_000, 120_000]).iter().all(Option::is_none));
    }
}
