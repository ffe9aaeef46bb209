//! Loading the eBPF object and attaching its programs, best mode first.
//!
//! - `mark_victim`: raw tracepoint (needs BTF: arg0 must be a task_struct
//!   pointer and the task offsets known), else the classic tracepoint (needs
//!   tracefs for its id and layout).
//! - `oom_kill_process`: fentry+fexit, else kprobe+kretprobe, else nothing.
//!   Entry and return probes attach as a pair or not at all (see
//!   `oomtrace_ebpf::OomContext`).
//! - `process_exit`: raw tracepoint `sched_process_exit`, else the classic one.
//!
//! Load-time globals depend on the `mark_victim` mode (how the exit hook keys
//! victims), so the object is loaded once per `mark_victim` mode tried. A load
//! without kernel BTF parsing takes a few milliseconds.

use std::path::{Path, PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, RingBuf},
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use oomtrace_ebpf::{Config, KernelOffsets, MarkVictimLayout, VictimEntry};

use crate::{
    host::{DEFAULT_BTF, HostFacts},
    offsets::{self, KernelLayout},
    schema::{AttachAttempt, ProbeStatus},
    tracefs,
};

/// The eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomtrace-ebpf"));

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum VictimProbe {
    /// Raw tracepoint if BTF allows, else the classic tracepoint.
    #[default]
    Auto,
    /// Raw tracepoint `mark_victim`, reading the victim's task_struct.
    Raw,
    /// Classic tracepoint `oom:mark_victim`: only the fields its format has.
    Tracepoint,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OomKillProbe {
    /// fentry, else kprobe, else off.
    #[default]
    Auto,
    Fentry,
    Kprobe,
    /// Do not hook oom_kill_process: `oom.*` stays null.
    Off,
}

/// Where kernel BTF comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BtfSource {
    /// /sys/kernel/btf/vmlinux; without it, carry on in no-BTF mode.
    Default,
    /// A file the operator named: it must exist.
    File(PathBuf),
    /// `--no-btf`: classic tracepoints only, no kernel struct reads.
    Disabled,
}

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub victim: VictimProbe,
    pub oom_kill: OomKillProbe,
    pub btf: BtfSource,
    /// Overrides the ring buffer size (a power-of-two multiple of the page size).
    pub ring_buffer_bytes: Option<u32>,
    /// Let the programs' aya-log diagnostics through (at debug level).
    pub ebpf_log: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this oomtrace was built without its eBPF programs (AYA_BUILD_SKIP); rebuild it with \
         `cargo xtask build`"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] offsets::OffsetsError),
    #[error("the eBPF object has no {0}; it does not match this collector")]
    Missing(&'static str),
    #[error("{0}")]
    Map(#[from] aya::maps::MapError),
    #[error(
        "no OOM kill can be traced on this machine: mark_victim could not be attached ({0}). \
         `oomtrace check` explains the attach plan"
    )]
    NoVictimProbe(String),
}

/// The loaded, attached programs and the maps the collector reads.
pub struct Tracer {
    /// Owns the programs and their links: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    pub victims: BpfHashMap<MapData, u32, VictimEntry>,
    pub counters: Array<MapData, u64>,
    pub probes: Vec<ProbeStatus>,
    pub notes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VictimMode {
    Raw,
    Tracepoint,
}

impl VictimMode {
    fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw_tracepoint",
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// Loads and attaches everything the options and this kernel allow.
pub fn attach(options: &ProbeOptions, host: &HostFacts) -> Result<Tracer, ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    let mut notes = Vec::new();
    let layout = kernel_layout(&options.btf, &mut notes)?;

