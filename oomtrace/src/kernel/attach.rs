//! Loading the eBPF object and attaching its programs: one chain for every
//! hook of the table in `hooks.rs`, best mode first.
//!
//! The first hook (`mark_victim`) decides the load: the object's load-time
//! globals depend on its mode (how victims are keyed, the classic
//! tracepoint's layout), so the object is loaded once per mode tried. A load
//! without kernel BTF parsing takes a few milliseconds. The other hooks then
//! attach into the loaded object, each falling back through its modes.

use std::path::{Path, PathBuf};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, RingBuf},
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use oomtrace_ebpf::{Config, KernelOffsets, MarkVictimLayout, VictimKey};
use oomtrace_record::{AttachAttempt, AttachMode, HostFacts, ProbeStatus, text::spelled};

pub use super::attach_types::{AttachError, BtfSource, ModeChoice, ProbeError, ProbeOptions};
use super::{
    attach_types::{describe, error_chain},
    btf::{self, KernelLayout},
    hooks::{self, HOOKS, HookSpec, MARK_VICTIM, ModeSpec, Program, Requirement},
    host::{self, DEFAULT_BTF},
    maps::{KernelCounters, VictimsMap},
    promises::{self, Available, Promises},
    tracefs,
    userns::{self, UserNamespace},
};

/// The eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/oomtrace-ebpf"));

/// The loaded, attached programs and the maps the collector reads.
pub struct Tracer {
    /// Owns the programs and their links: dropping it detaches everything.
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    pub victims: VictimsMap,
    pub counters: KernelCounters,
    pub probes: Vec<ProbeStatus>,
    /// For each attached hook, the record fields it fills on this kernel
    /// (what `oomtrace check` promises), from the hook table.
    pub promises: Vec<(oomtrace_record::Hook, Promises)>,
    pub notes: Vec<String>,
}

/// What attaching needs to know about this kernel, gathered once.
struct Context<'a> {
    layout: Option<&'a KernelLayout>,
    /// Why `layout` is None: `--no-btf`, or the error reading the BTF.
    no_btf: String,
    options: &'a ProbeOptions,
    host: &'a HostFacts,
    /// tracefs, once a mode needed it: its path, or why it is unusable.
    tracefs: Option<Result<PathBuf, String>>,
    /// Where this attach mounted tracefs itself, to unmount it after.
    mounted_tracefs: Option<PathBuf>,
    /// The classic tracepoint's layout, when that mode was loaded.
    victim_layout: Option<MarkVictimLayout>,
    /// The kernel's BTF as aya parses it, for fentry/fexit (loaded on first
    /// use: tens of MB that only those modes need).
    fentry_btf: Option<Btf>,
    notes: Vec<String>,
}

/// BPF needs capabilities in the initial user namespace. Checked before
/// anything is loaded (and by `run` before anything else): in another one
/// every map creation fails with EPERM, and which map aya creates first
/// (and so names) changes from run to run.
pub fn in_initial_user_namespace() -> Result<(), ProbeError> {
    if let UserNamespace::Child { uid_map } = userns::current() {
        let uid_map = match uid_map {
            Some(map) => format!("its uid map is `{}`", userns::spelled_map(&map)),
            None => "its uid map is unreadable".into(),
        };
        return Err(ProbeError::UserNamespace { uid_map });
    }
    Ok(())
}

/// Loads and attaches everything the options and this kernel allow.
pub fn attach(options: &ProbeOptions, host: &HostFacts) -> Result<Tracer, ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    in_initial_user_namespace()?;
    let mut notes = Vec::new();
    let (layout, no_btf) = kernel_layout(&options.btf, &mut notes)?;
    let mut ctx = Context {
        layout: layout.as_ref(),
        no_btf,
        options,
        host,
        tracefs: None,
        mounted_tracefs: None,
        victim_layout: None,
        fentry_btf: None,
        notes,
    };
    // aya parses the whole kernel BTF in EbpfLoader::new(), and again for
    // fentry: the peak of the collector's life, handed back right after.
    let attached = host::reusing_heap(|| attach_with(&mut ctx));
    release_tracefs(&mut ctx);
    let mut tracer = attached?;
    tracer.notes = ctx.notes;
    Ok(tracer)
}

