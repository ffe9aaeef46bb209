//! The story, built record by record: per subject, per node, and the
//! node-wide findings. Memory is bounded: subjects, nodes, runs and lists
//! are capped, and what falls past a cap is counted.

use foldhash::HashMap;

use oomtrace_record::{
    Constraint, GrowthKind, LimitScope, OomKill, Origin, Record, SenderKind, SignalKill,
    StallPhase, text::spelled,
};

use super::{
    advice,
    model::{ChildKill, Node, NodeOom, Report},
    nodes::{NodeState, earlier, later},
    subject::{LimitSeen, SubjectState, Who, add_name, who},
};

/// Subjects kept; kills of further ones count in the totals only.
pub const MAX_SUBJECTS: usize = 20_000;
const MAX_NODES: usize = 10_000;
/// Entries kept in `child_kills` and `node_ooms`.
const MAX_LISTED: usize = 1_000;
/// Memory history points kept in all (32 bytes each: 32 MiB).
const MAX_HISTORY_POINTS: usize = 1 << 20;

/// The subject's state, made on its first record; None past the cap
/// (counted in `dropped`).
fn subject<'a>(
    subjects: &'a mut HashMap<String, (Who, SubjectState)>,
    dropped: &mut u64,
    w: Who,
) -> Option<&'a mut SubjectState> {
    if !subjects.contains_key(&w.key) && subjects.len() >= MAX_SUBJECTS {
        *dropped += 1;
        return None;
    }
    let entry = subjects
        .entry(w.key.clone())
        .or_insert_with(|| (w, SubjectState::default()));
    Some(&mut entry.1)
}

/// The limit of the memcg that fired (else the victim's own).
fn fired_limit(kill: &OomKill) -> Option<u64> {
    let fired = &kill.oom.memcg_path;
    kill.memcg.as_ref().and_then(|m| {
        m.levels
            .iter()
            .find(|l| l.path.is_some() && l.path == *fired)
            .and_then(|l| l.limit_bytes)
            .or(m.limit_bytes)
    })
}

/// Seconds since the epoch of an RFC 3339 time.
pub fn seconds(time: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    Some(t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9)
}

pub struct Analysis {
    pub report: Report,
    subjects: HashMap<String, (Who, SubjectState)>,
    nodes: HashMap<String, NodeState>,
    loop_count: u64,
    loop_window: f64,
    first: Option<(f64, String)>,
    last: Option<(f64, String)>,
    /// History points the report may still keep (for the chart).
    history_budget: usize,
}

impl Analysis {
    pub fn new(loop_count: u64, loop_window_s: f64) -> Self {
        Self {
            report: Report::default(),
            subjects: HashMap::default(),
            nodes: HashMap::default(),
            loop_count,
            loop_window: loop_window_s,
            first: None,
            last: None,
            history_budget: MAX_HISTORY_POINTS,
        }
    }

    /// The record's node, made on its first record; None past the cap.
    fn node(&mut self, origin: &Origin) -> Option<&mut NodeState> {
        let name = origin.hostname.as_deref().unwrap_or("?");
        if !self.nodes.contains_key(name) {
            if self.nodes.len() >= MAX_NODES {
                return None;
            }
            self.nodes.insert(name.to_string(), NodeState::default());
        }
        self.nodes.get_mut(name)
    }

    fn period(&mut self, time: &str) -> Option<f64> {
        let t = seconds(time)?;
        earlier(&mut self.first, t, time);
        later(&mut self.last, t, time);
        Some(t)
    }

    /// The record's node, with the record's time counted in the period.
    fn node_at(&mut self, origin: &Origin, time: &str) -> Option<(&mut NodeState, Option<f64>)> {
        let t = self.period(time);
        self.node(origin).map(|n| (n, t))
    }

    /// Notes a record of a node at `time`; returns the node for more.
    fn seen(&mut self, origin: &Origin, time: &str) -> Option<&mut NodeState> {
        let (n, t) = self.node_at(origin, time)?;
        let _ = n.seen(origin, t, time);
        Some(n)
    }

