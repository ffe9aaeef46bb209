//! The cgroup hierarchy the kernel walked at the kill, rebuilt from the
//! kill record's ids and the names that followed it in the ring buffer.

use oomtrace_ebpf::{MAX_CGROUP_DEPTH, cgroup_path_of, cgroup_walk_end};

use crate::kernel::ring::KillEvent;

/// (kernfs id, path) pairs, leaf first, root (`/`) last. Paths are the raw
/// bytes of the kernfs names: a cgroup name need not be UTF-8.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CgroupChain {
    pub levels: Vec<(u64, Vec<u8>)>,
}

impl CgroupChain {
    /// Rebuilds the chain. None unless the walk reached the root within the
    /// programs' limits and the names are exactly what the record says: a
    /// partial path is never passed off as a path.
    pub fn from_record(kill: &KillEvent) -> Option<Self> {
        let rec = &kill.rec;
        if rec.cgroup_path_of == cgroup_path_of::NONE
            || rec.cgroup_walk_end != cgroup_walk_end::ROOT
        {
            return None;
        }
        let depth = rec.cgroup_depth as usize;
        if depth > MAX_CGROUP_DEPTH || kill.names.len() != rec.cgroup_names_len as usize {
            return None;
        }
        // `depth` names, each NUL-terminated, and nothing after them.
        let mut names: Vec<&[u8]> = Vec::with_capacity(depth);
        let mut rest = kill.names.as_slice();
        while let Some(end) = rest.iter().position(|b| *b == 0) {
            names.push(&rest[..end]);
            rest = &rest[end + 1..];
        }
        if names.len() != depth || !rest.is_empty() || names.iter().any(|n| n.is_empty()) {
            return None;
        }
        let ids = &rec.cgroup_ids[..=depth];
        if ids.contains(&0) {
            return None; // a level whose id could not be read
        }
        // names[0] is the leaf; the path of level i is the reversed names[i..].
        let mut levels = Vec::with_capacity(depth + 1);
        for (i, id) in ids[..depth].iter().enumerate() {
            let mut path = Vec::new();
            for name in names[i..].iter().rev() {
                path.push(b'/');
                path.extend_from_slice(name);
            }
            levels.push((*id, path));
        }
        levels.push((ids[depth], b"/".to_vec()));
        Some(Self { levels })
    }

    pub fn leaf(&self) -> Option<&(u64, Vec<u8>)> {
        self.levels.first()
    }

    pub fn path_of(&self, id: u64) -> Option<&[u8]> {
        self.levels
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.as_slice())
    }
}

/// The kernfs id of the cgroup the walk started from, when it read one: it
/// is right even when the path is too deep or too long to carry.
pub fn leaf_id(kill: &KillEvent) -> Option<u64> {
    let rec = &kill.rec;
    let read = matches!(
        rec.cgroup_walk_end,
        cgroup_walk_end::ROOT | cgroup_walk_end::TOO_DEEP | cgroup_walk_end::TOO_LONG
    );
    (read && rec.cgroup_ids[0] != 0).then_some(rec.cgroup_ids[0])
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use oomtrace_ebpf::KillRecord;

    /// A zeroed record, as the programs start every record.
    pub fn blank() -> KillRecord {
        // SAFETY: KillRecord is plain integers and arrays of integers.
        unsafe { std::mem::zeroed() }
    }

    /// A victim's walk that reached the root: `names` leaf first, `ids`
    /// leaf first with the root's last.
    pub fn with_path(names: &[&[u8]], ids: &[u64]) -> KillEvent {
        let mut rec = blank();
        let mut bytes = Vec::new();
        for name in names {
            bytes.extend_from_slice(name);
            bytes.push(0);
        }
        rec.cgroup_names_len = bytes.len() as u32;
        rec.cgroup_depth = names.len() as u32;
        rec.cgroup_ids[..ids.len()].copy_from_slice(ids);
        rec.cgroup_path_of = cgroup_path_of::VICTIM;
        rec.cgroup_walk_end = cgroup_walk_end::ROOT;
        KillEvent { rec, names: bytes }
    }

    #[test]
    fn path_is_rebuilt_root_first() {
        let kill = with_path(&[b"ctr", b"pod1", b"kubepods"], &[30, 20, 10, 1]);
        let chain = CgroupChain::from_record(&kill).expect("chain");
        let levels: Vec<(u64, &[u8])> = chain
            .levels
            .iter()
            .map(|(id, p)| (*id, p.as_slice()))
            .collect();
        assert_eq!(
            levels,
            [
                (30, &b"/kubepods/pod1/ctr"[..]),
                (20, b"/kubepods/pod1"),
                (10, b"/kubepods"),
                (1, b"/"),
            ]
        );
        assert_eq!(chain.path_of(20), Some(&b"/kubepods/pod1"[..]));
        assert_eq!(chain.path_of(99), None);
        assert_eq!(leaf_id(&kill), Some(30));
    }

    #[test]
    fn root_cgroup_and_incomplete_walks() {
        let kill = with_path(&[], &[1]);
        let chain = CgroupChain::from_record(&kill).expect("chain");
        assert_eq!(chain.leaf(), Some(&(1, b"/".to_vec())));
        let mut unwalked = with_path(&[b"a"], &[5, 1]);
        unwalked.rec.cgroup_path_of = cgroup_path_of::NONE;
        assert_eq!(CgroupChain::from_record(&unwalked), None);
        let mut lying = with_path(&[b"a"], &[5, 1]);
        lying.rec.cgroup_depth = 3; // more levels than names: refuse
        assert_eq!(CgroupChain::from_record(&lying), None);
        let mut extra = with_path(&[b"a"], &[5, 1]);
        extra.names.extend_from_slice(b"b\0");
        extra.rec.cgroup_names_len += 2; // more names than levels: refuse
        assert_eq!(CgroupChain::from_record(&extra), None);
        let mut unread = with_path(&[b"a", b"b"], &[5, 0, 1]);
        assert_eq!(CgroupChain::from_record(&unread), None, "an id unread");
        unread.rec.cgroup_ids[1] = 4;
        assert!(CgroupChain::from_record(&unread).is_some());
    }

    /// A walk that stopped at a limit gives no path, never a cut one, but
    /// the leaf's id is still right.
    #[test]
    fn walks_past_the_limits_give_no_path_but_the_id() {
        for end in [cgroup_walk_end::TOO_DEEP, cgroup_walk_end::TOO_LONG] {
            let mut kill = with_path(&[b"a"], &[5, 1]);
            kill.rec.cgroup_walk_end = end;
            assert_eq!(CgroupChain::from_record(&kill), None);
            assert_eq!(leaf_id(&kill), Some(5));
        }
        let mut failed = with_path(&[b"a"], &[5, 1]);
        failed.rec.cgroup_walk_end = cgroup_walk_end::UNREAD;
        assert_eq!(
            (CgroupChain::from_record(&failed), leaf_id(&failed)),
            (None, None)
        );
    }
}
