//! The verdict on each container exit: why a container's PID 1 ended, and
//! which other processes of the container the OOM killer took during its
//! run.
//!
//! The kernel tells, at the PID 1's exit, which kill it had registered for
//! it (`exit_of`: an OOM kill or a signal kill, one sequence for both).
//! Every kill is noted here as it arrives, so the exit finds what that kill
//! was; an exit that arrives before its kill (the kernel can let a victim's
//! exit pass its mark on another CPU) waits for it, briefly.
//!
//! OOM kills of other processes are counted per pid namespace: the
//! container's own (a container with a pid namespace is exactly the
//! processes of that namespace), until its PID 1 exits.
//!
//! A container in the host's pid namespace (`--pid=host`) has no PID 1 of
//! its own. There, a container has ended when a kill's victim was the last
//! process of its cgroup (found in userspace once the victim has exited,
//! as `container_survives` is): that kill's `container_exit` is written,
//! with the OOM kills counted by container id. A container there whose
//! last process exits by itself is not seen.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use oomtrace_record::{
    ContainerExit, ExitCause, OomKill, Origin, OtherOomKills, SCHEMA_VERSION, Sender, SignalKill,
};

use super::convert::status_cause;
use crate::kernel::clock;

/// How many kills are remembered for the exits that close them: far more
/// than can wait for an exit at once (`--max-pending` defaults lower).
const REMEMBERED_KILLS: usize = 8192;
/// Pid namespaces (or host-pid-namespace containers) whose OOM kills are
/// counted at once; beyond, the one with the oldest kill is dropped (its
/// exit then counts fewer).
const COUNTED_NAMESPACES: usize = 4096;
/// The newest kill seqs a `container_exit` lists.
const LISTED_SEQS: usize = 64;
/// How long an exit waits for the kill it names: the kill record is
/// written within microseconds of the registration the exit saw.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// A kill that ended a container in the host's pid namespace.
struct HostEnd<'a> {
    container_id: &'a str,
    victim: &'a oomtrace_record::Victim,
    boot_ns: u64,
    exit: &'a oomtrace_record::Exit,
    /// The kill's cause, seq and sender; None for a mark without a kill.
    cause: Option<(ExitCause, u64, Option<Sender>)>,
}

/// Counts kill `seq` under `key`; beyond [`COUNTED_NAMESPACES`] keys, the
/// one with the oldest kill is dropped first.
fn bounded_count<K: std::hash::Hash + Eq + Clone>(
    counts: &mut HashMap<K, Counted>,
    key: K,
    seq: u64,
) {
    if !counts.contains_key(&key) && counts.len() >= COUNTED_NAMESPACES {
        let oldest = counts
            .iter()
            .min_by_key(|(_, c)| c.last_seq)
            .map(|(k, _)| k.clone());
        if let Some(oldest) = oldest {
            counts.remove(&oldest);
        }
    }
    let counted = counts.entry(key).or_default();
    counted.count += 1;
    counted.last_seq = seq;
    counted.seqs.push_back(seq);
    if counted.seqs.len() > LISTED_SEQS {
        counted.seqs.pop_front();
    }
}

/// What a kill was, for the exit that closes it.
#[derive(Clone, Debug)]
enum Kill {
    /// The OOM killer's; `killed` is `oom.killed`.
    Oom {
        killed: Option<bool>,
    },
    Signal(Box<Sender>),
}

#[derive(Default)]
struct Counted {
    count: u64,
    seqs: VecDeque<u64>,
    last_seq: u64,
}

pub struct Containers {
    origin: Origin,
    /// When this collector started watching (RFC 3339).
    since: String,
    kills: BTreeMap<u64, Kill>,
    by_pid_ns: HashMap<u64, Counted>,
    /// OOM kills in containers in the host's pid namespace, by container id.
    by_container: HashMap<String, Counted>,
    waiting: Vec<(Instant, ContainerExit, u64)>,
}

impl Containers {
    pub fn new(origin: Origin, since: String) -> Self {
        Self {
            origin,
            since,
            kills: BTreeMap::new(),
            by_pid_ns: HashMap::new(),
            by_container: HashMap::new(),
            waiting: Vec::new(),
        }
    }

    /// An OOM kill, as it arrives. Returns exits that waited for it.
    pub fn note_oom(&mut self, kill: &OomKill) -> Vec<ContainerExit> {
        let killed = kill.oom.killed;
        self.remember(kill.seq, Kill::Oom { killed });
        if kill.victim.container_init == Some(false)
            && killed != Some(false)
            && let Some(pid_ns) = kill.victim.pid_ns
        {
            bounded_count(&mut self.by_pid_ns, pid_ns, kill.seq);
        }
        self.release_waiting_for(kill.seq)
    }

    /// Whether kill `seq` is a signal kill (of those remembered).
    pub fn is_signal_kill(&self, seq: u64) -> bool {
        matches!(self.kills.get(&seq), Some(Kill::Signal(_)))
    }

    /// A signal kill, as it arrives. Returns exits that waited for it.
    pub fn note_signal(&mut self, kill: &SignalKill) -> Vec<ContainerExit> {
        self.remember(kill.seq, Kill::Signal(Box::new(kill.sender.clone())));
        self.release_waiting_for(kill.seq)
    }

    /// A container PID 1's exit; `exit_of` is the kill the kernel had
    /// registered for it. The finished record, unless it must wait for
    /// that kill.
    pub fn exited(
        &mut self,
        exit: ContainerExit,
        exit_of: Option<u64>,
        now: Instant,
    ) -> Option<ContainerExit> {
        match exit_of {
            Some(seq) if !self.kills.contains_key(&seq) => {
                self.waiting.push((now + KILL_WAIT, exit, seq));
                None
            }
            _ => Some(self.settle(exit, exit_of)),
        }
    }

