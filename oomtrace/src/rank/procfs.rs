//! Reading processes from /proc: the figures `oom_badness` uses, as
//! /proc/PID/status shows them, their adj and score, and their memcg.

use std::{io::Read as _, path::Path};

use crate::pipeline::attribution::memory_hierarchy_path;

/// A process's memory in bytes, from /proc/PID/status (kB there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusMemory {
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub swap: u64,
    pub page_tables: u64,
}

/// One process as read.
#[derive(Clone, Debug, Default)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
    pub oom_score: Option<u64>,
    pub adj: Option<i32>,
    /// None: no memory of its own (kernel thread, zombie) or unreadable.
    pub memory: Option<StatusMemory>,
    /// `Kthread: 1` (kernels that print it), or no `Vm*` lines at all.
    pub no_mm: bool,
    pub memcg_path: Option<String>,
    /// `file: reason` for each file that could not be read.
    pub unreadable: Vec<String>,
}

/// What /proc/PID/status says, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub memory: Option<StatusMemory>,
    pub kthread: bool,
}

/// Parses /proc/PID/status. Memory is Some only when all five figures are
/// there (a task with an mm prints them all).
pub fn parse_status(text: &str) -> Status {
    let mut status = Status::default();
    let mut figures: [Option<u64>; 5] = [None; 5];
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let slot = match key {
            "Name" => {
                status.name = value.to_string();
                continue;
            }
            "Kthread" => {
                status.kthread = value == "1";
                continue;
            }
            "RssAnon" => 0,
            "RssFile" => 1,
            "RssShmem" => 2,
            "VmSwap" => 3,
            "VmPTE" => 4,
            _ => continue,
        };
        figures[slot] = value
            .strip_suffix(" kB")
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024);
    }
    if let [
        Some(anon),
        Some(file),
        Some(shmem),
        Some(swap),
        Some(page_tables),
    ] = figures
    {
        status.memory = Some(StatusMemory {
            anon,
            file,
            shmem,
            swap,
            page_tables,
        });
    }
    status
}

/// Reads a small file into `buffer` (cleared first).
fn read_to(path: &Path, buffer: &mut String) -> std::io::Result<()> {
    buffer.clear();
    std::fs::File::open(path)?.read_to_string(buffer)?;
    Ok(())
}

fn reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}

/// Whether an error means the process is gone (it exited mid-pass).
fn gone(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::NotFound || error.raw_os_error() == Some(libc::ESRCH)
}

/// Every process in `proc` (normally /proc), in pid order. A process that
/// exits during the pass is left out; a file that cannot be read is named
/// in the process's `unreadable`.
pub fn read_all(proc: &Path) -> std::io::Result<Vec<Process>> {
    let mut pids: Vec<u32> = std::fs::read_dir(proc)?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let mut buffer = String::with_capacity(2048);
    let mut processes = Vec::with_capacity(pids.len());
    for pid in pids {
        if let Some(process) = read_one(&proc.join(pid.to_string()), pid, &mut buffer) {
            processes.push(process);
        }
    }
    Ok(processes)
}

/// One process; None when it is gone.
fn read_one(dir: &Path, pid: u32, buffer: &mut String) -> Option<Process> {
    let mut p = Process {
        pid,
        ..Process::default()
    };
    match read_to(&dir.join("status"), buffer) {
        Ok(()) => {
            let status = parse_status(buffer);
            p.comm = status.name;
            p.no_mm = status.kthread || status.memory.is_none();
            p.memory = status.memory;
        }
        Err(e) if gone(&e) => return None,
        Err(e) => p.unreadable.push(format!("status: {}", reason(&e))),
    }
    match read_to(&dir.join("oom_score_adj"), buffer) {
        Ok(()) => p.adj = buffer.trim().parse().ok(),
        Err(e) if gone(&e) => return None,
        Err(e) => p.unreadable.push(format!("oom_score_adj: {}", reason(&e))),
    }
    match read_to(&dir.join("oom_score"), buffer) {
        Ok(()) => p.oom_score = buffer.trim().parse().ok(),
        Err(e) if gone(&e) => return None,
        Err(e) => p.unreadable.push(format!("oom_score: {}", reason(&e))),
    }
    match read_to(&dir.join("cgroup"), buffer) {
        Ok(()) => {
            p.memcg_path = memory_hierarchy_path(buffer.as_bytes())
                .map(|path| String::from_utf8_lossy(path).into_owned());
        }
        Err(e) if gone(&e) => return None,
        Err(e) => p.unreadable.push(format!("cgroup: {}", reason(&e))),
    }
    if p.comm.is_empty() && p.unreadable.is_empty() {
        // A status without Name: not a process we can rank.
        p.unreadable.push("status: no Name line".into());
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpostgres\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmRSS:\t  10240 kB\nRssAnon:\t    8192 kB\nRssFile:\t    2000 kB\n\
        RssShmem:\t      48 kB\nVmData:\t  9000 kB\nVmPTE:\t      88 kB\nVmSwap:\t     12 kB\n\
        Threads:\t1\n";

    #[test]
    fn status_figures_in_bytes() {
        let s = parse_status(STATUS);
        assert_eq!(s.name, "postgres");
        assert_eq!(
            s.memory,
            Some(StatusMemory {
                anon: 8192 * 1024,
                file: 2000 * 1024,
                shmem: 48 * 1024,
                swap: 12 * 1024,
                page_tables: 88 * 1024,
            })
        );
        assert!(!s.kthread);
    }

    #[test]
    fn kernel_threads_have_no_memory() {
        let s = parse_status("Name:\tkworker/0:1\nState:\tI (idle)\nKthread:\t1\nThreads:\t1\n");
        assert_eq!(
            (s.name.as_str(), s.memory, s.kthread),
            ("kworker/0:1", None, true)
        );
        let old = parse_status("Name:\tkthreadd\nState:\tS\nThreads:\t1\n");
        assert_eq!(old.memory, None);
    }

    #[test]
    fn this_process_reads_whole() {
        let mut buffer = String::new();
        let me = std::process::id();
        let p = read_one(Path::new(&format!("/proc/{me}")), me, &mut buffer).expect("me");
        assert!(p.unreadable.is_empty(), "{:?}", p.unreadable);
        let memory = p.memory.expect("a test binary has memory");
        assert!(memory.anon > 0 && memory.page_tables > 0, "{memory:?}");
        assert!(p.adj.is_some() && p.oom_score.is_some());
        assert!(p.memcg_path.is_some_and(|c| c.starts_with('/')));
    }
}