    // mark_victim, one load per mode tried.
    let modes: &[VictimMode] = match options.victim {
        VictimProbe::Auto => &[VictimMode::Raw, VictimMode::Tracepoint],
        VictimProbe::Raw => &[VictimMode::Raw],
        VictimProbe::Tracepoint => &[VictimMode::Tracepoint],
    };
    let mut attempts = Vec::new();
    let mut loaded = None;
    for &mode in modes {
        match load_with_victim(mode, layout.as_ref(), options, host, &mut notes) {
            Ok(ebpf) => {
                attempts.push(AttachAttempt {
                    mode: mode.name().into(),
                    error: None,
                });
                loaded = Some((ebpf, mode));
                break;
            }
            Err(error) => attempts.push(AttachAttempt {
                mode: mode.name().into(),
                error: Some(error),
            }),
        }
    }
    let Some((mut ebpf, mode)) = loaded else {
        let why = attempts
            .iter()
            .map(|a| format!("{}: {}", a.mode, a.error.as_deref().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ProbeError::NoVictimProbe(why));
    };
    let mut probes = vec![ProbeStatus {
        name: "mark_victim".into(),
        mode: Some(mode.name().into()),
        attempts,
    }];
    if mode == VictimMode::Tracepoint {
        notes.push(
            "mark_victim is on the classic tracepoint: the victim's cgroup, tgid and pid \
             namespace are not readable there (null), and its exit is matched by thread id"
                .into(),
        );
    }

    probes.push(attach_oom_kill_process(
        &mut ebpf,
        options.oom_kill,
        layout.as_ref(),
    ));
    probes.push(attach_process_exit(&mut ebpf));

    let events = RingBuf::try_from(
        ebpf.take_map("EVENTS")
            .ok_or(ProbeError::Missing("EVENTS"))?,
    )?;
    let victims = BpfHashMap::try_from(
        ebpf.take_map("VICTIMS")
            .ok_or(ProbeError::Missing("VICTIMS"))?,
    )?;
    let counters = Array::try_from(
        ebpf.take_map("COUNTERS")
            .ok_or(ProbeError::Missing("COUNTERS"))?,
    )?;
    Ok(Tracer {
        ebpf,
        events,
        victims,
        counters,
        probes,
        notes,
    })
}

fn kernel_layout(
    source: &BtfSource,
    notes: &mut Vec<String>,
) -> Result<Option<KernelLayout>, ProbeError> {
    let btf = match source {
        BtfSource::Disabled => {
            notes.push("running without BTF (--no-btf): classic tracepoints only".into());
            return Ok(None);
        }
        BtfSource::File(path) => offsets::open_btf(path)?,
        BtfSource::Default => match offsets::open_btf(Path::new(DEFAULT_BTF)) {
            Ok(btf) => btf,
            Err(error) => {
                notes.push(format!("{error}; continuing in no-BTF mode"));
                return Ok(None);
            }
        },
    };
    let layout = offsets::compute(&btf);
    for field in &layout.missing {
        notes.push(format!(
            "not in this kernel's BTF: {field}; the fields that need it are null"
        ));
    }
    Ok(Some(layout))
}

/// Loads the object configured for `mode` and attaches `mark_victim`.
fn load_with_victim(
    mode: VictimMode,
    layout: Option<&KernelLayout>,
    options: &ProbeOptions,
    host: &HostFacts,
    notes: &mut Vec<String>,
) -> Result<Ebpf, String> {
    let offsets = layout.map_or_else(KernelOffsets::default, |l| l.offsets);
    let mut victim_layout = MarkVictimLayout::default();
    match mode {
        VictimMode::Raw => {
            let Some(layout) = layout else {
                return Err("needs kernel BTF".into());
            };
            if !layout.mark_victim_raw_has_task {
                return Err(
                    "this kernel's mark_victim passes only a pid (TP_PROTO(int pid), before 6.9), \
                     not the task"
                        .into(),
                );
            }
            if !(offsets.task_pid.is_present() && offsets.task_tgid.is_present()) {
                return Err("task_struct pid/tgid not found in BTF".into());
            }
        }
        VictimMode::Tracepoint => {
            let (path, mounted) = tracefs::ensure_mounted().map_err(|e| e.to_string())?;
            if mounted {
                notes.push(format!("mounted tracefs at {}", path.display()));
            }
            let (parsed, layout_notes) =
                tracefs::mark_victim_layout(&path).map_err(|e| e.to_string())?;
            notes.extend(layout_notes);
            victim_layout = parsed;
        }
    }
    let config = Config {
        page_shift: host.page_size.trailing_zeros(),
        cgroup_v2_memory: u32::from(host.memory_on_v2()),
        exit_key_is_tid: u32::from(mode == VictimMode::Tracepoint),
        _pad: 0,
    };
    // aya_log_common::Level: 0 disables every log statement in the programs.
    let log_level: u8 = if options.ebpf_log { 4 } else { 0 };
    let mut loader = EbpfLoader::new();
    // The programs need no CO-RE relocations, so aya need not parse the
    // kernel's BTF (tens of MB); fentry loads its own copy when tried.
    loader
        .btf(None)
        .override_global("KERNEL_OFFSETS", &offsets, true)
        .override_global("MARK_VICTIM_LAYOUT", &victim_layout, true)
        .override_global("CONFIG", &config, true)
        .override_global("AYA_LOG_LEVEL", &log_level, false);
    if let Some(bytes) = options.ring_buffer_bytes {
        loader.map_max_entries("EVENTS", bytes);
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|e| format!("loading the eBPF object: {}", error_chain(&e)))?;
    match mode {
        VictimMode::Raw => {
            let prog: &mut RawTracePoint = program(&mut ebpf, "mark_victim_raw")?;
            prog.load().map_err(|e| describe(&e))?;
            prog.attach("mark_victim").map_err(|e| describe(&e))?;
        }
        VictimMode::Tracepoint => {
            let prog: &mut TracePoint = program(&mut ebpf, "mark_victim_tp")?;
            prog.load().map_err(|e| describe(&e))?;
            prog.attach("oom", "mark_victim")
                .map_err(|e| describe(&e))?;
        }
    }
    Ok(ebpf)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the eBPF object"))?;
    prog.try_into().map_err(|e: ProgramError| describe(&e))
}

fn attach_oom_kill_process(
    ebpf: &mut Ebpf,
    choice: OomKillProbe,
    layout: Option<&KernelLayout>,
) -> ProbeStatus {
    let mut status = ProbeStatus {
        name: "oom_kill_process".into(),
        mode: None,
        attempts: Vec::new(),
    };
    let modes: &[&str] = match choice {
        OomKillProbe::Auto => &["fentry", "kprobe"],
        OomKillProbe::Fentry => &["fentry"],
        OomKillProbe::Kprobe => &["kprobe"],
        OomKillProbe::Off => &[],
    };
    let readable = layout.is_some_and(|l| {
        let o = &l.offsets;
        o.oc_constraint.is_present()
            && o.oc_chosen_points.is_present()
            && o.oc_totalpages.is_present()
    });
    for &mode in modes {
        let result = if !readable {
            Err("struct oom_control is not described by BTF here, so it cannot be read".into())
        } else if !layout.is_some_and(|l| l.oom_kill_process_in_btf) {
            Err("oom_kill_process is not a function in this kernel's BTF (inlined?)".into())
        } else if mode == "fentry" {
            attach_fentry_pair(ebpf)
        } else {
            attach_kprobe_pair(ebpf)
        };
        let ok = result.is_ok();
        status.attempts.push(AttachAttempt {
            mode: mode.into(),
            error: result.err(),
        });
        if ok {
            status.mode = Some(mode.into());
            break;
        }
    }
    status
}

fn attach_fentry_pair(ebpf: &mut Ebpf) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("reading kernel BTF for fentry: {e}"))?;
    let entry: &mut FEntry = program(ebpf, "oom_kill_process_fentry")?;
    entry
        .load("oom_kill_process", &btf)
        .map_err(|e| describe(&e))?;
    let entry_link = entry.attach().map_err(|e| describe(&e))?;
    let exit: &mut FExit = program(ebpf, "oom_kill_process_fexit")?;
    let attached = exit
        .load("oom_kill_process", &btf)
        .and_then(|()| exit.attach().map(|_| ()));
    if let Err(e) = attached {
        let entry: &mut FEntry = program(ebpf, "oom_kill_process_fentry")?;
        let _ = entry.detach(entry_link);
        return Err(format!("fexit (needed with fentry): {}", describe(&e)));
    }
    Ok(())
}