/// Unmounts tracefs if this attach mounted it: a classic tracepoint needs it
/// only to read its id and format, and an attached one keeps working
/// without it. Nothing that oomtrace did not mount is ever unmounted.
fn release_tracefs(ctx: &mut Context<'_>) {
    let Some(path) = ctx.mounted_tracefs.take() else {
        return;
    };
    let shown = path.display();
    ctx.notes.push(match tracefs::unmount(&path) {
        Ok(()) => format!(
            "mounted tracefs at {shown} to attach the classic tracepoints, and unmounted it again"
        ),
        Err(error) => format!(
            "mounted tracefs at {shown} to attach the classic tracepoints, and could not \
             unmount it ({error}): it stays mounted; `umount {shown}` removes it"
        ),
    });
}

fn attach_with(ctx: &mut Context<'_>) -> Result<Tracer, ProbeError> {
    let options = ctx.options;
    let mut status = ProbeStatus {
        name: MARK_VICTIM.hook,
        mode: None,
        attempts: Vec::new(),
    };
    let mut loaded = None;
    for mode in allowed_modes(&MARK_VICTIM, options) {
        let result = check(mode.requires, ctx)
            .and_then(|()| load(mode, ctx))
            .and_then(|mut ebpf| attach_programs(&mut ebpf, mode, ctx).map(|()| ebpf));
        if record_attempt(&mut status, mode.mode, result.as_ref().err()) {
            loaded = result.ok();
            break;
        }
    }
    let Some(mut ebpf) = loaded else {
        let why = status
            .attempts
            .iter()
            .map(|a| format!("{}: {}", spelled(a.mode), a.error.as_deref().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join("; ");
        let hint = seccomp_hint(&why);
        return Err(ProbeError::NoVictimProbe { why, hint });
    };
    if status.mode == Some(AttachMode::Tracepoint) {
        ctx.notes.push(
            "mark_victim is on the classic tracepoint: the victim's cgroup, tgid and pid \
             namespace are not readable there (null), and its exit is matched by thread id"
                .into(),
        );
    }
    let mut probes = vec![status];
    for spec in &HOOKS[1..] {
        probes.push(attach_hook(&mut ebpf, spec, ctx));
        // Tens of MB that only fentry/fexit need: freed at once, before
        // anything else is allocated after it.
        ctx.fentry_btf = None;
    }
    let promises = promises_of(&probes, ctx);

    let events = RingBuf::try_from(take_map(&mut ebpf, "EVENTS")?)?;
    let victims = VictimsMap::new(BpfHashMap::try_from(take_map(&mut ebpf, "VICTIMS")?)?);
    let counters = KernelCounters::new(Array::try_from(take_map(&mut ebpf, "COUNTERS")?)?);
    Ok(Tracer {
        ebpf,
        events,
        victims,
        counters,
        probes,
        promises,
        // Filled in by `attach`, once tracefs is released.
        notes: Vec::new(),
    })
}

/// What each attached hook fills here, by the hook table; the fields it
/// cannot fill go into the notes, so that `start` says so too.
fn promises_of(
    probes: &[ProbeStatus],
    ctx: &mut Context<'_>,
) -> Vec<(oomtrace_record::Hook, Promises)> {
    let here = Available {
        offsets: ctx.layout.map(|l| &l.offsets),
        format: ctx.victim_layout.as_ref(),
        memory_controller: ctx.host.memory_controller.is_some(),
    };
    let mut out = Vec::new();
    for probe in probes {
        let Some(mode) = hooks::spec(probe.name)
            .and_then(|spec| spec.modes.iter().find(|m| Some(m.mode) == probe.mode))
        else {
            continue;
        };
        let promises = promises::promises(mode, &here);
        if !promises.null.is_empty() {
            let null: Vec<String> = promises
                .null
                .iter()
                .map(|(field, why)| format!("{field} ({why})"))
                .collect();
            ctx.notes.push(format!(
                "{} via {} leaves these null here: {}",
                spelled(probe.name),
                spelled(mode.mode),
                null.join(", ")
            ));
        }
        out.push((probe.name, promises));
    }
    out
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn allowed_modes<'a>(
    spec: &'a HookSpec,
    options: &ProbeOptions,
) -> impl Iterator<Item = &'a ModeSpec> {
    let choice = options.choice(spec);
    spec.modes.iter().filter(move |m| choice.allows(m.mode))
}

/// Adds an attempt to `status`; true when it attached.
fn record_attempt(status: &mut ProbeStatus, mode: AttachMode, error: Option<&AttachError>) -> bool {
    status.attempts.push(AttachAttempt {
        mode,
        error: error.map(ToString::to_string),
    });
    if error.is_none() {
        status.mode = Some(mode);
    }
    error.is_none()
}

/// Attaches one hook into the loaded object, best allowed mode first.
fn attach_hook(ebpf: &mut Ebpf, spec: &HookSpec, ctx: &mut Context<'_>) -> ProbeStatus {
    let mut status = ProbeStatus {
        name: spec.hook,
        mode: None,
        attempts: Vec::new(),
    };
    for mode in allowed_modes(spec, ctx.options) {
        let result = check(mode.requires, ctx).and_then(|()| attach_programs(ebpf, mode, ctx));
        if record_attempt(&mut status, mode.mode, result.err().as_ref()) {
            break;
        }
    }
    status
}

/// The kernel's layout from BTF, or why there is none (for the modes that
/// need it to say so).
fn kernel_layout(
    source: &BtfSource,
    notes: &mut Vec<String>,
) -> Result<(Option<KernelLayout>, String), ProbeError> {
    let btf = match source {
        BtfSource::Disabled => {
            notes.push("running without BTF (--no-btf): classic tracepoints only".into());
            return Ok((None, "and --no-btf was given".into()));
        }
        BtfSource::File(path) => btf::open(path)?,
        BtfSource::Default => match btf::open(Path::new(DEFAULT_BTF)) {
            Ok(btf) => btf,
            Err(error) => {
                notes.push(format!("{error}; continuing in no-BTF mode"));
                return Ok((None, format!("and {error}")));
            }
        },
    };
    let layout = btf::compute(&btf);
    for field in &layout.missing {
        notes.push(format!(
            "not in this kernel's BTF: {field}; the fields that need it are null"
        ));
    }
    Ok((Some(layout), String::new()))
}

/// Checks what a mode needs from this kernel before anything is loaded.
fn check(requires: &[Requirement], ctx: &mut Context<'_>) -> Result<(), AttachError> {
    for requirement in requires {
        match *requirement {
            Requirement::Btf => {
                if ctx.layout.is_none() {
                    return Err(AttachError::NoBtf(ctx.no_btf.clone()));
                }
            }
            Requirement::TaskArgument { tracepoint } => {
                if !ctx.layout.is_some_and(|l| l.mark_victim_raw_has_task) {
                    return Err(AttachError::NoTaskArgument(tracepoint));
                }
            }
            Requirement::Fields(names) => {
                let offsets = ctx.layout.map_or(KernelOffsets::ABSENT, |l| l.offsets);
                let missing: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|name| !offsets.get(name).is_some_and(|f| f.is_present()))
                    .collect();
                if !missing.is_empty() {
                    return Err(AttachError::MissingFields(missing.join(", ")));
                }
            }
            Requirement::FunctionInBtf(function) => {
                if !ctx.layout.is_some_and(|l| l.oom_kill_process_in_btf) {
                    return Err(AttachError::NotInBtf(function));
                }
            }
            Requirement::Tracefs => {
                tracefs_path(ctx)?;
            }
        }
    }
    Ok(())
}

