//! `cargo xtask setup`: install what oomtrace's build needs. Every step first
//! checks whether its work is already done, so running it again is cheap and
//! changes nothing.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::apt::apt_install;
use crate::util::{capture, cargo, is_debian_like, is_root, run};
use crate::vmtest::{VM_PACKAGES, missing_vm_packages};

/// Where Debian's (and apt.llvm.org's) llvm-22 packages install LLVM.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The bpf-linker release that supports LLVM 22 (feature `llvm-22`).
const BPF_LINKER_VERSION: &str = "0.13.0";
const TRACEFS: &str = "/sys/kernel/tracing";

/// LLVM 22's development files, which building bpf-linker needs.
const LLVM_PACKAGES: [&str; 2] = ["llvm-22-dev", "libpolly-22-dev"];

/// The real container runtimes the host tests run (tests/src/runtimes):
/// (package, a file it installs). docker.io brings containerd and `ctr`;
/// Podman needs runc here, because crun rejects this hybrid cgroup layout.
/// Debian's Chromium renders `oomtrace report --svg` headless in a test, and
/// its Prometheus (with promtool) scrapes `oomtrace run --metrics-addr` and
/// checks deploy/alerts.yaml (its service is not started: see
/// `apt::apt_install`; the test starts its own).
const RUNTIME_PACKAGES: [(&str, &str); 6] = [
    ("docker.io", "/usr/sbin/dockerd"),
    ("containerd", "/usr/bin/ctr"),
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    ("chromium", "/usr/bin/chromium"),
    ("prometheus", "/usr/bin/promtool"),
];

/// What the tests of deploy/ run (tests/src/deploy): logrotate, with the
/// shipped configuration; systemd-analyze, to verify the unit (systemd is
/// not PID 1 here, and its package starts nothing); strace, for the
/// system calls the unit's filter must allow; curl for the liveness
/// probe's /healthz; python3-venv for kubernetes-validate's venv.
const DEPLOY_PACKAGES: [(&str, &str); 5] = [
    ("logrotate", "/usr/sbin/logrotate"),
    ("systemd", "/usr/bin/systemd-analyze"),
    ("strace", "/usr/bin/strace"),
    ("curl", "/usr/bin/curl"),
    ("python3-venv", "/usr/share/doc/python3-venv"),
];

/// PyPI's kubernetes-validate (the Kubernetes API schemas, offline), which
/// validates deploy/daemonset.yaml: pinned, in a venv of its own under the
/// target directory (Debian's python3 refuses `pip install` outside one).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Its venv, under the target directory.
pub const KUBERNETES_VALIDATE_VENV: &str = "tools/kubernetes-validate";

/// The runtime packages not installed yet.
fn missing_runtime_packages() -> Vec<&'static str> {
    RUNTIME_PACKAGES
        .iter()
        .chain(DEPLOY_PACKAGES.iter())
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(package, _)| *package)
        .collect()
}

pub fn setup() -> Result<()> {
    apt_packages()?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    tracefs();
    kubernetes_validate()
}

