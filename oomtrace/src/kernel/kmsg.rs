//! The kernel log (/dev/kmsg): what the OOM killer itself prints about each
//! kill, the one exact source of the memcg whose limit fired when
//! `oom_kill_process` cannot be hooked.
//!
//! mm/oom_kill.c prints, for each kill, under `oom_lock` (so two kills never
//! interleave):
//!
//! 1. dump_oom_victim(), only when oom_kill_process()'s `oom_rs` ratelimit
//!    allows (10 per 5 s): one summary line,
//!    `oom-kill:constraint=C,nodemask=…,cpuset=…,mems_allowed=…[,oom_memcg=P],task_memcg=T,task=COMM,pid=N,uid=U`,
//!    where `pid` is the chosen process (`oc->chosen`);
//! 2. then __oom_kill_process(), after mark_oom_victim(), always:
//!    `<reason>: Killed process TID (COMM) total-vm:…`, where TID is the
//!    marked task (`task_pid_nr(victim)`), the very task `mark_victim` saw.
//!
//! Before the summary, in the same ratelimited report (dump_header()), a
//! memcg OOM prints mem_cgroup_print_oom_meminfo(): `Memory cgroup stats
//! for PATH:` and then the memcg's `memory.stat`, one `name value` line per
//! record since 6.4 (seq_buf_do_printk()), all in one record with newlines
//! before. That block is kept only when the summary follows it: the block
//! of an OOM that killed nobody (`Out of memory and no killable
//! processes...`) has none, and must not be taken for the next kill's.
//!
//! So a `Killed process` line closes the question for its victim: a summary
//! read before it is this kill's (to be checked against the record: see
//! [`OomSummary::fired_memcg`]); none means the kernel printed none. Other
//! members of a `memory.oom.group` kill get only the second line.
//!
//! /dev/kmsg escapes bytes below 0x20, from 0x7f, and `\` as `\xNN`
//! (devkmsg_read() / msg_add_ext_text()), so one record is one line and the
//! raw bytes come back exactly.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    thread::JoinHandle,
};

use oomtrace_record::Constraint;

/// The kernel's record for one kill's victim, once its `Killed process` line
/// is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KilledLine {
    /// The marked task's pid (a thread id: `task_pid_nr(victim)`).
    pub tid: u32,
    /// The `oom-kill:` summary printed since the previous kill's line.
    pub summary: Option<OomSummary>,
    /// The `Memory cgroup stats for` block printed just before that
    /// summary; None without a summary.
    pub memcg_stat: Option<MemcgStatBlock>,
}

/// A `Memory cgroup stats for PATH:` block: the path as printed (raw
/// bytes) and its `name value` lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemcgStatBlock {
    pub path: Vec<u8>,
    pub fields: Vec<(String, u64)>,
}

/// The most fields one block keeps (a v2 `memory.stat` has about 60).
const MAX_STAT_FIELDS: usize = 256;

/// A parsed `oom-kill:` summary line (unescaped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OomSummary {
    pub constraint: Option<Constraint>,
    /// `oc->chosen`'s pid: the victim process's tgid, or its tid when the
    /// kernel moved to another thread (find_lock_task_mm()).
    pub pid: u32,
    /// Everything between `oom-kill:` and `,pid=`: the cgroup paths, cpuset
    /// and comm may hold any byte, so they are only read against what the
    /// record already knows.
    head: Vec<u8>,
}

/// Why a summary could not be shown to belong to a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// It names another task: it is not this kill's summary.
    OtherTask,
    /// It could be this kill's, but its text does not parse against the
    /// record (cut short at printk's record size, or a cgroup name that
    /// holds `,oom_memcg=` twice).
    Unverifiable,
}

impl OomSummary {
    /// The memcg whose limit fired, for the victim with this comm, thread
    /// group and memcg path (raw bytes). `Ok(None)` when the summary names
    /// none (a global, cpuset or mempolicy OOM).
    pub fn fired_memcg(
        &self,
        comm: &[u8],
        tgid: Option<u32>,
        tid: Option<u32>,
        task_memcg: &[u8],
    ) -> Result<Option<Vec<u8>>, Mismatch> {
        if Some(self.pid) != tgid && Some(self.pid) != tid {
            return Err(Mismatch::OtherTask);
        }
        let rest =
            strip_suffix(&self.head, &[b",task=", comm].concat()).ok_or(Mismatch::OtherTask)?;
        let rest = strip_suffix(rest, &[b",task_memcg=", task_memcg].concat())
            .ok_or(Mismatch::Unverifiable)?;
        // mem_cgroup_print_oom_context() prints `,oom_memcg=` only for a
        // memcg OOM. The cpuset name before it may hold the same text, so
        // every occurrence is a candidate, and only one that is the
        // victim's memcg or an ancestor of it can be the fired one.
        const KEY: &[u8] = b",oom_memcg=";
        let candidates: Vec<&[u8]> = (0..rest.len())
            .filter(|&i| rest[i..].starts_with(KEY))
            .map(|i| &rest[i + KEY.len()..])
            .filter(|path| is_ancestor_or_self(path, task_memcg))
            .collect();
        let memcg_oom = self.constraint == Some(Constraint::Memcg);
        match (candidates.as_slice(), memcg_oom) {
            ([only], true) => Ok(Some(only.to_vec())),
            ([], false) => Ok(None),
            _ => Err(Mismatch::Unverifiable),
        }
    }
}

