//! `cargo xtask build`, `run`, `lint` and `test`.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::setup::setup;
use crate::util::{cargo_cmd, is_root, oomtrace_bin, run, target_dir, workspace_root};

/// Builds the release collector (which embeds the eBPF object, built by
/// oomtrace/build.rs) and returns the binary's path.
pub fn build() -> Result<PathBuf> {
    setup()?;
    run(cargo_cmd()?.args(["build", "--release", "--package", "oomtrace"]))?;
    let bin = oomtrace_bin()?;
    if !bin.is_file() {
        bail!(
            "cargo build succeeded but {} does not exist; if cargo's target directory is set \
             elsewhere (build.target-dir in a cargo config), set CARGO_TARGET_DIR instead, \
             which xtask follows (now: {})",
            bin.display(),
            target_dir()?.display()
        );
    }
    println!("built: {}", bin.display());
    Ok(bin)
}

/// Builds, then replaces this process with `oomtrace run ARGS...`. Exec
/// rather than spawn-and-wait: Ctrl-C and SIGTERM then reach oomtrace alone
/// (it stops cleanly on them), and its exit status is ours with no relaying.
pub fn run_oomtrace(args: &[String]) -> Result<()> {
    let bin = build()?;
    if !is_root() {
        println!(
            "note: oomtrace needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) and will \
             say which capabilities are missing; try `sudo cargo xtask run`"
        );
    }
    let mut cmd = Command::new(&bin);
    cmd.arg("run").args(args);
    println!("$ {} run {}", bin.display(), args.join(" "));
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not execute {}", bin.display()))
}

/// Formatting and clippy for the host crates, then clippy for the eBPF
/// crate on its real target, where its actual code is compiled.
pub fn lint() -> Result<()> {
    run(cargo_cmd()?.args(["fmt", "--all", "--", "--check"]))
        .context("formatting differs: run `cargo fmt --all` and look at the diff")?;
    crate::lint_errors::check(&workspace_root()?)?;
    // --workspace includes oomtrace-ebpf, whose host build is a stub; that
    // is fine, its real code is linted in the next step.
    run(cargo_cmd()?.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems in the host crates (see above)")?;
    // `cargo +nightly` needs the rustup proxy, so this uses `cargo` from
    // PATH rather than the toolchain's cargo in $CARGO.
    run(Command::new("cargo").current_dir(workspace_root()?).args([
        "+nightly",
        "clippy",
        "--package",
        "oomtrace-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
    .context(
        "clippy found problems in the eBPF crate (see above); if nightly or rust-src is \
         missing, run `cargo xtask setup`",
    )
}

/// What `cargo xtask test` does, from its command line.
pub struct TestOpts {
    pub no_vm: bool,
    pub skip_lint: bool,
    pub filters: Vec<String>,
}

/// Setup, lint, build, unit tests, root-only integration tests, then the
/// VM kernel matrix; ends with a summary line that gives the elapsed time
/// whether or not it passed.
pub fn test(opts: &TestOpts) -> Result<()> {
    let start = Instant::now();
    let result = test_steps(opts);
    let secs = start.elapsed().as_secs();
    match &result {
        Ok(()) => println!("test: all passed in {secs}s"),
        Err(_) => println!("test: failed after {secs}s"),
    }
    result
}

fn test_steps(opts: &TestOpts) -> Result<()> {
    setup()?;
    if opts.skip_lint {
        println!("skipping lint (--skip-lint)");
    } else {
        lint()?;
    }
    let bin = build()?;
    build_is_quiet()?;

    // Unit tests need no root: they never load eBPF programs.
    run(cargo_cmd()?.args([
        "test",
        "--package",
        "oomtrace",
        "--package",
        "oomtrace-ebpf",
        "--package",
        "xtask",
        "--lib",
        "--bins",
    ]))
    .context("unit tests failed (see above)")?;
    // The record crate's own tests include real records from earlier
    // collectors, validated against today's schema (tests/compat.rs).
    run(cargo_cmd()?.args(["test", "--package", "oomtrace-record"]))
        .context("the record crate's tests failed (see above)")?;
    record_crate_stands_alone()?;

    if !is_root() {
        bail!(
            "the integration tests cause real OOM kills in cgroups they create and need root; \
             run `sudo cargo xtask test`"
        );
    }
    // The container tests put the static workload into their images.
    let static_bins = crate::vmtest::build_static()?;
    // One thread: each test watches for OOM kills system-wide, so two tests
    // at once would see each other's kills.
    run(cargo_cmd()?
        .args([
            "test",
            "--package",
            "oomtrace-tests",
            "--",
            "--test-threads=1",
        ])
        .args(&opts.filters)
        .env("OOMTRACE_BIN", &bin)
        .env(
            "OOMTRACE_STATIC_WORKLOAD",
            static_bins.join("oomtrace-workload"),
        )
        .env(
            "OOMTRACE_KUBERNETES_VALIDATE",
            target_dir()?
                .join(crate::setup::KUBERNETES_VALIDATE_VENV)
                .join("bin/kubernetes-validate"),
        ))
    .context("integration tests failed (see above)")?;

    vm_matrix(opts.no_vm)
}

/// A build that goes well prints no warnings: oomtrace/build.rs keeps the
/// eBPF build's own lines out of them (cargo would show them, and replay
/// them, on every build). Checked on the build just made, which cargo finds
/// fresh and so only replays.
fn build_is_quiet() -> Result<()> {
    if crate::util::ebpf_build_shown() {
        return Ok(()); // asked to show them (`cargo xtask -v`)
    }
    let output = cargo_cmd()?
        .args(["build", "--release", "--package", "oomtrace"])
        .output()
        .context("running cargo build")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning"))
        .collect();
    if !output.status.success() || !warnings.is_empty() {
        bail!(
            "a successful build should print no warnings, and printed:\n{}",
            warnings.join("\n")
        );
    }
    println!("ok: the build prints no warnings");
    Ok(())
}

/// The record crate is what other code reads records with: it must build
/// without aya, tokio or the eBPF toolchain. `cargo tree` shows what it
/// pulls in.
fn record_crate_stands_alone() -> Result<()> {
    let output = cargo_cmd()?
        .args([
            "tree",
            "--package",
            "oomtrace-record",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .context("running cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree --package oomtrace-record failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&output.stdout);
    let heavy: Vec<&str> = tree
        .lines()
        .filter(|l| {
            ["aya", "tokio", "oomtrace-ebpf", "libc"]
                .iter()
                .any(|h| l.starts_with(&format!("{h} ")))
        })
        .collect();
    if !heavy.is_empty() {
        bail!(
            "oomtrace-record must stand alone, but depends on: {}",
            heavy.join(", ")
        );
    }
    println!(
        "ok: oomtrace-record builds on its own ({} crates)",
        tree.lines().count()
    );
    Ok(())
}

/// The kernel matrix (`cargo xtask vmtest` with its defaults), unless
/// `no_vm`. It also runs the matrix on the host kernel, so every attach mode
/// this kernel has is exercised once more through the matrix runner.
fn vm_matrix(no_vm: bool) -> Result<()> {
    if no_vm {
        println!("vm matrix: skipped (--no-vm)");
        return Ok(());
    }
    crate::vmtest::vmtest(&crate::vmtest::VmOpts::default())
}