/// tracefs's mount point, mounting it the first time a mode needs it.
fn tracefs_path(ctx: &mut Context<'_>) -> Result<PathBuf, AttachError> {
    let found = ctx
        .tracefs
        .get_or_insert_with(|| match tracefs::ensure_mounted() {
            Ok((path, mounted)) => {
                if mounted {
                    ctx.mounted_tracefs = Some(path.clone());
                }
                Ok(path)
            }
            Err(error) => Err(error.to_string()),
        });
    match found {
        Ok(path) => Ok(path.clone()),
        Err(error) => Err(AttachError::TracefsUnusable(error.clone())),
    }
}

/// Loads the object configured for a mode of the loading hook
/// (`mark_victim`): the classic tracepoint knows only the marked thread, so
/// victims are keyed by thread id there, and its fields sit where tracefs's
/// format says.
fn load(mode: &ModeSpec, ctx: &mut Context<'_>) -> Result<Ebpf, AttachError> {
    let offsets = ctx.layout.map_or(KernelOffsets::ABSENT, |l| l.offsets);
    let (victim_key, victim_layout) = match mode.mode {
        AttachMode::Tracepoint => {
            let path = tracefs_path(ctx)?;
            let (layout, layout_notes) = tracefs::mark_victim_layout(&path)?;
            ctx.notes.extend(layout_notes);
            ctx.victim_layout = Some(layout);
            (VictimKey::Tid, layout)
        }
        _ => (VictimKey::Tgid, MarkVictimLayout::ABSENT),
    };
    let config = Config {
        page_shift: ctx.host.page_size.trailing_zeros(),
        cgroup_v2_memory: u32::from(ctx.host.memory_on_v2()),
        victim_key: victim_key as u32,
        _pad: 0,
    };
    // aya_log_common::Level: 0 disables every log statement in the programs.
    let log_level: u8 = if ctx.options.ebpf_log { 4 } else { 0 };
    let mut loader = EbpfLoader::new();
    // The programs need no CO-RE relocations, so aya need not parse the
    // kernel's BTF (tens of MB); fentry loads its own copy when tried.
    loader.btf(None);
    // EbpfLoader::new() parsed the kernel's BTF anyway, and `.btf(None)` has
    // just freed it. If fentry will be tried, its own parse goes now, into
    // those very pages, before the object's allocations below scatter
    // through them (then the fentry parse took fresh pages: 27.5 MB peak
    // instead of 23.9). An error is kept for when fentry is tried.
    if fentry_wanted(ctx) {
        let _ = fentry_btf(ctx);
    }
    loader
        .override_global("KERNEL_OFFSETS", &offsets, true)
        .override_global("MARK_VICTIM_LAYOUT", &victim_layout, true)
        .override_global("CONFIG", &config, true)
        .override_global("AYA_LOG_LEVEL", &log_level, false);
    if let Some(bytes) = ctx.options.ring_buffer_bytes {
        loader.map_max_entries("EVENTS", bytes);
    }
    loader
        .load(EBPF_OBJECT)
        .map_err(|e| AttachError::Load(error_chain(&e)))
}