    /// Takes one record (already deduplicated and filtered).
    pub fn add(&mut self, record: &Record) {
        match record {
            Record::OomKill(kill) => self.oom_kill(kill),
            Record::SignalKill(kill) => self.signal_kill(kill),
            Record::Start(r) => {
                if let Some((n, t)) = self.node_at(&r.origin, &r.time) {
                    n.start(&r.origin, t, &r.time);
                }
            }
            Record::Stop(r) => {
                if let Some((n, t)) = self.node_at(&r.origin, &r.time) {
                    n.stop(&r.origin, t, &r.time);
                }
            }
            Record::Heartbeat(r) => {
                if let Some((n, t)) = self.node_at(&r.origin, &r.time) {
                    n.heartbeat(&r.origin, t, &r.time, r.interval_ms);
                }
            }
            Record::Lost(r) => {
                if let Some(n) = self.seen(&r.origin, &r.time) {
                    n.lost_kills += r.kills;
                    n.lost_other += r.exits
                        + r.untracked_victims
                        + r.events_dropped
                        + r.records_dropped
                        + r.signal_kills;
                }
            }
            Record::LateExit(r) => {
                if let Some(n) = self.seen(&r.origin, &r.time) {
                    n.late_exits += 1;
                }
            }
            Record::ContainerExit(r) => {
                self.seen(&r.origin, &r.time);
            }
            Record::OomStall(r) => {
                if let Some(n) = self.seen(&r.origin, &r.time) {
                    n.oom_stalls += u64::from(r.phase == StallPhase::Start);
                }
            }
            // `oomtrace rank` snapshots say nothing of kills or gaps.
            Record::RankProcess(_) | Record::RankMemcg(_) | Record::Unknown => {}
        }
    }

    fn oom_kill(&mut self, kill: &OomKill) {
        let t = self.period(&kill.time);
        let node_wide = matches!(
            kill.oom.constraint,
            Some(Constraint::Global | Constraint::Cpuset | Constraint::Mempolicy)
        ) || kill.oom.limit_scope == Some(LimitScope::Node);
        let not_killed = kill.oom.killed == Some(false);
        if let Some(n) = self.node(&kill.origin) {
            let _ = n.seen(&kill.origin, t, &kill.time);
            if !not_killed {
                n.oom_kills += 1;
                n.node_ooms += u64::from(node_wide);
                n.exits_unobserved += u64::from(!kill.exit.observed);
            }
        }
        if not_killed {
            // Marked while already dying: the death is another record's.
            return;
        }
        if node_wide {
            self.report.causes.kernel_oom_node += 1;
        } else {
            self.report.causes.kernel_oom_memcg += 1;
        }
        let w = who(
            &kill.origin,
            kill.container.as_ref(),
            kill.k8s.as_ref(),
            kill.systemd_unit.as_deref(),
            kill.victim.cgroup.path.as_deref(),
        );
        let name = w.name.clone();
        let qos = kill.k8s.as_ref().and_then(|k| k.qos).map(spelled);
        if node_wide && self.report.node_ooms.len() < MAX_LISTED {
            self.report.node_ooms.push(NodeOom {
                node: kill.origin.hostname.clone(),
                time: kill.time.clone(),
                subject: name.clone(),
                comm: kill.victim.comm.clone(),
                qos,
            });
        }
        if kill.container_survives == Some(true) && self.report.child_kills.len() < MAX_LISTED {
            self.report.child_kills.push(ChildKill {
                subject: name,
                node: kill.origin.hostname.clone(),
                time: kill.time.clone(),
                pid: kill.victim.pid,
                comm: kill.victim.comm.clone(),
            });
        }
        let Some(s) = subject(&mut self.subjects, &mut self.report.subjects_dropped, w) else {
            return;
        };
        s.describe(
            &kill.origin,
            kill.container.as_ref(),
            kill.k8s.as_ref(),
            kill.victim.cgroup.path.as_deref(),
        );
        if node_wide {
            s.causes.kernel_oom_node += 1;
            s.node_ooms += 1;
        } else {
            s.causes.kernel_oom_memcg += 1;
        }
        let history = kill.memory.as_ref().map_or(&[][..], |m| &m.history[..]);
        let (cause, limit) = if node_wide {
            ("kernel_oom_node", None)
        } else {
            ("kernel_oom_memcg", fired_limit(kill))
        };
        s.death(
            t,
            &kill.time,
            cause,
            limit,
            history,
            &mut self.history_budget,
        );
        add_name(&mut s.victims, kill.victim.comm.as_deref());
        add_name(&mut s.triggers, kill.trigger.comm.as_deref());
        match kill.container_survives {
            Some(true) => s.child_killed += 1,
            Some(false) => s.container_died += 1,
            None => {}
        }
        let tk = t.unwrap_or(f64::MIN);
        if s.limit.as_ref().is_none_or(|l| tk >= l.0) {
            let fired = kill.oom.memcg_path.clone();
            let limit = fired_limit(kill);
            // A node OOM enforced no cgroup's limit.
            let limit = limit.filter(|_| !node_wide);
            s.limit = Some(LimitSeen(
                tk,
                limit,
                kill.oom.limit_scope.map(spelled),
                fired,
            ));
        }
        let rss = &kill.victim.rss;
        let total = [rss.anon_bytes, rss.file_bytes, rss.shmem_bytes]
            .into_iter()
            .flatten()
            .sum::<u64>();
        if rss.anon_bytes.is_some() {
            s.max_rss = s.max_rss.max(Some(total));
        }
        if let Some(memory) = &kill.memory {
            if memory.working_set_bytes.is_some() {
                s.max_working_set = s.max_working_set.max(memory.working_set_bytes);
            }
            let g = &memory.growth;
            if g.kind != GrowthKind::Unknown && s.growth.as_ref().is_none_or(|x| tk >= x.0) {
                s.growth = Some((tk, g.kind, g.slope_bytes_per_s));
            }
        }
    }

