//! The test workload: moves itself into a cgroup, sets its oom_score_adj and
//! name, then allocates and touches memory until the OOM killer kills it.
//!
//! Usage:
//!   oomtrace-workload alloc [--cgroup DIR] [--adj N] [--comm-hex HEX]
//!                           [--threads N] [--wait-stdin] [--stuck-in DIR]
//!                           [--hold-mib N] [--ignore-term]
//!       --ignore-term: SIGTERM is ignored (SIG_IGN), so a killer that
//!       sends SIGTERM first (earlyoom) must follow with SIGKILL.
//!       --hold-mib: allocate and touch N MiB, print `held N`, then sleep
//!       until killed (a victim that holds memory while another task runs
//!       the cgroup out of it).
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
//!   oomtrace-workload parent [--linger] [--term-exit N] ALLOC-ARGS...
//!       stays where it is, runs `alloc ALLOC-ARGS` as its child, waits, and
//!       prints `child PID STATUS` (the raw wait status); exits 0 (with
//!       --linger, only once its stdin is closed: a container's main
//!       process that outlives its child). --term-exit: a SIGTERM makes it
//!       exit with status N at once (a main process that handles SIGTERM,
//!       as a drained pod's does: 143 is the custom).
//!   oomtrace-workload idle [--cgroup DIR] [--threads N] [--ignore-term]
//!       moves into DIR, starts N-1 more threads that sleep, prints `idle
//!       PID` and, for a second thread, `thread TID`, then sleeps until
//!       killed. --ignore-term: SIGTERM is ignored (SIG_IGN), as by a
//!       process a runtime must SIGKILL after its stop timeout.
//!   oomtrace-workload shared-mm [--cgroup DIR]
//!       moves into DIR, then clones a process that shares its memory
//!       (CLONE_VM without CLONE_THREAD, as vfork() or a
//!       posix_spawn-style helper does) and only sleeps; prints `sharer
//!       PID`, then allocates until the OOM kill. The OOM killer kills its
//!       victim, then every other process sharing that mm.
//!   oomtrace-workload pidns [--cgroup DIR] MODE ARGS...
//!       what `unshare --pid --fork` does, as a container runtime starts a
//!       container: enters a new pid namespace and forks its PID 1, which
//!       moves into DIR (if given) and runs `oomtrace-workload MODE ARGS`.
//!       Prints `init HOST-PID` at once, and `init-status STATUS` (the raw
//!       wait status) when PID 1 ends; exits 0. It stays outside DIR, like
//!       a runtime's shim.
//!   oomtrace-workload exec-in [--uid N] DIR PROGRAM ARGS...
//!       moves into the cgroup DIR, then (with --uid) becomes user and group
//!       N with no supplementary groups, then execs PROGRAM (from PATH): a
//!       shell pipeline started this way has the shell and every process it
//!       forks inside DIR from the start, as a container's entrypoint has,
//!       and runs as a non-root user of its own.
//!   oomtrace-workload leader-exit [--cgroup DIR] [--adj N]
//!       starts a thread named `allocator`, then the main thread leaves on
//!       its own with the raw exit(2) system call (SYS_exit, not
//!       exit_group): the leader is a zombie while the process lives on in
//!       its worker, as with a program whose main thread ends early. Once the
//!       leader is a zombie, the worker prints `worker TID` and allocates
//!       until the OOM kill. The parent's wait status is the process's:
//!       SIGKILL.
//!   oomtrace-workload exec-from-thread [--cgroup DIR] ALLOC-ARGS...
//!       three threads: the leader and an idle thread sleep, a third prints
//!       `exec from TID` and execve()s `oomtrace-workload alloc ALLOC-ARGS`.
//!       The kernel's de_thread() ends the other threads and gives the
//!       exec'ing thread the leader's pid, so the allocator that is then
//!       OOM-killed has the pid the process started with.
//!   oomtrace-workload leak|spike|tmpfs-fill ...
//!       memory that grows with a shape in time: see workload/memory.rs.
#![allow(
    clippy::unwrap_used,
    reason = "a test helper: failing loudly is the point"
)]

#[path = "workload/memory.rs"]
mod memory;

use std::{
    io::{Read, Write},
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
    hold_mib: Option<usize>,
    ignore_term: bool,
}

