//! One subject's state while records stream in (bounded: a few small
//! capped collections), and what it becomes in the report.

use foldhash::HashMap;

use oomtrace_record::{Container, GrowthKind, K8s, Origin, text::spelled as spelled_name};

use super::model::{Causes, CrashLoop, KillMark, Subject, SubjectKind};

/// Kill times kept per subject.
pub const MAX_TIMES: usize = 1024;
/// Kills per subject whose memory history is kept, and points per history.
const MAX_HISTORIES: usize = 8;
const MAX_POINTS: usize = 600;
/// Distinct victim / trigger names kept per subject.
const MAX_NAMES: usize = 32;
const MAX_IDS: usize = 16;

/// Who a record is about.
pub struct Who {
    pub key: String,
    pub kind: SubjectKind,
    pub name: String,
}

/// The subject of a record about a process: its pod's container, its
/// container, its systemd unit, or its cgroup (per node).
pub fn who(
    origin: &Origin,
    container: Option<&Container>,
    k8s: Option<&K8s>,
    unit: Option<&str>,
    cgroup: Option<&str>,
) -> Who {
    let node = origin.hostname.as_deref().unwrap_or("?");
    if let Some(k8s) = k8s {
        let ctr = k8s
            .container
            .as_deref()
            .or(container.and_then(|c| c.name.as_deref()));
        let pod = match (&k8s.namespace, &k8s.pod, &k8s.pod_uid) {
            (Some(ns), Some(pod), _) => Some(format!("{ns}/{pod}")),
            (_, _, Some(uid)) => Some(format!("pod {uid}")),
            _ => None,
        };
        if let Some(pod) = pod {
            let name = match ctr {
                Some(c) => format!("{pod}/{c}"),
                None => pod,
            };
            return Who {
                key: format!("pod:{name}"),
                kind: SubjectKind::Pod,
                name,
            };
        }
    }
    if let Some(c) = container {
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| c.id.chars().take(12).collect());
        return Who {
            key: format!("ctr:{node}:{}", c.id),
            kind: SubjectKind::Container,
            name,
        };
    }
    if let Some(unit) = unit {
        return Who {
            key: format!("unit:{node}:{unit}"),
            kind: SubjectKind::Unit,
            name: unit.to_string(),
        };
    }
    let path = cgroup.unwrap_or("(unknown cgroup)");
    Who {
        key: format!("cg:{node}:{path}"),
        kind: SubjectKind::Cgroup,
        name: path.to_string(),
    }
}

/// The limit at the latest kill: when, how much, whose, which memcg.
#[derive(Clone)]
pub struct LimitSeen(
    pub f64,
    pub Option<u64>,
    pub Option<String>,
    pub Option<String>,
);

#[derive(Default)]
pub struct SubjectState {
    pub nodes: Vec<String>,
    pub container_ids: Vec<String>,
    pub image: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub qos: Option<String>,
    pub cgroup: Option<String>,
    pub causes: Causes,
    pub first: Option<(f64, String)>,
    pub last: Option<(f64, String)>,
    pub victims: HashMap<String, u64>,
    pub triggers: HashMap<String, u64>,
    pub limit: Option<LimitSeen>,
    pub max_rss: Option<u64>,
    pub max_working_set: Option<u64>,
    /// (time, kind, slope) of the latest kill with a verdict.
    pub growth: Option<(f64, GrowthKind, Option<f64>)>,
    pub container_died: u64,
    pub child_killed: u64,
    pub node_ooms: u64,
    /// Userspace OOM killers by name.
    pub killers: HashMap<String, u64>,
    pub times: Vec<(f64, String)>,
    /// The same kills, as the chart shows them.
    pub marks: Vec<(f64, KillMark)>,
    histories: usize,
    pub times_dropped: u64,
}

pub fn add_name(names: &mut HashMap<String, u64>, name: Option<&str>) {
    let Some(name) = name else { return };
    if let Some(n) = names.get_mut(name) {
        *n += 1;
    } else if names.len() < MAX_NAMES {
        names.insert(name.to_string(), 1);
    }
}

