//! Joins each kill with its victim's exit, and keeps watching for the exits
//! of victims whose kill was written without one.
//!
//! A kill *waits* here until the exit hook reports its victim gone (matched
//! by the kill's sequence number, which the kernel carried from
//! `mark_victim` to `sched_process_exit`), or until the exit wait passes;
//! then it is written. Written without its exit, it stays *watched* for the
//! retention horizon: an exit within it becomes a `late_exit` record. After
//! the horizon, or when the kernel's victim map fills up, the oldest watched
//! victim is *forgotten*: the kernel stops watching it, and the kill counts
//! as one whose exit was never seen.
//!
//! Bounds: at most `max_waiting` kills wait (beyond, the oldest is written
//! at once, and watched), and at most `max_tracked` victims hold an entry in
//! the kernel's map (beyond, the oldest watched one is forgotten first:
//! victims still waiting keep their places).
//!
//! The kernel hands a kill record over before any exit that closes it (see
//! oomtrace-ebpf/src/registry.rs), so an exit whose kill is not here was
//! forgotten already, and is dropped.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use oomtrace_ebpf::ExitRecord;
use oomtrace_record::{Exit, KernelLog, LateExit, OomKill, Origin, SCHEMA_VERSION, SignalKill};

use super::convert;
use crate::kernel::clock;

/// How the kernel tracks a kill's victim, from its kill record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracking {
    /// Registered in the kernel's victim map under this key.
    Key(u32),
    /// Its process was already registered by kill `seq`, whose exit closes
    /// this one too.
    SameAs(u64),
    /// Not registered: no exit will come.
    Untracked,
}

/// A kill the joiner holds: the kernel OOM killer's, or a SIGKILL from
/// anyone else. Both are closed by their victim's exit alike (the kernel
/// registers both kinds of victim in one map, under one sequence).
#[derive(Debug)]
pub enum Held {
    Oom(Box<OomKill>),
    Signal(Box<SignalKill>),
}

impl Held {
    fn boot_ns(&self) -> u64 {
        match self {
            Self::Oom(k) => k.boot_ns,
            Self::Signal(k) => k.boot_ns,
        }
    }

    fn exit_mut(&mut self) -> &mut Exit {
        match self {
            Self::Oom(k) => &mut k.exit,
            Self::Signal(k) => &mut k.exit,
        }
    }

    /// The victim's (target's) pid and tid.
    fn pid_tid(&self) -> (Option<u32>, Option<u32>) {
        match self {
            Self::Oom(k) => (k.victim.pid, k.victim.tid),
            Self::Signal(k) => (k.target.pid, k.target.tid),
        }
    }

    fn oom_mut(&mut self) -> Option<&mut OomKill> {
        match self {
            Self::Oom(k) => Some(k),
            Self::Signal(_) => None,
        }
    }
}

/// What the joiner decided; the pipeline carries it out.
#[derive(Debug)]
pub enum Outcome {
    /// Write this kill: joined with its exit, or without it.
    Kill(Held),
    /// Write this exit of a victim written earlier without one.
    LateExit(Box<LateExit>),
    /// Stop watching for kill `seq`'s exit, and release its victim map
    /// entry (`key`) if it holds one.
    Forget { seq: u64, key: Option<u32> },
}

pub struct JoinLimits {
    pub exit_wait: Duration,
    pub retention: Duration,
    pub max_waiting: usize,
    pub max_tracked: usize,
}

/// Where a waiting kill's exit stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExitState {
    /// Awaited until this instant.
    Awaited(Instant),
    /// In: `kill.exit` holds it.
    Joined,
    /// None will come (untracked victim, or its first kill is forgotten).
    NeverComes,
}

struct Waiting {
    kill: Held,
    key: Option<u32>,
    exit: ExitState,
    /// Until when the kernel's log line for this kill is awaited; None once
    /// it is in, or when it is not read at all.
    line_until: Option<Instant>,
    /// Later kills of the same process (`Tracking::SameAs` this one).
    aliases: Vec<u64>,
}

impl Waiting {
    /// Done waiting: its exit is in (or will not come, or its wait is
    /// over), and so is its log line.
    fn due(&self, now: Instant) -> bool {
        let exit_done = match self.exit {
            ExitState::Awaited(until) => until <= now,
            ExitState::Joined | ExitState::NeverComes => true,
        };
        exit_done && self.line_until.is_none_or(|until| until <= now)
    }
}

struct Watched {
    key: Option<u32>,
    pid: Option<u32>,
    tid: Option<u32>,
    kill_boot_ns: u64,
    until: Instant,
    aliases: Vec<u64>,
}

