//! Developer tasks for oomtrace, run as `cargo xtask <command>` (an alias in
//! .cargo/config.toml). Plain Rust instead of shell scripts or a Makefile, so
//! they work wherever cargo does and fail with errors that say what to do.

mod cmds;
mod setup;
mod util;

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
    /// 1. the nightly toolchain with rust-src (aya-build compiles the eBPF
    ///    crate with `-Z build-std=core`);
    ///
    /// 2. bpf-linker 0.13.0, built against LLVM 22 with `cargo install`
    ///    (about a minute). On Debian/Ubuntu as root, LLVM 22 itself is
    ///    installed with apt-get; elsewhere you are told what to install;
    ///
    /// 3. tracefs mounted on /sys/kernel/tracing (only a warning if it
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
        /// Do not run the integration tests in VMs on other kernels (the VM
        /// kernel matrix is not implemented yet, issue 3).
        #[arg(long)]
        no_vm: bool,
        /// Skip `cargo xtask lint` (faster while iterating).
        #[arg(long)]
        skip_lint: bool,
        /// Run only the integration tests whose names contain one of these.
        #[arg(value_name = "TEST_FILTER")]
        filters: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => cmds::build().map(|_| ()),
        Cmd::Run { args } => cmds::run_oomtrace(&args),
        Cmd::Lint => cmds::lint(),
        Cmd::Test {
            no_vm,
            skip_lint,
            filters,
        } => cmds::test(&cmds::TestOpts {
            no_vm,
            skip_lint,
            filters,
        }),
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
