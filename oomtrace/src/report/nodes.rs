//! One node's collectors: its runs (`run_id`), when each started, was
//! last heard of and stopped, and the stretches no collector watched.

use foldhash::{HashMap, HashSet};

use oomtrace_record::Origin;

use super::model::{Gap, Node};

/// Runs kept per node.
const MAX_RUNS: usize = 4_096;
/// A stretch shorter than this between runs is a restart, not a gap.
const MIN_GAP_S: f64 = 1.0;
/// Heartbeat times kept per run (68 hours at the default 60 s).
const MAX_BEATS: usize = 4_096;
/// Gaps listed per node (the longest); the rest are only counted.
const MAX_GAPS: usize = 64;
/// Silence longer than this many heartbeat intervals is a gap.
const SILENT_INTERVALS: f64 = 2.0;

#[derive(Default)]
pub struct Run {
    pub start: Option<(f64, String)>,
    pub stop: Option<(f64, String)>,
    pub first: Option<(f64, String)>,
    pub last: Option<(f64, String)>,
    /// The heartbeat interval, seconds, once a heartbeat was seen.
    pub interval: Option<f64>,
    /// Heartbeats, start and stop: the times the run said it was alive,
    /// as seconds only (8 bytes each: a fleet's day has millions).
    pub beats: Vec<f64>,
}

impl Run {
    fn beat(&mut self, t: f64) {
        if self.beats.len() < MAX_BEATS {
            self.beats.push(t);
        }
    }

    /// Stretches longer than the heartbeat allows without a sign of life;
    /// up to `end` (the report's last record) when the run did not stop.
    fn silences(&mut self, end: Option<(f64, &str)>, gaps: &mut Vec<Gap>) {
        let Some(interval) = self.interval else {
            return;
        };
        let most = interval * SILENT_INTERVALS;
        self.beats.sort_by(f64::total_cmp);
        let mut silent = |from: f64, to: f64, to_text: String| {
            gaps.push(Gap {
                from: rfc3339(from),
                to: to_text,
                seconds: ((to - from) * 10.0).round() / 10.0,
                kind: "silent".to_string(),
            });
        };
        for pair in self.beats.windows(2) {
            if pair[1] - pair[0] > most {
                silent(pair[0], pair[1], rfc3339(pair[1]));
            }
        }
        if let (None, Some(&last), Some((end, text))) = (&self.stop, self.beats.last(), end)
            && end - last > most
        {
            silent(last, end, text.to_string());
        }
    }
}

#[derive(Default)]
pub struct NodeState {
    boots: HashSet<String>,
    runs: HashMap<String, Run>,
    pub oom_kills: u64,
    pub node_ooms: u64,
    pub lost_kills: u64,
    pub lost_other: u64,
    pub late_exits: u64,
    pub exits_unobserved: u64,
    pub oom_stalls: u64,
    heartbeats: u64,
}

pub fn earlier(slot: &mut Option<(f64, String)>, t: f64, text: &str) {
    if slot.as_ref().is_none_or(|(s, _)| t < *s) {
        set(slot, t, text);
    }
}

/// Sets a time, reusing the slot's text buffer (`later` moves on with
/// nearly every record).
fn set(slot: &mut Option<(f64, String)>, t: f64, text: &str) {
    match slot {
        Some((s, buf)) => {
            *s = t;
            buf.clear();
            buf.push_str(text);
        }
        None => *slot = Some((t, text.to_string())),
    }
}

/// Seconds since the epoch as RFC 3339 UTC (to the microsecond: an f64
/// of today's epoch seconds holds no more).
fn rfc3339(t: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_micros(at).to_string()
}

pub fn later(slot: &mut Option<(f64, String)>, t: f64, text: &str) {
    if slot.as_ref().is_none_or(|(s, _)| t > *s) {
        set(slot, t, text);
    }
}

