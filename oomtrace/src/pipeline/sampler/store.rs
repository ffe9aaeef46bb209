//! The samples kept: a bounded history per memcg, under two caps.
//!
//! Caps: at most `max_cgroups` memcgs (from the open-file budget and the
//! memory cap, see [`Limits`]) and at most `points` samples each (window /
//! interval). Eviction policy:
//! - a memcg that vanished (its directory gone) keeps its history for
//!   [`VANISHED_KEEP_NS`], so that a kill written at its victim's exit,
//!   after the runtime removed the cgroup, still finds it; then it goes;
//! - at the cap, a new memcg takes the place of a vanished one first (the
//!   one that vanished longest ago), else of the one that grew least
//!   recently, provided that one has not grown for a whole window: a memcg
//!   that is not growing is the least likely to be about to be OOM-killed.
//!   When every memcg grew within the window, the new one is refused (and
//!   counted): evicting a growing memcg would lose the very history a kill
//!   needs, and the next rescan tries again.

use std::collections::{HashMap, VecDeque};

use super::files::{Psi, Reading, StatFigures};

/// How long a vanished memcg's history is kept: longer than the default
/// exit wait (5 s) with room for a slow exit.
pub const VANISHED_KEEP_NS: u64 = 30_000_000_000;

/// A stat field absent in this cgroup version.
const ABSENT: u64 = u64::MAX;

/// One sample of one memcg, compact (Option<u64> would double it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub boot_ns: u64,
    pub usage: u64,
    /// anon, file, active_file, inactive_file, shmem, kernel, slab; ABSENT
    /// where the kernel has no such field.
    stat: [u64; 7],
    /// v2: the memcg's own PSI avg10 (some, full); NaN without it.
    pressure: [f32; 2],
}

impl Point {
    pub fn new(boot_ns: u64, reading: &Reading) -> Self {
        let s = reading.stat;
        let f = |v: Option<u64>| v.unwrap_or(ABSENT);
        let pressure = reading
            .pressure
            .map_or([f32::NAN; 2], |p| [p.some_avg10, p.full_avg10]);
        Self {
            boot_ns,
            usage: reading.usage,
            stat: [
                f(s.anon),
                f(s.file),
                f(s.active_file),
                f(s.inactive_file),
                f(s.shmem),
                f(s.kernel),
                f(s.slab),
            ],
            pressure,
        }
    }

    pub fn stat(&self) -> StatFigures {
        let g = |i: usize| (self.stat[i] != ABSENT).then_some(self.stat[i]);
        StatFigures {
            anon: g(0),
            file: g(1),
            active_file: g(2),
            inactive_file: g(3),
            shmem: g(4),
            kernel: g(5),
            slab: g(6),
        }
    }

    pub fn pressure(&self) -> Option<Psi> {
        (!self.pressure[0].is_nan()).then_some(Psi {
            some_avg10: self.pressure[0],
            full_avg10: self.pressure[1],
        })
    }
}

/// A memcg's history.
#[derive(Debug, Default)]
pub struct Series {
    pub points: VecDeque<Point>,
    /// When its usage last rose from one sample to the next (or when it was
    /// admitted).
    last_grown_ns: u64,
    /// When a rescan (or a failed read) found it gone.
    vanished_ns: Option<u64>,
}

impl Series {
    /// The samples taken at or before `boot_ns`, oldest first.
    pub fn before(&self, boot_ns: u64) -> impl DoubleEndedIterator<Item = &Point> {
        self.points.iter().filter(move |p| p.boot_ns <= boot_ns)
    }
}

/// The caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_cgroups: usize,
    /// Samples kept per memcg.
    pub points: usize,
    /// Nanoseconds a memcg must go without growing before it may be evicted
    /// for a new one (the window).
    pub idle_ns: u64,
}

/// Bytes one memcg's history takes at most, its map entry and path included.
pub fn bytes_per_cgroup(points: usize) -> usize {
    points * std::mem::size_of::<Point>() + std::mem::size_of::<Series>() + 256
}

/// Why a memcg was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// At the cap, and every memcg grew within the window.
    AllGrowing,
}