    fn signal_kill(&mut self, kill: &SignalKill) {
        let t = self.period(&kill.time);
        if let Some(n) = self.node(&kill.origin) {
            let _ = n.seen(&kill.origin, t, &kill.time);
        }
        let causes = &mut self.report.causes;
        let slot = match kill.sender.kind {
            SenderKind::UserspaceOomKiller => &mut causes.userspace_oom_killer,
            SenderKind::ContainerRuntime => &mut causes.runtime_stop,
            SenderKind::Kernel if kill.part_of_oom_kill.is_some() => &mut causes.kernel_oom_memcg,
            _ => &mut causes.other_sigkill,
        };
        *slot += 1;
        let w = who(
            &kill.origin,
            kill.container.as_ref(),
            kill.k8s.as_ref(),
            kill.systemd_unit.as_deref(),
            kill.target.cgroup.path.as_deref(),
        );
        let Some(s) = subject(&mut self.subjects, &mut self.report.subjects_dropped, w) else {
            return;
        };
        s.describe(
            &kill.origin,
            kill.container.as_ref(),
            kill.k8s.as_ref(),
            kill.target.cgroup.path.as_deref(),
        );
        match kill.sender.kind {
            SenderKind::UserspaceOomKiller => {
                s.causes.userspace_oom_killer += 1;
                add_name(&mut s.killers, kill.sender.comm.as_deref());
                let limit = kill.memcg.as_ref().and_then(|m| m.limit_bytes);
                let budget = &mut self.history_budget;
                s.death(t, &kill.time, "userspace_oom_killer", limit, &[], budget);
                add_name(&mut s.victims, kill.target.comm.as_deref());
            }
            SenderKind::ContainerRuntime => s.causes.runtime_stop += 1,
            SenderKind::Kernel if kill.part_of_oom_kill.is_some() => {
                s.causes.kernel_oom_memcg += 1;
            }
            _ => s.causes.other_sigkill += 1,
        }
    }

    /// The report: subjects most kills first, with their advice.
    pub fn finish(mut self) -> Report {
        let mut report = std::mem::take(&mut self.report);
        report.report_version = super::model::REPORT_VERSION;
        report.first = self.first.map(|f| f.1);
        report.last = self.last.map(|l| l.1);
        let mut subjects: Vec<_> = self
            .subjects
            .into_iter()
            .map(|(key, (w, state))| {
                let (mut subject, state) =
                    state.finish(w.kind, w.name, self.loop_count, self.loop_window);
                subject.advice = advice::advise(&subject, &state);
                (key, subject)
            })
            .collect();
        // The key last: the same input gives the same report, whatever
        // order the map holds it in.
        subjects.sort_by(|(ka, a), (kb, b)| {
            let deaths = |s: &super::model::Subject| s.causes.total();
            b.crash_loop
                .is_some()
                .cmp(&a.crash_loop.is_some())
                .then(deaths(b).cmp(&deaths(a)))
                .then(a.name.cmp(&b.name))
                .then(ka.cmp(kb))
        });
        report.subjects = subjects.into_iter().map(|(_, s)| s).collect();
        let end = report
            .last
            .as_deref()
            .and_then(|l| seconds(l).map(|t| (t, l)));
        let mut nodes: Vec<Node> = self
            .nodes
            .into_iter()
            .map(|(name, state)| state.finish(name, end))
            .collect();
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        report.nodes = nodes;
        report.child_kills.sort_by(|a, b| a.time.cmp(&b.time));
        report.node_ooms.sort_by(|a, b| a.time.cmp(&b.time));
        report
    }
}
