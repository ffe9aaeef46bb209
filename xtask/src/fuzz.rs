//! The cargo-fuzz target of `oomtrace report`'s record reader (fuzz/), run
//! for a bounded time by `cargo xtask bench`: libFuzzer feeds it bytes,
//! starting from real records; a panic is a crash, and fails the bench.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{capture, run, workspace_root};

/// How long the target runs, seconds.
pub const FUZZ_SECS: u64 = 60;
const TARGET: &str = "report_reader";

/// Runs the target for `secs`; prints its executions and whether it found
/// a crash (an error, naming the input that crashed it).
pub fn fuzz_report_reader(secs: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    let fuzz = workspace_root()?.join("fuzz");
    let corpus = fuzz.join("corpus").join(TARGET);
    seed(&corpus)?;
    // `cargo +nightly` needs the rustup proxy: `cargo` from PATH, not the
    // toolchain's cargo in $CARGO. libFuzzer needs nightly's sanitizer flags.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&fuzz).args([
        "+nightly",
        "fuzz",
        "run",
        TARGET,
        "--",
        &format!("-max_total_time={secs}"),
        "-max_len=20000",
        "-print_final_stats=1",
        // LeakSanitizer counts the thread-locals of the reader's threads
        // (std's channel contexts, freed at thread exit) as leaks.
        "-detect_leaks=0",
    ]);
    println!("$ (in fuzz/) {cmd:?}");
    let out = cmd
        .output()
        .context("could not start `cargo +nightly fuzz` (is the nightly toolchain installed?)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let runs = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .map(str::trim)
        .unwrap_or("?");
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
        bail!(
            "fuzzing the report reader found a crash after {runs} executions ({}): the input is \
             under fuzz/artifacts/{TARGET}/ (see above); replay it with \
             `cd fuzz && cargo +nightly fuzz run {TARGET} <file>`",
            out.status
        );
    }
    println!("fuzz {TARGET}: {runs} executions in {secs} s, no crash");
    Ok(())
}

/// Real records as the first inputs: the record crate's fixtures.
fn seed(corpus: &Path) -> Result<()> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let fixtures = workspace_root()?.join("oomtrace/record/tests");
    for entry in
        std::fs::read_dir(&fixtures).with_context(|| format!("listing {}", fixtures.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "ndjson")
            && let Some(name) = path.file_name()
        {
            std::fs::copy(&path, corpus.join(name))
                .with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

/// cargo-fuzz, from crates.io, if it is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = capture(Command::new("cargo").args(["fuzz", "--version"])).is_ok();
    if installed {
        println!("ok: cargo-fuzz");
        return Ok(());
    }
    println!("installing: cargo-fuzz");
    run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz failed (see above)")
}
