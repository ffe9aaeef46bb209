//! What a run of the runtime tests leaves behind, found again and removed:
//! processes by the private paths on their command lines (never by name),
//! and container cgroups by the ids in our own private state.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The processes whose command line names one of `paths` (a runtime's
/// private directories: its daemons, shims and conmons all name them).
/// Never this process.
pub fn processes_naming(paths: &[&Path]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needles: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| p.as_os_str().as_encoded_bytes().to_vec())
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if needles
            .iter()
            .any(|n| cmdline.windows(n.len()).any(|w| w == n.as_slice()))
        {
            found.push(pid);
        }
    }
    found
}

/// Whether process `pid` still exists (and is no zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, r)| !r.starts_with('Z'))
    })
}

/// SIGTERM to each, up to `grace` for them to go, then SIGKILL to the rest.
pub fn terminate(pids: &[i32], grace: Duration) {
    if pids.is_empty() {
        return;
    }
    for &pid in pids {
        // SAFETY: kill(2); the pids are our own runtime's processes.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        eprintln!("runtimes: pid {pid} ignored SIGTERM for {grace:?}: SIGKILL");
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Terminates every process naming one of `paths`, as [`terminate`] does.
pub fn terminate_naming(paths: &[&Path], grace: Duration) -> Vec<i32> {
    let pids = processes_naming(paths);
    if !pids.is_empty() {
        eprintln!("runtimes: ending leftover processes {pids:?} (they name {paths:?})");
    }
    terminate(&pids, grace);
    pids
}

/// Unmounts every mount at or below one of `paths` (our private dirs),
/// deepest first: dockerd bind-mounts its data root onto itself to set its
/// propagation and leaves that mount when it stops, and a runtime killed
/// mid-run leaves its containers' mounts. A mount left there would keep
/// the checkout's target/ from being removed.
pub fn unmount_under(paths: &[&Path]) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // Field 5 is the mount point, with spaces and the like octal-escaped
    // (our paths have none).
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
        .filter(|point| paths.iter().any(|p| point.starts_with(p)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for point in points {
        let Ok(c) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2(2) with a NUL-terminated path of our own.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "runtimes: could not unmount {}: {}",
                point.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The roots of every mounted cgroup hierarchy (v1 controllers and v2).
pub fn hierarchies() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 2 && (f[2] == "cgroup" || f[2] == "cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// The cgroup directories, in every hierarchy, that a container with `id`
/// of ours may have: Docker's `docker/<id>`, Podman's
/// `libpod_parent/libpod-<id>` (and its conmon's).
pub fn container_cgroups(id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in hierarchies() {
        for rel in [
            format!("docker/{id}"),
            format!("libpod_parent/libpod-{id}"),
            format!("libpod_parent/libpod-conmon-{id}"),
        ] {
            let dir = root.join(rel);
            if dir.is_dir() {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Removes the cgroup tree at `dir`, SIGKILLing what is left in it first:
/// only our containers' processes are ever in it. Deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) of a process in our own container's cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() > deadline => {
                eprintln!("runtimes: could not remove {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// SIGKILLs every process in the cgroups of container `id` (all
/// hierarchies), without removing them: what a runtime's shim or daemon
/// would otherwise wait for.
pub fn kill_container_processes(id: &str) {
    for dir in container_cgroups(id) {
        kill_tree(&dir);
    }
}

fn kill_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                kill_tree(&entry.path());
            }
        }
    }
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) of a process in our own container's cgroup.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Removes the cgroups of container `id` in every hierarchy.
pub fn remove_container_cgroups(id: &str) {
    for dir in container_cgroups(id) {
        remove_cgroup_tree(&dir);
    }
}

/// Removes the cgroup at `rel` (a path inside the hierarchies, such as
/// `/oomtrace-test-kubelet-42`) in every hierarchy.
pub fn remove_cgroup_everywhere(rel: &str) {
    assert!(
        rel.trim_start_matches('/').starts_with("oomtrace-test-"),
        "only our own cgroups: {rel}"
    );
    for root in hierarchies() {
        let dir = root.join(rel.trim_start_matches('/'));
        if dir.is_dir() {
            remove_cgroup_tree(&dir);
        }
    }
}

/// The 64-hex names in directory `dir` (a runtime's per-container state).
pub fn ids_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}
