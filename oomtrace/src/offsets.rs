//! Kernel struct offsets, from the running kernel's BTF.
//!
//! aya cannot apply CO-RE relocations to Rust eBPF code yet, so the collector
//! reads `/sys/kernel/btf/vmlinux` itself, computes the offset of every field
//! the programs read, and passes them in as the `KERNEL_OFFSETS` global. A
//! field that is missing, or whose size is not what the program reads, is
//! marked absent: the program then skips it and the record says `null`. No
//! offset is ever assumed from a kernel version.
//!
//! btf-rs's mmap backend is used where the kernel allows mmap of the BTF file
//! (6.x): it resolves the ~15 types needed in a few ms and a few MB, where
//! parsing the whole of vmlinux BTF costs ~40 MB and ~150 ms.

use std::path::{Path, PathBuf};

use btf_rs::{Backend, Btf, Member, Struct, Type};
use oomtrace_ebpf::{FieldOffset, KernelOffsets};

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error(
        "no BTF at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF, or sysfs is \
         not mounted. Give a BTF file with --btf PATH, or run with --no-btf (classic \
         tracepoint only, fewer fields)"
    )]
    Missing { path: PathBuf },
    #[error("cannot parse BTF at {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
}

/// What the BTF says about this kernel, beyond plain offsets.
#[derive(Clone, Debug)]
pub struct KernelLayout {
    pub offsets: KernelOffsets,
    /// The raw `mark_victim` tracepoint passes a `struct task_struct *` as
    /// its first argument (6.9+; before that it passed only `int pid`).
    pub mark_victim_raw_has_task: bool,
    /// The function `oom_kill_process` exists in BTF (it can be inlined away).
    pub oom_kill_process_in_btf: bool,
    /// Fields the programs would like but this kernel lacks, by C name.
    pub missing: Vec<String>,
}

/// Opens a BTF file, preferring mmap.
pub fn open_btf(path: &Path) -> Result<Btf, OffsetsError> {
    if !path.exists() {
        return Err(OffsetsError::Missing {
            path: path.to_owned(),
        });
    }
    Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|source| OffsetsError::Parse {
            path: path.to_owned(),
            source,
        })
}

