//! The test image, built here (no registry is reachable): busybox-static
//! with its applet links, the static test workload at `/oomtrace-workload`,
//! and `/bin/oomtrace-gated`, an entrypoint that waits for the file
//! `/gate/go` (a bind-mounted host directory) before it execs its
//! arguments, so that the test reads PID 1's pid and starts oomtrace's
//! watch before the workload starts.

use std::path::{Path, PathBuf};

use super::engine::{fnv1a, run_command};

const BUSYBOX: &str = "/bin/busybox";

const GATED: &str = "#!/bin/sh\n\
while [ ! -e /gate/go ]; do sleep 0.02; done\n\
exec \"$@\"\n";

/// The static (musl) workload: OOMTRACE_STATIC_WORKLOAD (set by `cargo
/// xtask test`), else the workspace's musl release build.
pub fn static_workload() -> PathBuf {
    let path = std::env::var_os("OOMTRACE_STATIC_WORKLOAD")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("x86_64-unknown-linux-musl/release/oomtrace-workload")
        });
    assert!(
        path.exists(),
        "{} does not exist: run `cargo xtask test` (it builds it), or `cargo build --release \
         --target x86_64-unknown-linux-musl -p oomtrace-tests --bins` and set \
         OOMTRACE_STATIC_WORKLOAD",
        path.display()
    );
    path
}

/// Builds (once per content) the image's rootfs and its tarball under
/// `data`; returns (tarball, rootfs, tag), the tag a hash of the content.
pub fn build(data: &Path) -> (PathBuf, PathBuf, String) {
    let workload_path = static_workload();
    let workload = std::fs::read(&workload_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", workload_path.display()));
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("read {BUSYBOX} ({e}): the image needs busybox-static (`cargo xtask setup`)")
    });
    let tag = format!(
        "{:08x}{:08x}",
        fnv1a(&workload),
        fnv1a(&[busybox.as_slice(), GATED.as_bytes()].concat())
    );
    let rootfs = data.join(format!("rootfs-{tag}"));
    let tarball = data.join(format!("image-{tag}.tar"));
    if tarball.exists() && rootfs.join("oomtrace-workload").exists() {
        return (tarball, rootfs, tag);
    }
    let partial = data.join(format!("rootfs-{tag}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    for dir in ["bin", "proc", "sys", "dev", "etc", "tmp", "gate"] {
        std::fs::create_dir_all(partial.join(dir)).expect("rootfs dir");
    }
    write_exec(&partial.join("bin/busybox"), &busybox);
    write_exec(&partial.join("oomtrace-workload"), &workload);
    write_exec(&partial.join("bin/oomtrace-gated"), GATED.as_bytes());
    let applets = run_command(std::process::Command::new(BUSYBOX).arg("--list"))
        .unwrap_or_else(|e| panic!("{e}"));
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = partial.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).expect("applet link");
        }
    }
    std::fs::write(partial.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    std::fs::write(partial.join("etc/group"), "root:x:0:\n").expect("group");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::rename(&partial, &rootfs).expect("rootfs in place");
    let partial_tar = data.join(format!("image-{tag}.tar.partial"));
    run_command(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&partial_tar)
            .arg("."),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&partial_tar, &tarball).expect("tarball in place");
    (tarball, rootfs, tag)
}

fn write_exec(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