fn parse(args: &[String]) -> Options {
    let mut o = Options {
        cgroup: None,
        adj: None,
        comm: None,
        threads: 1,
        wait_stdin: false,
        stuck_in: None,
        hold_mib: None,
        ignore_term: false,
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
            "--hold-mib" => o.hold_mib = Some(value().parse().unwrap()),
            "--ignore-term" => o.ignore_term = true,
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
        Some("exec-in") => match &args[1..] {
            [flag, uid, dir, program, rest @ ..] if flag == "--uid" => {
                let uid = uid.parse().unwrap_or_else(|_| die("--uid needs a number"));
                exec_in(Some(uid), dir, program, rest)
            }
            [dir, program, rest @ ..] => exec_in(None, dir, program, rest),
            _ => die("usage: oomtrace-workload exec-in [--uid N] DIR PROGRAM ARGS..."),
        },
        Some("leader-exit") => leader_exit(parse(&args[1..])),
        Some("exec-from-thread") => exec_from_thread(&args[1..]),
        Some("parent") => parent(&args[1..]),
        Some("pidns") => pidns(&args[1..]),
        Some("idle") => idle(&args[1..]),
        Some("shared-mm") => shared_mm(&args[1..]),
        Some("leak") => memory::leak(&args[1..]),
        Some("spike") => memory::spike(&args[1..]),
        Some("tmpfs-fill") => memory::tmpfs_fill(&args[1..]),
        Some("fuse-hold") => match &args[1..] {
            [dir] => fuse_hold(dir),
            _ => die("usage: oomtrace-workload fuse-hold DIR"),
        },
        _ => die(
            "usage: oomtrace-workload alloc|parent|pidns|idle|shared-mm|fuse-hold|exec-in|\
             leader-exit|exec-from-thread ...",
        ),
    }
}

/// The exit status `--term-exit` asks for, for the SIGTERM handler.
static TERM_EXIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn exit_on_term(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(TERM_EXIT.load(std::sync::atomic::Ordering::Relaxed)) }
}

