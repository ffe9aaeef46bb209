//! Where records go: stdout or a file, as NDJSON or one-line text. Every
//! record is written whole and flushed at once, so a reader (or a crash)
//! never sees half a line.

use std::{
    fmt::Write as _,
    fs::OpenOptions,
    io::{self, Write},
    path::Path,
};

use crate::attribution::LimitScope;
use crate::schema::{OomKill, Record};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line (NDJSON), for log pipelines.
    #[default]
    Json,
    /// One human line per record, like dmesg but complete.
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The reader went away (EPIPE): not an error for a pipeline like
    /// `oomtrace run | head -1`.
    #[error("output closed")]
    Closed,
    #[error("writing output: {0}")]
    Io(#[source] io::Error),
    #[error("encoding a record: {0}")]
    Encode(#[from] serde_json::Error),
}

pub struct Sink {
    out: Box<dyn Write>,
    format: Format,
}

impl Sink {
    pub fn stdout(format: Format) -> Self {
        Self {
            out: Box::new(io::stdout()),
            format,
        }
    }

    /// Appends to `path`, creating it (mode 0644) if needed.
    pub fn file(path: &Path, format: Format) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            out: Box::new(file),
            format,
        })
    }

    pub fn write(&mut self, record: &Record) -> Result<(), SinkError> {
        let mut line = match self.format {
            Format::Json => serde_json::to_vec(record)?,
            Format::Text => text_line(record).into_bytes(),
        };
        line.push(b'\n');
        self.out
            .write_all(&line)
            .and_then(|()| self.out.flush())
            .map_err(|e| match e.kind() {
                io::ErrorKind::BrokenPipe => SinkError::Closed,
                _ => SinkError::Io(e),
            })
    }
}

/// `1.5MiB`, `300KiB`, `0B`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

fn opt_bytes(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_string(), human_bytes)
}

/// `"name"` with JSON-style escaping, so that a hostile comm cannot forge a
/// second line or break the fields apart.
fn quoted(value: Option<&str>) -> String {
    value.map_or_else(
        || "?".to_string(),
        |v| serde_json::to_string(v).unwrap_or_default(),
    )
}

fn text_line(record: &Record) -> String {
    match record {
        Record::Start(s) => {
            let probes: Vec<String> = s
                .probes
                .iter()
                .map(|p| match &p.mode {
                    Some(mode) => format!("{} via {mode}", p.name),
                    None => format!("{} not attached", p.name),
                })
                .collect();
            format!(
                "{} oomtrace {} tracing on {} (Linux {}, cgroup {:?}): {}",
                s.time,
                s.version,
                s.host.hostname,
                s.host.kernel_release,
                s.host.cgroup_mode,
                probes.join(", ")
            )
        }
        Record::OomKill(k) => kill_line(k),
        Record::Lost(l) => format!(
            "{} LOST {} kill records and {} exit records (ring buffer full); {} victims untracked",
            l.time, l.kills, l.exits, l.untracked_victims
        ),
        Record::Stop(s) => format!(
            "{} oomtrace stopped ({}): {} kills, {} exits observed, {} kills lost",
            s.time, s.reason, s.counters.kills, s.counters.exits_observed, s.counters.lost_kills
        ),
    }
}

fn scope_name(scope: LimitScope) -> &'static str {
    match scope {
        LimitScope::Container => "container",
        LimitScope::Pod => "pod",
        LimitScope::Cgroup => "cgroup",
        LimitScope::Node => "node",
    }
}

fn kill_line(k: &OomKill) -> String {
    let v = &k.victim;
    let mut line = format!(
        "{} OOM kill: pid {} {} adj {} rss anon {} file {} shmem {} vm {} uid {} cgroup {}",
        k.time,
        opt(v.pid),
        quoted(v.comm.as_deref()),
        opt(v.oom_score_adj),
        opt_bytes(v.rss.anon_bytes),
        opt_bytes(v.rss.file_bytes),
        opt_bytes(v.rss.shmem_bytes),
        opt_bytes(v.total_vm_bytes),
        opt(v.uid),
        v.cgroup.path.as_deref().unwrap_or("?"),
    );
    if let Some(m) = &k.memcg {
        let _ = write!(
            line,
            " memcg {}/{}",
            human_bytes(m.usage_bytes),
            m.limit_bytes.map_or_else(|| "max".to_string(), human_bytes)
        );
    }
    if let Some(c) = &k.oom.constraint {
        let _ = write!(line, " constraint {c}");
    }
    if let Some(p) = &k.oom.memcg_path {
        let _ = write!(line, " limit-of {p}");
    }
    if let Some(scope) = k.oom.limit_scope {
        let _ = write!(line, " ({} limit)", scope_name(scope));
    }
    if let Some(k8s) = &k.k8s {
        let _ = write!(
            line,
            " pod {}/{} container {}",
            k8s.namespace.as_deref().unwrap_or("?"),
            k8s.pod.as_deref().unwrap_or("?"),
            k8s.container.as_deref().unwrap_or("?"),
        );
    }
    if let Some(c) = &k.container {
        // 12 hex digits, as `docker ps` and `crictl ps` show ids.
        let _ = write!(line, " id {}", &c.id[..c.id.len().min(12)]);
    } else if let Some(unit) = &k.systemd_unit {
        let _ = write!(line, " unit {unit}");
    }
    if v.container_init == Some(true) {
        line.push_str(" container-init");
    }
    match k.container_survives {
        Some(true) => line.push_str(" container-survives"),
        Some(false) => line.push_str(" container-dies"),
        None => {}
    }
    let _ = write!(
        line,
        " trigger {} {}",
        opt(k.trigger.pid),
        quoted(k.trigger.comm.as_deref())
    );
    match (&k.exit.observed, k.exit.code) {
        (true, Some(code)) => {
            let _ = write!(line, " exit {code}");
            if let Some(sig) = k.exit.signal {
                let _ = write!(line, " (signal {sig})");
            }
            let _ = write!(line, " after {}ms", opt(k.exit.delay_ms));
        }
        (true, None) => {
            let _ = write!(line, " exited after {}ms", opt(k.exit.delay_ms));
        }
        (false, _) => line.push_str(" exit not observed"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_free_h() {
        assert_eq!(human_bytes(0), "0B");
        assert_eq!(human_bytes(1023), "1023B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(100 << 20), "100.0MiB");
    }

    #[test]
    fn a_hostile_comm_stays_on_one_text_line() {
        let mut kill: OomKill = serde_json::from_value(serde_json::json!({
            "schema": 1, "seq": 0, "time": "t", "boot_ns": 0, "source": "raw_tracepoint",
            "victim": {"pid": null, "tid": null, "ns_pid": null, "container_init": null,
                       "comm": null, "comm_hex": null, "uid": null, "oom_score_adj": null,
                       "total_vm_bytes": null, "pgtables_bytes": null,
                       "rss": {"anon_bytes": null, "file_bytes": null, "shmem_bytes": null},
                       "cgroup": {"id": null, "path": null}},
            "trigger": {"pid": 1, "tid": 1, "comm": null, "comm_hex": null},
            "oom": {"constraint": null, "memcg_path": null, "points": null, "totalpages": null, "chosen_pid": null},
            "memcg": null,
            "exit": {"observed": false, "code": null, "signal": null, "delay_ms": null}
        }))
        .expect("valid oom_kill");
        kill.victim.comm = Some("a\nb\"c".into());
        let line = kill_line(&kill);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(r#""a\nb\"c""#), "{line}");
        assert!(line.contains("exit not observed"));
    }
}
