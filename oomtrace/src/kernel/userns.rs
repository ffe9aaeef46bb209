//! Whether this process runs in the initial user namespace: the only one
//! whose capabilities the kernel accepts for loading BPF programs and
//! creating BPF maps (bpf(2) checks `capable()`, i.e. against
//! `init_user_ns`). In any other one, `unshare -U -r`, a rootless container,
//! Kubernetes' `hostUsers: false`, uid 0 and a full capability set are
//! real inside it and mean nothing to bpf(2): every map creation fails with
//! EPERM, whichever map aya happens to create first.

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// The inode of the initial user namespace's /proc/PID/ns/user link:
/// `PROC_USER_INIT_INO` in include/linux/proc_ns.h, fixed since Linux 3.8.
const PROC_USER_INIT_INO: u64 = 0xEFFF_FFFD;

/// Where this process's user namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserNamespace {
    /// The initial one, where BPF can be used with the right capabilities.
    Initial,
    /// Another one. `uid_map` is /proc/self/uid_map, one mapping per line
    /// (`0 1000 1`: uid 0 here is uid 1000 outside), when readable.
    Child { uid_map: Option<String> },
    /// Neither /proc/self/ns/user nor /proc/self/uid_map could be read
    /// (no /proc): attaching then says what fails.
    Unknown,
}

/// This process's user namespace.
pub fn current() -> UserNamespace {
    let uid_map = std::fs::read_to_string("/proc/self/uid_map").ok();
    match std::fs::metadata(Path::new("/proc/self/ns/user")) {
        Ok(link) if link.ino() == PROC_USER_INIT_INO => UserNamespace::Initial,
        Ok(_) => UserNamespace::Child { uid_map },
        // A kernel without CONFIG_USER_NS has no ns/user link, and only the
        // initial namespace. Otherwise the initial namespace maps every uid
        // onto itself, which a child's map never does by default.
        Err(_) => match uid_map {
            Some(map) if is_identity(&map) => UserNamespace::Initial,
            Some(map) => UserNamespace::Child { uid_map: Some(map) },
            None if !Path::new("/proc/self").exists() => UserNamespace::Unknown,
            None => UserNamespace::Initial,
        },
    }
}

/// `0 0 4294967295`: the initial user namespace's map.
fn is_identity(uid_map: &str) -> bool {
    let lines: Vec<Vec<&str>> = uid_map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|fields: &Vec<&str>| !fields.is_empty())
        .collect();
    matches!(lines.as_slice(), [only] if only.as_slice() == ["0", "0", "4294967295"])
}

/// The map on one line, `0 1000 1; 1 100000 65536`, for a message.
pub fn spelled_map(uid_map: &str) -> String {
    uid_map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_map_is_the_identity_of_every_uid() {
        assert!(is_identity("         0          0 4294967295\n"));
        assert!(!is_identity("         0       1000          1\n"));
        assert!(!is_identity("0 0 1000\n"));
        assert!(!is_identity("0 0 4294967295\n1 1 1\n"));
        assert!(!is_identity(""));
        assert_eq!(
            spelled_map("         0       1000          1\n         1     100000      65536\n"),
            "0 1000 1; 1 100000 65536"
        );
    }

    #[test]
    fn this_test_process_is_classified() {
        // Whatever namespace the tests run in, the two sources agree.
        let map = std::fs::read_to_string("/proc/self/uid_map").expect("uid_map");
        match current() {
            UserNamespace::Initial => assert!(is_identity(&map), "{map}"),
            UserNamespace::Child { uid_map } => assert_eq!(uid_map, Some(map)),
            UserNamespace::Unknown => panic!("/proc is mounted"),
        }
    }
}
