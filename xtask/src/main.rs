//! Developer tasks for oomtrace, run as `cargo xtask <command>` (an alias in
//! .cargo/config.toml). Plain Rust instead of shell scripts or a Makefile, so
//! they work wherever cargo does and fail with errors that say what to do.

mod apt;
mod bench;
mod cmds;
mod docs;
mod fuzz;
mod lint_errors;
mod setup;
mod util;
mod vmtest;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Set up, build, run, lint and test oomtrace
///
/// oomtrace's eBPF programs are compiled by oomtrace/build.rs with a nightly
/// toolchain (with rust-src) and linked by bpf-linker; `setup` installs both,
/// and every command that builds runs it first. A fresh machine needs only:
///
///   cargo xtask run --format text
///
/// Tracing and the integration tests need root: use `sudo cargo xtask ...`
/// (or run as root).
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    max_term_width = 100,
    verbatim_doc_comment
)]
struct Cli {
    /// Show the eBPF programs' nested build line by line (otherwise shown
    /// only when it fails or has a diagnostic). Before the command: `cargo
    /// xtask -v build`; after `run`, `-v` is oomtrace's own.
    #[arg(short, long)]
    verbose: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what the build needs; safe to run again
    ///
    /// Each step prints `ok: ...` when its work is already done, or
    /// `installing: ...` when it acts:
    ///
    /// 1. Debian packages, in one apt-get transaction (on Debian/Ubuntu as
    ///    root): LLVM 22's development files when bpf-linker is still to be
    ///    built, and the VM matrix's tools (qemu-system-x86, busybox-static,
    ///    cpio, earlyoom). Services are not started meanwhile
    ///    (/usr/sbin/policy-rc.d answers 101), and earlyoom, a userspace
    ///    OOM killer for the VMs only, is disabled on this machine and must
    ///    not be running afterwards. Elsewhere you are told what to install
    ///    (missing VM tools are only a warning);
    ///
    /// 2. the nightly toolchain with rust-src (aya-build compiles the eBPF
    ///    crate with `-Z build-std=core`);
    ///
    /// 3. bpf-linker 0.13.0, built against LLVM 22 with `cargo install`
    ///    (about a minute);
    ///
    /// 4. tracefs mounted on /sys/kernel/tracing (only a warning if it
    ///    cannot be: oomtrace can still use raw tracepoints).
    #[command(verbatim_doc_comment)]
    Setup,
    /// Run setup, then build the release oomtrace binary
    ///
    /// Runs `cargo build --release --package oomtrace` from the workspace
    /// root and prints the binary's path: target/release/oomtrace, or
    /// $CARGO_TARGET_DIR/release/oomtrace when that is set.
    #[command(verbatim_doc_comment)]
    Build,
    /// Build, then trace OOM kills: `oomtrace run ARGS...`
    ///
    /// Every argument after `run` goes to `oomtrace run` unchanged, flags
    /// included. xtask is replaced by oomtrace, so Ctrl-C stops oomtrace
    /// cleanly and the exit status is oomtrace's own. Needs root.
    ///
    /// Examples:
    ///
    ///   sudo cargo xtask run --format text
    ///   sudo cargo xtask run -- --help    (oomtrace run's own options)
    #[command(verbatim_doc_comment)]
    Run {
        /// Arguments for `oomtrace run`, e.g. `--format text`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Check formatting and run clippy, for the host and the eBPF target
    ///
    /// Runs, from the workspace root, stopping at the first failure:
    ///
    ///   cargo fmt --all -- --check
    ///   cargo clippy --workspace --all-targets -- -D warnings
    ///   cargo +nightly clippy --package oomtrace-ebpf --target bpfel-unknown-none
    ///     -Z build-std=core --release -- -D warnings
    ///
    /// and checks that no thiserror message prints a field that is also its
    /// source (anyhow's `{:#}` would print that cause twice).
    ///
    /// Needs what `cargo xtask setup` installs.
    #[command(verbatim_doc_comment)]
    Lint,
    /// Run setup, lint, build, unit tests and integration tests
    ///
    /// Unit tests (oomtrace and oomtrace-ebpf, `--lib --bins`) need no root.
    /// The integration tests (package oomtrace-tests) cause real OOM kills in
    /// cgroups they create, so they need root; they run one at a time against
    /// the release binary, passed to them in OOMTRACE_BIN.
    ///
    /// Examples:
    ///
    ///   sudo cargo xtask test
    ///   sudo cargo xtask test --skip-lint --no-vm cgroup_v2
    #[command(verbatim_doc_comment)]
    Test {
        /// Do not run the kernel matrix (`cargo xtask vmtest`) after the
        /// host tests. Without this flag a missing qemu is an error.
        #[arg(long)]
        no_vm: bool,
        /// Skip `cargo xtask lint` (faster while iterating).
        #[arg(long)]
        skip_lint: bool,
        /// Run only the integration tests whose names contain one of these.
        #[arg(value_name = "TEST_FILTER")]
        filters: Vec<String>,
    },
    /// Measure oomtrace against bpftrace: ready time, memory, exit-path cost, storms
    ///
    /// Builds oomtrace and the benchmark, installs bpftrace (apt-get) if it
    /// is missing, then runs both tools in alternation on this machine.
    /// bpftrace runs the equivalent program: oom:mark_victim stores the
    /// victim in a map, sched_process_exit looks every exit up in it.
    /// Figures (each a median over repeated runs; ratios taken in the same
    /// round):
    ///
    ///   ready time      exec to the ready signal (oomtrace's `start` record,
    ///                   bpftrace's "probes attached")
    ///   memory          steady RSS after --idle seconds; peak RSS (VmHWM)
    ///   exit overhead   10,000 fork()+_exit(0), with each tool and without
    ///                   (CPU and wall time, 15 paired rounds), and the exit
    ///                   hook's own run time per exit (kernel bpf_stats)
    ///   storm capture   20 cgroups x 10 OOM kills at once: kills recorded
    ///                   against the kernel's oom_kill counters, joined to
    ///                   exit 137, CPU seconds
    ///   latency         kill -> complete line, exit -> line (p50, p99)
    ///
    /// Prints a table with the targets (ready <= 0.25x, peak RSS <= 0.2x,
    /// exit overhead <= 2%, 100% capture, exit->line p99 <= 10 ms) and
    /// writes every sample to target/bench.json. Takes about 5 minutes
    /// (--quick: about 1). Run it on an otherwise idle machine. Needs root.
    #[command(verbatim_doc_comment)]
    Bench {
        /// Fewer repetitions and a smaller storm: to see that it works, not
        /// to quote.
        #[arg(long)]
        quick: bool,
        /// Seconds each tool idles before its steady RSS is read (default
        /// 30; 5 with --quick).
        #[arg(long, value_name = "SECS")]
        idle: Option<u64>,
    },
    /// Regenerate docs/schema.md's field tables and README.md's examples
    ///
    /// Rewrites every `<!-- fields:TYPE -->` ... `<!-- /fields -->` region
    /// of docs/schema.md with the table the oomtrace-record crate generates
    /// for that record type (the same text its JSON Schema carries), and
    /// every `<!-- text-of:NAME -->` block of README.md with the text
    /// rendering of its example record.
    ///
    /// With --capture (root), first causes the real OOM kills behind
    /// README.md's examples (tests/src/readme.rs, in cgroups it creates and
    /// removes) and writes their records in, with the kernel's own line.
    ///
    /// The record crate's tests fail when either file is not current, or an
    /// example is not exactly what today's collector writes.
    #[command(verbatim_doc_comment)]
    Docs {
        /// Refresh README.md's example records from real OOM kills.
        #[arg(long)]
        capture: bool,
    },
    /// Run the end-to-end scenarios on other kernels, in qemu VMs
    ///
    /// Downloads Debian kernel packages with apt (cached under
    /// target/vmtest/), builds oomtrace, the workload and oomtrace-matrix
    /// statically (musl), packs them with busybox into an initramfs, and
    /// boots each kernel with cgroup v2 and the memory controller. Inside,
    /// oomtrace-matrix runs every attach mode the kernel has (mark_victim
    /// raw/tracepoint, oom_kill_process fentry/kprobe/off, --no-btf) against
    /// the same scenario code as the host tests, and prints one
    /// `OOMTRACE-MATRIX` line per scenario on the serial console. The host
    /// kernel runs the same matrix natively. Ends with a table of
    /// kernel x attach mode x result; fails on any failure, and on a VM
    /// kernel where an attach mode does not load. Needs root.
    ///
    /// Examples:
    ///
    ///   sudo cargo xtask vmtest
    ///   sudo cargo xtask vmtest --kernel 6.1.0-50-cloud-amd64 --mode raw+kprobe
    ///   sudo cargo xtask vmtest --mode raw+off --scenario userspace_oom_killer_is_named
    ///
    /// Console logs: target/vmtest/KERNEL.log
    #[command(verbatim_doc_comment)]
    Vmtest {
        /// A Debian kernel, as in the package linux-image-NAME (repeat for
        /// several). Default: 6.1.0-50-cloud-amd64 and
        /// 6.12.100+deb12-cloud-amd64.
        #[arg(long = "kernel", value_name = "NAME")]
        kernels: Vec<String>,
        /// Seconds each VM may run before it is killed and counted failed.
        #[arg(long, value_name = "SECS", default_value_t = vmtest::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        /// Run only this attach mode, e.g. `raw+kprobe` (see oomtrace-matrix --help).
        #[arg(long, value_name = "MODE")]
        mode: Option<String>,
        /// Run only this scenario, e.g. `hostile_comm`, or these,
        /// comma-separated (the names in the matrix lines; with --mode,
        /// ones that mode runs).
        #[arg(long, value_name = "NAME")]
        scenario: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose {
        util::show_ebpf_build();
    }
    let result = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => cmds::build().map(|_| ()),
        Cmd::Run { args } => cmds::run_oomtrace(&args),
        Cmd::Lint => cmds::lint(),
        Cmd::Docs { capture } => docs::docs(capture),
        Cmd::Test {
            no_vm,
            skip_lint,
            filters,
        } => cmds::test(&cmds::TestOpts {
            no_vm,
            skip_lint,
            filters,
        }),
        Cmd::Bench { quick, idle } => bench::bench(&bench::BenchOpts {
            quick,
            idle_secs: idle,
        }),
        Cmd::Vmtest {
            kernels,
            timeout,
            mode,
            scenario,
        } => {
            let defaults = vmtest::VmOpts::default();
            vmtest::vmtest(&vmtest::VmOpts {
                kernels: if kernels.is_empty() {
                    defaults.kernels
                } else {
                    kernels
                },
                timeout: std::time::Duration::from_secs(timeout),
                mode,
                scenario,
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The message says what to do; the causes below it say what
            // exactly failed (e.g. a command and its exit status). Printed
            // by hand rather than with {:?}, which would add a backtrace
            // when RUST_BACKTRACE is set: noise for an expected failure.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
