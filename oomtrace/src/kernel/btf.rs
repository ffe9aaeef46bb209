//! Kernel struct offsets, from the running kernel's BTF.
//!
//! aya cannot apply CO-RE relocations to Rust eBPF code yet, so the collector
//! reads `/sys/kernel/btf/vmlinux` itself and resolves every entry of the
//! programs' field table (`KernelOffsets::FIELDS`, oomtrace-ebpf/src/fields.rs)
//! to an offset, passed in as the `KERNEL_OFFSETS` global. A field that is
//! missing, or whose size is not what the program reads, is marked absent: the
//! program then skips it and the record says `null`. No offset is ever
//! assumed from a kernel version.
//!
//! btf-rs's mmap backend is used where the kernel allows mmap of the BTF file
//! (6.x): it resolves the ~15 types needed in a few ms and a few MB, where
//! parsing the whole of vmlinux BTF costs ~40 MB and ~150 ms.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use btf_rs::{Backend, Btf, Member, Struct, Type};
use oomtrace_ebpf::{FieldOffset, FieldRule, KernelField, KernelOffsets};

use super::host::DEFAULT_BTF;

// Each variant prints its cause inside its own message and marks no field
// `#[source]`: the message also goes into notes and attach errors as a
// plain string, and anyhow's `{:#}` would print a marked source twice.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "no BTF at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF, or sysfs is \
         not mounted. Give a BTF file with --btf PATH, or run with --no-btf (classic \
         tracepoint only, fewer fields)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read BTF at {path}: {error}. {hint}")]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
        hint: &'static str,
    },
    #[error(
        "cannot parse BTF at {path}: {error}. It must be a kernel's BTF, as \
         /sys/kernel/btf/vmlinux is; or run with --no-btf (classic tracepoint only, fewer \
         fields)"
    )]
    Parse { path: PathBuf, error: btf_rs::Error },
}

impl BtfError {
    /// The cause alone, without the path or what to do: for a one-line
    /// summary (`oomtrace check`'s header).
    pub fn cause(&self) -> String {
        match self {
            Self::Missing { path } => format!("{} does not exist", path.display()),
            Self::Unreadable { path, error, .. } => {
                format!("cannot read {}: {error}", path.display())
            }
            Self::Parse { path, error } => format!("cannot parse {}: {error}", path.display()),
        }
    }
}

/// What to do about an unreadable BTF file: the kernel's own is readable by
/// everyone (0444) unless something in between hides it.
fn unreadable_hint(path: &Path) -> &'static str {
    if path == Path::new(DEFAULT_BTF) {
        "The kernel's BTF is readable by every user unless something hides it (a bind \
         mount, a container runtime's masked /sys, a security module): make it readable \
         (in a container, mount the host's /sys/kernel/btf), give a readable copy with \
         --btf PATH, or run with --no-btf (classic tracepoint only, fewer fields)"
    } else {
        "Give a readable BTF file with --btf PATH, or run with --no-btf (classic tracepoint \
         only, fewer fields)"
    }
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
pub fn open(path: &Path) -> Result<Btf, BtfError> {
    // Opened here first so that a file that cannot be read is told apart
    // from one that is not BTF: btf-rs reports both as its own error.
    if let Err(error) = std::fs::File::open(path) {
        if error.kind() == std::io::ErrorKind::NotFound {
            return Err(BtfError::Missing {
                path: path.to_owned(),
            });
        }
        return Err(BtfError::Unreadable {
            path: path.to_owned(),
            error,
            hint: unreadable_hint(path),
        });
    }
    Btf::from_file_with_backend(path, Backend::Mmap)
        .or_else(|_| Btf::from_file(path))
        .map_err(|error| BtfError::Parse {
            path: path.to_owned(),
            error,
        })
}

/// Resolves every entry of the field table.
pub fn compute(btf: &Btf) -> KernelLayout {
    let mut r = Resolver {
        btf,
        structs: HashMap::new(),
    };
    let mut missing = Vec::new();
    let mut offsets = KernelOffsets::ABSENT;
    for (field, slot) in KernelOffsets::FIELDS.iter().zip(offsets.slots_mut()) {
        match r.resolve(field) {
            Ok(offset) => *slot = FieldOffset::at(offset),
            Err(what) => missing.push(what),
        }
    }
    // A struct the kernel lacks is named once, not once per field.
    missing.dedup();
    KernelLayout {
        offsets,
        mark_victim_raw_has_task: r.tracepoint_arg_is_struct("mark_victim", 0, "task_struct"),
        oom_kill_process_in_btf: r.has_func("oom_kill_process"),
        missing,
    }
}

