//! The test workload: moves itself into a cgroup, sets its oom_score_adj and
//! name, then allocates and touches memory until the OOM killer kills it.
//!
//! Usage:
//!   oomtrace-workload alloc [--cgroup DIR] [--adj N] [--comm-hex HEX]
//!                           [--threads N] [--wait-stdin] [--stuck-in DIR]
//!       --stuck-in: a second thread stats a file in DIR, a FUSE mount
//!       served by `fuse-hold`, which never answers: the thread sleeps
//!       uninterruptibly, so after its OOM kill the process cannot finish
//!       exiting (a victim stuck in the kernel, as on a hung FUSE or NFS
//!       mount) until the server goes away.
//!   oomtrace-workload fuse-hold DIR
//!       mounts a FUSE file system on DIR, answers FUSE_INIT, prints
//!       `mounted`, then reads each request, prints `holding OPCODE`, and
//!       never answers it. Ending this process aborts the connection and
//!       frees every waiter; DIR stays mounted (unmount it with MNT_DETACH).
//!   oomtrace-workload parent ALLOC-ARGS...
//!       stays where it is, runs `alloc ALLOC-ARGS` as its child, waits, and
//!       prints `child PID STATUS` (the raw wait status); exits 0.
//!   oomtrace-workload pidns [--cgroup DIR] MODE ARGS...
//!       what `unshare --pid --fork` does, as a container runtime starts a
//!       container: enters a new pid namespace and forks its PID 1, which
//!       moves into DIR (if given) and runs `oomtrace-workload MODE ARGS`.
//!       Prints `init HOST-PID` at once, and `init-status STATUS` (the raw
//!       wait status) when PID 1 ends; exits 0. It stays outside DIR, like
//!       a runtime's shim.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper: failing loudly is the point"
)]

use std::{
    io::Read,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::Command,
    time::Duration,
};

struct Options {
    cgroup: Option<String>,
    adj: Option<i32>,
    comm: Option<Vec<u8>>,
    threads: usize,
    wait_stdin: bool,
    stuck_in: Option<String>,
}

fn parse(args: &[String]) -> Options {
    let mut o = Options {
        cgroup: None,
        adj: None,
        comm: None,
        threads: 1,
        wait_stdin: false,
        stuck_in: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| die(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--cgroup" => o.cgroup = Some(value()),
            "--adj" => o.adj = Some(value().parse().unwrap()),
            "--comm-hex" => {
                let hex = value();
                o.comm = Some(
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect(),
                );
            }
            "--threads" => o.threads = value().parse().unwrap(),
            "--wait-stdin" => o.wait_stdin = true,
            "--stuck-in" => o.stuck_in = Some(value()),
            other => die(&format!("unknown argument {other}")),
        }
    }
    o
}

fn die(message: &str) -> ! {
    eprintln!("oomtrace-workload: {message}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("alloc") => alloc(parse(&args[1..])),
        Some("parent") => parent(&args[1..]),
        Some("pidns") => pidns(&args[1..]),
        Some("fuse-hold") => match &args[1..] {
            [dir] => fuse_hold(dir),
            _ => die("usage: oomtrace-workload fuse-hold DIR"),
        },
        _ => die("usage: oomtrace-workload alloc|parent ..."),
    }
}

fn parent(alloc_args: &[String]) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("alloc")
        .args(alloc_args)
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    println!("child {pid} {}", status.into_raw());
}

fn pidns(args: &[String]) {
    let (cgroup, rest) = match args {
        [flag, dir, rest @ ..] if flag == "--cgroup" => (Some(dir.clone()), rest),
        rest => (None, rest),
    };
    if rest.is_empty() {
        die("pidns needs a mode");
    }
    // SAFETY: unshare(CLONE_NEWPID) affects only children forked after it.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        die(&format!(
            "unshare(CLONE_NEWPID): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: this process is single-threaded here, so the child may run
    // arbitrary code before exec.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        die(&format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // PID 1 of the new namespace.
        if let Some(dir) = &cgroup {
            std::fs::write(format!("{dir}/cgroup.procs"), "0").unwrap();
        }
        let error = Command::new(std::env::current_exe().unwrap())
            .args(rest)
            .exec();
        die(&format!("exec: {error}"));
    }
    println!("init {pid}");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    println!("init-status {status}");
}