/// Computes every offset the programs use.
pub fn compute(btf: &Btf) -> KernelLayout {
    let mut r = Resolver {
        btf,
        missing: Vec::new(),
    };
    let task = r.strukt("task_struct");
    let signal = r.strukt("signal_struct");
    let cred = r.strukt("cred");
    let mm = r.strukt("mm_struct");
    let css_set = r.strukt("css_set");
    let css = r.strukt("cgroup_subsys_state");
    let cgroup = r.strukt("cgroup");
    let kn = r.strukt("kernfs_node");
    let memcg = r.strukt("mem_cgroup");
    let page_counter = r.strukt("page_counter");
    let pid = r.strukt("pid");
    let upid = r.strukt("upid");
    let oc = r.strukt("oom_control");

    let ptr = 8;
    let mut o = KernelOffsets {
        task_pid: r.field(&task, "task_struct", &["pid"], 4),
        task_tgid: r.field(&task, "task_struct", &["tgid"], 4),
        task_comm: r.field(&task, "task_struct", &["comm"], 16),
        task_mm: r.field(&task, "task_struct", &["mm"], ptr),
        task_signal: r.field(&task, "task_struct", &["signal"], ptr),
        task_real_cred: r.field(&task, "task_struct", &["real_cred"], ptr),
        task_cgroups: r.field(&task, "task_struct", &["cgroups"], ptr),
        task_exit_code: r.field(&task, "task_struct", &["exit_code"], 4),
        task_group_leader: r.field(&task, "task_struct", &["group_leader"], ptr),
        task_thread_pid: r.field(&task, "task_struct", &["thread_pid"], ptr),
        signal_oom_score_adj: r.field(&signal, "signal_struct", &["oom_score_adj"], 2),
        // atomic_t live: its int `counter` is at offset 0.
        signal_live: r.field(&signal, "signal_struct", &["live"], 4),
        // kuid_t uid: a struct holding one uid_t.
        cred_uid: r.field(&cred, "cred", &["uid"], 4),
        mm_total_vm: r.field(&mm, "mm_struct", &["total_vm"], 8),
        mm_pgtables_bytes: r.field(&mm, "mm_struct", &["pgtables_bytes"], 8),
        mm_rss_file: FieldOffset::ABSENT,
        mm_rss_anon: FieldOffset::ABSENT,
        mm_rss_shmem: FieldOffset::ABSENT,
        css_set_memory_css: FieldOffset::ABSENT,
        css_set_dfl_cgrp: r.field(&css_set, "css_set", &["dfl_cgrp"], ptr),
        css_cgroup: r.field(&css, "cgroup_subsys_state", &["cgroup"], ptr),
        css_parent: r.field(&css, "cgroup_subsys_state", &["parent"], ptr),
        cgroup_kn: r.field(&cgroup, "cgroup", &["kn"], ptr),
        kn_name: r.field(&kn, "kernfs_node", &["name"], ptr),
        // Renamed to __parent (RCU-protected) in 6.15.
        kn_parent: r.field(&kn, "kernfs_node", &["__parent", "parent"], ptr),
        kn_id: r.field(&kn, "kernfs_node", &["id"], 8),
        memcg_css: r.field(&memcg, "mem_cgroup", &["css"], 0),
        memcg_usage: FieldOffset::ABSENT,
        memcg_max: FieldOffset::ABSENT,
        memcg_oom_group: FieldOffset::ABSENT,
        pid_level: r.field(&pid, "pid", &["level"], 4),
        pid_numbers: r.field(&pid, "pid", &["numbers"], 0),
        upid_nr: r.field(&upid, "upid", &["nr"], 4),
        upid_size: upid
            .as_ref()
            .map_or(FieldOffset::ABSENT, |s| FieldOffset::at(s.size() as u32)),
        oc_memcg: r.field(&oc, "oom_control", &["memcg"], ptr),
        oc_totalpages: r.field(&oc, "oom_control", &["totalpages"], 8),
        oc_chosen: r.field(&oc, "oom_control", &["chosen"], ptr),
        oc_chosen_points: r.field(&oc, "oom_control", &["chosen_points"], 8),
        oc_constraint: r.field(&oc, "oom_control", &["constraint"], 4),
    };

    // mm_struct::rss_stat, as get_mm_counter() reads it.
    let rss = r.rss_counters(&mm);
    o.mm_rss_file = rss[MM_FILEPAGES];
    o.mm_rss_anon = rss[MM_ANONPAGES];
    o.mm_rss_shmem = rss[MM_SHMEMPAGES];

    // css_set::subsys[memory_cgrp_id]
    o.css_set_memory_css = match (
        r.member(&css_set, "css_set", &["subsys"]),
        r.enum_value("cgroup_subsys_id", "memory_cgrp_id"),
    ) {
        (Some((base, _)), Some(index)) => FieldOffset::at(base + index * ptr as u32),
        _ => FieldOffset::ABSENT,
    };

    // mem_cgroup::memory (a page_counter): usage and max, relative to the css.
    // Before 5.x the page_counter fields were `count` and `limit`.
    if let (
        Some((memory, _)),
        FieldOffset {
            offset: css_at,
            present: 1,
        },
    ) = (r.member(&memcg, "mem_cgroup", &["memory"]), o.memcg_css)
    {
        let usage = r.field(&page_counter, "page_counter", &["usage", "count"], 8);
        let max = r.field(&page_counter, "page_counter", &["max", "limit"], 8);
        if usage.is_present() && max.is_present() {
            o.memcg_usage = FieldOffset::at(memory + usage.offset - css_at);
            o.memcg_max = FieldOffset::at(memory + max.offset - css_at);
        }
    }
    // mem_cgroup::oom_group (4.19+), relative to the css. Optional: without
    // it `memcg.levels[].oom_group` is null, nothing else is lost.
    if let FieldOffset {
        offset: css_at,
        present: 1,
    } = o.memcg_css
        && let Some((group, t)) = r.member(&memcg, "mem_cgroup", &["oom_group"])
        && r.size_of(&t) == Some(1)
    {
        o.memcg_oom_group = FieldOffset::at(group - css_at);
    }

    KernelLayout {
        offsets: o,
        mark_victim_raw_has_task: r.tracepoint_arg_is_struct("mark_victim", 0, "task_struct"),
        oom_kill_process_in_btf: r.has_func("oom_kill_process"),
        missing: r.missing,
    }
}

