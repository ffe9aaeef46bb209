//! The kernel's own account of each OOM kill: the `Killed process` line in
//! the kernel log, read from /dev/kmsg.

use std::{
    fs::File,
    io::Read,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// One `... Killed process PID (COMM) total-vm:...` line. Sizes in kB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KilledProcess {
    pub pid: u32,
    /// The comm bytes, with /dev/kmsg's `\xNN` escapes undone.
    pub comm: Vec<u8>,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub uid: u32,
    pub pgtables_kb: u64,
    pub oom_score_adj: i16,
    /// The text before `: Killed process` ("Memory cgroup out of memory").
    pub reason: String,
    /// The `oom-kill:` line the kernel printed about the same pid just before.
    pub context: Option<OomKillLine>,
}

/// mm/oom_kill.c's dump_oom_victim():
/// `oom-kill:constraint=%s,nodemask=%*pbl,cpuset=...,mems_allowed=...,oom_memcg=%s,task_memcg=%s,task=%s,pid=%d,uid=%d`
/// (`oom_memcg` only for a memcg OOM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomKillLine {
    /// `CONSTRAINT_MEMCG`, `CONSTRAINT_NONE`, ...
    pub constraint: String,
    /// The memcg whose limit fired.
    pub oom_memcg: Option<String>,
    /// The victim's memcg.
    pub task_memcg: Option<String>,
    pub pid: u32,
    /// The `Memory cgroup stats for PATH:` block printed just before this
    /// line in the same report: (PATH, its `name value` lines).
    pub stat: Option<(String, Vec<(String, u64)>)>,
}

pub struct Kmsg {
    file: File,
    /// Every `Killed process` line read so far: simultaneous kills are
    /// logged in either order.
    seen: Vec<KilledProcess>,
    contexts: Vec<OomKillLine>,
    /// The latest `Memory cgroup stats for` block, and whether its lines
    /// are still being read.
    stat: Option<(String, Vec<(String, u64)>)>,
    in_stat: bool,
    /// How often the kernel overwrote records before they were read (EPIPE).
    overruns: u32,
}

