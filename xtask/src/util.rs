//! Helpers shared by the subcommands: running commands, finding the
//! workspace and its target directory, and facts about this machine.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result, bail};

/// Runs `cmd` with inherited stdio after printing it as `$ cmd args`, so the
/// user can see (and copy) exactly what ran. A non-zero exit is an error
/// that names the command and its status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    println!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout. Used for probes such as
/// `rustup toolchain list`, whose output we parse rather than show. A
/// failure includes the command's stderr, since that is what explains it.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`{shown}` failed ({}): {}", out.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line as a shell would show it, including the environment
/// variables we set explicitly (LLVM_PREFIX matters for bpf-linker).
fn show(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    // Our own cargo (see `cargo()`) is shown as plain `cargo`: its full
    // path inside ~/.rustup is noise, and `cargo` runs the same toolchain.
    let program = cmd.get_program();
    if std::env::var_os("CARGO").is_some_and(|ours| ours == program) {
        parts.push("cargo".to_string());
    } else {
        parts.push(quote(&program.to_string_lossy()));
    }
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// Quotes an argument only when a shell would need it, to keep the common
/// case readable.
fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+./:,@%".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The cargo that runs this xtask (cargo sets CARGO for `cargo run`), so
/// nested builds use the same toolchain. Falls back to `cargo` on PATH.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `cargo xtask -v`: show the eBPF build's own lines (oomtrace/build.rs
/// keeps them quiet when that build goes well).
static SHOW_EBPF_BUILD: AtomicBool = AtomicBool::new(false);

pub fn show_ebpf_build() {
    SHOW_EBPF_BUILD.store(true, Ordering::Relaxed);
}

pub fn ebpf_build_shown() -> bool {
    SHOW_EBPF_BUILD.load(Ordering::Relaxed)
}

/// A cargo command that runs from the workspace root, so that workspace
/// settings (default-members, profiles, .cargo/config.toml) apply no matter
/// where `cargo xtask` was started.
pub fn cargo_cmd() -> Result<Command> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root()?);
    if ebpf_build_shown() {
        cmd.env("OOMTRACE_SHOW_EBPF_BUILD", "1");
    }
    Ok(cmd)
}

/// The workspace root: xtask lives one level below it.
pub fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent; is xtask inside the workspace?")
}

/// Cargo's target directory: $CARGO_TARGET_DIR if set, else `target/` in
/// the workspace root. A relative CARGO_TARGET_DIR is taken relative to the
/// workspace root, because that is where we run cargo from.
pub fn target_dir() -> Result<PathBuf> {
    let root = workspace_root()?;
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    })
}

/// The release oomtrace binary that `cargo xtask build` produces.
pub fn oomtrace_bin() -> Result<PathBuf> {
    Ok(target_dir()?.join("release").join("oomtrace"))
}

/// Whether we run as root (effective uid 0). Read from /proc rather than
/// calling geteuid(), so xtask needs no libc dependency.
pub fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        // The fields are real, effective, saved and filesystem uid.
        .and_then(|uids| uids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// Whether /etc/os-release names Debian or Ubuntu (or a derivative, via
/// ID_LIKE), i.e. whether apt-get and the llvm-22 package names apply.
pub fn is_debian_like() -> bool {
    let Ok(release) = std::fs::read_to_string("/etc/os-release") else {
        return false;
    };
    release.lines().any(|line| {
        let value = line
            .strip_prefix("ID=")
            .or_else(|| line.strip_prefix("ID_LIKE="));
        value.is_some_and(|v| {
            v.trim_matches('"')
                .split_whitespace()
                .any(|id| id == "debian" || id == "ubuntu")
        })
    })
}
