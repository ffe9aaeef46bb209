//! tracefs: finding or mounting it, and reading tracepoint record layouts
//! from its `format` files.
//!
//! Only the classic tracepoints need tracefs (for their ids and layouts); raw
//! tracepoints attach by name without it.

use std::path::{Path, PathBuf};

use oomtrace_ebpf::{FieldOffset, MarkVictimLayout};

/// Where tracefs is conventionally mounted; the second is the debugfs path
/// older distributions use.
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

// Causes are printed inside each message and never marked `#[source]`, so
// that anyhow's `{:#}` prints them once (see btf::BtfError).
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {error}. \
         Mount it yourself (`mount -t tracefs nodev /sys/kernel/tracing`), or run as root"
    )]
    Mount { error: std::io::Error },
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {what}")]
    Format { path: PathBuf, what: String },
}

/// One `field:` line of a tracepoint format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    /// The C declaration without the name, e.g. `unsigned long`,
    /// `__data_loc char[]`.
    pub c_type: String,
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// The mount point of tracefs, if it is mounted (per /proc/self/mounts).
pub fn find() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mounted: Vec<&str> = mounts
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (_dev, dir, fstype) = (parts.next()?, parts.next()?, parts.next()?);
            (fstype == "tracefs").then_some(dir)
        })
        .collect();
    CANDIDATES
        .iter()
        .find(|c| mounted.contains(c))
        .map(PathBuf::from)
}

/// Finds tracefs, mounting it at /sys/kernel/tracing if needed. Returns the
/// path and whether this call mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(path) = find() {
        return Ok((path, false));
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount {
            error: std::io::Error::last_os_error(),
        });
    }
    Ok((PathBuf::from(CANDIDATES[0]), true))
}

/// Unmounts tracefs from `path`, where [`ensure_mounted`] mounted it. Not
/// forced: if anything still uses it (an open file under it), it stays
/// mounted and the error says so.
pub fn unmount(path: &Path) -> std::io::Result<()> {
    let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: umount2(2) with a NUL-terminated path and no flags.
    if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Parses a tracepoint `format` file's field lines.
pub fn parse_format(text: &str) -> Result<Vec<FormatField>, String> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        // field:unsigned long total_vm;	offset:16;	size:8;	signed:0;
        let mut decl = None;
        let (mut offset, mut size) = (None, None);
        for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse::<u32>().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse::<u32>().ok();
            } else if part.starts_with("signed:") {
                // The programs read fields at their declared size and type.
            } else if decl.is_none() {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            return Err(format!("malformed field line: {line:?}"));
        };
        let (c_type, name) =
            split_declaration(decl).ok_or_else(|| format!("cannot split declaration {decl:?}"))?;
        fields.push(FormatField {
            c_type,
            name,
            offset,
            size,
        });
    }
    if fields.is_empty() {
        return Err("no field: lines".into());
    }
    Ok(fields)
}

/// `unsigned long total_vm` → (`unsigned long`, `total_vm`);
/// `char comm[16]` → (`char[16]`, `comm`); `__data_loc char[] comm` →
/// (`__data_loc char[]`, `comm`).
fn split_declaration(decl: &str) -> Option<(String, String)> {
    let (ty, last) = decl.rsplit_once(char::is_whitespace)?;
    let (name, array) = match last.find('[') {
        Some(i) => (&last[..i], &last[i..]),
        None => (last, ""),
    };
    if name.is_empty() {
        return None;
    }
    Some((format!("{}{array}", ty.trim()), name.to_string()))
}

/// The `oom:mark_victim` layout for the classic tracepoint program, from
/// `<tracefs>/events/oom/mark_victim/format`.
pub fn mark_victim_layout(tracefs: &Path) -> Result<(MarkVictimLayout, Vec<String>), TracefsError> {
    let path = tracefs.join("events/oom/mark_victim/format");
    let text = std::fs::read_to_string(&path).map_err(|error| TracefsError::Read {
        path: path.clone(),
        error,
    })?;
    let fields = parse_format(&text).map_err(|what| TracefsError::Format {
        path: path.clone(),
        what,
    })?;
    layout_from_fields(&fields).map_err(|what| TracefsError::Format { path, what })
}

/// Maps format fields to the program's layout. Only `pid` is required (the
/// 4.13 format has nothing else); every other field must have the size the
/// program reads, or it is left absent and named in the returned notes.
pub fn layout_from_fields(
    fields: &[FormatField],
) -> Result<(MarkVictimLayout, Vec<String>), String> {
    let mut notes = Vec::new();
    let mut pick = |name: &str, size: u32, type_prefix: Option<&str>| -> FieldOffset {
        match fields.iter().find(|f| f.name == name) {
            Some(f) if f.size == size && type_prefix.is_none_or(|p| f.c_type.starts_with(p)) => {
                FieldOffset::at(f.offset)
            }
            Some(f) => {
                notes.push(format!(
                    "mark_victim field {name} is `{}` of size {}, not what oomtrace reads; left null",
                    f.c_type, f.size
                ));
                FieldOffset::ABSENT
            }
            None => FieldOffset::ABSENT,
        }
    };
    let layout = MarkVictimLayout {
        pid: pick("pid", 4, None),
        comm: pick("comm", 4, Some("__data_loc")),
        total_vm: pick("total_vm", 8, None),
        anon_rss: pick("anon_rss", 8, None),
        file_rss: pick("file_rss", 8, None),
        shmem_rss: pick("shmem_rss", 8, None),
        uid: pick("uid", 4, None),
        pgtables: pick("pgtables", 8, None),
        oom_score_adj: pick("oom_score_adj", 2, None),
    };
    if !layout.pid.is_present() {
        return Err("mark_victim has no 4-byte `pid` field".into());
    }
    Ok((layout, notes))
}