/// Every Debian package setup wants, in one apt-get transaction that starts
/// no service (see `apt::apt_install`): LLVM 22's development files when
/// bpf-linker is still to be built, and the VM matrix's tools (qemu,
/// busybox, cpio, earlyoom; `cargo xtask vmtest`, which `cargo xtask test`
/// runs). Without root or off Debian, a missing LLVM is an error that says
/// what to install, missing VM tools only a warning: the build does not
/// need them.
fn apt_packages() -> Result<()> {
    let llvm: &[&str] = if needs_llvm_22() { &LLVM_PACKAGES } else { &[] };
    let vm = missing_vm_packages();
    if vm.is_empty() {
        println!("ok: the VM matrix's tools ({})", VM_PACKAGES.join(", "));
    }
    let runtimes = missing_runtime_packages();
    if runtimes.is_empty() {
        println!(
            "ok: the container runtimes the tests run (docker.io, containerd, podman, runc), \
             the deploy tests' tools (logrotate, systemd-analyze, strace, curl, python3-venv), \
             chromium and prometheus"
        );
    }
    let packages: Vec<&str> = llvm.iter().chain(&vm).chain(&runtimes).copied().collect();
    if packages.is_empty() {
        return Ok(());
    }
    if !(is_root() && is_debian_like()) {
        if !llvm.is_empty() {
            return Err(llvm_22_missing());
        }
        let missing: Vec<&str> = vm.iter().chain(&runtimes).copied().collect();
        println!(
            "warning: the VM matrix (`cargo xtask vmtest`) and the container runtime tests \
             need packages that are not installed: {}. Install them as root on Debian \
             (`apt-get install -y {}`)",
            missing.join(", "),
            missing.join(" ")
        );
        return Ok(());
    }
    println!(
        "installing: {} (apt-get, one transaction)",
        packages.join(" ")
    );
    apt_install(&packages).context(
        "could not install these packages with apt-get (see above). If this release has \
         no LLVM 22 packages, add the apt.llvm.org repository (https://apt.llvm.org), then \
         rerun `cargo xtask setup`",
    )?;
    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    if !llvm.is_empty() && !llvm_config.exists() {
        bail!(
            "apt-get installed llvm-22-dev but {} still does not exist; check where the \
             package put llvm-config (`dpkg -L llvm-22`)",
            llvm_config.display()
        );
    }
    Ok(())
}

/// Whether bpf-linker is still to be built and LLVM 22 is missing.
fn needs_llvm_22() -> bool {
    capture(Command::new("bpf-linker").arg("--version")).is_err()
        && !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists()
}

/// aya-build compiles the eBPF crate with `cargo +nightly -Z build-std=core`,
/// which needs a nightly toolchain and its standard library sources.
fn nightly_with_rust_src() -> Result<()> {
    let toolchains = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("could not list rustup toolchains: install rustup from https://rustup.rs")?;
    if !toolchains.lines().any(is_plain_nightly) {
        println!("installing: nightly toolchain with rust-src (a download of a few hundred MB)");
        return run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "could not install the nightly toolchain (download refused?): run \
             `rustup toolchain install nightly --profile minimal --component rust-src` by hand",
        );
    }

    let components = capture(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("could not list the nightly toolchain's components: is rustup working?")?;
    // rust-src is target-independent, so it is listed without a target suffix.
    if components.lines().any(|line| line.trim() == "rust-src") {
        println!("ok: nightly toolchain with rust-src");
        return Ok(());
    }
    println!("installing: rust-src for the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context(
            "could not install rust-src for the nightly toolchain (download refused?): run \
             `rustup component add rust-src --toolchain nightly` by hand",
        )
}

/// Whether a `rustup toolchain list` line is the `nightly` channel itself
/// (`nightly-<host>`), which `+nightly` resolves to. A dated nightly such as
/// `nightly-2025-01-01-<host>` is not.
fn is_plain_nightly(line: &str) -> bool {
    let name = line.split_whitespace().next().unwrap_or_default();
    name == "nightly"
        || name
            .strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// aya-build links the eBPF object with bpf-linker. It must be built against
/// an LLVM at least as new as the nightly rustc's (LLVM 22 today).
fn bpf_linker() -> Result<()> {
    if let Ok(version) = capture(Command::new("bpf-linker").arg("--version")) {
        println!("ok: {}", version.trim());
        return Ok(());
    }
    // apt_packages() installed LLVM 22, or said why it could not.
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        return Err(llvm_22_missing());
    }
    println!("ok: LLVM 22 in {LLVM_PREFIX}");

    println!(
        "installing: bpf-linker {BPF_LINKER_VERSION} built against LLVM 22 \
         (cargo install, this takes about a minute)"
    );
    let install_args = [
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ];
    // Without LLVM_PREFIX, bpf-linker's build finds the distribution's
    // default llvm-config (LLVM 14 on Debian 12) and fails.
    run(Command::new(cargo())
        .args(install_args)
        .env("LLVM_PREFIX", LLVM_PREFIX))
    .with_context(|| {
        format!(
            "could not build bpf-linker; fix the error above and run \
             `LLVM_PREFIX={LLVM_PREFIX} cargo {}` by hand",
            install_args.join(" ")
        )
    })?;

    // cargo install puts it in ~/.cargo/bin, which may not be on PATH.
    let version = capture(Command::new("bpf-linker").arg("--version")).context(
        "bpf-linker was installed but `bpf-linker --version` fails: add ~/.cargo/bin \
         (or $CARGO_HOME/bin) to PATH",
    )?;
    println!("ok: {}", version.trim());
    Ok(())
}