/// A FUSE server that never answers (see the usage above). Only FUSE_INIT
/// is answered, with the 7.22 reply layout, which every kernel accepts.
fn fuse_hold(dir: &str) {
    use std::{ffi::CString, io::Write, os::fd::AsRawFd};
    const FUSE_INIT: u32 = 26;
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .unwrap_or_else(|e| die(&format!("/dev/fuse: {e}")));
    let options = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        dev.as_raw_fd()
    ))
    .unwrap();
    let target = CString::new(dir).unwrap();
    // SAFETY: NUL-terminated strings that outlive the call.
    let mounted = unsafe {
        libc::mount(
            c"oomtrace-test".as_ptr(),
            target.as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if mounted != 0 {
        die(&format!(
            "mount fuse on {dir}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The kernel refuses reads into buffers under FUSE_MIN_READ_BUFFER.
    let mut buf = vec![0u8; 1 << 17];
    let mut dev_reader = &dev;
    loop {
        let n = std::io::Read::read(&mut dev_reader, &mut buf)
            .unwrap_or_else(|e| die(&format!("read /dev/fuse: {e}")));
        // struct fuse_in_header: len u32, opcode u32, unique u64, ...
        let opcode = u32::from_ne_bytes(buf[4..8].try_into().unwrap());
        let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
        if n >= 16 && opcode == FUSE_INIT {
            // fuse_out_header (len, error, unique) + fuse_init_out up to
            // max_write: major 7, minor 22, the rest zero, max_write 4096.
            let mut reply = Vec::with_capacity(40);
            reply.extend_from_slice(&40u32.to_ne_bytes());
            reply.extend_from_slice(&0i32.to_ne_bytes());
            reply.extend_from_slice(&unique.to_ne_bytes());
            reply.extend_from_slice(&7u32.to_ne_bytes());
            reply.extend_from_slice(&22u32.to_ne_bytes());
            reply.extend_from_slice(&[0u8; 12]);
            reply.extend_from_slice(&4096u32.to_ne_bytes());
            let mut dev_writer = &dev;
            dev_writer
                .write_all(&reply)
                .unwrap_or_else(|e| die(&format!("FUSE_INIT reply: {e}")));
            println!("mounted");
        } else {
            println!("holding {opcode}");
        }
    }
}

fn alloc(o: Options) {
    if let Some(dir) = &o.cgroup {
        // "0" means the writing process itself.
        std::fs::write(format!("{dir}/cgroup.procs"), "0").unwrap();
    }
    if let Some(adj) = o.adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).unwrap();
    }
    if let Some(comm) = &o.comm {
        let mut name = comm.clone();
        name.push(0);
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes).
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
    if let Some(dir) = o.stuck_in.clone() {
        std::thread::spawn(move || {
            // Blocks until the FUSE server answers or goes away.
            let _ = std::fs::metadata(format!("{dir}/stuck-{}", std::process::id()));
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        });
    }
    if o.wait_stdin {
        let mut byte = [0u8; 1];
        let _ = std::io::stdin().read(&mut byte);
    }
    if o.threads <= 1 {
        eat_memory();
    }
    // Only the last thread allocates; the leader and the others just wait.
    for i in 1..o.threads {
        let last = i == o.threads - 1;
        std::thread::spawn(move || {
            if last {
                eat_memory()
            } else {
                loop {
                    std::thread::sleep(Duration::from_secs(60))
                }
            }
        });
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Allocates 1 MiB at a time and writes every page, so it is resident.
fn eat_memory() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        for page in chunk.chunks_mut(4096) {
            page[0] = 1;
        }
        kept.push(std::hint::black_box(chunk));
    }
}