fn push_capped(list: &mut Vec<String>, value: &str, cap: usize) {
    if list.len() < cap && !list.iter().any(|v| v == value) {
        list.push(value.to_string());
    }
}

impl SubjectState {
    pub fn describe(
        &mut self,
        origin: &Origin,
        container: Option<&Container>,
        k8s: Option<&K8s>,
        cgroup: Option<&str>,
    ) {
        if let Some(node) = &origin.hostname {
            push_capped(&mut self.nodes, node, MAX_IDS);
        }
        if let Some(c) = container {
            push_capped(&mut self.container_ids, &c.id, MAX_IDS);
            if c.image.is_some() {
                self.image.clone_from(&c.image);
            }
        }
        if let Some(k) = k8s {
            if k.namespace.is_some() {
                self.namespace.clone_from(&k.namespace);
            }
            if k.pod.is_some() {
                self.pod.clone_from(&k.pod);
            }
            if let Some(qos) = k.qos {
                self.qos = Some(spelled_name(qos));
            }
        }
        if let Some(path) = cgroup {
            self.cgroup = Some(path.to_string());
        }
    }

    /// A death at `time` (seconds since the epoch; `text` as written), of
    /// `cause`, with the limit and the memory history of its record.
    /// `budget`: history points the whole report may still keep.
    pub fn death(
        &mut self,
        time: Option<f64>,
        text: &str,
        cause: &str,
        limit: Option<u64>,
        history: &[[u64; 4]],
        budget: &mut usize,
    ) {
        let Some(t) = time else { return };
        if self.first.as_ref().is_none_or(|(f, _)| t < *f) {
            self.first = Some((t, text.to_string()));
        }
        if self.last.as_ref().is_none_or(|(l, _)| t > *l) {
            self.last = Some((t, text.to_string()));
        }
        if self.times.len() < MAX_TIMES {
            self.times.push((t, text.to_string()));
            let keep = !history.is_empty()
                && self.histories < MAX_HISTORIES
                && history.len() <= MAX_POINTS
                && history.len() <= *budget;
            let history = if keep {
                self.histories += 1;
                *budget -= history.len();
                history.to_vec()
            } else {
                Vec::new()
            };
            let mark = KillMark {
                time: text.to_string(),
                cause: cause.to_string(),
                limit_bytes: limit,
                history,
            };
            self.marks.push((t, mark));
        } else {
            self.times_dropped += 1;
        }
    }

    /// The subject for the report, without its advice (filled in by the
    /// caller).
    pub fn finish(
        mut self,
        kind: SubjectKind,
        name: String,
        loop_count: u64,
        loop_window: f64,
    ) -> (Subject, Self) {
        self.times.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.marks.sort_by(|a, b| a.0.total_cmp(&b.0));
        let crash_loop = crash_loop(&self.times, loop_count, loop_window);
        let (limit_bytes, limit_scope, limit_memcg) = self
            .limit
            .clone()
            .map(|LimitSeen(_, l, s, m)| (l, s, m))
            .unwrap_or_default();
        let (growth, slope) = match self.growth {
            Some((_, kind, slope)) => (spelled_name(kind), slope),
            None => ("unknown".to_string(), None),
        };
        let subject = Subject {
            kind,
            name,
            nodes: self.nodes.clone(),
            container_ids: self.container_ids.clone(),
            image: self.image.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            qos: self.qos.clone(),
            cgroup: self.cgroup.clone(),
            causes: self.causes.clone(),
            kills: self.causes.kernel_oom_memcg + self.causes.kernel_oom_node,
            first: self.first.as_ref().map(|f| f.1.clone()),
            last: self.last.as_ref().map(|l| l.1.clone()),
            victims: top(&self.victims),
            triggers: top(&self.triggers),
            limit_bytes,
            limit_scope,
            limit_memcg,
            max_rss_bytes: self.max_rss,
            max_working_set_bytes: self.max_working_set,
            growth,
            growth_slope_bytes_per_s: slope,
            container_died: self.container_died,
            child_killed: self.child_killed,
            crash_loop,
            advice: super::advice::placeholder(),
            timeline: self.marks.iter().map(|m| m.1.clone()).collect(),
            timeline_dropped: self.times_dropped,
        };
        (subject, self)
    }
}

