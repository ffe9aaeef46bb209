//! How the memory grew to the kill: `memory.growth` from the samples
//! before it and the usage the kernel read at the kill.
//!
//! The rules, in the order they are tried (the first that fits wins):
//!
//! 1. `shmem`: the latest sample's charge is mostly shmem/tmpfs and little
//!    anon. Tried first because a tmpfs filling up also looks like a leak
//!    or a spike, but the remedy differs (delete files, size the tmpfs).
//! 2. `spike`: a flat stretch, then, within the last samples and the kill,
//!    a jump of a good part of the limit.
//! 3. `leak`: the usage over the window fits a rising line well, and rose
//!    by a good part of the limit.
//! 4. `at_limit`: the last samples all sat just under the limit.
//! 5. else `unknown`, and always with fewer samples than the rules need.

use oomtrace_record::{Growth, GrowthKind};

/// Every threshold, in one place.
pub mod thresholds {
    /// Fewer samples than this cannot tell a shape from noise: `unknown`,
    /// and no slope.
    pub const MIN_POINTS: usize = 3;
    /// `shmem` when shmem is at least this share of the usage: then most of
    /// the charge is what reclaim cannot free without swap and a kill frees
    /// only what the victim alone mapped.
    pub const SHMEM_MIN_SHARE: f64 = 0.5;
    /// …and anon at most this share: a process that also holds a lot of
    /// anon memory is better told by its growth (tmpfs may be incidental).
    pub const SHMEM_MAX_ANON_SHARE: f64 = 0.25;
    /// A stretch is flat when its usage stays within this share of the
    /// limit: allocator churn and page cache of a steady process move its
    /// usage by a few percent, well under what a batch or a leak moves.
    pub const FLAT_RANGE_SHARE: f64 = 0.05;
    /// A flat stretch needs this many samples (a pause of 2 samples within a
    /// slow leak is not a flat stretch).
    pub const FLAT_MIN_POINTS: usize = 3;
    /// The jump of a spike happens within the last this-many samples (and
    /// the kill): "within a few samples". A rise spread over more samples
    /// is growth, not a jump.
    pub const SPIKE_MAX_TAIL: usize = 2;
    /// A spike jumps from the flat level by at least this share of the limit
    /// (without a limit: of the flat level itself, i.e. it at least
    /// doubles): smaller jumps are within what a busy steady process does.
    pub const SPIKE_MIN_JUMP_SHARE: f64 = 0.25;
    /// A leak needs this many samples for its fit to mean anything.
    pub const LEAK_MIN_POINTS: usize = 4;
    /// A leak's least-squares line explains at least this share of the
    /// variance (R²): noisy steady growth scores 0.9+, a step or a plateau
    /// much less.
    pub const LEAK_MIN_R2: f64 = 0.8;
    /// …and its line rises by at least this share of the limit over the
    /// samples (without a limit: of the first sample's usage): less is a
    /// workload at rest, whatever its R².
    pub const LEAK_MIN_RISE_SHARE: f64 = 0.1;
    /// `at_limit` when the last this-many samples all sat within
    /// `AT_LIMIT_HEADROOM_SHARE` of the limit.
    pub const AT_LIMIT_MIN_POINTS: usize = 3;
    /// The kernel reclaims to stay under the limit, so a memcg running at it
    /// reads within a few percent of it (page cache fills the rest).
    pub const AT_LIMIT_HEADROOM_SHARE: f64 = 0.05;
}

use thresholds::*;

/// One sample: seconds before the kill (positive), usage in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub secs_before: f64,
    pub usage: f64,
}

/// What the classification knows beyond the samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Context {
    /// The memcg's limit, if it has one.
    pub limit: Option<u64>,
    /// Its usage as the kernel read it at the kill.
    pub usage_at_kill: Option<u64>,
    /// The latest sample's anon and shmem bytes.
    pub anon: Option<u64>,
    pub shmem: Option<u64>,
}

/// Classifies samples (oldest first).
pub fn classify(points: &[Point], context: &Context) -> Growth {
    let slope = (points.len() >= MIN_POINTS)
        .then(|| fit(points))
        .flatten()
        .map(|fit| fit.slope);
    let seconds_to_limit = match (slope, context.limit, points.last()) {
        (Some(slope), Some(limit), Some(last)) if slope > 0.0 => {
            Some(((limit as f64 - last.usage).max(0.0)) / slope)
        }
        _ => None,
    };
    Growth {
        kind: kind(points, context),
        slope_bytes_per_s: slope,
        seconds_to_limit,
    }
}

