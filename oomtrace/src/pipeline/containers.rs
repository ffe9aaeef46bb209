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

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use oomtrace_record::{ContainerExit, ExitCause, OomKill, OtherOomKills, Sender, SignalKill};

/// How many kills are remembered for the exits that close them: far more
/// than can wait for an exit at once (`--max-pending` defaults lower).
const REMEMBERED_KILLS: usize = 8192;
/// Pid namespaces whose OOM kills are counted at once; beyond, the one
/// with the oldest kill is dropped (its PID 1's exit then counts fewer).
const COUNTED_NAMESPACES: usize = 4096;
/// The newest kill seqs a `container_exit` lists.
const LISTED_SEQS: usize = 64;
/// How long an exit waits for the kill it names: the kill record is
/// written within microseconds of the registration the exit saw.
const KILL_WAIT: Duration = Duration::from_secs(1);

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
    /// When this collector started watching (RFC 3339).
    since: String,
    kills: BTreeMap<u64, Kill>,
    by_pid_ns: HashMap<u64, Counted>,
    waiting: Vec<(Instant, ContainerExit, u64)>,
}

impl Containers {
    pub fn new(since: String) -> Self {
        Self {
            since,
            kills: BTreeMap::new(),
            by_pid_ns: HashMap::new(),
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
            if !self.by_pid_ns.contains_key(&pid_ns) && self.by_pid_ns.len() >= COUNTED_NAMESPACES {
                self.drop_oldest_namespace();
            }
            let counted = self.by_pid_ns.entry(pid_ns).or_default();
            counted.count += 1;
            counted.last_seq = kill.seq;
            counted.seqs.push_back(kill.seq);
            if counted.seqs.len() > LISTED_SEQS {
                counted.seqs.pop_front();
            }
        }
        self.release_waiting_for(kill.seq)
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

    fn drop_oldest_namespace(&mut self) {
        if let Some(oldest) = self
            .by_pid_ns
            .iter()
            .min_by_key(|(_, c)| c.last_seq)
            .map(|(ns, _)| *ns)
        {
            self.by_pid_ns.remove(&oldest);
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
