//! Cgroup paths at the limits of the kernel's walk (oomtrace-ebpf's
//! `MAX_CGROUP_DEPTH` levels below the root, `CGROUP_PATH_MAX` bytes): a
//! path within them comes through whole, in `victim.cgroup.path`,
//! `memcg.path`, every `memcg.levels[].path` and `oom.memcg_path` alike; a
//! path past them is null in every one of them, never cut short. And a name
//! that is not UTF-8 comes with its exact bytes in the `*_hex` siblings.
//!
//! Each scenario builds a chain of cgroups of its own, kills a workload at
//! its bottom, and checks the record against the kernel: /proc/PID/cgroup
//! read before the kill, the `Killed process` line, the `oom-kill:` line's
//! `task_memcg` where the kernel logged it whole, and the directories made.
//! The chains are built and removed through directory descriptors
//! (mkdirat, openat, unlinkat), since a path near PATH_MAX below
//! /sys/fs/cgroup/memory is longer than a system call accepts.

use std::{
    ffi::CString,
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    Env,
    cgroup::{MemCgroup, Version},
    collector::Collector,
    kmsg::{KilledProcess, Kmsg},
    scenarios::{LIMIT, Workload, assert_exit_137, assert_matches_kernel, assert_sigkilled},
};

/// oomtrace-ebpf's `MAX_CGROUP_DEPTH` and `CGROUP_PATH_MAX`, restated: the
/// tests pin the documented limits, not whatever the code says.
pub const MAX_DEPTH: usize = 32;
pub const PATH_MAX_BYTES: usize = 4095;
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

fn cstr(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("a name without NUL")
}

