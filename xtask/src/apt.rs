//! Installing Debian packages on this machine, without starting their
//! services. Some packages xtask installs are daemons the tests start on
//! their own terms, or only inside the VMs:
//! - earlyoom, a userspace OOM killer, kills on the whole machine's memory
//!   (VMs only);
//! - dockerd and containerd (docker.io): the runtime tests start private
//!   ones, with their own sockets and data roots, and stop them.
//!
//! Debian's packages start them on installation (the postinsts run
//! `invoke-rc.d NAME start` and `deb-systemd-invoke start`). Both ask
//! /usr/sbin/policy-rc.d first; exit status 101 forbids the start.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{capture, run};

/// The file invoke-rc.d and deb-systemd-invoke ask before starting a service
/// (a fixed path: neither reads another from the environment).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// Where an existing policy-rc.d that allows starts is kept meanwhile.
const POLICY_RC_D_SAVED: &str = "/usr/sbin/policy-rc.d.oomtrace-xtask-saved";
/// Ours: no service starts (101: "action forbidden by policy").
const FORBID_ALL: &str = "#!/bin/sh\n\
    # Written by oomtrace's `cargo xtask` for one apt-get transaction, and\n\
    # removed after it: packages installed for the test VMs must not start\n\
    # their services on this machine.\n\
    exit 101\n";

/// A package whose daemon must not start when xtask installs it.
struct QuietDaemon {
    package: &'static str,
    /// The daemon's task name (/proc/PID/comm).
    comm: &'static str,
    /// Also disabled for the next boot: a daemon that must never run on
    /// this machine (a userspace OOM killer). The container runtimes' system
    /// services are left as the package set them, only not started now.
    disable_at_boot: bool,
}

/// Every package xtask installs whose postinst would start a daemon.
const QUIET_DAEMONS: &[QuietDaemon] = &[
    QuietDaemon {
        package: "earlyoom",
        comm: "earlyoom",
        disable_at_boot: true,
    },
    QuietDaemon {
        package: "docker.io",
        comm: "dockerd",
        disable_at_boot: false,
    },
    QuietDaemon {
        package: "docker.io",
        comm: "containerd",
        disable_at_boot: false,
    },
    QuietDaemon {
        package: "containerd",
        comm: "containerd",
        disable_at_boot: false,
    },
];