/// Every mode refused with EPERM under a seccomp filter is the filter's
/// doing far more often than missing capabilities (checked before
/// loading): say so once, and how to lift it.
fn seccomp_hint(why: &str) -> String {
    if why.contains("Operation not permitted") && host::privileges::seccomp_filtered() {
        "A seccomp filter is on this process (Seccomp: 2 in /proc/self/status), and container \
         runtimes' default profiles refuse bpf(2) without CAP_SYS_ADMIN: run the collector \
         with seccomp unconfined (Kubernetes: `seccompProfile: {type: Unconfined}`, as \
         deploy/daemonset.yaml does; `--security-opt seccomp=unconfined` for podman or docker \
         run). "
            .into()
    } else {
        String::new()
    }
}

/// Attaches every program of a mode, or none: when one fails, the ones
/// already attached are unloaded again (an entry probe must never run
/// without its return probe, see `oomtrace_ebpf::OomContext`).
fn attach_programs(
    ebpf: &mut Ebpf,
    mode: &ModeSpec,
    ctx: &mut Context<'_>,
) -> Result<(), AttachError> {
    for (i, program) in mode.programs.iter().enumerate() {
        if let Err(error) = attach_program(ebpf, program, ctx) {
            for attached in &mode.programs[..i] {
                unload_program(ebpf, attached);
            }
            return Err(error);
        }
    }
    Ok(())
}