pub struct Joiner {
    waiting: BTreeMap<u64, Waiting>,
    watched: BTreeMap<u64, Watched>,
    limits: JoinLimits,
    origin: Origin,
}

impl Joiner {
    pub fn new(limits: JoinLimits, origin: Origin) -> Self {
        Self {
            waiting: BTreeMap::new(),
            watched: BTreeMap::new(),
            limits: JoinLimits {
                max_waiting: limits.max_waiting.max(1),
                max_tracked: limits.max_tracked.max(1),
                ..limits
            },
            origin,
        }
    }

    /// Kills not written yet: waiting for their exits or log lines.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Victims written without their exits, still watched.
    #[cfg(test)]
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Takes a new OOM kill. `line_until`: how long to hold it for the
    /// kernel's log line about it (None: not awaited).
    pub fn add_kill(
        &mut self,
        kill: OomKill,
        tracking: Tracking,
        now: Instant,
        line_until: Option<Instant>,
    ) -> Vec<Outcome> {
        let seq = kill.seq;
        self.add(seq, Held::Oom(Box::new(kill)), tracking, now, line_until)
    }

    /// Takes a new signal kill (no kernel log line is awaited for it).
    pub fn add_signal_kill(
        &mut self,
        kill: SignalKill,
        tracking: Tracking,
        now: Instant,
    ) -> Vec<Outcome> {
        let seq = kill.seq;
        self.add(seq, Held::Signal(Box::new(kill)), tracking, now, None)
    }

    fn add(
        &mut self,
        seq: u64,
        kill: Held,
        tracking: Tracking,
        now: Instant,
        line_until: Option<Instant>,
    ) -> Vec<Outcome> {
        let mut out = Vec::new();
        let (key, exit) = match tracking {
            Tracking::Untracked => (None, ExitState::NeverComes),
            Tracking::SameAs(primary) => {
                match (
                    self.waiting.get_mut(&primary),
                    self.watched.get_mut(&primary),
                ) {
                    (Some(waiting), _) => waiting.aliases.push(seq),
                    (None, Some(watched)) => watched.aliases.push(seq),
                    // That kill is forgotten already: nothing will close this one.
                    (None, None) => {}
                }
                let closable =
                    self.waiting.contains_key(&primary) || self.watched.contains_key(&primary);
                let exit = if closable {
                    ExitState::Awaited(now + self.limits.exit_wait)
                } else {
                    ExitState::NeverComes
                };
                (None, exit)
            }
            Tracking::Key(key) => (Some(key), ExitState::Awaited(now + self.limits.exit_wait)),
        };
        if exit == ExitState::NeverComes && line_until.is_none() {
            out.push(Outcome::Kill(kill));
            return out;
        }
        while self.waiting.len() >= self.limits.max_waiting {
            let Some((oldest, waiting)) = self.waiting.pop_first() else {
                break;
            };
            self.release(oldest, waiting, now, &mut out);
        }
        if key.is_some() {
            while self.tracked() >= self.limits.max_tracked {
                let Some(oldest) = self.oldest_watched_key() else {
                    break;
                };
                self.forget(oldest, &mut out);
            }
        }
        self.waiting.insert(
            seq,
            Waiting {
                kill,
                key,
                exit,
                line_until,
                aliases: Vec::new(),
            },
        );
        out
    }

    /// An exit from the kernel: completes its kill, and the kills that share
    /// its victim.
    pub fn add_exit(&mut self, exit: &ExitRecord) -> Vec<Outcome> {
        let mut out = Vec::new();
        if !self.close(exit.kill_seq, exit, &mut out) {
            log::debug!(
                "exit for kill {} that is no longer watched: dropped",
                exit.kill_seq
            );
        }
        out
    }

    /// The kernel logged its line about the kill of task `tid`: `settle`
    /// reads it into the earliest kill still awaiting one for that task.
    /// False when no kill awaits it (yet).
    pub fn settle_line(
        &mut self,
        tid: u32,
        settle: impl FnOnce(&mut OomKill),
        out: &mut Vec<Outcome>,
    ) -> bool {
        let Some((&seq, waiting)) = self
            .waiting
            .iter_mut()
            .find(|(_, w)| w.line_until.is_some() && w.kill.pid_tid().1 == Some(tid))
        else {
            return false;
        };
        if let Some(kill) = waiting.kill.oom_mut() {
            settle(kill);
        }
        waiting.line_until = None;
        if waiting.exit != ExitState::NeverComes && waiting.exit != ExitState::Joined {
            return true;
        }
        if let Some(waiting) = self.waiting.remove(&seq) {
            self.release(seq, waiting, Instant::now(), out);
        }
        true
    }