// The `enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES,
// NR_MM_COUNTERS }` in include/linux/mm_types_task.h is anonymous, so BTF
// cannot be asked for it by name. Its order has been stable since 4.5; the
// array length is checked against NR_MM_COUNTERS below, and a kernel with a
// different set of counters gets no RSS rather than a wrong one.
const MM_FILEPAGES: usize = 0;
const MM_ANONPAGES: usize = 1;
const MM_SHMEMPAGES: usize = 3;
const NR_MM_COUNTERS: usize = 4;

struct Resolver<'a> {
    btf: &'a Btf,
    missing: Vec<String>,
}

impl Resolver<'_> {
    /// The struct with this name that has members (not a forward declaration).
    fn strukt(&mut self, name: &str) -> Option<Struct> {
        let found = self
            .btf
            .resolve_types_by_name(name)
            .ok()
            .into_iter()
            .flatten()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            });
        if found.is_none() {
            self.missing.push(format!("struct {name}"));
        }
        found
    }

    /// Strips typedefs and qualifiers.
    fn resolve(&self, mut t: Type) -> Option<Type> {
        for _ in 0..32 {
            t = match &t {
                Type::Typedef(x) => self.btf.resolve_chained_type(x).ok()?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(x).ok()?
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(x).ok()?,
                _ => return Some(t),
            };
        }
        None
    }

    fn size_of(&self, t: &Type) -> Option<usize> {
        match t {
            Type::Int(i) => Some(i.size()),
            Type::Ptr(_) => Some(8),
            Type::Enum(e) => Some(e.size()),
            Type::Enum64(e) => Some(e.size()),
            Type::Struct(s) | Type::Union(s) => Some(s.size()),
            Type::Array(a) => {
                let elem = self.resolve(self.btf.resolve_chained_type(a).ok()?)?;
                Some(self.size_of(&elem)? * a.len())
            }
            _ => None,
        }
    }

    /// Byte offset and resolved type of the first of `names` found in `s`,
    /// looking through anonymous struct/union members (mm_struct keeps all of
    /// its fields in one, for layout randomisation).
    fn find(&self, s: &Struct, names: &[&str]) -> Option<(u32, Type)> {
        for name in names {
            if let Some(found) = self.find_one(s, name, 0) {
                return Some(found);
            }
        }
        None
    }

    fn find_one(&self, s: &Struct, name: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let member_name = self.btf.resolve_name(m).unwrap_or_default();
            if member_name == name {
                return self.member_type(m).map(|t| (m.bit_offset() / 8, t));
            }
            if member_name.is_empty()
                && let Some(Type::Struct(inner) | Type::Union(inner)) = self.member_type(m)
                && let Some((off, t)) = self.find_one(&inner, name, depth + 1)
            {
                return Some((m.bit_offset() / 8 + off, t));
            }
        }
        None
    }

    fn member_type(&self, m: &Member) -> Option<Type> {
        if m.bitfield_size().is_some_and(|bits| bits != 0) || !m.bit_offset().is_multiple_of(8) {
            return None; // a bitfield: not something a byte read can give
        }
        self.resolve(self.btf.resolve_chained_type(m).ok()?)
    }

    fn member(&mut self, s: &Option<Struct>, owner: &str, names: &[&str]) -> Option<(u32, Type)> {
        let found = s.as_ref().and_then(|s| self.find(s, names));
        if found.is_none() && s.is_some() {
            self.missing.push(format!("{owner}::{}", names.join("|")));
        }
        found
    }

    /// Offset of a field whose size must be `size` bytes (0: any size).
    fn field(
        &mut self,
        s: &Option<Struct>,
        owner: &str,
        names: &[&str],
        size: usize,
    ) -> FieldOffset {
        let Some((offset, t)) = self.member(s, owner, names) else {
            return FieldOffset::ABSENT;
        };
        if size != 0 && self.size_of(&t) != Some(size) {
            self.missing.push(format!(
                "{owner}::{} (size {:?}, expected {size})",
                names[0],
                self.size_of(&t)
            ));
            return FieldOffset::ABSENT;
        }
        FieldOffset::at(offset)
    }

    /// Offsets of the RSS counter values, indexed by MM_* counter.
    fn rss_counters(&mut self, mm: &Option<Struct>) -> [FieldOffset; NR_MM_COUNTERS] {
        let absent = [FieldOffset::ABSENT; NR_MM_COUNTERS];
        let Some((base, t)) = self.member(mm, "mm_struct", &["rss_stat"]) else {
            return absent;
        };
        let per_counter: Option<(u32, u32)> = match &t {
            // 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS]; the value
            // percpu_counter_read_positive() returns is `count`.
            Type::Array(a) if a.len() == NR_MM_COUNTERS => {
                match self.resolve(self.btf.resolve_chained_type(a).ok().unwrap_or(Type::Void)) {
                    Some(Type::Struct(pc)) => self
                        .find(&pc, &["count"])
                        .filter(|(_, t)| self.size_of(t) == Some(8))
                        .map(|(count, _)| (pc.size() as u32, count)),
                    _ => None,
                }
            }
            // Before 6.2: struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }
            Type::Struct(s) => match self.find(s, &["count"]) {
                Some((count, Type::Array(a))) if a.len() == NR_MM_COUNTERS => Some((8, count)),
                _ => None,
            },
            _ => None,
        };
        let Some((stride, count)) = per_counter else {
            self.missing
                .push("mm_struct::rss_stat (unknown layout)".into());
            return absent;
        };
        let mut out = absent;
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = FieldOffset::at(base + i as u32 * stride + count);
        }
        out
    }

    fn enum_value(&mut self, enum_name: &str, member: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(enum_name).ok()?;
        let found = types.iter().find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == member))
                .map(|m| m.val()),
            _ => None,
        });
        if found.is_none() {
            self.missing.push(format!("enum {enum_name}::{member}"));
        }
        found
    }

    /// Whether argument `index` of raw tracepoint `tp` is a pointer to
    /// `struct strukt`. The kernel describes each raw tracepoint as a typedef
    /// `btf_trace_<tp>`: a pointer to a function whose first parameter is the
    /// `void *__data` cookie, followed by the TP_PROTO arguments.
    fn tracepoint_arg_is_struct(&self, tp: &str, index: usize, strukt: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(&format!("btf_trace_{tp}")) else {
            return false;
        };
        let Some(proto) = types.into_iter().find_map(|t| match self.resolve(t)? {
            Type::Ptr(p) => match self.resolve(self.btf.resolve_chained_type(&p).ok()?)? {
                Type::FuncProto(f) => Some(f),
                _ => None,
            },
            _ => None,
        }) else {
            return false;
        };
        let Some(param) = proto.parameters.get(index + 1) else {
            return false;
        };
        let Some(Type::Ptr(p)) = self
            .btf
            .resolve_chained_type(param)
            .ok()
            .and_then(|t| self.resolve(t))
        else {
            return false;
        };
        match self
            .btf
            .resolve_chained_type(&p)
            .ok()
            .and_then(|t| self.resolve(t))
        {
            Some(Type::Struct(s)) => self.btf.resolve_name(&s).is_ok_and(|n| n == strukt),
            _ => false,
        }
    }

    fn has_func(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }
}