    /// Exits whose kill did not come in time, settled without it.
    pub fn tick(&mut self, now: Instant) -> Vec<ContainerExit> {
        let (due, keep) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(until, _, _)| *until <= now);
        self.waiting = keep;
        due.into_iter()
            .map(|(_, exit, _)| self.settle(exit, None))
            .collect()
    }

    /// At stop: every exit still waiting.
    pub fn finish(&mut self) -> Vec<ContainerExit> {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(_, exit, _)| self.settle(exit, None))
            .collect()
    }

    fn release_waiting_for(&mut self, seq: u64) -> Vec<ContainerExit> {
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let (ready, keep) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(_, _, of)| *of == seq);
        self.waiting = keep;
        ready
            .into_iter()
            .map(|(_, exit, of)| self.settle(exit, Some(of)))
            .collect()
    }

    fn remember(&mut self, seq: u64, kill: Kill) {
        self.kills.insert(seq, kill);
        while self.kills.len() > REMEMBERED_KILLS {
            self.kills.pop_first();
        }
    }

    /// A finished OOM kill in a container in the host's pid namespace
    /// (`host_pid_ns`): counted for the container, or, when its victim was
    /// the container's last process, that container's `container_exit`.
    pub fn host_oom_kill(
        &mut self,
        kill: &OomKill,
        host_pid_ns: Option<u64>,
    ) -> Option<ContainerExit> {
        let container = kill.container.as_ref()?;
        if kill.victim.pid_ns.is_none() || kill.victim.pid_ns != host_pid_ns {
            return None;
        }
        if kill.container_survives != Some(false) {
            if kill.oom.killed != Some(false) {
                bounded_count(&mut self.by_container, container.id.clone(), kill.seq);
            }
            return None;
        }
        let cause = if kill.oom.killed == Some(false) {
            None
        } else {
            Some((ExitCause::OomKill, kill.seq, None))
        };
        let mut exit = self.ended(HostEnd {
            container_id: &container.id,
            victim: &kill.victim,
            boot_ns: kill.boot_ns,
            exit: &kill.exit,
            cause,
        });
        exit.container = kill.container.clone();
        exit.k8s = kill.k8s.clone();
        exit.systemd_unit = kill.systemd_unit.clone();
        Some(exit)
    }

    /// As [`Self::host_oom_kill`], for a signal kill.
    pub fn host_signal_kill(
        &mut self,
        kill: &SignalKill,
        host_pid_ns: Option<u64>,
    ) -> Option<ContainerExit> {
        let container = kill.container.as_ref()?;
        let in_host = kill.target.pid_ns.is_some() && kill.target.pid_ns == host_pid_ns;
        if !in_host || kill.container_survives != Some(false) {
            return None;
        }
        let mut exit = self.ended(HostEnd {
            container_id: &container.id,
            victim: &kill.target,
            boot_ns: kill.boot_ns,
            exit: &kill.exit,
            cause: Some((ExitCause::SignalKill, kill.seq, Some(kill.sender.clone()))),
        });
        exit.container = kill.container.clone();
        exit.k8s = kill.k8s.clone();
        exit.systemd_unit = kill.systemd_unit.clone();
        Some(exit)
    }

    fn ended(&mut self, end: HostEnd<'_>) -> ContainerExit {
        // The exit's own instant, from the kill's and its delay (µs).
        let delay_ns = end.exit.delay_ms.map_or(0, |ms| (ms * 1e6).round() as u64);
        let boot_ns = end.boot_ns + delay_ns;
        let counted = self
            .by_container
            .remove(end.container_id)
            .unwrap_or_default();
        let (cause, cause_seq, sender) = match end.cause {
            Some((cause, seq, sender)) if end.exit.signal == Some(9) => (cause, Some(seq), sender),
            _ => (status_cause(end.exit), None, None),
        };
        ContainerExit {
            schema: SCHEMA_VERSION,
            origin: self.origin.clone(),
            time: clock::rfc3339_from_boot_ns(boot_ns),
            boot_ns,
            pid: end.victim.pid,
            pid_ns: end.victim.pid_ns,
            comm: end.victim.comm.clone(),
            comm_hex: end.victim.comm_hex.clone(),
            cgroup: end.victim.cgroup.clone(),
            container: None,
            k8s: None,
            systemd_unit: None,
            exit: oomtrace_record::Exit {
                delay_ms: None,
                ..end.exit.clone()
            },
            cause,
            cause_seq,
            sender,
            other_oom_kills: OtherOomKills {
                count: counted.count,
                seqs: counted.seqs.into(),
                since: self.since.clone(),
            },
        }
    }

    /// The cause, from the kill the kernel named; without one, from the
    /// wait status alone (the draft's cause). A mark without a kill
    /// (`oom.killed` false) is no OOM kill: the status decides.
    fn settle(&mut self, mut exit: ContainerExit, exit_of: Option<u64>) -> ContainerExit {
        match exit_of.and_then(|seq| Some((seq, self.kills.get(&seq)?))) {
            Some((seq, Kill::Oom { killed })) if *killed != Some(false) => {
                exit.cause = ExitCause::OomKill;
                exit.cause_seq = Some(seq);
            }
            Some((seq, Kill::Signal(sender))) if exit.exit.signal == Some(9) => {
                exit.cause = ExitCause::SignalKill;
                exit.cause_seq = Some(seq);
                exit.sender = Some((**sender).clone());
            }
            _ => {}
        }
        let counted = exit
            .pid_ns
            .and_then(|ns| self.by_pid_ns.remove(&ns))
            .unwrap_or_default();
        exit.other_oom_kills = OtherOomKills {
            count: counted.count,
            seqs: counted.seqs.into(),
            since: self.since.clone(),
        };
        exit
    }
}
