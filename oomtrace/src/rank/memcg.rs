//! A memory cgroup's figures for ranking: its own limit and swap limit
//! (what `mem_cgroup_get_max` reads), and usage and working set through
//! the sampler's readers.

use std::path::Path;

use crate::pipeline::sampler::{Buffer, CgroupFiles, Version, parse_v2_max};

/// One memcg with a limit of its own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limited {
    /// Its own limit, bytes.
    pub limit: u64,
    /// The swap it may use on top, bytes: v1 `memsw.limit - limit`, v2
    /// `swap.max`. None: no swap limit.
    pub swap_limit: Option<u64>,
    /// v1 `memory.swappiness`; v2 has none of its own (the node's).
    pub swappiness: Option<u64>,
    pub usage: Option<u64>,
    pub working_set: Option<u64>,
    /// Why usage could not be read, if it could not.
    pub error: Option<String>,
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| parse_v2_max(&text))
}

/// The memcg at `dir`, or None when it has no limit of its own (or its
/// limit file cannot be read). `memory.limit_in_bytes` (v1) has the same
/// form as v2's `memory.max` where it matters: bytes, or a number past
/// 2^62 for "none".
pub fn read(dir: &Path, version: Version, buffer: &mut Buffer) -> Option<Limited> {
    let limit_file = match version {
        Version::V1 => "memory.limit_in_bytes",
        Version::V2 => "memory.max",
    };
    let limit = read_number(&dir.join(limit_file))?;
    let (swap_limit, swappiness) = match version {
        Version::V1 => (
            // Without swap accounting there is no memsw file, and the
            // kernel counts the node's swap (capped by nothing).
            read_number(&dir.join("memory.memsw.limit_in_bytes"))
                .map(|memsw| memsw.saturating_sub(limit)),
            std::fs::read_to_string(dir.join("memory.swappiness"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        ),
        Version::V2 => (read_number(&dir.join("memory.swap.max")), None),
    };
    let mut limited = Limited {
        limit,
        swap_limit,
        swappiness,
        ..Limited::default()
    };
    match CgroupFiles::open(dir, version).and_then(|files| files.read(buffer)) {
        Ok(reading) => {
            limited.usage = Some(reading.usage);
            limited.working_set = reading
                .stat
                .inactive_file
                .map(|inactive| reading.usage.saturating_sub(inactive));
        }
        Err(e) => {
            limited.error = Some(
                std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": "),
            )
        }
    }
    Some(limited)
}