#[derive(Debug)]
pub struct Store {
    limits: Limits,
    cgroups: HashMap<String, Series>,
    /// The system's PSI (`/proc/pressure/memory`), as (boot_ns, figures),
    /// oldest first: kept like a memcg's points.
    system_pressure: VecDeque<(u64, Psi)>,
    pub evictions: u64,
    pub refusals: u64,
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            cgroups: HashMap::new(),
            system_pressure: VecDeque::new(),
            evictions: 0,
            refusals: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.cgroups.len()
    }

    pub fn get(&self, path: &str) -> Option<&Series> {
        self.cgroups.get(path)
    }

    /// Whether `path` is tracked (and not vanished).
    #[cfg(test)]
    pub fn is_live(&self, path: &str) -> bool {
        self.cgroups
            .get(path)
            .is_some_and(|s| s.vanished_ns.is_none())
    }

    /// Starts tracking `path`. Returns the paths evicted to make room
    /// (their files are to be closed), or why it was refused.
    pub fn admit(&mut self, path: &str, now_ns: u64) -> Result<Vec<String>, Refused> {
        if let Some(series) = self.cgroups.get_mut(path) {
            // Back (a cgroup recreated under the same name).
            series.vanished_ns = None;
            return Ok(Vec::new());
        }
        let mut evicted = Vec::new();
        if self.cgroups.len() >= self.limits.max_cgroups {
            let victim = self
                .cgroups
                .iter()
                .filter_map(|(p, s)| s.vanished_ns.map(|at| (at, p)))
                .min()
                .or_else(|| {
                    self.cgroups
                        .iter()
                        .map(|(p, s)| (s.last_grown_ns, p))
                        .filter(|(grown, _)| now_ns.saturating_sub(*grown) >= self.limits.idle_ns)
                        .min()
                })
                .map(|(_, p)| p.clone());
            let Some(victim) = victim else {
                self.refusals += 1;
                return Err(Refused::AllGrowing);
            };
            self.cgroups.remove(&victim);
            self.evictions += 1;
            evicted.push(victim);
        }
        self.cgroups.insert(
            path.to_string(),
            Series {
                last_grown_ns: now_ns,
                ..Series::default()
            },
        );
        Ok(evicted)
    }

    /// Marks `path` gone: its history stays for [`VANISHED_KEEP_NS`].
    pub fn vanished(&mut self, path: &str, now_ns: u64) {
        if let Some(series) = self.cgroups.get_mut(path) {
            series.vanished_ns.get_or_insert(now_ns);
        }
    }

    /// Appends a sample, dropping the oldest beyond the cap.
    pub fn push(&mut self, path: &str, point: Point) {
        let Some(series) = self.cgroups.get_mut(path) else {
            return;
        };
        if series
            .points
            .back()
            .is_some_and(|last| point.usage > last.usage)
        {
            series.last_grown_ns = point.boot_ns;
        }
        if series.points.len() >= self.limits.points {
            series.points.pop_front();
        }
        if series.points.len() == series.points.capacity() {
            // Doubling, as push_back would, but never past the cap: its own
            // doubling would take up to twice `points` (1,024 samples for a
            // 600-sample window), past what `bytes_per_cgroup` counts.
            let want = (series.points.capacity() * 2)
                .max(4)
                .min(self.limits.points.max(1));
            series.points.reserve_exact(want - series.points.len());
        }
        series.points.push_back(point);
    }

    pub fn push_system_pressure(&mut self, boot_ns: u64, psi: Psi) {
        if self.system_pressure.len() >= self.limits.points {
            self.system_pressure.pop_front();
        }
        self.system_pressure.push_back((boot_ns, psi));
    }

    /// The system's PSI in the latest sample at or before `boot_ns`.
    pub fn system_pressure_before(&self, boot_ns: u64) -> Option<Psi> {
        self.system_pressure
            .iter()
            .rev()
            .find(|(at, _)| *at <= boot_ns)
            .map(|(_, psi)| *psi)
    }

    /// Forgets vanished memcgs past their keep time; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.cgroups.len();
        self.cgroups.retain(|_, s| {
            s.vanished_ns
                .is_none_or(|at| now_ns.saturating_sub(at) < VANISHED_KEEP_NS)
        });
        before - self.cgroups.len()
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