fn strip_suffix<'a>(bytes: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    bytes.strip_suffix(suffix)
}

/// Whether cgroup path `a` is `b` or one of its ancestors.
fn is_ancestor_or_self(a: &[u8], b: &[u8]) -> bool {
    a == b || a == b"/" || (b.starts_with(a) && b.get(a.len()) == Some(&b'/'))
}

/// Reads the kernel log from now on, turning the OOM killer's lines into
/// [`KilledLine`]s. Keeps the one piece of state the format needs: the last
/// summary not yet closed by a `Killed process` line.
#[derive(Debug, Default)]
pub struct LineParser {
    summary: Option<OomSummary>,
    /// The stats block that came with `summary`.
    summary_stat: Option<MemcgStatBlock>,
    /// A stats block being read, or read and not yet followed by a summary.
    stat: Option<MemcgStatBlock>,
    /// Whether the lines read now still belong to `stat`.
    in_stat: bool,
}

impl LineParser {
    /// Takes one /dev/kmsg record (`PRI,SEQ,USEC,FLAGS[,…];TEXT\n[ KEY=V\n…]`).
    pub fn record(&mut self, record: &[u8]) -> Option<KilledLine> {
        let start = record.iter().position(|&b| b == b';')? + 1;
        let text = &record[start..];
        let text = &text[..text.iter().position(|&b| b == b'\n').unwrap_or(text.len())];
        let text = unescape(text);
        if let Some(path) = text
            .strip_prefix(b"Memory cgroup stats for ")
            .and_then(|rest| rest.strip_suffix(b":"))
        {
            self.stat = Some(MemcgStatBlock {
                path: path.to_vec(),
                fields: Vec::new(),
            });
            self.in_stat = true;
            return None;
        }
        if self.in_stat && self.stat_lines(&text) {
            return None;
        }
        self.in_stat = false;
        if let Some(body) = text.strip_prefix(b"oom-kill:") {
            self.summary = parse_summary(body);
            self.summary_stat = self.stat.take().filter(|_| self.summary.is_some());
            return None;
        }
        let tid = killed_process_tid(&text)?;
        // A block not followed by a summary was not this kill's.
        self.stat = None;
        let summary = self.summary.take();
        let memcg_stat = self.summary_stat.take().filter(|_| summary.is_some());
        Some(KilledLine {
            tid,
            summary,
            memcg_stat,
        })
    }

    /// Takes `name value` lines (one, or several in one record) into the
    /// block being read; false when the text is not such lines.
    fn stat_lines(&mut self, text: &[u8]) -> bool {
        let Some(block) = &mut self.stat else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(text) else {
            return false;
        };
        let mut parsed = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let field = line.split_once(' ').and_then(|(name, value)| {
                let plain = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                plain.then_some(())?;
                Some((name.to_string(), value.trim().parse::<u64>().ok()?))
            });
            match field {
                Some(field) => parsed.push(field),
                None => return false,
            }
        }
        let room = MAX_STAT_FIELDS.saturating_sub(block.fields.len());
        block.fields.extend(parsed.into_iter().take(room));
        true
    }

    /// Records were lost (the kernel's buffer overran this reader): a
    /// summary held now may belong to a kill whose line was lost.
    pub fn overrun(&mut self) {
        self.summary = None;
        self.summary_stat = None;
        self.stat = None;
        self.in_stat = false;
    }
}