/// A field of the layout by its name in the format file (as
/// [`layout_from_fields`] reads it); None for a name it does not read.
pub fn format_field(layout: &MarkVictimLayout, name: &str) -> Option<FieldOffset> {
    Some(match name {
        "pid" => layout.pid,
        "comm" => layout.comm,
        "total_vm" => layout.total_vm,
        "anon_rss" => layout.anon_rss,
        "file_rss" => layout.file_rss,
        "shmem_rss" => layout.shmem_rss,
        "uid" => layout.uid,
        "pgtables" => layout.pgtables,
        "oom_score_adj" => layout.oom_score_adj,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format as Linux 4.13–6.8 print it: `TP_PROTO(int pid)`.
    const OLD_FORMAT: &str = "name: mark_victim
ID: 448
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;

print fmt: \"pid=%d\", REC->pid
";

    /// The extended format (6.9+, and Debian's 6.1/6.12 backports), copied
    /// from this machine's 6.18 tracefs.
    const NEW_FORMAT: &str = "name: mark_victim
ID: 609
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;

print fmt: \"pid=%d comm=%s total-vm=%lukB anon-rss=%lukB file-rss:%lukB shmem-rss:%lukB uid=%u pgtables=%lukB oom_score_adj=%hd\", REC->pid, __get_str(comm), REC->total_vm, REC->anon_rss, REC->file_rss, REC->shmem_rss, REC->uid, REC->pgtables, REC->oom_score_adj
";

    #[test]
    fn old_format_gives_pid_only() {
        let fields = parse_format(OLD_FORMAT).expect("parse");
        assert_eq!(fields.len(), 5);
        let (layout, notes) = layout_from_fields(&fields).expect("layout");
        assert_eq!(layout.pid, FieldOffset::at(8));
        assert_eq!(
            layout,
            MarkVictimLayout {
                pid: FieldOffset::at(8),
                ..MarkVictimLayout::default()
            },
            "every other field must be absent, so it is written as null"
        );
        assert!(notes.is_empty());
    }

    #[test]
    fn new_format_gives_every_field() {
        let fields = parse_format(NEW_FORMAT).expect("parse");
        let comm = fields.iter().find(|f| f.name == "comm").expect("comm");
        assert_eq!(comm.c_type, "__data_loc char[]");
        let (layout, notes) = layout_from_fields(&fields).expect("layout");
        assert_eq!(
            layout,
            MarkVictimLayout {
                pid: FieldOffset::at(8),
                comm: FieldOffset::at(12),
                total_vm: FieldOffset::at(16),
                anon_rss: FieldOffset::at(24),
                file_rss: FieldOffset::at(32),
                shmem_rss: FieldOffset::at(40),
                uid: FieldOffset::at(48),
                pgtables: FieldOffset::at(56),
                oom_score_adj: FieldOffset::at(64),
            }
        );
        assert!(notes.is_empty());
        // Every field the format names is found by its name, as the hook
        // table's promises look it up.
        for field in fields.iter().filter(|f| !f.name.starts_with("common_")) {
            let offset = format_field(&layout, &field.name).expect("a field oomtrace reads");
            assert_eq!(offset, FieldOffset::at(field.offset), "{}", field.name);
        }
    }

    #[test]
    fn a_field_of_unexpected_size_is_left_out_and_noted() {
        // A 32-bit kernel's `unsigned long` is 4 bytes: never read 8 there.
        let text = NEW_FORMAT.replace(
            "unsigned long anon_rss;\toffset:24;\tsize:8;",
            "unsigned long anon_rss;\toffset:24;\tsize:4;",
        );
        let (layout, notes) =
            layout_from_fields(&parse_format(&text).expect("parse")).expect("layout");
        assert!(!layout.anon_rss.is_present());
        assert!(layout.file_rss.is_present());
        assert_eq!(notes.len(), 1, "{notes:?}");
    }

    #[test]
    fn array_fields_and_malformed_lines() {
        let fields = parse_format(
            "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n",
        )
        .expect("parse");
        assert_eq!(fields[0].c_type, "char[16]");
        assert_eq!(fields[0].name, "comm");
        assert_eq!((fields[1].offset, fields[1].size), (24, 4));
        assert!(parse_format("\tfield:int pid;\toffset:x;\tsize:4;\n").is_err());
        assert!(parse_format("name: nothing\n").is_err());
        assert!(
            layout_from_fields(
                &parse_format("\tfield:long pid;\toffset:8;\tsize:8;\n").expect("parse")
            )
            .is_err()
        );
    }

    #[test]
    fn this_machines_format_file_parses_when_tracefs_is_mounted() {
        let Some(tracefs) = find() else {
            eprintln!("skipped: tracefs not mounted");
            return;
        };
        if !tracefs.join("events/oom/mark_victim/format").exists() {
            return;
        }
        let (layout, _) = mark_victim_layout(&tracefs).expect("layout");
        assert!(layout.pid.is_present());
    }
}