fn check(ret: i32, what: &str) {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Opens `name` in the directory `dir` (a descriptor), with `flags`.
fn open_at(dir: RawFd, name: &[u8], flags: i32) -> std::io::Result<OwnedFd> {
    let name = cstr(name);
    // SAFETY: openat with a live descriptor and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write_at(dir: RawFd, name: &str, value: &str) {
    let fd = open_at(dir, name.as_bytes(), libc::O_WRONLY)
        .unwrap_or_else(|e| panic!("open {name} to write {value:?}: {e}"));
    File::from(fd)
        .write_all(value.as_bytes())
        .unwrap_or_else(|e| panic!("write {value:?} to {name}: {e}"));
}

fn read_at(dir: RawFd, name: &str) -> String {
    let mut text = String::new();
    if let Ok(fd) = open_at(dir, name.as_bytes(), libc::O_RDONLY) {
        let _ = File::from(fd).read_to_string(&mut text);
    }
    text
}

/// A chain of cgroups below a test cgroup of its own (`top`, limited to
/// [`LIMIT`]): each level a directory inside the one above it.
pub struct Chain {
    pub top: MemCgroup,
    /// Below `top`, top first: each level's name and directory.
    levels: Vec<(Vec<u8>, OwnedFd)>,
    top_dir: OwnedFd,
}

impl Chain {
    /// `names` below a new test cgroup, top first. On cgroup v2 the memory
    /// controller is enabled down to the first `memory_levels` of them (all
    /// when None), so the cgroups below have no memcg of their own.
    pub fn new(hint: &str, names: &[Vec<u8>], memory_levels: Option<usize>) -> Self {
        Self::below(MemCgroup::create(hint, Some(LIMIT)), names, memory_levels)
    }

    /// A chain whose leaf's path is exactly `len` bytes long: names as long
    /// as a name can be (255 bytes), the last one shorter.
    pub fn of_length(hint: &str, len: usize) -> Self {
        let top = MemCgroup::create(hint, Some(LIMIT));
        let names = names_for_length(top.path.len(), len);
        let chain = Self::below(top, &names, None);
        assert_eq!(chain.path().len(), len);
        chain
    }

    fn below(top: MemCgroup, names: &[Vec<u8>], memory_levels: Option<usize>) -> Self {
        let hint = top.path.clone();
        let top_dir = open_at(
            libc::AT_FDCWD,
            top.dir.as_os_str().as_bytes(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .unwrap_or_else(|e| panic!("open {}: {e}", top.dir.display()));
        let mut chain = Self {
            top,
            levels: Vec::new(),
            top_dir,
        };
        let memory_levels = memory_levels.unwrap_or(names.len());
        for (i, name) in names.iter().enumerate() {
            let parent = chain.leaf_fd();
            if chain.top.version == Version::V2 && i < memory_levels {
                write_at(parent, "cgroup.subtree_control", "+memory");
            }
            let c_name = cstr(name);
            // SAFETY: mkdirat with a live descriptor and a NUL-terminated name.
            check(
                unsafe { libc::mkdirat(parent, c_name.as_ptr(), 0o755) },
                &format!("mkdir level {} of {hint}", i + 1),
            );
            let dir = open_at(parent, name, libc::O_RDONLY | libc::O_DIRECTORY)
                .unwrap_or_else(|e| panic!("open level {} of {hint}: {e}", i + 1));
            chain.levels.push((name.clone(), dir));
        }
        chain
    }

    fn leaf_fd(&self) -> RawFd {
        self.levels
            .last()
            .map_or(self.top_dir.as_raw_fd(), |(_, dir)| dir.as_raw_fd())
    }

    /// The leaf's path as /proc/PID/cgroup shows it (raw bytes).
    pub fn path(&self) -> Vec<u8> {
        self.path_of(self.levels.len())
    }

    /// The path of the top cgroup (0) or of level `n` below it.
    pub fn path_of(&self, n: usize) -> Vec<u8> {
        let mut path = self.top.path.as_bytes().to_vec();
        for (name, _) in &self.levels[..n] {
            path.push(b'/');
            path.extend_from_slice(name);
        }
        path
    }

    /// Components of the leaf's path: the top cgroup and the levels below.
    pub fn depth(&self) -> usize {
        1 + self.levels.len()
    }

    /// The leaf's kernfs id: its directory's inode.
    pub fn leaf_id(&self) -> u64 {
        // SAFETY: fstat on a live descriptor, into a zeroed stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstat(self.leaf_fd(), &mut st) }, "fstat");
        st.st_ino
    }

    /// Starts an allocator inside the leaf (its working directory, so that
    /// no path is ever longer than a system call takes), waiting on stdin.
    pub fn spawn(&self, env: &Env, adj: &str) -> Workload {
        let leaf = self.leaf_fd();
        let mut command = Command::new(&env.workload);
        command
            .args(["alloc", "--cgroup", ".", "--adj", adj, "--wait-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: fchdir is async-signal-safe; `leaf` stays open until exec.
        unsafe {
            command.pre_exec(move || {
                if libc::fchdir(leaf) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn workload: {e}"));
        let workload = Workload { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = workload.pid().to_string();
        while !read_at(leaf, "cgroup.procs").lines().any(|l| l == pid) {
            assert!(
                Instant::now() < deadline,
                "the workload never joined the leaf"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        workload
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        // Only the test's workload was ever in the leaf.
        for pid in read_at(self.leaf_fd(), "cgroup.procs").lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill(2) with a pid read from our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        while let Some((name, dir)) = self.levels.pop() {
            drop(dir);
            let parent = self.leaf_fd();
            let c_name = cstr(&name);
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: unlinkat with a live descriptor and a NUL-terminated name.
            while unsafe { libc::unlinkat(parent, c_name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
                if Instant::now() > deadline {
                    eprintln!(
                        "warning: could not remove a level of {}: {}",
                        self.top.path,
                        std::io::Error::last_os_error()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // `top` removes itself after this.
    }
}

/// The memory cgroup path in /proc/PID/cgroup, as raw bytes: the v1
/// `memory` line, or v2's `0::` line. A path of PATH_MAX bytes or more is
/// cut at PATH_MAX - 1 (kernfs_path_from_node() in 6.x) or refused with
/// ENAMETOOLONG (older kernels).
pub fn proc_cgroup_path(pid: u32, version: Version) -> std::io::Result<Vec<u8>> {
    let text = std::fs::read(format!("/proc/{pid}/cgroup"))?;
    let found = text.split(|b| *b == b'\n').find_map(|line| {
        let mut fields = line.splitn(3, |b| *b == b':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let memory = match version {
            Version::V1 => controllers.split(|b| *b == b',').any(|c| c == b"memory"),
            Version::V2 => line.starts_with(b"0::"),
        };
        memory.then(|| path.to_vec())
    });
    Ok(found.unwrap_or_else(|| panic!("no memory line in /proc/{pid}/cgroup")))
}

/// How /dev/kmsg shows bytes: printable ASCII as is, the rest and the
/// backslash as `\xNN`.
fn kmsg_escaped(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The exact bytes a path field and its `*_hex` sibling carry, checking
/// that they agree: the hex only when the path is not UTF-8, and then the
/// text is its lossy form.
fn path_bytes(object: &Value, field: &str) -> Option<Vec<u8>> {
    let text = object[field].as_str();
    let hex_field = &object[format!("{field}_hex")];
    let Some(text) = text else {
        assert!(hex_field.is_null(), "{field}_hex without {field}: {object}");
        return None;
    };
    match hex_field.as_str() {
        None => Some(text.as_bytes().to_vec()),
        Some(h) => {
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect();
            assert!(
                std::str::from_utf8(&bytes).is_err(),
                "hex of UTF-8: {object}"
            );
            assert_eq!(text, String::from_utf8_lossy(&bytes), "{object}");
            Some(bytes)
        }
    }
}

/// One kill at the bottom of `chain`: the record, the kernel's line about
/// it, and /proc/PID/cgroup's path as read just before.
pub struct Kill {
    pub record: Value,
    pub kernel: KilledProcess,
    pub proc_path: std::io::Result<Vec<u8>>,
}

/// The kernel's `task_memcg`, when it logged its summary line whole, is the
/// path made (escaped as /dev/kmsg escapes it).
fn assert_logged_task_memcg(kill: &Kill, path: &[u8]) {
    if let Some(logged) = kill
        .kernel
        .context
        .as_ref()
        .and_then(|c| c.task_memcg.as_deref())
    {
        assert_eq!(logged, kmsg_escaped(path), "the kernel's task_memcg");
    }
}

pub fn kill_in(env: &Env, collector: &mut Collector, chain: &Chain) -> Kill {
    let mut kmsg = Kmsg::open();
    let mut victim = chain.spawn(env, "600");
    let proc_path = proc_cgroup_path(victim.pid(), chain.top.version);
    victim.release();
    assert_sigkilled(victim.wait(), "the allocator");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
    assert_matches_kernel(&record, &kernel);
    assert_exit_137(&record);
    assert_eq!(
        record["victim"]["cgroup"]["id"],
        chain.leaf_id(),
        "the leaf's id is known within the limits and past them: {record}"
    );
    Kill {
        record,
        kernel,
        proc_path,
    }
}

/// Every path field comes through whole and equal to the kernel's: the
/// victim's, its memcg's and each level's (v1, or v2 with memory enabled
/// down to the leaf), and the fired memcg (the top, whose limit it is).
pub fn assert_whole(kill: &Kill, chain: &Chain) {
    let record = &kill.record;
    let path = chain.path();
    let proc_path = kill.proc_path.as_ref().expect("/proc/PID/cgroup");
    assert_eq!(proc_path, &path, "the kernel's path is the one made");
    let victim = path_bytes(&record["victim"]["cgroup"], "path");
    assert_eq!(victim.as_ref(), Some(&path), "victim.cgroup.path: {record}");
    assert_logged_task_memcg(kill, &path);
    let memcg = &record["memcg"];
    assert_eq!(path_bytes(memcg, "path").as_ref(), Some(&path), "{record}");
    let levels = memcg["levels"].as_array().expect("memcg levels");
    assert_eq!(
        levels.len(),
        chain.depth() + 1,
        "every level and the root: {record}"
    );
    for (i, level) in levels.iter().enumerate() {
        let expected = match chain.depth() - i {
            0 => b"/".to_vec(),
            n => chain.path_of(n - 1),
        };
        assert_eq!(
            path_bytes(level, "path"),
            Some(expected),
            "level {i}: {record}"
        );
    }
    let top = levels.len() - 2;
    assert_eq!(levels[top]["limit_bytes"], LIMIT, "{record}");
    let fired = path_bytes(&record["oom"], "memcg_path");
    assert_eq!(fired, Some(chain.path_of(0)), "oom.memcg_path: {record}");
}

/// Past a limit, no path field has a path, and none is cut short.
fn assert_no_path(record: &Value) {
    let c = &record["victim"]["cgroup"];
    assert!(c["path"].is_null() && c["path_hex"].is_null(), "{record}");
    assert!(record["oom"]["memcg_path"].is_null(), "{record}");
    assert!(record["oom"]["memcg_path_hex"].is_null(), "{record}");
    if let Some(levels) = record["memcg"]["levels"].as_array() {
        assert!(record["memcg"]["path"].is_null(), "{record}");
        for level in levels {
            assert!(
                level["path"].is_null() && level["path_hex"].is_null(),
                "{record}"
            );
        }
    }
}

/// Names for `components` levels below a test cgroup's top: `l2`, `l3`...
fn level_names(components: usize) -> Vec<Vec<u8>> {
    (2..=components)
        .map(|i| format!("l{i}").into_bytes())
        .collect()
}

/// Names that make the path below a top of `top_len` bytes exactly `len`
/// bytes long, each as long as a name can be (255), the last one shorter.
fn names_for_length(top_len: usize, len: usize) -> Vec<Vec<u8>> {
    let mut left = len - top_len;
    let mut names = Vec::new();
    while left > 0 {
        // Each level takes its `/` and its name; leave no single byte over.
        let mut take = left.min(256);
        if left - take == 1 {
            take -= 1;
        }
        names.push(vec![b'p'; take - 1]);
        left -= take;
    }
    names
}

fn components_at_depth(env: &Env, components: usize) {
    let chain = Chain::new("depth", &level_names(components), None);
    let mut collector = Collector::start(env, &[]);
    let kill = kill_in(env, &mut collector, &chain);
    assert_whole(&kill, &chain);
}

/// A cgroup exactly `MAX_CGROUP_DEPTH` levels below the root: every path
/// field is there, and the memcg levels reach the root.
pub fn cgroup_depth_at_the_limit(env: &Env) {
    components_at_depth(env, MAX_DEPTH);
}

/// One level deeper than the limit: the kernel shows the path, the record
/// has its id and no path at all (never a cut one); the memcg walk did not
/// reach the root either, so `memcg` is null.
pub fn cgroup_depth_past_the_limit(env: &Env) {
    let chain = Chain::new("too-deep", &level_names(MAX_DEPTH + 1), None);
    let mut collector = Collector::start(env, &[]);
    let kill = kill_in(env, &mut collector, &chain);
    assert_eq!(
        kill.proc_path.as_ref().ok(),
        Some(&chain.path()),
        "the kernel has it"
    );
    assert_no_path(&kill.record);
    assert!(kill.record["memcg"].is_null(), "{}", kill.record);
    collector.stop_with(libc::SIGTERM);
    let stderr = collector.stderr_text();
    assert!(stderr.contains("more than 32 levels"), "says why: {stderr}");
}

/// Issue 12's cases: at 15 components the memcg walk stopped one level
/// before the path walk (memcg and oom.memcg_path null, the path right);
/// at 16 the path was null too. Both come through whole.
pub fn cgroup_depth_fifteen_and_sixteen(env: &Env) {
    for components in [15, 16] {
        components_at_depth(env, components);
    }
}

/// Four levels of 255-byte names below the test cgroup: a path longer than
/// the 1,024 bytes a record used to carry (issue 12: 1,043 bytes) comes
/// through whole.
pub fn cgroup_names_of_255_bytes(env: &Env) {
    let names = vec![vec![b'n'; 255]; 4];
    let chain = Chain::new("long-names", &names, None);
    assert!(chain.path().len() > 1024, "{}", chain.path().len());
    let mut collector = Collector::start(env, &[]);
    let kill = kill_in(env, &mut collector, &chain);
    assert_whole(&kill, &chain);
}

/// A path of exactly 4,095 bytes, the longest /proc/PID/cgroup shows,
/// comes through whole.
pub fn cgroup_path_at_path_max(env: &Env) {
    let chain = Chain::of_length("pathmax", PATH_MAX_BYTES);
    let mut collector = Collector::start(env, &[]);
    let kill = kill_in(env, &mut collector, &chain);
    assert_whole(&kill, &chain);
}

/// One byte longer: the kernel itself cannot show it whole
/// (/proc/PID/cgroup cuts it at 4,095 bytes, as 6.x kernels do, or fails
/// with ENAMETOOLONG, as older ones did), and every path field is null,
/// never cut; the memcg levels' figures are still there.
pub fn cgroup_path_past_path_max(env: &Env) {
    let chain = Chain::of_length("past-pathmax", PATH_MAX_BYTES + 1);
    let mut collector = Collector::start(env, &[]);
    let kill = kill_in(env, &mut collector, &chain);
    match &kill.proc_path {
        Ok(shown) => {
            assert_eq!(shown.len(), PATH_MAX_BYTES, "the kernel cuts it");
            assert!(chain.path().starts_with(shown), "a cut path");
        }
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG), "{e}"),
    }
    let record = &kill.record;
    assert_no_path(record);
    let levels = record["memcg"]["levels"].as_array().expect("memcg levels");
    assert_eq!(levels.len(), chain.depth() + 1, "{record}");
    assert_eq!(levels[levels.len() - 2]["limit_bytes"], LIMIT, "{record}");
    collector.stop_with(libc::SIGTERM);
    let stderr = collector.stderr_text();
    assert!(
        stderr.contains("longer than 4095 bytes"),
        "says why: {stderr}"
    );
}

/// A cgroup named `bad\xff\xfe`, whose own limit fires: every path field
/// is the lossy text, as before, and its `*_hex` sibling has the exact
/// bytes, `/` separators included. UTF-8 levels have no hex.
pub fn cgroup_name_not_utf8(env: &Env) {
    let name = b"bad\xff\xfe".to_vec();
    let chain = Chain::new("not-utf8", std::slice::from_ref(&name), None);
    let leaf = chain.leaf_fd();
    match chain.top.version {
        Version::V1 => write_at(leaf, "memory.limit_in_bytes", &(LIMIT / 2).to_string()),
        Version::V2 => write_at(leaf, "memory.max", &(LIMIT / 2).to_string()),
    }
    let mut collector = Collector::start(env, &[]);
    let kill = kill_in(env, &mut collector, &chain);
    let record = &kill.record;
    let path = chain.path();
    assert_eq!(
        kill.proc_path.as_ref().ok(),
        Some(&path),
        "the kernel's bytes"
    );
    let full_hex = hex(&path);
    let lossy = String::from_utf8_lossy(&path);
    for (object, field) in [
        (&record["victim"]["cgroup"], "path"),
        (&record["memcg"], "path"),
        (&record["memcg"]["levels"][0], "path"),
        (&record["oom"], "memcg_path"),
    ] {
        assert_eq!(object[field], lossy.as_ref(), "{field}: {record}");
        assert_eq!(
            object[format!("{field}_hex")],
            full_hex.as_str(),
            "{record}"
        );
        assert_eq!(path_bytes(object, field), Some(path.clone()));
    }
    let parent = &record["memcg"]["levels"][1];
    assert_eq!(parent["path"], chain.top.path.as_str(), "{record}");
    assert!(parent["path_hex"].is_null(), "{record}");
    assert_logged_task_memcg(&kill, &path);
}

/// cgroup v2 only: the memory controller enabled on the test cgroup alone,
/// and the victim's cgroup past the depth limit below it. The victim's
/// memcg (the test cgroup) is within reach, so `memcg` has its levels and
/// figures, but their paths come from the victim's path, which is too deep:
/// all null, never cut.
pub fn cgroup_past_the_limit_below_its_memcg(env: &Env) {
    let chain = Chain::new("deep-below-memcg", &level_names(MAX_DEPTH + 1), Some(0));
    let mut collector = Collector::start(env, &[]);
    let kill = kill_in(env, &mut collector, &chain);
    let record = &kill.record;
    assert_eq!(
        kill.proc_path.as_ref().ok(),
        Some(&chain.path()),
        "the kernel has it"
    );
    assert_no_path(record);
    let levels = record["memcg"]["levels"].as_array().expect("memcg levels");
    assert_eq!(levels.len(), 2, "the test cgroup and the root: {record}");
    assert_eq!(levels[0]["limit_bytes"], LIMIT, "{record}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_make_exactly_the_length_asked() {
        for top in [20, 26, 40] {
            for len in [PATH_MAX_BYTES, PATH_MAX_BYTES + 1, 1043, top + 2, top + 257] {
                let names = names_for_length(top, len);
                let total: usize = top + names.iter().map(|n| n.len() + 1).sum::<usize>();
                assert_eq!(total, len, "top {top}");
                assert!(names.iter().all(|n| (1..=255).contains(&n.len())));
            }
        }
        assert_eq!(kmsg_escaped(b"/a\\b\xff"), "/a\\x5cb\\xff");
    }
}