    /// Closes kill `seq` with `exit`; false when it is not here.
    fn close(&mut self, seq: u64, exit: &ExitRecord, out: &mut Vec<Outcome>) -> bool {
        let aliases = if let Some(waiting) = self.waiting.get_mut(&seq) {
            *waiting.kill.exit_mut() = convert::exit(waiting.kill.boot_ns(), exit);
            waiting.exit = ExitState::Joined;
            let aliases = std::mem::take(&mut waiting.aliases);
            if waiting.line_until.is_none()
                && let Some(waiting) = self.waiting.remove(&seq)
            {
                out.push(Outcome::Kill(waiting.kill));
            }
            aliases
        } else if let Some(watched) = self.watched.remove(&seq) {
            out.push(Outcome::LateExit(Box::new(LateExit {
                schema: SCHEMA_VERSION,
                origin: self.origin.clone(),
                seq,
                time: clock::rfc3339_from_boot_ns(exit.boot_ns),
                boot_ns: exit.boot_ns,
                pid: watched.pid,
                tid: watched.tid,
                exit: convert::exit(watched.kill_boot_ns, exit),
            })));
            watched.aliases
        } else {
            return false;
        };
        for alias in aliases {
            self.close(alias, exit, out);
        }
        true
    }

    /// Writes the kills whose wait is over, and forgets the victims watched
    /// past the retention horizon.
    pub fn tick(&mut self, now: Instant) -> Vec<Outcome> {
        let mut out = Vec::new();
        let due: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.due(now))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            if let Some(waiting) = self.waiting.remove(&seq) {
                self.release(seq, waiting, now, &mut out);
            }
        }
        let expired: Vec<u64> = self
            .watched
            .iter()
            .filter(|(_, w)| w.until <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            self.forget(seq, &mut out);
        }
        out
    }

    /// At stop: every waiting kill is written as it stands, and every victim
    /// still watched is forgotten.
    pub fn finish(&mut self, now: Instant) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Some((seq, waiting)) = self.waiting.pop_first() {
            self.release(seq, waiting, now, &mut out);
        }
        while let Some(&seq) = self.watched.keys().next() {
            self.forget(seq, &mut out);
        }
        out
    }

    /// Writes a kill that waits no longer. Without its exit, and with one to
    /// come, its victim is watched from now on.
    fn release(&mut self, seq: u64, waiting: Waiting, now: Instant, out: &mut Vec<Outcome>) {
        let mut kill = waiting.kill;
        if waiting.line_until.is_some()
            && let Some(kill) = kill.oom_mut()
        {
            kill.oom.kernel_log = Some(KernelLog::Missing);
        }
        match waiting.exit {
            ExitState::Joined => {}
            ExitState::NeverComes => {
                // Nothing closes its aliases either.
                for alias in waiting.aliases {
                    self.forget(alias, out);
                }
            }
            ExitState::Awaited(_) => {
                let (pid, tid) = kill.pid_tid();
                self.watched.insert(
                    seq,
                    Watched {
                        key: waiting.key,
                        pid,
                        tid,
                        kill_boot_ns: kill.boot_ns(),
                        until: now + self.limits.retention,
                        aliases: waiting.aliases,
                    },
                );
            }
        }
        out.push(Outcome::Kill(kill));
    }

    /// Stops watching kill `seq` and the kills that share its victim.
    fn forget(&mut self, seq: u64, out: &mut Vec<Outcome>) {
        let (key, aliases) = if let Some(watched) = self.watched.remove(&seq) {
            (watched.key, watched.aliases)
        } else if let Some(mut waiting) = self.waiting.remove(&seq) {
            // An alias whose primary is forgotten: nothing can close it now.
            let key = waiting.key;
            let aliases = std::mem::take(&mut waiting.aliases);
            if waiting.line_until.is_some()
                && let Some(kill) = waiting.kill.oom_mut()
            {
                kill.oom.kernel_log = Some(KernelLog::Missing);
            }
            out.push(Outcome::Kill(waiting.kill));
            (key, aliases)
        } else {
            return;
        };
        out.push(Outcome::Forget { seq, key });
        for alias in aliases {
            self.forget(alias, out);
        }
    }

    /// Victims holding an entry in the kernel's map.
    fn tracked(&self) -> usize {
        self.waiting.values().filter(|w| w.key.is_some()).count()
            + self.watched.values().filter(|w| w.key.is_some()).count()
    }

    fn oldest_watched_key(&self) -> Option<u64> {
        self.watched
            .iter()
            .find(|(_, w)| w.key.is_some())
            .map(|(seq, _)| *seq)
    }
}

#[cfg(test)]
mod tests;
