//! Attribution of `signal_kill` and `container_exit` records: the target's
//! container and pod (as for an OOM victim), and who the sender is.

use std::{ffi::CString, os::unix::fs::MetadataExt, path::Path};

use oomtrace_record::{
    ContainerExit, KindEvidence, OomStall, Sender, SenderKind, SignalKill, text_fields,
};

use super::{Attributor, attribute::container_path};

/// Extended attributes systemd-oomd and oomd set on a cgroup they act on
/// (`user.` where the kernel allows it, else `trusted.`).
const OOMD_XATTRS: &[&str] = &[
    "user.oomd_kill",
    "trusted.oomd_kill",
    "user.oomd_ooms",
    "trusted.oomd_ooms",
];

impl Attributor {
    /// Names the target's container and pod, the sender's cgroup path, and
    /// confirms a userspace OOM killer by the mark it leaves. Done as
    /// the record arrives, while the sender most likely still runs.
    pub fn attribute_signal(&mut self, kill: &mut SignalKill) {
        self.sender_cgroup(&mut kill.sender);
        // The mark confirms; alone it decides nothing (it outlives the
        // kill it was left for).
        if kill.sender.kind == SenderKind::UserspaceOomKiller
            && let Some(path) = &kill.target.cgroup.path
            && self.oomd_marked(path)
        {
            kill.sender.kind_from = Some(KindEvidence::CgroupXattr);
        }
        let Some(path) = kill.target.cgroup.path.clone() else {
            return;
        };
        let names = self.names(&path);
        // A container with a pid namespace of its own ends with its PID 1.
        // In the host's pid namespace no process is a container's PID 1,
        // and whether the container goes on is not known here: null.
        let own_pid_ns = kill
            .target
            .pid_ns
            .zip(self.host.pid_ns)
            .map(|(target, host)| target != host);
        kill.container_survives = match (&names.container, own_pid_ns) {
            (Some(_), Some(true)) => kill.target.container_init.map(|init| !init),
            _ => None,
        };
        kill.container = names.container;
        kill.k8s = names.k8s;
        kill.systemd_unit = names.systemd_unit;
    }

    /// Once the target's exit is in: whether a container in the host's pid
    /// namespace ended with it (its cgroup holds no other process), as for
    /// an OOM victim there.
    pub fn signal_released(&self, kill: &mut SignalKill) {
        let in_host_pid_ns = kill.target.pid_ns.is_some() && kill.target.pid_ns == self.host.pid_ns;
        if !in_host_pid_ns || kill.container.is_none() || !kill.exit.observed {
            return;
        }
        let Some(container_path) = kill.target.cgroup.path.as_deref().and_then(container_path)
        else {
            return;
        };
        kill.container_survives = self
            .host_container_ended(&container_path, kill.target.pid)
            .then_some(false);
    }

    /// Names the exiting PID 1's container and pod.
    pub fn attribute_container_exit(&mut self, exit: &mut ContainerExit) {
        let Some(path) = exit.cgroup.path.clone() else {
            return;
        };
        let names = self.names(&path);
        exit.container = names.container;
        exit.k8s = names.k8s;
        exit.systemd_unit = names.systemd_unit;
    }

    /// Names the container, pod and unit of a stalled memcg.
    pub fn attribute_stall(&mut self, stall: &mut OomStall) {
        let names = self.names(&stall.path);
        stall.container = names.container;
        stall.k8s = names.k8s;
        stall.systemd_unit = names.systemd_unit;
    }

    /// The sender's cgroup path, from /proc/PID/cgroup, kept only when
    /// that cgroup's directory is the one the kernel named (its inode
    /// number is the kernfs id): the sender may have exited, and its pid
    /// been reused, since.
    fn sender_cgroup(&self, sender: &mut Sender) {
        let (Some(pid), Some(id), Some(root)) =
            (sender.pid, sender.cgroup.id, self.host.cgroup_root.as_ref())
        else {
            return;
        };
        let Ok(text) = std::fs::read(format!("/proc/{pid}/cgroup")) else {
            return;
        };
        let Some(path) = memory_hierarchy_path(&text) else {
            return;
        };
        let dir = root.join(String::from_utf8_lossy(path).trim_start_matches('/'));
        if std::fs::metadata(&dir).is_ok_and(|meta| meta.ino() == id) {
            let (path, hex) = text_fields(path);
            sender.cgroup.path = Some(path);
            sender.cgroup.path_hex = hex;
        }
    }

    /// Whether the cgroup at `path`, or one of its ancestors, carries an
    /// oomd mark.
    fn oomd_marked(&self, path: &str) -> bool {
        let Some(root) = &self.host.cgroup_root else {
            return false;
        };
        let mut dir = root.join(path.trim_start_matches('/'));
        loop {
            if OOMD_XATTRS.iter().any(|name| has_xattr(&dir, name)) {
                return true;
            }
            if dir == *root || !dir.pop() {
                return false;
            }
        }
    }
}

/// The path of the memory controller's hierarchy in /proc/PID/cgroup:
/// the cgroup v1 line naming `memory` where there is one (memory on v1,
/// hybrid or not), else the cgroup v2 `0::` line.
pub fn memory_hierarchy_path(text: &[u8]) -> Option<&[u8]> {
    let line = |v1: bool| {
        text.split(|b| *b == b'\n').find_map(move |line| {
            let mut fields = line.splitn(3, |b| *b == b':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let wanted = if v1 {
                controllers.split(|b| *b == b',').any(|c| c == b"memory")
            } else {
                id == b"0" && controllers.is_empty()
            };
            wanted.then_some(path)
        })
    };
    line(true).or_else(|| line(false))
}

fn has_xattr(dir: &Path, name: &str) -> bool {
    let (Ok(path), Ok(name)) = (
        CString::new(dir.as_os_str().as_encoded_bytes()),
        CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: both are NUL-terminated strings; a zero-size query only asks
    // for the value's length.
    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_memory_hierarchy() {
        let hybrid = b"12:pids:/a\n5:cpu,memory:/docker/abc\n0::/init.scope\n";
        assert_eq!(memory_hierarchy_path(hybrid), Some(&b"/docker/abc"[..]));
        let v2 = b"0::/system.slice/x.service\n";
        assert_eq!(
            memory_hierarchy_path(v2),
            Some(&b"/system.slice/x.service"[..])
        );
        let odd = b"3:memory:/a:b\n";
        assert_eq!(memory_hierarchy_path(odd), Some(&b"/a:b"[..]));
        assert_eq!(memory_hierarchy_path(b"garbage"), None);
    }
}
