//! Builds the eBPF programs (oomtrace-ebpf, for bpfel-unknown-none) and leaves
//! the object in OUT_DIR, where src/kernel/attach.rs embeds it.
//!
//! This needs a nightly toolchain with rust-src and bpf-linker on PATH;
//! `cargo xtask setup` installs both. Set AYA_BUILD_SKIP=1 to build the
//! collector without the eBPF object (it then cannot trace; for clippy/docs).
//!
//! aya-build runs a nested `cargo build` and relays every line it prints
//! ("Compiling core", "Finished") as a `cargo:warning`, some 40 of them,
//! which cargo shows on every build (and replays on every later one): a
//! newcomer reads them as trouble. So this script runs itself a second time
//! to do the build, keeps those lines, and shows them as warnings only when
//! they matter: the build failed, the eBPF crate has a diagnostic, or
//! OOMTRACE_SHOW_EBPF_BUILD=1 (`cargo xtask -v build`). Otherwise they go to
//! the build script's own output, which `cargo build -vv` shows.
use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow};

/// Set in the second run, which does the build.
const INNER: &str = "OOMTRACE_EBPF_BUILD_INNER";
/// Show the nested build's lines even when it went well.
const SHOW: &str = "OOMTRACE_SHOW_EBPF_BUILD";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(INNER).is_some() {
        return build_ebpf();
    }
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed={SHOW}");
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    if skip {
        // Leave an empty object so that include_bytes! still compiles; the
        // collector refuses to run with it and says why.
        let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
        std::fs::write(out.join("oomtrace-ebpf"), b"").context("writing placeholder object")?;
        println!(
            "cargo:warning=AYA_BUILD_SKIP is set: built without the eBPF programs, this \
             oomtrace cannot trace"
        );
        return Ok(());
    }
    let me = std::env::current_exe().context("finding the build script's own path")?;
    let output = Command::new(&me)
        .env(INNER, "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} for the eBPF build", me.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut relayed = Vec::new();
    let mut out = std::io::stdout().lock();
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(text) => relayed.push(text),
            // Every other directive (rerun-if-changed and the like) is ours.
            None => writeln!(out, "{line}")?,
        }
    }
    let diagnostic = relayed.iter().any(|l| is_diagnostic(l));
    let show = !output.status.success()
        || diagnostic
        || std::env::var_os(SHOW).is_some_and(|v| v == "1" || v == "true");
    for line in &relayed {
        if show {
            writeln!(out, "cargo:warning={line}")?;
        } else {
            // Plain output: kept in the build script's output file, shown
            // by `cargo build -vv`, never as a warning.
            writeln!(out, "{line}")?;
        }
    }
    if !output.status.success() {
        // The second run's own error report, as it wrote it.
        out.flush()?;
        std::io::stderr().write_all(&output.stderr)?;
        std::process::exit(output.status.code().unwrap_or(1));
    }
    Ok(())
}

/// A line that starts a rustc or cargo diagnostic: worth a look even when
/// the build went through.
fn is_diagnostic(line: &str) -> bool {
    let line = line.trim_start();
    ["warning:", "warning[", "error:", "error["]
        .iter()
        .any(|p| line.starts_with(p))
}

/// The build itself, in the second run: aya-build's nested cargo build.
fn build_ebpf() -> anyhow::Result<()> {
    let metadata = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&metadata)
        .parent()
        .ok_or_else(|| anyhow!("no parent of {metadata}"))?
        .join("oomtrace-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "oomtrace-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` to install the nightly \
         toolchain with rust-src and bpf-linker",
    )
}