fn attach_program(
    ebpf: &mut Ebpf,
    program: &Program,
    ctx: &mut Context<'_>,
) -> Result<(), AttachError> {
    let name = program.name();
    let failed = |e: ProgramError| AttachError::Program {
        program: name,
        reason: describe(&e),
    };
    match *program {
        Program::RawTracepoint { tracepoint, .. } => {
            let prog: &mut RawTracePoint = typed(ebpf, name)?;
            prog.load().map_err(failed)?;
            prog.attach(tracepoint).map_err(failed)?;
        }
        Program::Tracepoint {
            category, name: tp, ..
        } => {
            let prog: &mut TracePoint = typed(ebpf, name)?;
            prog.load().map_err(failed)?;
            prog.attach(category, tp).map_err(failed)?;
        }
        Program::Fentry { function, .. } => {
            let btf = fentry_btf(ctx)?;
            let prog: &mut FEntry = typed(ebpf, name)?;
            prog.load(function, btf).map_err(failed)?;
            prog.attach().map_err(failed)?;
        }
        Program::Fexit { function, .. } => {
            let btf = fentry_btf(ctx)?;
            let prog: &mut FExit = typed(ebpf, name)?;
            prog.load(function, btf).map_err(failed)?;
            prog.attach().map_err(failed)?;
        }
        Program::Kprobe { function, .. } | Program::Kretprobe { function, .. } => {
            let no_pmu = !Path::new("/sys/bus/event_source/devices/kprobe").exists();
            let kprobe_failed = |e: ProgramError| {
                let mut reason = describe(&e);
                if no_pmu {
                    reason.push_str(" (this kernel has no kprobe PMU: CONFIG_KPROBES is not set)");
                }
                AttachError::Program {
                    program: name,
                    reason,
                }
            };
            let prog: &mut KProbe = typed(ebpf, name)?;
            prog.load().map_err(kprobe_failed)?;
            prog.attach(function, 0).map_err(kprobe_failed)?;
        }
    }
    Ok(())
}

/// Detaches and unloads a program attached by [`attach_program`].
fn unload_program(ebpf: &mut Ebpf, program: &Program) {
    let name = program.name();
    let unloaded = match program {
        Program::RawTracepoint { .. } => typed::<RawTracePoint>(ebpf, name).map(|p| p.unload()),
        Program::Tracepoint { .. } => typed::<TracePoint>(ebpf, name).map(|p| p.unload()),
        Program::Fentry { .. } => typed::<FEntry>(ebpf, name).map(|p| p.unload()),
        Program::Fexit { .. } => typed::<FExit>(ebpf, name).map(|p| p.unload()),
        Program::Kprobe { .. } | Program::Kretprobe { .. } => {
            typed::<KProbe>(ebpf, name).map(|p| p.unload())
        }
    };
    match unloaded {
        Ok(Ok(())) => {}
        Ok(Err(error)) => log::warn!("could not unload {name}: {}", describe(&error)),
        Err(error) => log::warn!("could not unload {name}: {error}"),
    }
}

/// Whether attaching will try fentry on `oom_kill_process`: allowed by the
/// options, with kernel BTF to attach by.
fn fentry_wanted(ctx: &Context<'_>) -> bool {
    ctx.layout.is_some() && ctx.options.oom_kill_process.allows(AttachMode::Fentry)
}

fn fentry_btf<'a>(ctx: &'a mut Context<'_>) -> Result<&'a Btf, AttachError> {
    if ctx.fentry_btf.is_none() {
        ctx.fentry_btf =
            Some(Btf::from_sys_fs().map_err(|e| AttachError::FentryBtf(e.to_string()))?);
    }
    ctx.fentry_btf
        .as_ref()
        .ok_or_else(|| AttachError::FentryBtf("unavailable".into()))
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, AttachError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(AttachError::NoProgram(name))?;
    prog.try_into()
        .map_err(|e: ProgramError| AttachError::Program {
            program: name,
            reason: describe(&e),
        })
}