fn attach_kprobe_pair(ebpf: &mut Ebpf) -> Result<(), String> {
    let no_kprobes = !Path::new("/sys/bus/event_source/devices/kprobe").exists();
    let explain = |e: &ProgramError| {
        if no_kprobes {
            format!(
                "{} (this kernel has no kprobe PMU: CONFIG_KPROBES is not set)",
                describe(e)
            )
        } else {
            describe(e)
        }
    };
    let entry: &mut KProbe = program(ebpf, "oom_kill_process_kprobe")?;
    entry.load().map_err(|e| explain(&e))?;
    let entry_link = entry
        .attach("oom_kill_process", 0)
        .map_err(|e| explain(&e))?;
    let ret: &mut KProbe = program(ebpf, "oom_kill_process_kretprobe")?;
    let attached = ret
        .load()
        .and_then(|()| ret.attach("oom_kill_process", 0).map(|_| ()));
    if let Err(e) = attached {
        let entry: &mut KProbe = program(ebpf, "oom_kill_process_kprobe")?;
        let _ = entry.detach(entry_link);
        return Err(format!("kretprobe (needed with kprobe): {}", explain(&e)));
    }
    Ok(())
}

fn attach_process_exit(ebpf: &mut Ebpf) -> ProbeStatus {
    let mut status = ProbeStatus {
        name: "process_exit".into(),
        mode: None,
        attempts: Vec::new(),
    };
    let raw = (|| -> Result<(), String> {
        let prog: &mut RawTracePoint = program(ebpf, "process_exit_raw")?;
        prog.load().map_err(|e| describe(&e))?;
        prog.attach("sched_process_exit")
            .map_err(|e| describe(&e))?;
        Ok(())
    })();
    let raw_ok = raw.is_ok();
    status.attempts.push(AttachAttempt {
        mode: "raw_tracepoint".into(),
        error: raw.err(),
    });
    if raw_ok {
        status.mode = Some("raw_tracepoint".into());
        return status;
    }
    let classic = (|| -> Result<(), String> {
        tracefs::ensure_mounted().map_err(|e| e.to_string())?;
        let prog: &mut TracePoint = program(ebpf, "process_exit_tp")?;
        prog.load().map_err(|e| describe(&e))?;
        prog.attach("sched", "sched_process_exit")
            .map_err(|e| describe(&e))?;
        Ok(())
    })();
    let ok = classic.is_ok();
    status.attempts.push(AttachAttempt {
        mode: "tracepoint".into(),
        error: classic.err(),
    });
    if ok {
        status.mode = Some("tracepoint".into());
    }
    status
}

/// An error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A program error in one line; for a verifier rejection, the verifier's
/// last words (the full log goes to the debug log).
fn describe(error: &ProgramError) -> String {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = error
    {
        let log = verifier_log.to_string();
        log::debug!("verifier log:\n{log}");
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .filter(|l| !l.trim().is_empty())
            .take(2)
            .collect();
        if tail.is_empty() {
            return format!("load failed: {io_error}");
        }
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return format!("load failed: {io_error} (verifier: {})", tail.join(" / "));
    }
    error_chain(error)
}