fn kind(points: &[Point], c: &Context) -> GrowthKind {
    let Some(last) = points.last() else {
        return GrowthKind::Unknown;
    };
    if let (Some(anon), Some(shmem)) = (c.anon, c.shmem) {
        let usage = last.usage.max(1.0);
        if shmem as f64 >= SHMEM_MIN_SHARE * usage && anon as f64 <= SHMEM_MAX_ANON_SHARE * usage {
            return GrowthKind::Shmem;
        }
    }
    if points.len() < MIN_POINTS {
        return GrowthKind::Unknown;
    }
    let limit = c.limit.map(|l| l as f64);
    if is_spike(points, limit, c.usage_at_kill.map(|u| u as f64)) {
        return GrowthKind::Spike;
    }
    if is_leak(points, limit) {
        return GrowthKind::Leak;
    }
    if let Some(limit) = limit
        && points.len() >= AT_LIMIT_MIN_POINTS
        && points[points.len() - AT_LIMIT_MIN_POINTS..]
            .iter()
            .all(|p| p.usage >= limit * (1.0 - AT_LIMIT_HEADROOM_SHARE))
    {
        return GrowthKind::AtLimit;
    }
    GrowthKind::Unknown
}

/// A flat stretch of at least `FLAT_MIN_POINTS` samples ending at most
/// `SPIKE_MAX_TAIL` samples before the last, then a jump to the end (the
/// usage at the kill, else the last sample).
fn is_spike(points: &[Point], limit: Option<f64>, usage_at_kill: Option<f64>) -> bool {
    let end = usage_at_kill.unwrap_or(points[points.len() - 1].usage);
    (0..=SPIKE_MAX_TAIL).any(|tail| {
        let Some(before) = points.len().checked_sub(tail) else {
            return false;
        };
        let stretch = flat_suffix(&points[..before], limit);
        if stretch.len() < FLAT_MIN_POINTS {
            return false;
        }
        let level = stretch.iter().map(|p| p.usage).sum::<f64>() / stretch.len() as f64;
        let scale = limit.unwrap_or(level);
        // The samples after the stretch must all be on the way up from it:
        // a dip back to the level would make it a wobble, not a jump.
        let tail_rises = points[before..].iter().all(|p| p.usage > level);
        tail_rises && end - level >= SPIKE_MIN_JUMP_SHARE * scale
    })
}

/// The longest run of samples at the end of `points` whose usage stays
/// within `FLAT_RANGE_SHARE` of the limit (of its own mean without one).
fn flat_suffix(points: &[Point], limit: Option<f64>) -> &[Point] {
    let (mut low, mut high) = (f64::MAX, f64::MIN);
    let mut start = points.len();
    for (i, p) in points.iter().enumerate().rev() {
        let (l, h) = (low.min(p.usage), high.max(p.usage));
        let scale = limit.unwrap_or((l + h) / 2.0);
        if h - l > FLAT_RANGE_SHARE * scale {
            break;
        }
        (low, high, start) = (l, h, i);
    }
    &points[start..]
}

fn is_leak(points: &[Point], limit: Option<f64>) -> bool {
    if points.len() < LEAK_MIN_POINTS {
        return false;
    }
    let Some(fit) = fit(points) else {
        return false;
    };
    let span = points[0].secs_before - points[points.len() - 1].secs_before;
    let rise = fit.slope * span;
    let scale = limit.unwrap_or(points[0].usage);
    fit.slope > 0.0 && fit.r2 >= LEAK_MIN_R2 && rise >= LEAK_MIN_RISE_SHARE * scale
}

struct Fit {
    /// Bytes per second, rising toward the kill.
    slope: f64,
    r2: f64,
}

/// Least squares of usage over time (time runs toward the kill, so the x of
/// a sample is minus its seconds before it).
fn fit(points: &[Point]) -> Option<Fit> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| -p.secs_before).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.usage).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for p in points {
        let (dx, dy) = (-p.secs_before - mean_x, p.usage - mean_y);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    // A perfectly flat series has no variance to explain: R² 0.
    let r2 = if syy > 0.0 {
        sxy * sxy / (sxx * syy)
    } else {
        0.0
    };
    Some(Fit { slope, r2 })
}

#[cfg(test)]
#[path = "growth_tests.rs"]
mod tests;