/// Whether the struct has a named member: used by tests and `check`.
#[cfg(test)]
fn has_member(btf: &Btf, s: &Struct, name: &str) -> bool {
    s.members
        .iter()
        .any(|m| btf.resolve_name(m).is_ok_and(|n| n == name))
}

#[cfg(test)]
mod tests {
    //! These run against this machine's own BTF (no root needed: the file is
    //! world-readable) and check the computed offsets against facts that hold
    //! on every kernel, rather than against hard-coded numbers.
    use super::*;

    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

    fn layout() -> Option<(Btf, KernelLayout)> {
        let btf = open_btf(Path::new(VMLINUX)).ok()?;
        let layout = compute(&btf);
        Some((btf, layout))
    }

    #[test]
    fn every_field_the_programs_need_is_found_on_this_kernel() {
        let Some((_, layout)) = layout() else {
            eprintln!("skipped: no BTF at {VMLINUX}");
            return;
        };
        assert!(layout.missing.is_empty(), "missing: {:?}", layout.missing);
        let o = layout.offsets;
        for (name, f) in [
            ("task_pid", o.task_pid),
            ("task_tgid", o.task_tgid),
            ("task_comm", o.task_comm),
            ("mm_rss_anon", o.mm_rss_anon),
            ("css_set_memory_css", o.css_set_memory_css),
            ("kn_parent", o.kn_parent),
            ("memcg_usage", o.memcg_usage),
            ("memcg_oom_group", o.memcg_oom_group),
            ("oc_constraint", o.oc_constraint),
        ] {
            assert!(f.is_present(), "{name} absent");
        }
    }