/// Names, most counted first (then by name), at most 8.
fn top(names: &HashMap<String, u64>) -> Vec<String> {
    let mut list: Vec<(&String, &u64)> = names.iter().collect();
    list.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    list.into_iter().take(8).map(|(n, _)| n.clone()).collect()
}

/// The window (of `window` seconds) holding the most deaths, if it holds
/// at least `count`. `times` is sorted.
pub fn crash_loop(times: &[(f64, String)], count: u64, window: f64) -> Option<CrashLoop> {
    let mut best: Option<(usize, usize)> = None;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].0 - times[start].0 > window {
            start += 1;
        }
        if best.is_none_or(|(s, e)| end - start > e - s) {
            best = Some((start, end));
        }
    }
    let (s, e) = best?;
    let kills = (e - s + 1) as u64;
    if kills < count.max(2) {
        return None;
    }
    let intervals_s = times[s..=e]
        .windows(2)
        .take(32)
        .map(|w| ((w[1].0 - w[0].0) * 1000.0).round() / 1000.0)
        .collect();
    Some(CrashLoop {
        kills,
        window_s: window,
        from: times[s].1.clone(),
        to: times[e].1.clone(),
        intervals_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(secs: &[f64]) -> Vec<(f64, String)> {
        secs.iter().map(|s| (*s, format!("t{s}"))).collect()
    }

    #[test]
    fn crash_loop_needs_n_within_the_window() {
        assert!(crash_loop(&times(&[0.0, 300.0, 700.0]), 3, 600.0).is_none());
        let found = crash_loop(
            &times(&[0.0, 1000.0, 1100.0, 1200.0, 1500.0, 2200.0]),
            3,
            600.0,
        )
        .expect("a loop");
        assert_eq!(found.kills, 4);
        assert_eq!((found.from.as_str(), found.to.as_str()), ("t1000", "t1500"));
        assert_eq!(found.intervals_s, [100.0, 100.0, 300.0]);
        assert!(
            crash_loop(&times(&[5.0]), 1, 600.0).is_none(),
            "one is no loop"
        );
        assert!(crash_loop(&[], 3, 600.0).is_none());
    }

    #[test]
    fn subjects_by_pod_then_container_then_unit_then_cgroup() {
        let origin = Origin {
            hostname: Some("n1".into()),
            ..Origin::default()
        };
        let k8s = K8s {
            namespace: Some("shop".into()),
            pod: Some("cart-7d9".into()),
            container: Some("app".into()),
            ..K8s::default()
        };
        let ctr = Container {
            id: "0123456789abcdef".into(),
            runtime: None,
            name: None,
            image: None,
        };
        let w = who(&origin, Some(&ctr), Some(&k8s), None, Some("/x"));
        assert_eq!(
            (w.kind, w.name.as_str()),
            (SubjectKind::Pod, "shop/cart-7d9/app")
        );
        let w = who(&origin, Some(&ctr), None, Some("a.service"), Some("/x"));
        assert_eq!(
            (w.kind, w.name.as_str()),
            (SubjectKind::Container, "0123456789ab")
        );
        let w = who(&origin, None, None, Some("a.service"), Some("/x"));
        assert_eq!(
            (w.kind, w.key.as_str()),
            (SubjectKind::Unit, "unit:n1:a.service")
        );
        let w = who(&origin, None, None, None, Some("/x"));
        assert_eq!((w.kind, w.key.as_str()), (SubjectKind::Cgroup, "cg:n1:/x"));
    }
}
