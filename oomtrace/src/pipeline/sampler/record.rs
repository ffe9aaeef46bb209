//! `oom_kill.memory` from the store: only samples taken at or before the
//! kill (`boot_ns`), so nothing read while the victim's memory was being
//! freed counts.

use std::time::Duration;

use oomtrace_record::{Memory, MemoryStat, OomKill, Pressure, PressureSource};

use super::{
    files::Version,
    growth::{self, Context},
    store::{Point, Series, Store},
};

/// The memory of a kill's victim. None when its memcg path is unknown.
pub fn memory_of(
    store: &Store,
    kill: &OomKill,
    version: Version,
    window: Duration,
) -> Option<Memory> {
    let victim_path = kill.memcg.as_ref().and_then(|m| m.path.as_deref()).or(kill
        .victim
        .cgroup
        .path
        .as_deref())?;
    let at = kill.boot_ns;
    let latest = |path: &str| -> Option<&Point> { store.get(path)?.before(at).next_back() };
    let victim_latest = latest(victim_path);
    let stat = victim_latest.map(|p| memory_stat(victim_path, p, at));
    let fired_path = kill.oom.memcg_path.as_deref().filter(|p| *p != victim_path);
    let fired_stat = fired_path.and_then(|path| latest(path).map(|p| memory_stat(path, p, at)));
    let working_set_bytes = stat.as_ref().and_then(|s| {
        s.inactive_file_bytes
            .map(|inactive| s.usage_bytes.saturating_sub(inactive))
    });
    let pressure = match version {
        Version::V2 => victim_latest
            .and_then(|p| p.pressure())
            .map(|psi| (PressureSource::Cgroup, psi)),
        Version::V1 => store
            .system_pressure_before(at)
            .map(|psi| (PressureSource::System, psi)),
    }
    .map(|(source, psi)| Pressure {
        source,
        some_avg10: percent(psi.some_avg10),
        full_avg10: percent(psi.full_avg10),
    });
    // The memcg that hit its limit tells how it got there; the victim's
    // when that one was not sampled.
    let history_of = fired_path
        .filter(|path| latest(path).is_some())
        .or_else(|| victim_latest.is_some().then_some(victim_path));
    let mut memory = Memory {
        stat,
        fired_stat,
        working_set_bytes,
        pressure,
        ..Memory::default()
    };
    let (Some(path), Some(series)) = (history_of, history_of.and_then(|p| store.get(p))) else {
        return Some(memory);
    };
    let window_ns = window.as_nanos().min(u128::from(u64::MAX)) as u64;
    let points: Vec<&Point> = in_window(series, at, window_ns).collect();
    memory.history = points
        .iter()
        .map(|p| {
            let s = p.stat();
            [
                ms_before(at, p.boot_ns),
                p.usage,
                s.anon.unwrap_or(0),
                s.file.unwrap_or(0),
            ]
        })
        .collect();
    let level = kill
        .memcg
        .as_ref()
        .and_then(|m| m.levels.iter().find(|l| l.path.as_deref() == Some(path)));
    let last = points.last().map(|p| p.stat());
    let context = Context {
        limit: level.and_then(|l| l.limit_bytes),
        usage_at_kill: level.map(|l| l.usage_bytes),
        anon: last.and_then(|s| s.anon),
        shmem: last.and_then(|s| s.shmem),
    };
    let growth_points: Vec<growth::Point> = points
        .iter()
        .map(|p| growth::Point {
            secs_before: at.saturating_sub(p.boot_ns) as f64 / 1e9,
            usage: p.usage as f64,
        })
        .collect();
    memory.history_path = Some(path.to_string());
    memory.growth = growth::classify(&growth_points, &context);
    Some(memory)
}

fn in_window(series: &Series, at: u64, window_ns: u64) -> impl Iterator<Item = &Point> {
    series
        .before(at)
        .filter(move |p| at.saturating_sub(p.boot_ns) <= window_ns)
}

/// PSI's two decimals, as the kernel printed them (an f32 widened to f64
/// would print 0.029999999329447743 for 0.03).
fn percent(value: f32) -> f64 {
    (f64::from(value) * 100.0).round() / 100.0
}

fn ms_before(at: u64, sample_ns: u64) -> u64 {
    at.saturating_sub(sample_ns) / 1_000_000
}

fn memory_stat(path: &str, point: &Point, at: u64) -> MemoryStat {
    let s = point.stat();
    MemoryStat {
        path: path.to_string(),
        age_ms: ms_before(at, point.boot_ns),
        usage_bytes: point.usage,
        anon_bytes: s.anon,
        file_bytes: s.file,
        active_file_bytes: s.active_file,
        inactive_file_bytes: s.inactive_file,
        shmem_bytes: s.shmem,
        kernel_bytes: s.kernel,
        slab_bytes: s.slab,
    }
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