/// `…: Killed process TID (COMM) …`, as __oom_kill_process() prints it.
fn killed_process_tid(text: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b": Killed process ";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = &text[at..];
    let end = digits.iter().position(|b| !b.is_ascii_digit())?;
    if !digits[end..].starts_with(b" (") {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

fn parse_summary(body: &[u8]) -> Option<OomSummary> {
    let (rest, _uid) = split_number(body, b",uid=")?;
    let (head, pid) = split_number(rest, b",pid=")?;
    let constraint = body
        .strip_prefix(b"constraint=")
        .and_then(|c| c.split(|&b| b == b',').next())
        .and_then(|c| match c {
            b"CONSTRAINT_NONE" => Some(Constraint::Global),
            b"CONSTRAINT_CPUSET" => Some(Constraint::Cpuset),
            b"CONSTRAINT_MEMORY_POLICY" => Some(Constraint::Mempolicy),
            b"CONSTRAINT_MEMCG" => Some(Constraint::Memcg),
            _ => None,
        });
    Some(OomSummary {
        constraint,
        pid: u32::try_from(pid).ok()?,
        head: head.to_vec(),
    })
}

/// Splits `…KEY123` into (`…`, 123), the number running to the end.
fn split_number<'a>(bytes: &'a [u8], key: &[u8]) -> Option<(&'a [u8], u64)> {
    let digits = bytes
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let (rest, number) = bytes.split_at(bytes.len() - digits);
    let rest = rest.strip_suffix(key)?;
    Some((rest, std::str::from_utf8(number).ok()?.parse().ok()?))
}

/// Undoes /dev/kmsg's `\xNN` escaping.
fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\'
            && text.get(i + 1) == Some(&b'x')
            && let Some(byte) = text
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 4;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// Where the kernel log is read from.
pub const KMSG: &str = "/dev/kmsg";

/// The kernel log, open at its end: only kills from now on matter.
pub struct KernelLog {
    file: File,
}

impl KernelLog {
    pub fn open() -> io::Result<Self> {
        let mut file = File::open(KMSG)?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self { file })
    }

    /// Reads the log on a thread of its own, handing each victim's
    /// [`KilledLine`] to `deliver`. The thread ends when `deliver` returns
    /// false or the log cannot be read.
    pub fn spawn(
        mut self,
        mut deliver: impl FnMut(KilledLine) -> bool + Send + 'static,
    ) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || {
                let mut parser = LineParser::default();
                // A record is at most CONSOLE_EXT_LOG_MAX (8 KiB); a smaller
                // buffer makes read() fail with EINVAL.
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match self.file.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            if let Some(line) = parser.record(&buf[..n])
                                && !deliver(line)
                            {
                                return;
                            }
                        }
                        // EPIPE: the kernel overwrote records before they were read.
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => parser.overrun(),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!(
                                "reading {KMSG} failed; kernel log lines are no longer read: {e}"
                            );
                            return;
                        }
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kmsg(text: &str) -> Vec<u8> {
        format!("6,4242,123456789,-,caller=T1;{text}\n SUBSYSTEM=x\n").into_bytes()
    }

    const SUMMARY: &str = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/P,task_memcg=/P/B,task=hog,pid=4321,uid=0";

    #[test]
    fn summary_then_killed_line_is_one_kill() {
        let mut p = LineParser::default();
        assert_eq!(p.record(&kmsg(SUMMARY)), None);
        let line = p
            .record(&kmsg(
                "Memory cgroup out of memory: Killed process 4321 (hog) total-vm:1kB, anon-rss:0kB",
            ))
            .expect("a killed line");
        assert_eq!(line.tid, 4321);
        let s = line.summary.expect("a summary");
        assert_eq!(s.constraint, Some(Constraint::Memcg));
        assert_eq!(
            s.fired_memcg(b"hog", Some(4321), Some(4321), b"/P/B"),
            Ok(Some(b"/P".to_vec()))
        );
        // The summary is consumed: the next kill without one has none.
        let line = p
            .record(&kmsg(
                "Memory cgroup out of memory: Killed process 77 (x) total-vm:1kB",
            ))
            .expect("a killed line");
        assert_eq!(line.summary, None);
    }

    #[test]
    fn checks_against_the_record() {
        let mut p = LineParser::default();
        p.record(&kmsg(SUMMARY));
        let s = p
            .record(&kmsg("Out of memory: Killed process 4322 (hog) x"))
            .expect("a killed line")
            .summary
            .expect("a summary");
        // Another task's summary (its Killed line was never printed).
        assert_eq!(
            s.fired_memcg(b"hog", Some(9), Some(9), b"/P/B"),
            Err(Mismatch::OtherTask)
        );
        assert_eq!(
            s.fired_memcg(b"cat", Some(4321), None, b"/P/B"),
            Err(Mismatch::OtherTask)
        );
        assert_eq!(
            s.fired_memcg(b"hog", Some(4321), None, b"/P/C"),
            Err(Mismatch::Unverifiable)
        );
        // The chosen pid may be the tgid while the marked task is a thread.
        assert!(
            s.fired_memcg(b"hog", Some(4321), Some(4330), b"/P/B")
                .is_ok()
        );
    }

    #[test]
    fn hostile_names_cannot_forge_the_fired_memcg() {
        // A cpuset and cgroup names holding the keys themselves, escaped bytes
        // and a comma in the comm.
        let text = r"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/x,oom_memcg=/evil,mems_allowed=0,oom_memcg=/a\x5cb\xff,task_memcg=/a\x5cb\xff/c,task=,pid=1,,pid=5,uid=1000";
        let mut p = LineParser::default();
        p.record(&kmsg(text));
        let s = p
            .record(&kmsg(
                "Memory cgroup out of memory: Killed process 5 (,pid=1,) x",
            ))
            .expect("a killed line")
            .summary
            .expect("a summary");
        assert_eq!(s.pid, 5);
        let fired = s.fired_memcg(b",pid=1,", Some(5), Some(5), b"/a\\b\xff/c");
        assert_eq!(fired, Ok(Some(b"/a\\b\xff".to_vec())));
        // A memcg OOM whose named memcg holds no victim: refuse.
        let text = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/ab,task_memcg=/a/b,task=t,pid=5,uid=0";
        p.record(&kmsg(text));
        let s = p
            .record(&kmsg("Memory cgroup out of memory: Killed process 5 (t) x"))
            .expect("a killed line")
            .summary
            .expect("a summary");
        assert_eq!(
            s.fired_memcg(b"t", Some(5), None, b"/a/b"),
            Err(Mismatch::Unverifiable)
        );
    }

    #[test]
    fn global_oom_names_no_memcg() {
        let text = "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/user.slice,task=big,pid=9,uid=0";
        let mut p = LineParser::default();
        p.record(&kmsg(text));
        let s = p
            .record(&kmsg("Out of memory: Killed process 9 (big) x"))
            .expect("a killed line")
            .summary
            .expect("a summary");
        assert_eq!(s.constraint, Some(Constraint::Global));
        assert_eq!(
            s.fired_memcg(b"big", Some(9), None, b"/user.slice"),
            Ok(None)
        );
    }

    #[test]
    fn truncated_and_foreign_lines() {
        let mut p = LineParser::default();
        // printk cut the record short: no pid/uid at the end.
        p.record(&kmsg("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/aaaa"));
        let line = p
            .record(&kmsg("Memory cgroup out of memory: Killed process 3 (t) x"))
            .expect("a killed line");
        assert_eq!(line.summary, None);
        assert_eq!(
            p.record(&kmsg("audit: Killed process 3 without a paren")),
            None
        );
        assert_eq!(p.record(b"no separator"), None);
        assert_eq!(
            p.record(&kmsg("x: Killed process 12345678901234 (t)")),
            None
        );
        p.record(&kmsg(SUMMARY));
        p.overrun();
        let line = p
            .record(&kmsg(
                "Memory cgroup out of memory: Killed process 4321 (hog) x",
            ))
            .expect("a killed line");
        assert_eq!(line.summary, None);
    }

    #[test]
    fn unescapes_kmsg() {
        assert_eq!(unescape(br"a\x5cb\xffc\x"), b"a\\b\xffc\\x".to_vec());
        assert_eq!(unescape(br"\xzz"), br"\xzz".to_vec());
    }

    const KILLED: &str =
        "Memory cgroup out of memory: Killed process 4321 (hog) total-vm:1kB, anon-rss:0kB";

    #[test]
    fn a_stats_block_before_the_summary_is_the_kills() {
        let mut p = LineParser::default();
        for text in [
            "memory: usage 65536kB, limit 65536kB, failcnt 0",
            "Memory cgroup stats for /P:",
            "anon 66969600",
            "file 0",
            "Tasks state (memory values in pages):",
            SUMMARY,
        ] {
            assert_eq!(p.record(&kmsg(text)), None);
        }
        let line = p.record(&kmsg(KILLED)).expect("a killed line");
        let block = line.memcg_stat.expect("the block");
        assert_eq!(block.path, b"/P");
        assert_eq!(
            block.fields,
            [("anon".to_string(), 66_969_600), ("file".to_string(), 0)]
        );
    }

    #[test]
    fn one_record_with_every_line_before_6_4() {
        let mut p = LineParser::default();
        p.record(&kmsg("Memory cgroup stats for /a b:"));
        p.record(&kmsg("anon 4096\\x0afile 8192\\x0ashmem 0\\x0a"));
        p.record(&kmsg(SUMMARY));
        let block = p
            .record(&kmsg(KILLED))
            .and_then(|l| l.memcg_stat)
            .expect("the block");
        assert_eq!(block.path, b"/a b");
        assert_eq!(block.fields.len(), 3);
    }

    #[test]
    fn a_block_without_a_summary_is_nobodys() {
        let mut p = LineParser::default();
        // An OOM that found nobody to kill, then a kill whose report was
        // ratelimited away.
        p.record(&kmsg("Memory cgroup stats for /stalled:"));
        p.record(&kmsg("anon 1"));
        p.record(&kmsg("Out of memory and no killable processes..."));
        let line = p.record(&kmsg(KILLED)).expect("a killed line");
        assert_eq!((line.summary, line.memcg_stat), (None, None));
    }
}
