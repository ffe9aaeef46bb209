//! `/healthz`: whether the collector is still working. Two stamps, each
//! refreshed while its thread goes round: the pipeline's, at every tick
//! (every 100 ms, kills or not), and the event loop's (the thread that
//! drains the ring buffer), every [`EVENT_LOOP_STAMP`] by a task on it. A
//! thread stuck in a read, a deadlock or a panic lets its stamp go stale.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// How old a stamp may be before `/healthz` answers 503. Far above both
/// periods, so that a storm that keeps the CPUs busy is not mistaken for a
/// hang (a liveness probe that fails restarts the collector, which loses
/// what it was joining).
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// How often the event loop stamps.
pub const EVENT_LOOP_STAMP: Duration = Duration::from_secs(1);

pub struct Health {
    base: Instant,
    /// Milliseconds since `base` of each thread's last stamp.
    pipeline_ms: AtomicU64,
    event_loop_ms: AtomicU64,
}

impl Health {
    /// Both stamped now: a start-up (attaching takes a second or two) is
    /// healthy until `STALE_AFTER` has passed without a stamp.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            pipeline_ms: AtomicU64::new(0),
            event_loop_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    pub fn stamp_pipeline(&self) {
        self.pipeline_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn stamp_event_loop(&self) {
        self.event_loop_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Ok, or what is stale and for how long.
    pub fn check(&self) -> Result<(), String> {
        let now = self.now_ms();
        let stale = STALE_AFTER.as_millis() as u64;
        let mut problems = Vec::new();
        for (what, stamp) in [
            ("pipeline", &self.pipeline_ms),
            ("ring buffer's event loop", &self.event_loop_ms),
        ] {
            let age = now.saturating_sub(stamp.load(Ordering::Relaxed));
            if age > stale {
                problems.push(format!("the {what} has not gone round for {age} ms"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Stamps the event loop every [`EVENT_LOOP_STAMP`]; spawn it on the
    /// loop that drains the ring buffer.
    pub async fn stamp_event_loop_forever(self: std::sync::Arc<Self>) {
        let mut interval = tokio::time::interval(EVENT_LOOP_STAMP);
        loop {
            interval.tick().await;
            self.stamp_event_loop();
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}
