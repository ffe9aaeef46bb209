//! `cargo xtask vmtest`: the end-to-end scenarios on other kernels.
//!
//! Debian's cloud kernels (fetched with apt, cached under target/vmtest/)
//! boot under qemu's software emulation into a busybox initramfs that holds
//! static (musl) builds of oomtrace, the test workload and `oomtrace-matrix`.
//! /init mounts cgroup v2 with the memory controller, runs the matrix (every
//! attach mode the kernel has, the same scenario functions as the host
//! tests) and powers off. Pass or fail comes from the `OOMTRACE-MATRIX`
//! lines it prints on the serial console; the host kernel runs the same
//! matrix natively, so one table covers both.

mod boot;
mod libs;
mod table;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use boot::boot;
use libs::copy_with_libraries;
use table::{Row, parse, print_table, verdict};

use crate::apt::apt_install;
use crate::util::{capture, cargo_cmd, is_debian_like, is_root, run, target_dir};

/// Kernels booted by default: an LTS with the older cgroup/kernfs layout and
/// a newer one, both with kprobes, fentry and BTF.
pub const DEFAULT_KERNELS: [&str; 2] = ["6.1.0-50-cloud-amd64", "6.12.100+deb12-cloud-amd64"];
const MUSL: &str = "x86_64-unknown-linux-musl";

pub struct VmOpts {
    pub kernels: Vec<String>,
    /// Per VM, from boot to power-off.
    pub timeout: Duration,
    /// Run only this attach mode (e.g. `raw+kprobe`).
    pub mode: Option<String>,
    /// Run only this scenario (e.g. `hostile_comm`).
    pub scenario: Option<String>,
}

impl Default for VmOpts {
    fn default() -> Self {
        VmOpts {
            kernels: DEFAULT_KERNELS.iter().map(|k| k.to_string()).collect(),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            mode: None,
            scenario: None,
        }
    }
}

/// Per VM. Under TCG on two cores the full matrix takes minutes; a hung
/// kernel must not hold CI forever.
pub const DEFAULT_TIMEOUT_SECS: u64 = 900;
pub fn vmtest(opts: &VmOpts) -> Result<()> {
    let started = Instant::now();
    ensure_vm_tools()?;
    let bins = build_static()?;
    let work = target_dir()?.join("vmtest");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let initramfs = make_initramfs(&bins, &work)?;

    let mut rows = vec![host_row(&bins, opts)?];
    for kernel in &opts.kernels {
        let vmlinuz = fetch_kernel(kernel, &work)?;
        rows.push(boot(kernel, &vmlinuz, &initramfs, &work, opts)?);
    }
    print_table(&rows);
    println!("vm matrix: {:.0}s", started.elapsed().as_secs_f64());
    verdict(&rows)
}

/// Static (musl) builds of oomtrace, the test workload and `oomtrace-matrix`:
/// the VMs run them, and so do the host's container tests, inside images
/// that hold nothing but busybox. Returns the directory that holds them.
pub fn build_static() -> Result<PathBuf> {
    ensure_musl_target()?;
    run(cargo_cmd()?.args([
        "build",
        "--release",
        "--target",
        MUSL,
        "--package",
        "oomtrace",
        "--package",
        "oomtrace-tests",
        "--bins",
    ]))
    .context("building the static (musl) binaries failed")?;
    Ok(target_dir()?.join(MUSL).join("release"))
}

/// The Debian packages the VMs need, and a file each installs: qemu, a
/// static busybox and cpio to build and boot them; earlyoom, a userspace OOM
/// killer, to run inside them (never on this machine: see `apt.rs`).
const VM_TOOLS: [(&str, &[&str]); 4] = [
    ("qemu-system-x86", &["/usr/bin/qemu-system-x86_64"]),
    ("busybox-static", &["/bin/busybox", "/usr/bin/busybox"]),
    ("cpio", &["/usr/bin/cpio", "/bin/cpio"]),
    ("earlyoom", &[EARLYOOM]),
];
pub const VM_PACKAGES: [&str; 4] = [VM_TOOLS[0].0, VM_TOOLS[1].0, VM_TOOLS[2].0, VM_TOOLS[3].0];

/// earlyoom, glibc-linked: copied into the initramfs with its libraries.
const EARLYOOM: &str = "/usr/bin/earlyoom";

/// The VM packages not installed yet (none of their files exists).
pub fn missing_vm_packages() -> Vec<&'static str> {
    VM_TOOLS
        .iter()
        .filter(|(_, files)| files.iter().all(|f| !Path::new(f).exists()))
        .map(|(package, _)| *package)
        .collect()
}