impl Kmsg {
    /// Opens the kernel log positioned at its end: only later lines are read.
    pub fn open() -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .expect("open /dev/kmsg (needs root)");
        // SAFETY: lseek on our own fd; SEEK_END on /dev/kmsg skips to the newest record.
        unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        Self {
            file,
            seen: Vec::new(),
            contexts: Vec::new(),
            stat: None,
            in_stat: false,
            overruns: 0,
        }
    }

    /// Every `Killed process` line read so far, in the order logged.
    pub fn seen(&self) -> &[KilledProcess] {
        &self.seen
    }

    /// How often records were overwritten before this reader got to them:
    /// lines may be missing from [`Kmsg::seen`] if this is not 0. The log
    /// is a ring (128 KiB here, CONFIG_LOG_BUF_SHIFT=17), and each memcg OOM
    /// also dumps a few KiB of state, so a long storm must be read as it
    /// goes ([`Kmsg::poll`]).
    pub fn overruns(&self) -> u32 {
        self.overruns
    }

    /// Reads every record logged so far, without waiting.
    pub fn poll(&mut self) {
        let mut buf = vec![0u8; 8192];
        while self.read_one(&mut buf) {}
    }

    /// Waits for the kernel's `Killed process` line about `pid`.
    pub fn killed(&mut self, pid: u32, timeout: Duration) -> KilledProcess {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 8192];
        loop {
            if let Some(found) = self.seen.iter().find(|k| k.pid == pid) {
                return found.clone();
            }
            if !self.read_one(&mut buf) {
                assert!(
                    Instant::now() < deadline,
                    "no `Killed process {pid}` line in the kernel log within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Reads one record; false if there is none yet.
    fn read_one(&mut self, buf: &mut [u8]) -> bool {
        match self.file.read(buf) {
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                // "PRIO,SEQ,TIME,FLAGS;MESSAGE\n"
                if let Some((_, message)) = record.split_once(';') {
                    let line = message.lines().next().unwrap_or("");
                    if let Some(path) = line
                        .strip_prefix("Memory cgroup stats for ")
                        .and_then(|p| p.strip_suffix(':'))
                    {
                        self.stat = Some((path.to_string(), Vec::new()));
                        self.in_stat = true;
                        return true;
                    }
                    if self.in_stat
                        && let Some(fields) = stat_fields(line)
                        && let Some((_, kept)) = &mut self.stat
                    {
                        kept.extend(fields);
                        return true;
                    }
                    self.in_stat = false;
                    if let Some(mut context) = parse_oom_kill_line(line) {
                        context.stat = self.stat.take();
                        self.contexts.push(context);
                    } else if let Some(mut killed) = parse_killed(line) {
                        killed.context = self
                            .contexts
                            .iter()
                            .rev()
                            .find(|c| c.pid == killed.pid)
                            .cloned();
                        self.seen.push(killed);
                    }
                }
                true
            }
            // EPIPE: records were overwritten under us; keep reading.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                self.overruns += 1;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("reading /dev/kmsg: {e}"),
        }
    }
}

/// `name value` lines (one, or several joined by an escaped newline, as
/// kernels before 6.4 print `memory.stat` in one record); None for any
/// other text.
fn stat_fields(line: &str) -> Option<Vec<(String, u64)>> {
    let text = String::from_utf8(unescape(line)).ok()?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(' ')?;
            let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            (plain && !name.is_empty()).then_some(())?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Undoes /dev/kmsg's escaping of unprintable bytes as `\xNN`.
fn unescape(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && i + 3 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&text[i + 2..i + 4], 16)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Parses mm/oom_kill.c's
/// `"%s: Killed process %d (%s) total-vm:%lukB, anon-rss:%lukB, file-rss:%lukB, shmem-rss:%lukB, UID:%u pgtables:%lukB oom_score_adj:%hd"`.
pub fn parse_killed(message: &str) -> Option<KilledProcess> {
    let (reason, rest) = message.split_once(": Killed process ")?;
    let (pid, rest) = rest.split_once(" (")?;
    // The comm can itself contain ") ", so split at the last ") total-vm:".
    let (comm, rest) = rest.rsplit_once(") total-vm:")?;
    let field = |name: &str| -> Option<&str> {
        let start = rest.find(name)? + name.len();
        let value = &rest[start..];
        let end = value
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(value.len());
        Some(&value[..end])
    };
    let total_vm = rest.split("kB").next()?;
    Some(KilledProcess {
        pid: pid.trim().parse().ok()?,
        comm: unescape(comm),
        total_vm_kb: total_vm.parse().ok()?,
        anon_rss_kb: field("anon-rss:")?.parse().ok()?,
        file_rss_kb: field("file-rss:")?.parse().ok()?,
        shmem_rss_kb: field("shmem-rss:")?.parse().ok()?,
        uid: field("UID:")?.parse().ok()?,
        pgtables_kb: field("pgtables:")?.parse().ok()?,
        oom_score_adj: field("oom_score_adj:")?.parse().ok()?,
        reason: reason.to_string(),
        context: None,
    })
}

pub fn parse_oom_kill_line(message: &str) -> Option<OomKillLine> {
    let rest = message.strip_prefix("oom-kill:")?;
    // task= (a comm) may hold anything, so take the fixed tail from the right.
    let (rest, _uid) = rest.rsplit_once(",uid=")?;
    let (rest, pid) = rest.rsplit_once(",pid=")?;
    let (rest, _task) = rest.rsplit_once(",task=")?;
    let value = |key: &str| {
        let start = rest.find(&format!(",{key}="))? + key.len() + 2;
        let tail = &rest[start..];
        // The paths come last, in this order; each runs to the next key.
        let end = [",task_memcg=", ",oom_memcg="]
            .iter()
            .filter_map(|k| tail.find(k))
            .min()
            .unwrap_or(tail.len());
        Some(tail[..end].to_string())
    };
    let constraint = rest
        .strip_prefix("constraint=")?
        .split(',')
        .next()?
        .to_string();
    Some(OomKillLine {
        constraint,
        oom_memcg: value("oom_memcg"),
        task_memcg: value("task_memcg"),
        pid: pid.trim().parse().ok()?,
        stat: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_line() {
        let line = "Memory cgroup out of memory: Killed process 10624 (py) x\\x0a) total-vm:60768kB, anon-rss:50788kB, file-rss:6076kB, shmem-rss:0kB, UID:0 pgtables:164kB oom_score_adj:500";
        let k = parse_killed(line).expect("parse");
        assert_eq!(k.pid, 10624);
        assert_eq!(k.comm, b"py) x\n");
        assert_eq!(
            (k.total_vm_kb, k.anon_rss_kb, k.file_rss_kb, k.shmem_rss_kb),
            (60768, 50788, 6076, 0)
        );
        assert_eq!((k.uid, k.pgtables_kb, k.oom_score_adj), (0, 164, 500));
        assert_eq!(k.reason, "Memory cgroup out of memory");
        assert!(parse_killed("oom_reaper: reaped process 1 (x)").is_none());
    }

    #[test]
    fn parses_the_oom_kill_line() {
        let line = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/pod,task_memcg=/pod/ctr,task=a,pid=1,uid=0,pid=19659,uid=0";
        let c = parse_oom_kill_line(line).expect("parse");
        assert_eq!(c.constraint, "CONSTRAINT_MEMCG");
        assert_eq!(c.oom_memcg.as_deref(), Some("/pod"));
        assert_eq!(c.task_memcg.as_deref(), Some("/pod/ctr"));
        assert_eq!(c.pid, 19659);
        let global = "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/x,task=b,pid=7,uid=0";
        let g = parse_oom_kill_line(global).expect("parse");
        assert_eq!(
            (g.oom_memcg, g.task_memcg.as_deref(), g.pid),
            (None, Some("/x"), 7)
        );
    }
}