/// Why bpf-linker cannot be built yet: LLVM 22 is missing, and setup could
/// not install it (no root, or not Debian).
fn llvm_22_missing() -> anyhow::Error {
    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    let by_hand = format!(
        "sudo apt-get update && sudo apt-get install -y {}",
        LLVM_PACKAGES.join(" ")
    );
    if !is_debian_like() {
        return anyhow::anyhow!(
            "bpf-linker is missing and building it needs LLVM 22, but {} does not exist. \
             This is not Debian or Ubuntu, so install LLVM 22 with its development files \
             yourself (its llvm-config must be at {}), then rerun `cargo xtask setup`",
            llvm_config.display(),
            llvm_config.display()
        );
    }
    anyhow::anyhow!(
        "bpf-linker is missing and building it needs LLVM 22, but {} does not exist. \
         Installing it needs root: run `{by_hand}`, then rerun `cargo xtask setup` \
         (or run `sudo cargo xtask setup`)",
        llvm_config.display()
    )
}

/// kubernetes-validate in its venv, unless it is there already.
fn kubernetes_validate() -> Result<()> {
    let venv = crate::util::target_dir()?.join(KUBERNETES_VALIDATE_VENV);
    let bin = venv.join("bin/kubernetes-validate");
    if let Ok(version) = capture(Command::new(&bin).arg("--version")) {
        println!("ok: kubernetes-validate {}", version.trim());
        return Ok(());
    }
    println!(
        "installing: {KUBERNETES_VALIDATE} (PyPI) in {}",
        venv.display()
    );
    // Debian's python3: its venv module comes with python3-venv (above).
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv))
    .context(
        "could not create a Python venv: install python3-venv (`apt-get install -y python3-venv`)",
    )?;
    run(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        KUBERNETES_VALIDATE,
    ]))
    .with_context(|| {
        format!(
            "could not install {KUBERNETES_VALIDATE} from PyPI into {}; the manifest test \
             needs it",
            venv.display()
        )
    })
}

/// oomtrace reads tracepoint formats from tracefs. Not fatal when it cannot
/// be mounted (e.g. in an unprivileged container): oomtrace can still attach
/// raw tracepoints, whose layouts come from BTF instead.
fn tracefs() {
    match std::fs::read_to_string("/proc/self/mounts") {
        // Fields: device, mount point, fstype, options, dump, pass.
        Ok(mounts)
            if mounts
                .lines()
                .any(|l| l.split_whitespace().nth(2) == Some("tracefs")) =>
        {
            println!("ok: tracefs is mounted");
            return;
        }
        Ok(_) => {}
        Err(err) => println!("warning: could not read /proc/self/mounts ({err}); trying to mount"),
    }
    println!("installing: mounting tracefs on {TRACEFS}");
    if let Err(err) = run(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS])) {
        println!(
            "warning: could not mount tracefs ({err:#}); oomtrace can still use raw \
             tracepoints. To mount it by hand: `sudo mount -t tracefs nodev {TRACEFS}`"
        );
    }
}
