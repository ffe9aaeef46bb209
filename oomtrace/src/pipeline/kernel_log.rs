//! Reads the kernel's own log lines about a kill (kernel/kmsg.rs) into its
//! record: `oom.kernel_log`, `oom.kernel_stat` (the fired memcg's
//! `memory.stat` as the kernel printed it), and, unless `oom_kill_process`
//! was hooked, `oom.constraint` and `oom.memcg_path` from the `oom-kill:`
//! summary.
//!
//! A kill's `Killed process` line and its ring buffer record reach the
//! pipeline by different threads, in either order. A line that comes first
//! waits here (briefly, bounded); a kill that comes first waits in the
//! joiner for up to [`LINE_WAIT`].

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use oomtrace_record::{Constraint, KernelLog, KernelStat, MemcgSource, OomKill, text_fields};

use crate::kernel::kmsg::{KilledLine, Mismatch};

/// How long a kill waits for its `Killed process` line. The kernel prints
/// it right after mark_victim, in the same call, so it is normally read
/// within milliseconds.
pub const LINE_WAIT: Duration = Duration::from_secs(1);
/// Lines that came before their kills, kept this long at most.
const EARLY_LINE_TTL: Duration = Duration::from_secs(10);
/// And at most this many (a storm of kills whose records were lost).
const EARLY_LINES_MAX: usize = 4096;

/// The lines that came before their kill records.
#[derive(Debug)]
pub struct KernelLines {
    read: bool,
    early: VecDeque<(Instant, KilledLine)>,
}

impl KernelLines {
    /// `read`: whether /dev/kmsg is read at all.
    pub fn new(read: bool) -> Self {
        Self {
            read,
            early: VecDeque::new(),
        }
    }

    /// A new kill: settles it from a line that came first, or says whether
    /// it should wait for its line.
    pub fn meet_kill(&mut self, kill: &mut OomKill, now: Instant) -> bool {
        if !self.read {
            kill.oom.kernel_log = Some(KernelLog::NotRead);
            return false;
        }
        self.expire(now);
        let found = self
            .early
            .iter()
            .position(|(_, line)| kill.victim.tid == Some(line.tid));
        match found.and_then(|i| self.early.remove(i)) {
            Some((_, line)) => {
                settle(kill, &line);
                false
            }
            None => true,
        }
    }

    /// A line no waiting kill took: keep it for its kill, still to come.
    pub fn keep(&mut self, line: KilledLine, now: Instant) {
        self.expire(now);
        if self.early.len() >= EARLY_LINES_MAX {
            self.early.pop_front();
        }
        self.early.push_back((now, line));
    }

    fn expire(&mut self, now: Instant) {
        while self
            .early
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > EARLY_LINE_TTL)
        {
            self.early.pop_front();
        }
    }
}

/// Reads the kernel's line about this kill into its record.
pub fn settle(kill: &mut OomKill, line: &KilledLine) {
    let Some(summary) = &line.summary else {
        kill.oom.kernel_log = Some(KernelLog::Absent);
        return;
    };
    let comm = raw_bytes(kill.victim.comm.as_deref(), kill.victim.comm_hex.as_deref());
    let task_memcg = kill
        .memcg
        .as_ref()
        .and_then(|m| raw_bytes(m.path.as_deref(), m.path_hex.as_deref()));
    let (Some(comm), Some(task_memcg)) = (comm, task_memcg) else {
        kill.oom.kernel_log = Some(KernelLog::Unverified);
        return;
    };
    let fired = summary.fired_memcg(&comm, kill.victim.pid, kill.victim.tid, &task_memcg);
    match fired {
        Ok(fired) => {
            kill.oom.kernel_log = Some(KernelLog::Matched);
            // The block is the fired memcg's (oc->memcg), printed in the
            // same report as the summary that matched this victim.
            kill.oom.kernel_stat = line
                .memcg_stat
                .as_ref()
                .filter(|block| fired.as_deref() == Some(block.path.as_slice()))
                .map(|block| KernelStat {
                    path: text_fields(&block.path).0,
                    fields: block.fields.iter().cloned().collect(),
                });
            if kill.oom.memcg_source == Some(MemcgSource::OomKillProcess) {
                return;
            }
            let (fired, fired_hex) = match fired {
                Some(path) => {
                    let (text, hex) = text_fields(&path);
                    (Some(text), hex)
                }
                None => (None, None),
            };
            if kill.oom.memcg_path.is_some() && kill.oom.memcg_path != fired {
                log::debug!(
                    "kill {}: the kernel's line names {fired:?}, usage at limit suggested {:?}",
                    kill.seq,
                    kill.oom.memcg_path
                );
            }
            kill.oom.constraint = summary.constraint;
            kill.oom.memcg_source = fired.as_ref().map(|_| MemcgSource::KernelLog);
            kill.oom.memcg_path = fired;
            kill.oom.memcg_path_hex = fired_hex;
            kill.oom.memcg_unknown = None;
            if kill.oom.memcg_path.is_none() && summary.constraint == Some(Constraint::Memcg) {
                // fired_memcg() never gives this pair; keep the record honest anyway.
                kill.oom.kernel_log = Some(KernelLog::Unverified);
            }
        }
        Err(Mismatch::OtherTask) => kill.oom.kernel_log = Some(KernelLog::Absent),
        Err(Mismatch::Unverifiable) => kill.oom.kernel_log = Some(KernelLog::Unverified),
    }
}

/// A kernel string's exact bytes, from its record fields: the `*_hex`
/// sibling when it is there (the text was not UTF-8), else the text.
fn raw_bytes(text: Option<&str>, hex: Option<&str>) -> Option<Vec<u8>> {
    if let Some(hex) = hex {
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
    }
    text.map(|t| t.as_bytes().to_vec())
}