fn parent(mut args: &[String]) {
    let mut linger = false;
    loop {
        match args {
            [flag, rest @ ..] if flag == "--linger" => (linger, args) = (true, rest),
            [flag, n, rest @ ..] if flag == "--term-exit" => {
                TERM_EXIT.store(n.parse().unwrap(), std::sync::atomic::Ordering::Relaxed);
                // SAFETY: installs an async-signal-safe handler.
                unsafe {
                    libc::signal(
                        libc::SIGTERM,
                        exit_on_term as *const () as libc::sighandler_t,
                    )
                };
                args = rest;
            }
            _ => break,
        }
    }
    let alloc_args = args;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("alloc")
        .args(alloc_args)
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait().unwrap();
    println!("child {pid} {}", status.into_raw());
    if linger {
        let _ = std::io::stdout().flush();
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    }
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

fn idle(mut args: &[String]) {
    let mut threads = 1;
    loop {
        match args {
            [flag, dir, rest @ ..] if flag == "--cgroup" => {
                join_cgroup(dir);
                args = rest;
            }
            [flag, n, rest @ ..] if flag == "--threads" => {
                threads = n.parse().unwrap();
                args = rest;
            }
            [flag, rest @ ..] if flag == "--ignore-term" => {
                // SAFETY: sets SIGTERM's disposition to ignore.
                unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
                args = rest;
            }
            [] => break,
            [other, ..] => die(&format!("idle: unknown argument {other}")),
        }
    }
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    for _ in 1..threads {
        let tid_tx = tid_tx.clone();
        std::thread::spawn(move || {
            let _ = tid_tx.send(gettid());
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        });
    }
    println!("idle {}", std::process::id());
    if threads > 1 {
        println!("thread {}", tid_rx.recv().unwrap());
    }
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn shared_mm(args: &[String]) {
    match args {
        [flag, dir] if flag == "--cgroup" => join_cgroup(dir),
        [] => {}
        _ => die("usage: oomtrace-workload shared-mm [--cgroup DIR]"),
    }
    extern "C" fn sleep_forever(_: *mut libc::c_void) -> libc::c_int {
        loop {
            // SAFETY: pause() only waits; nothing of the shared memory is
            // touched.
            unsafe { libc::pause() };
        }
    }
    const STACK: usize = 64 << 10;
    // SAFETY: an anonymous private mapping for the sharer's stack.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        die(&format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the child runs only `sleep_forever` on its own stack (which
    // grows down from the mapping's end), sharing this process's memory.
    let pid = unsafe {
        libc::clone(
            sleep_forever,
            stack.cast::<u8>().add(STACK).cast(),
            libc::CLONE_VM | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    if pid < 0 {
        die(&format!("clone: {}", std::io::Error::last_os_error()));
    }
    println!("sharer {pid}");
    let _ = std::io::stdout().flush();
    eat_memory();
}

/// A FUSE server that never answers (see the usage above). Only FUSE_INIT
/// is answered, with the 7.22 reply layout, which every kernel accepts.
fn fuse_hold(dir: &str) {
    use std::{ffi::CString, os::fd::AsRawFd};
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

/// Moves this process (every thread of it) into the cgroup at `dir`.
fn join_cgroup(dir: &str) {
    // "0" means the writing process itself.
    std::fs::write(format!("{dir}/cgroup.procs"), "0").unwrap();
}

/// `--cgroup`, `--adj` and `--ignore-term`, before any thread is started.
fn settle(o: &Options) {
    if o.ignore_term {
        // SAFETY: sets SIGTERM's disposition to ignore.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    if let Some(dir) = &o.cgroup {
        join_cgroup(dir);
    }
    if let Some(adj) = o.adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).unwrap();
    }
}

fn exec_in(uid: Option<u32>, dir: &str, program: &str, args: &[String]) {
    join_cgroup(dir);
    if let Some(id) = uid {
        // SAFETY: plain system calls on this process's credentials; groups
        // first, while still root.
        let failed = unsafe {
            libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(id) != 0
                || libc::setuid(id) != 0
        };
        if failed {
            die(&format!(
                "become uid {id}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let error = Command::new(program).args(args).exec();
    die(&format!("exec {program}: {error}"));
}

/// This thread's id.
fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

fn leader_exit(o: Options) {
    settle(&o);
    let pid = std::process::id();
    std::thread::Builder::new()
        .name("allocator".into())
        .spawn(move || {
            // Allocate only once the leader is gone (a zombie while this
            // thread lives), so that the kill finds it gone.
            let leader = format!("/proc/{pid}/task/{pid}/stat");
            while !std::fs::read_to_string(&leader)
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            println!("worker {}", gettid());
            std::io::stdout().flush().unwrap();
            eat_memory()
        })
        .unwrap();
    // SAFETY: SYS_exit ends only the calling thread; nothing of this thread
    // is used afterwards (Rust's main never returns, no destructor runs).
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("SYS_exit returned");
}

fn exec_from_thread(alloc_args: &[String]) {
    let (cgroup, alloc_args) = match alloc_args {
        [flag, dir, rest @ ..] if flag == "--cgroup" => (Some(dir.as_str()), rest),
        rest => (None, rest),
    };
    if let Some(dir) = cgroup {
        join_cgroup(dir);
    }
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(60))
        }
    });
    let alloc_args = alloc_args.to_vec();
    std::thread::spawn(move || {
        println!("exec from {}", gettid());
        std::io::stdout().flush().unwrap();
        let error = Command::new(std::env::current_exe().unwrap())
            .arg("alloc")
            .args(&alloc_args)
            .exec();
        die(&format!("exec from a thread: {error}"));
    });
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn alloc(o: Options) {
    settle(&o);
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
    if let Some(mib) = o.hold_mib {
        let held: Vec<Vec<u8>> = (0..mib).map(|_| touched_mib()).collect();
        println!("held {mib}");
        let _ = std::io::stdout().flush();
        loop {
            std::hint::black_box(&held);
            std::thread::sleep(Duration::from_secs(60));
        }
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
        kept.push(std::hint::black_box(touched_mib()));
    }
}

/// 1 MiB with every page written, so it is resident.
fn touched_mib() -> Vec<u8> {
    let mut chunk = vec![0u8; 1 << 20];
    for page in chunk.chunks_mut(4096) {
        page[0] = 1;
    }
    chunk
}