/// `apt-get install -y PACKAGES` in one transaction, never asking a question
/// and never starting a service (see [`NoServiceStarts`]); when that fails
/// (usually a stale package index: not found, or 404s), `apt-get update`
/// and one more try. A daemon among them (see [`QUIET_DAEMONS`]) is then
/// checked not to run, and disabled at boot where the table says so (see
/// [`keep_daemon_off`]).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let daemons: Vec<(&QuietDaemon, bool, Vec<u32>)> = QUIET_DAEMONS
        .iter()
        .filter(|daemon| packages.contains(&daemon.package))
        .map(|daemon| {
            (
                daemon,
                !is_installed(daemon.package),
                processes_named(daemon.comm),
            )
        })
        .collect();
    let installed = {
        let _policy = NoServiceStarts::install()?;
        let install = || {
            run(Command::new("apt-get")
                .args(["install", "-y"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"))
        };
        install().or_else(|_| {
            println!("apt-get install failed; refreshing the package index and retrying once");
            run(Command::new("apt-get").arg("update")).and_then(|()| install())
        })
    };
    // Even after a failed transaction: it may have installed some of them.
    for (daemon, newly_installed, before) in daemons {
        if newly_installed && !is_installed(daemon.package) {
            continue;
        }
        keep_daemon_off(daemon, newly_installed, &before)?;
    }
    installed
}

/// While it lives, /usr/sbin/policy-rc.d forbids every service start. A
/// policy that already does (as Docker images ship) is left as it is;
/// otherwise ours takes its place, and on drop the one before (or none) is
/// put back.
pub struct NoServiceStarts {
    path: PathBuf,
    /// Where one that allowed starts waits meanwhile, if there was one.
    saved: Option<PathBuf>,
    /// We wrote ours (and must remove it).
    ours: bool,
}

impl NoServiceStarts {
    pub fn install() -> Result<Self> {
        let guard = Self::install_at(Path::new(POLICY_RC_D), Path::new(POLICY_RC_D_SAVED))?;
        if guard.ours {
            println!("{POLICY_RC_D}: no service starts while apt-get runs (restored afterwards)");
        }
        Ok(guard)
    }

    fn install_at(path: &Path, saved_at: &Path) -> Result<Self> {
        let mut guard = Self {
            path: path.to_path_buf(),
            saved: None,
            ours: false,
        };
        if path.exists() {
            if forbids_starts(path) {
                return Ok(guard);
            }
            std::fs::rename(path, saved_at).with_context(|| {
                format!("moving {} aside to {}", path.display(), saved_at.display())
            })?;
            guard.saved = Some(saved_at.to_path_buf());
        }
        write_executable(path, FORBID_ALL)
            .with_context(|| format!("writing {} (no service starts)", path.display()))?;
        guard.ours = true;
        Ok(guard)
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        let path = self.path.display();
        if self.ours
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            println!("warning: could not remove our {path}: {e}; remove it by hand");
        }
        if let Some(saved) = &self.saved
            && let Err(e) = std::fs::rename(saved, &self.path)
        {
            println!(
                "warning: could not put {} back as {path}: {e}; move it back by hand",
                saved.display()
            );
        }
    }
}

/// Whether the policy at `path` answers 101 (forbidden) to a start.
fn forbids_starts(path: &Path) -> bool {
    Command::new(path)
        .args(["earlyoom", "start"])
        .output()
        .is_ok_and(|out| out.status.code() == Some(101))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Whether the Debian package `name` is installed.
pub fn is_installed(name: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f", "${Status}", name]))
        .is_ok_and(|status| status.ends_with(" installed"))
}

/// The processes whose task name is `comm`, by pid (read from /proc; a
/// process that ends meanwhile is skipped).
pub fn processes_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end_matches('\n') == comm)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// After installing a package with a daemon: none of it runs that did not
/// run before (`before`, from [`processes_named`]), and a daemon meant for
/// the VMs only is disabled on this machine for the next boot too. A daemon
/// that ran before is not ours: it is named, not touched.
fn keep_daemon_off(daemon: &QuietDaemon, newly_installed: bool, before: &[u32]) -> Result<()> {
    let QuietDaemon {
        package,
        comm,
        disable_at_boot,
    } = *daemon;
    if newly_installed && disable_at_boot {
        // The postinst enabled it for the next boot (a systemd unit
        // symlink, SysV rc links). `--root=/` edits those files without
        // asking a running systemd, so it works with any init.
        let unit = format!("{package}.service");
        let mut disables = vec![Command::new("update-rc.d")];
        disables[0].args([package, "disable"]);
        if Path::new("/usr/bin/systemctl").exists() || Path::new("/bin/systemctl").exists() {
            let mut systemctl = Command::new("systemctl");
            systemctl.args(["--root=/", "disable", &unit]);
            disables.push(systemctl);
        }
        for mut cmd in disables {
            if let Err(e) = capture(&mut cmd) {
                println!("warning: could not disable {package} at boot on this machine: {e:#}");
            }
        }
        println!("ok: {package} installed for the VMs; its service is disabled on this machine");
    } else if newly_installed {
        println!("ok: {package} installed; its {comm} was not started (the tests start their own)");
    }
    let running = processes_named(comm);
    let started: Vec<u32> = running
        .iter()
        .copied()
        .filter(|pid| !before.contains(pid))
        .collect();
    if !started.is_empty() {
        bail!(
            "AN {comm} DAEMON STARTED ON THIS MACHINE (pid {started:?}) while {package} was \
             installed, despite {POLICY_RC_D}. xtask does not kill it: stop it yourself \
             (`systemctl stop {package}`, or `kill` that pid){}",
            if disable_at_boot {
                format!(
                    ", then `systemctl disable {package}`: it kills processes when this \
                     machine's memory runs low"
                )
            } else {
                String::new()
            }
        );
    }
    if !running.is_empty() {
        println!(
            "warning: {comm} already runs on this machine (pid {running:?}); not started by \
             xtask, left alone"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-policy-rc-d-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn policy_is_ours_while_it_lives_then_as_before() {
        let dir = policy_dir();
        let (path, saved) = (dir.join("policy-rc.d"), dir.join("saved"));

        // None before: ours, then none.
        let guard = NoServiceStarts::install_at(&path, &saved).expect("install");
        assert!(forbids_starts(&path));
        drop(guard);
        assert!(!path.exists());

        // One that allows starts: set aside, then back, unchanged.
        let allows = "#!/bin/sh\nexit 0\n";
        write_executable(&path, allows).expect("write");
        let guard = NoServiceStarts::install_at(&path, &saved).expect("install");
        assert!(forbids_starts(&path));
        drop(guard);
        assert_eq!(std::fs::read_to_string(&path).expect("back"), allows);
        assert!(!saved.exists());

        // One that already forbids: left alone.
        let forbids = "#!/bin/sh\n# theirs\nexit 101\n";
        write_executable(&path, forbids).expect("write");
        drop(NoServiceStarts::install_at(&path, &saved).expect("install"));
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), forbids);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