/// The VMs' packages: installed with apt-get, in one transaction that starts
/// no service, where we can; otherwise a loud error naming them.
pub fn ensure_vm_tools() -> Result<()> {
    let missing = missing_vm_packages();
    if missing.is_empty() {
        println!("ok: {}", VM_PACKAGES.join(", "));
        return Ok(());
    }
    if !(is_root() && is_debian_like()) {
        bail!(
            "THE VM KERNEL MATRIX CANNOT RUN: {} missing. Install them (`apt-get install -y \
             {}`), or skip the matrix with --no-vm",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("installing: {}", missing.join(" "));
    apt_install(&missing).context(
        "THE VM KERNEL MATRIX CANNOT RUN: installing its packages failed (see above); fix it \
         or pass --no-vm",
    )?;
    Ok(())
}

fn ensure_musl_target() -> Result<()> {
    let installed = capture(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("listing rustup targets")?;
    if installed.lines().any(|l| l.trim() == MUSL) {
        return Ok(());
    }
    println!("installing: the {MUSL} target (static binaries for the VMs)");
    run(Command::new("rustup").args(["target", "add", MUSL])).with_context(|| {
        format!(
            "could not add the {MUSL} target (download refused?): run `rustup target add {MUSL}`"
        )
    })
}

/// The initramfs: busybox, the three static binaries, earlyoom with its
/// libraries, and /init.
fn make_initramfs(bins: &Path, work: &Path) -> Result<PathBuf> {
    let root = work.join("initramfs");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    for dir in ["proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox not found")?;
    std::fs::copy(busybox, bin.join("busybox")).context("copying busybox")?;
    for name in ["oomtrace", "oomtrace-workload", "oomtrace-matrix"] {
        std::fs::copy(bins.join(name), bin.join(name))
            .with_context(|| format!("copying {}", bins.join(name).display()))?;
    }
    copy_with_libraries(Path::new(EARLYOOM), &root)?;
    let init = root.join("init");
    std::fs::write(&init, INIT).context("writing /init")?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    let image = work.join("initramfs.cpio.gz");
    let script = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        root.display(),
        image.display()
    );
    run(Command::new("sh").args(["-c", &script])).context("packing the initramfs")?;
    Ok(image)
}

/// PID 1 in the VM. `oomtrace.mode=M` and `oomtrace.scenario=S` on the
/// kernel command line limit the matrix to one attach mode, one scenario. OOMTRACE_VM=1 tells the matrix that the whole
/// machine is its own (its VM-only scenarios run).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
export OOMTRACE_VM=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
echo "OOMTRACE-VM-BOOTED $(uname -r)"
only=""
for word in $(cat /proc/cmdline); do
  case "$word" in
    oomtrace.mode=*) only="$only --mode ${word#oomtrace.mode=}";;
    oomtrace.scenario=*) only="$only --scenario ${word#oomtrace.scenario=}";;
  esac
done
/bin/oomtrace-matrix $only
echo "OOMTRACE-VM-EXIT $?"
poweroff -f
"#;

/// The Debian kernel package `linux-image-NAME`, downloaded once and cached.
fn fetch_kernel(name: &str, work: &Path) -> Result<PathBuf> {
    let dir = work.join("kernels").join(name);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() {
        println!("ok: kernel {name} (cached)");
        return Ok(vmlinuz);
    }
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs)?;
    let package = format!("linux-image-{name}");
    let download = || {
        run(Command::new("apt-get")
            .current_dir(&debs)
            // apt's sandbox user cannot write under target/; as root the
            // download is a plain fetch of a signed package.
            .args(["-o", "APT::Sandbox::User=root", "download", &package]))
    };
    if download().is_err() {
        run(Command::new("apt-get").arg("update"))?;
        download().with_context(|| format!("apt-get could not download {package}"))?;
    }
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("no {package}_*.deb in {}", debs.display()))?;
    let unpacked = dir.join("root");
    std::fs::create_dir_all(&unpacked)
        .with_context(|| format!("creating {}", unpacked.display()))?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    let image = unpacked.join("boot").join(format!("vmlinuz-{name}"));
    std::fs::copy(&image, &vmlinuz).with_context(|| format!("copying {}", image.display()))?;
    std::fs::remove_dir_all(&unpacked).ok();
    Ok(vmlinuz)
}

/// The host kernel's row: the same matrix, run natively.
fn host_row(bins: &Path, opts: &VmOpts) -> Result<Row> {
    if !is_root() {
        bail!("the matrix causes real OOM kills and needs root: run `sudo cargo xtask vmtest`");
    }
    println!("matrix on the host kernel");
    let mut cmd = Command::new(bins.join("oomtrace-matrix"));
    if let Some(mode) = &opts.mode {
        cmd.args(["--mode", mode]);
    }
    if let Some(scenario) = &opts.scenario {
        cmd.args(["--scenario", scenario]);
    }
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running oomtrace-matrix on the host")?;
    let text = String::from_utf8_lossy(&output.stdout);
    print!("{text}");
    Ok(parse(text.lines(), false))
}
