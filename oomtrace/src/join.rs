//! Joins each kill with its victim's exit.
//!
//! A kill waits here until the exit hook reports the victim gone (matched by
//! the kill's sequence number, which the kernel carried from `mark_victim` to
//! `sched_process_exit`), or until `exit_wait` passes. The table is capped:
//! when exits never come (a victim stuck in the kernel, exits lost), the
//! oldest kill is written without its exit rather than held forever.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use oomtrace_ebpf::ExitRecord;

use crate::{enrich, schema::OomKill};

struct Pending {
    kill: OomKill,
    /// The `VICTIMS` map key the kernel registered, to remove if we give up.
    key: Option<u32>,
    deadline: Instant,
}

/// A kill that leaves the table without its exit; the caller removes `key`
/// from the kernel's `VICTIMS` map.
pub struct Abandoned {
    pub kill: OomKill,
    pub key: Option<u32>,
}

pub struct Joiner {
    pending: BTreeMap<u64, Pending>,
    exit_wait: Duration,
    cap: usize,
}

impl Joiner {
    pub fn new(exit_wait: Duration, cap: usize) -> Self {
        Self {
            pending: BTreeMap::new(),
            exit_wait,
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Adds a kill. Returns kills pushed out because the table was full.
    pub fn add_kill(&mut self, kill: OomKill, key: Option<u32>, now: Instant) -> Vec<Abandoned> {
        let mut evicted = Vec::new();
        while self.pending.len() >= self.cap {
            match self.pending.pop_first() {
                Some((_, p)) => evicted.push(Abandoned {
                    kill: p.kill,
                    key: p.key,
                }),
                None => break,
            }
        }
        self.pending.insert(
            kill.seq,
            Pending {
                kill,
                key,
                deadline: now + self.exit_wait,
            },
        );
        evicted
    }

    /// Completes the kill this exit belongs to, if it is still waiting.
    pub fn add_exit(&mut self, exit: &ExitRecord) -> Option<OomKill> {
        let mut pending = self.pending.remove(&exit.kill_seq)?;
        pending.kill.exit = enrich::exit_from(pending.kill.boot_ns, exit);
        Some(pending.kill)
    }

    /// Kills whose wait is over.
    pub fn expire(&mut self, now: Instant) -> Vec<Abandoned> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        due.into_iter()
            .filter_map(|seq| self.pending.remove(&seq))
            .map(|p| Abandoned {
                kill: p.kill,
                key: p.key,
            })
            .collect()
    }

    /// Everything still waiting, oldest first (at shutdown).
    pub fn drain(&mut self) -> Vec<Abandoned> {
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|p| Abandoned {
                kill: p.kill,
                key: p.key,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SCHEMA_VERSION;
    use oomtrace_ebpf::exit_valid;

    fn kill(seq: u64) -> OomKill {
        OomKill {
            schema: SCHEMA_VERSION,
            seq,
            time: String::new(),
            boot_ns: 1_000_000,
            source: "raw_tracepoint".into(),
            victim: Default::default(),
            trigger: Default::default(),
            oom: Default::default(),
            memcg: None,
            exit: Default::default(),
            container: None,
            k8s: None,
            systemd_unit: None,
            container_survives: None,
        }
    }

    fn exit(seq: u64) -> ExitRecord {
        ExitRecord {
            kill_seq: seq,
            boot_ns: 2_000_000,
            exit_code: 9,
            valid: exit_valid::EXIT_CODE,
            ..Default::default()
        }
    }

    #[test]
    fn exits_join_by_sequence_never_crossed() {
        let now = Instant::now();
        let mut j = Joiner::new(Duration::from_secs(2), 16);
        assert!(j.add_kill(kill(1), Some(100), now).is_empty());
        assert!(j.add_kill(kill(2), Some(200), now).is_empty());
        let second = j.add_exit(&exit(2)).expect("joined");
        assert_eq!(second.seq, 2);
        assert_eq!(second.exit.code, Some(137));
        assert_eq!(second.exit.delay_ms, Some(1.0));
        assert!(j.add_exit(&exit(2)).is_none(), "joined once");
        assert!(j.add_exit(&exit(9)).is_none(), "unknown kill");
        assert_eq!(j.len(), 1);
    }

    #[test]
    fn unmatched_kills_expire_after_the_wait() {
        let now = Instant::now();
        let mut j = Joiner::new(Duration::from_millis(100), 16);
        j.add_kill(kill(1), Some(100), now);
        assert!(j.expire(now + Duration::from_millis(99)).is_empty());
        let gone = j.expire(now + Duration::from_millis(100));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].key, Some(100));
        assert!(!gone[0].kill.exit.observed);
    }

    #[test]
    fn the_table_is_capped_oldest_out_first() {
        let now = Instant::now();
        let mut j = Joiner::new(Duration::from_secs(60), 3);
        for seq in 0..3 {
            assert!(j.add_kill(kill(seq), None, now).is_empty());
        }
        let evicted = j.add_kill(kill(3), None, now);
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].kill.seq, 0);
        assert_eq!(j.len(), 3);
        let rest: Vec<u64> = j.drain().iter().map(|a| a.kill.seq).collect();
        assert_eq!(rest, vec![1, 2, 3]);
    }
}