impl NodeState {
    /// The record's run (its boot noted), made on its first record;
    /// None past the cap. Looked up before anything is copied: this runs
    /// for every record.
    fn run(&mut self, origin: &Origin) -> Option<&mut Run> {
        if let Some(boot) = &origin.boot_id
            && self.boots.len() < MAX_RUNS
            && !self.boots.contains(boot)
        {
            self.boots.insert(boot.clone());
        }
        let id = origin.run_id.as_ref()?;
        if !self.runs.contains_key(id) {
            if self.runs.len() >= MAX_RUNS {
                return None;
            }
            self.runs.insert(id.clone(), Run::default());
        }
        self.runs.get_mut(id)
    }

    /// Any record of this node at `t`: its run, for more.
    pub fn seen(&mut self, origin: &Origin, t: Option<f64>, text: &str) -> Option<&mut Run> {
        let t = t?;
        let run = self.run(origin)?;
        earlier(&mut run.first, t, text);
        later(&mut run.last, t, text);
        Some(run)
    }

    pub fn start(&mut self, origin: &Origin, t: Option<f64>, text: &str) {
        if let (Some(t), Some(run)) = (t, self.seen(origin, t, text)) {
            earlier(&mut run.start, t, text);
            run.beat(t);
        }
    }

    pub fn stop(&mut self, origin: &Origin, t: Option<f64>, text: &str) {
        if let (Some(t), Some(run)) = (t, self.seen(origin, t, text)) {
            later(&mut run.stop, t, text);
            run.beat(t);
        }
    }

    pub fn heartbeat(&mut self, origin: &Origin, t: Option<f64>, text: &str, interval_ms: u64) {
        if let (Some(t), Some(run)) = (t, self.seen(origin, t, text)) {
            run.interval = Some(interval_ms as f64 / 1000.0);
            run.beat(t);
            self.heartbeats += 1;
        }
    }

    pub fn finish(self, hostname: String, end: Option<(f64, &str)>) -> Node {
        let mut runs: Vec<Run> = self.runs.into_values().collect();
        runs.sort_by(|a, b| {
            let at = |r: &Run| r.start.as_ref().or(r.first.as_ref()).map_or(0.0, |s| s.0);
            at(a).total_cmp(&at(b))
        });
        let mut gaps = Vec::new();
        for pair in runs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            let Some(next) = b.start.as_ref().or(b.first.as_ref()) else {
                continue;
            };
            let (from, kind) = match (&a.stop, &a.last) {
                (Some(stop), _) => (stop, "stopped"),
                (None, Some(last)) => (last, "no_stop"),
                (None, None) => continue,
            };
            let seconds = next.0 - from.0;
            if seconds >= MIN_GAP_S || kind == "no_stop" {
                gaps.push(Gap {
                    from: from.1.clone(),
                    to: next.1.clone(),
                    seconds: (seconds.max(0.0) * 10.0).round() / 10.0,
                    kind: kind.to_string(),
                });
            }
        }
        for run in &mut runs {
            run.silences(end, &mut gaps);
        }
        // A flapping collector can leave a gap per heartbeat: the longest
        // are listed, all are counted.
        let gaps_total = gaps.len() as u64;
        let gap_seconds = gaps.iter().map(|g| g.seconds).sum::<f64>();
        if gaps.len() > MAX_GAPS {
            gaps.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
            gaps.truncate(MAX_GAPS);
        }
        gaps.sort_by(|a, b| a.from.cmp(&b.from));
        Node {
            hostname,
            heartbeats: self.heartbeats,
            boots: self.boots.len() as u64,
            runs: runs.len() as u64,
            runs_without_stop: runs.iter().filter(|r| r.stop.is_none()).count() as u64,
            oom_kills: self.oom_kills,
            node_ooms: self.node_ooms,
            lost_kills: self.lost_kills,
            lost_other: self.lost_other,
            late_exits: self.late_exits,
            oom_stalls: self.oom_stalls,
            exits_unseen: self.exits_unobserved.saturating_sub(self.late_exits),
            gaps,
            gaps_total,
            gap_seconds: (gap_seconds * 10.0).round() / 10.0,
        }
    }
}