    #[test]
    fn offsets_are_consistent_with_struct_layout() {
        let Some((btf, layout)) = layout() else {
            return;
        };
        let o = layout.offsets;
        // pid_t pid and pid_t tgid are declared next to each other.
        assert_eq!(o.task_tgid.offset, o.task_pid.offset + 4);
        // The four RSS counters are evenly spaced (one percpu_counter or one
        // atomic_long_t apart), in MM_* order.
        let stride = o.mm_rss_anon.offset - o.mm_rss_file.offset;
        assert!(stride == 8 || stride >= 32, "stride {stride}");
        assert_eq!(o.mm_rss_shmem.offset, o.mm_rss_file.offset + 3 * stride);
        // Everything inside task_struct lies within it.
        let mut r = Resolver {
            btf: &btf,
            missing: vec![],
        };
        let task = r.strukt("task_struct").expect("task_struct");
        assert!((o.task_comm.offset as usize) + 16 <= task.size());
        // mem_cgroup embeds its css first on every kernel since 3.x.
        assert_eq!(o.memcg_css.offset, 0);
        // The kernfs parent is named per kernel version, never both.
        let kn = r.strukt("kernfs_node").expect("kernfs_node");
        assert!(has_member(&btf, &kn, "__parent") != has_member(&btf, &kn, "parent"));
    }

    #[test]
    fn mark_victim_raw_argument_is_recognised() {
        let Some((_, layout)) = layout() else {
            return;
        };
        // The extended tracepoint exists here iff tracefs's format has `comm`;
        // both come from the same 6.9 change. Here we only check that the BTF
        // lookup agrees with the presence of trace_event_raw_mark_victim.comm.
        let btf = open_btf(Path::new(VMLINUX)).expect("btf");
        let mut r = Resolver {
            btf: &btf,
            missing: vec![],
        };
        let raw = r.strukt("trace_event_raw_mark_victim");
        let extended = raw
            .as_ref()
            .is_some_and(|s| has_member(&btf, s, "__data_loc_comm"));
        assert_eq!(layout.mark_victim_raw_has_task, extended);
    }

    #[test]
    fn a_missing_btf_file_is_a_clear_error() {
        let err = open_btf(Path::new("/nonexistent/vmlinux"))
            .err()
            .expect("must fail");
        let text = err.to_string();
        assert!(text.contains("--no-btf"), "{text}");
        assert!(text.contains("/nonexistent/vmlinux"), "{text}");
    }
}
