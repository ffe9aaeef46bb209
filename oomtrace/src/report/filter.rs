//! `--since/--until/--node/--namespace/--pod/--container`, and dedupe.

use std::hash::{DefaultHasher, Hash, Hasher};

use foldhash::HashSet;
use oomtrace_record::{Container, K8s, Record};

use super::analysis::seconds;

/// Record identities kept for dedupe (8 bytes each, about 16 MiB at most
/// with the set's overhead); past it, records are no longer deduplicated,
/// and that is counted.
const MAX_SEEN: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub struct Filters {
    /// Seconds since the epoch.
    pub since: Option<f64>,
    pub until: Option<f64>,
    pub node: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// A container's name (runtime's or pod spec's), or a prefix of its id.
    pub container: Option<String>,
}

/// `--since`/`--until`: an RFC 3339 time, or a duration before now
/// (`90m`, `2h`, `1day`).
pub fn parse_time(text: &str) -> Result<f64, String> {
    if let Some(t) = seconds(text) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time (2026-12-06T10:00:00Z) nor a duration (2h)")
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    Ok(now.as_secs_f64() - ago.as_secs_f64())
}

/// What the filters look at in a record.
struct Facts<'a> {
    time: Option<&'a str>,
    node: Option<&'a str>,
    container: Option<&'a Container>,
    k8s: Option<&'a K8s>,
    /// Whether the record is about a process (a kill, an exit), not the
    /// collector itself.
    about_process: bool,
}

fn facts(record: &Record) -> Facts<'_> {
    let origin = record.origin();
    let mut f = Facts {
        time: None,
        node: origin.and_then(|o| o.hostname.as_deref()),
        container: None,
        k8s: None,
        about_process: false,
    };
    match record {
        Record::OomKill(r) => {
            f.time = Some(&r.time);
            f.container = r.container.as_ref();
            f.k8s = r.k8s.as_ref();
            f.about_process = true;
        }
        Record::SignalKill(r) => {
            f.time = Some(&r.time);
            f.container = r.container.as_ref();
            f.k8s = r.k8s.as_ref();
            f.about_process = true;
        }
        Record::ContainerExit(r) => {
            f.time = Some(&r.time);
            f.container = r.container.as_ref();
            f.k8s = r.k8s.as_ref();
            f.about_process = true;
        }
        Record::OomStall(r) => {
            f.time = Some(&r.time);
            f.container = r.container.as_ref();
            f.k8s = r.k8s.as_ref();
        }
        Record::Start(r) => f.time = Some(&r.time),
        Record::Stop(r) => f.time = Some(&r.time),
        Record::Lost(r) => f.time = Some(&r.time),
        Record::Heartbeat(r) => f.time = Some(&r.time),
        Record::LateExit(r) => f.time = Some(&r.time),
        Record::RankProcess(r) => f.time = Some(&r.time),
        Record::RankMemcg(r) => f.time = Some(&r.time),
        Record::Unknown => {}
    }
    f
}

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.since.is_none()
            && self.until.is_none()
            && self.node.is_none()
            && self.namespace.is_none()
            && self.pod.is_none()
            && self.container.is_none()
    }

    /// Whether the record passes. Records about the collector (start,
    /// stop, lost, late exits) pass the pod and container filters: they
    /// tell how well their node was watched.
    pub fn pass(&self, record: &Record) -> bool {
        if self.is_empty() {
            return true;
        }
        let f = facts(record);
        let t = f.time.and_then(seconds);
        if let (Some(since), Some(t)) = (self.since, t)
            && t < since
        {
            return false;
        }
        if let (Some(until), Some(t)) = (self.until, t)
            && t > until
        {
            return false;
        }
        if let Some(node) = &self.node
            && f.node != Some(node.as_str())
        {
            return false;
        }
        if !f.about_process {
            return true;
        }
        let k8s = f.k8s;
        if let Some(ns) = &self.namespace
            && k8s.and_then(|k| k.namespace.as_deref()) != Some(ns.as_str())
        {
            return false;
        }
        if let Some(pod) = &self.pod
            && k8s.and_then(|k| k.pod.as_deref()) != Some(pod.as_str())
        {
            return false;
        }
        if let Some(want) = &self.container {
            let by_k8s = k8s.and_then(|k| k.container.as_deref()) == Some(want.as_str());
            let by_runtime = f.container.is_some_and(|c| {
                c.name.as_deref() == Some(want.as_str())
                    || (want.len() >= 4 && c.id.starts_with(want.as_str()))
            });
            if !by_k8s && !by_runtime {
                return false;
            }
        }
        true
    }
}

/// Records seen, by identity: (type, hostname, boot_id, run_id, seq) for
/// kills and late exits, and their time and boot_ns (records written
/// before `run_id` existed restart `seq` at 0 on every start).
#[derive(Default)]
pub struct Dedupe {
    seen: HashSet<u64>,
    /// Records past the cap, not checked.
    pub unchecked: u64,
}

impl Dedupe {
    /// A record's identity, as a hash; None for a record never
    /// deduplicated (one without an origin). Computed where the record is
    /// parsed (any thread), checked by [`Self::first`] in input order.
    pub fn key(record: &Record) -> Option<u64> {
        let origin = record.origin()?;
        let (seq, time, boot_ns): (Option<u64>, &str, u64) = match record {
            Record::OomKill(r) => (Some(r.seq), &r.time, r.boot_ns),
            Record::SignalKill(r) => (Some(r.seq), &r.time, r.boot_ns),
            Record::LateExit(r) => (Some(r.seq), &r.time, r.boot_ns),
            Record::ContainerExit(r) => (r.pid.map(u64::from), &r.time, r.boot_ns),
            Record::Start(r) => (None, &r.time, r.boot_ns),
            Record::Stop(r) => (None, &r.time, r.boot_ns),
            Record::Lost(r) => (None, &r.time, r.boot_ns),
            Record::Heartbeat(r) => (None, &r.time, r.boot_ns),
            Record::OomStall(r) => (None, &r.time, r.boot_ns),
            // Snapshots of `oomtrace rank`, not events: a pass shares one
            // time, so they are never duplicates of each other.
            Record::RankProcess(_) | Record::RankMemcg(_) | Record::Unknown => return None,
        };
        let mut h = DefaultHasher::new();
        (
            record.type_name(),
            &origin.hostname,
            &origin.boot_id,
            &origin.run_id,
            seq,
            time,
            boot_ns,
        )
            .hash(&mut h);
        Some(h.finish())
    }

    /// True the first time a record (by its [`Self::key`]) is seen.
    pub fn first(&mut self, key: Option<u64>) -> bool {
        let Some(key) = key else {
            return true;
        };
        if self.seen.contains(&key) {
            return false;
        }
        if self.seen.len() >= MAX_SEEN {
            self.unchecked += 1;
        } else {
            self.seen.insert(key);
        }
        true
    }
}