// The `enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES,
// NR_MM_COUNTERS }` in include/linux/mm_types_task.h is anonymous, so BTF
// cannot be asked for it by name. Its order has been stable since 4.5; the
// array length is checked against NR_MM_COUNTERS below, and a kernel with a
// different set of counters gets no RSS rather than a wrong one.
const NR_MM_COUNTERS: usize = 4;

struct Resolver<'a> {
    btf: &'a Btf,
    /// Structs by name, looked up once each.
    structs: HashMap<&'static str, Option<Struct>>,
}

impl Resolver<'_> {
    /// The offset of one field, or what is missing, checked against the size
    /// the programs read there.
    fn resolve(&mut self, field: &KernelField) -> Result<u32, String> {
        let (offset, size) = match field.rule {
            FieldRule::Member {
                strukt,
                path,
                relative_to,
            } => {
                let s = self.strukt(strukt)?;
                let (offset, t) = self.member_path(&s, strukt, path)?;
                let base = match relative_to {
                    Some(anchor) => self.member_path(&s, strukt, &[&[anchor]])?.0,
                    None => 0,
                };
                let offset = offset
                    .checked_sub(base)
                    .ok_or_else(|| format!("{strukt}::{relative_to:?} lies after the field"))?;
                (offset, self.size_of(&t))
            }
            FieldRule::RssCounter { index } => (self.rss_counter(index)?, Some(8)),
            FieldRule::CssSetSubsys { id } => {
                let s = self.strukt("css_set")?;
                let (base, _) = self.member_path(&s, "css_set", &[&["subsys"]])?;
                let index = self
                    .enum_value("cgroup_subsys_id", id)
                    .ok_or_else(|| format!("enum cgroup_subsys_id::{id}"))?;
                (base + index * 8, Some(8))
            }
            FieldRule::SizeOf { strukt } => {
                let s = self.strukt(strukt)?;
                (s.size() as u32, None)
            }
            FieldRule::EnumIndexed {
                strukt,
                array,
                relative_to,
                enum_name,
                value,
            } => {
                let s = self.strukt(strukt)?;
                let (offset, t) = self.member_path(&s, strukt, &[&[array]])?;
                let base = match relative_to {
                    Some(anchor) => self.member_path(&s, strukt, &[&[anchor]])?.0,
                    None => 0,
                };
                let Type::Array(a) = &t else {
                    return Err(format!("{strukt}::{array} (not an array)"));
                };
                let elem = self
                    .btf
                    .resolve_chained_type(a)
                    .ok()
                    .and_then(|e| self.resolve_type(e))
                    .and_then(|e| self.size_of(&e))
                    .ok_or_else(|| format!("{strukt}::{array} (element type)"))?;
                let index = self
                    .enum_value(enum_name, value)
                    .ok_or_else(|| format!("enum {enum_name}::{value}"))?;
                if index as usize >= a.len() {
                    return Err(format!(
                        "{strukt}::{array}[{value}] ({index} is past its {} elements)",
                        a.len()
                    ));
                }
                let offset = (offset + index * elem as u32)
                    .checked_sub(base)
                    .ok_or_else(|| format!("{strukt}::{relative_to:?} lies after the field"))?;
                (offset, Some(elem))
            }
        };
        if field.size != 0 && size != Some(field.size) {
            return Err(format!(
                "{} (size {size:?} in BTF, the programs read {})",
                describe(field),
                field.size
            ));
        }
        Ok(offset)
    }

    /// The struct with this name that has members (not a forward declaration).
    fn strukt(&mut self, name: &'static str) -> Result<Struct, String> {
        let btf = self.btf;
        self.structs
            .entry(name)
            .or_insert_with(|| {
                btf.resolve_types_by_name(name)
                    .ok()
                    .into_iter()
                    .flatten()
                    .find_map(|t| match t {
                        Type::Struct(s) if !s.members.is_empty() => Some(s),
                        _ => None,
                    })
            })
            .clone()
            .ok_or_else(|| format!("struct {name}"))
    }

    /// Follows `path` from `s`: each step a member of the struct the previous
    /// step gave, under the first of its names that exists.
    fn member_path(
        &self,
        s: &Struct,
        owner: &str,
        path: &[&[&str]],
    ) -> Result<(u32, Type), String> {
        let mut current = s.clone();
        let mut offset = 0;
        let mut found = None;
        for (step, names) in path.iter().enumerate() {
            let (at, t) = self
                .find(&current, names)
                .ok_or_else(|| format!("{owner}::{}", spelled_path(&path[..=step])))?;
            offset += at;
            if step + 1 < path.len() {
                match &t {
                    Type::Struct(inner) | Type::Union(inner) => current = inner.clone(),
                    _ => return Err(format!("{owner}::{} (not a struct)", names.join("|"))),
                }
            }
            found = Some(t);
        }
        found
            .map(|t| (offset, t))
            .ok_or_else(|| format!("{owner}: an empty path"))
    }

    /// Strips typedefs and qualifiers.
    fn resolve_type(&self, mut t: Type) -> Option<Type> {
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
                let elem = self.resolve_type(self.btf.resolve_chained_type(a).ok()?)?;
                Some(self.size_of(&elem)? * a.len())
            }
            _ => None,
        }
    }

    /// Byte offset and resolved type of the first of `names` found in `s`,
    /// looking through anonymous struct/union members (mm_struct keeps all of
    /// its fields in one, for layout randomisation).
    fn find(&self, s: &Struct, names: &[&str]) -> Option<(u32, Type)> {
        names.iter().find_map(|name| self.find_one(s, name, 0))
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
        self.resolve_type(self.btf.resolve_chained_type(m).ok()?)
    }

    /// The offset of RSS counter `index`'s value, as get_mm_counter() reads
    /// it.
    fn rss_counter(&mut self, index: usize) -> Result<u32, String> {
        let mm = self.strukt("mm_struct")?;
        let (base, t) = self.member_path(&mm, "mm_struct", &[&["rss_stat"]])?;
        let per_counter: Option<(u32, u32)> = match &t {
            // 6.2+: struct percpu_counter rss_stat[NR_MM_COUNTERS]; the value
            // percpu_counter_read_positive() returns is `count`.
            Type::Array(a) if a.len() == NR_MM_COUNTERS => {
                match self.resolve_type(self.btf.resolve_chained_type(a).ok().unwrap_or(Type::Void))
                {
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
        let (stride, count) =
            per_counter.ok_or_else(|| "mm_struct::rss_stat (unknown layout)".to_string())?;
        Ok(base + index as u32 * stride + count)
    }

    fn enum_value(&self, enum_name: &str, member: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(enum_name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == member))
                .map(|m| m.val()),
            _ => None,
        })
    }

    /// Whether argument `index` of raw tracepoint `tp` is a pointer to
    /// `struct strukt`. The kernel describes each raw tracepoint as a typedef
    /// `btf_trace_<tp>`: a pointer to a function whose first parameter is the
    /// `void *__data` cookie, followed by the TP_PROTO arguments.
    fn tracepoint_arg_is_struct(&self, tp: &str, index: usize, strukt: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(&format!("btf_trace_{tp}")) else {
            return false;
        };
        let Some(proto) = types.into_iter().find_map(|t| match self.resolve_type(t)? {
            Type::Ptr(p) => match self.resolve_type(self.btf.resolve_chained_type(&p).ok()?)? {
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
            .and_then(|t| self.resolve_type(t))
        else {
            return false;
        };
        match self
            .btf
            .resolve_chained_type(&p)
            .ok()
            .and_then(|t| self.resolve_type(t))
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

/// `a|b.c` for a member path.
fn spelled_path(path: &[&[&str]]) -> String {
    path.iter()
        .map(|names| names.join("|"))
        .collect::<Vec<_>>()
        .join(".")
}

/// A field as its C declaration names it, for the notes.
fn describe(field: &KernelField) -> String {
    match field.rule {
        FieldRule::Member { strukt, path, .. } => format!("{strukt}::{}", spelled_path(path)),
        FieldRule::RssCounter { index } => format!("mm_struct::rss_stat[{index}]"),
        FieldRule::CssSetSubsys { id } => format!("css_set::subsys[{id}]"),
        FieldRule::SizeOf { strukt } => format!("sizeof(struct {strukt})"),
        FieldRule::EnumIndexed {
            strukt,
            array,
            value,
            ..
        } => format!("{strukt}::{array}[{value}]"),
    }
}

#[cfg(test)]
mod tests;
