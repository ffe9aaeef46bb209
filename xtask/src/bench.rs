//! `cargo xtask bench`: oomtrace against bpftrace on this machine, by the
//! oomtrace-bench binary (tests/src/bin/bench/), which prints the table and
//! writes target/bench.json; then the report reader's fuzz target for a
//! minute (crate::fuzz).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::apt::apt_install;
use crate::cmds::build;
use crate::util::{cargo_cmd, is_debian_like, is_root, run, target_dir};

/// What `cargo xtask bench` does, from its command line.
pub struct BenchOpts {
    pub quick: bool,
    pub idle_secs: Option<u64>,
}

pub fn bench(opts: &BenchOpts) -> Result<()> {
    if !is_root() {
        bail!(
            "the benchmark loads eBPF programs and causes real OOM kills in cgroups it creates, \
             so it needs root: run `sudo cargo xtask bench`"
        );
    }
    let oomtrace = build()?;
    ensure_bpftrace()?;
    ensure_jq()?;
    run(cargo_cmd()?.args([
        "build",
        "--release",
        "--package",
        "oomtrace-tests",
        "--bin",
        "oomtrace-workload",
        "--bin",
        "oomtrace-bench",
    ]))
    .context("building the benchmark (see above)")?;
    let release = target_dir()?.join("release");
    let out = target_dir()?.join("bench.json");
    let mut cmd = Command::new(release.join("oomtrace-bench"));
    cmd.arg("--oomtrace")
        .arg(&oomtrace)
        .arg("--workload")
        .arg(release.join("oomtrace-workload"))
        .arg("--out")
        .arg(&out);
    if opts.quick {
        cmd.arg("--quick");
    }
    if let Some(secs) = opts.idle_secs {
        cmd.args(["--idle", &secs.to_string()]);
    }
    run(&mut cmd).context(
        "the benchmark failed (see above); it stops every tool it started and removes its \
         cgroups on the way out",
    )?;
    // Not a figure, but it needs time rather than a test's budget: the
    // report reader's fuzz target, for a bounded time.
    crate::fuzz::fuzz_report_reader(crate::fuzz::FUZZ_SECS)
}

/// jq, which `oomtrace report` is measured against.
fn ensure_jq() -> Result<()> {
    if Path::new("/usr/bin/jq").exists() {
        println!("ok: jq");
        return Ok(());
    }
    if !is_debian_like() {
        bail!("jq is missing: install it with your distribution's package manager");
    }
    println!("installing: jq");
    apt_install(&["jq"]).context("installing jq failed (see above)")
}

/// bpftrace from the distribution, the tool oomtrace is measured against.
fn ensure_bpftrace() -> Result<()> {
    let found = [
        "/usr/bin/bpftrace",
        "/usr/sbin/bpftrace",
        "/usr/local/bin/bpftrace",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if found {
        println!("ok: bpftrace");
        return Ok(());
    }
    if !is_debian_like() {
        bail!("bpftrace is missing: install it with your distribution's package manager");
    }
    println!("installing: bpftrace");
    apt_install(&["bpftrace"]).context("installing bpftrace failed (see above)")
}
