//! One module per subcommand, plus what `run` and `check` share.

pub mod check;
pub mod run;
pub mod schema;

use std::path::PathBuf;

use crate::{
    clock,
    host::HostFacts,
    probes::{self, BtfSource, OomKillProbe, ProbeOptions, VictimProbe},
    schema::{CollectorStatus, SCHEMA_VERSION, SelfSetting, Start},
};

/// How to attach: shared by `run` and `check`, so that `check` tells the
/// truth about what `run` with the same flags would do.
#[derive(Clone, Debug, clap::Args)]
pub struct ProbeArgs {
    /// How to hook oom:mark_victim: `raw` reads the victim's task_struct
    /// (needs BTF); `tracepoint` reads the classic tracepoint's fields.
    #[arg(long, value_enum, default_value_t, value_name = "MODE")]
    pub victim_probe: VictimProbe,
    /// How to hook oom_kill_process, which knows the OOM's constraint, the
    /// memcg whose limit fired, and the victim's badness points.
    #[arg(long, value_enum, default_value_t, value_name = "MODE")]
    pub oom_kill_probe: OomKillProbe,
    /// Kernel BTF to take struct offsets from [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "PATH", conflicts_with = "no_btf")]
    pub btf: Option<PathBuf>,
    /// Use no BTF at all: the classic tracepoint only, and only the fields
    /// its format carries (the rest are null).
    #[arg(long)]
    pub no_btf: bool,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    #[arg(long, hide = true)]
    pub ring_buffer_bytes: Option<u32>,
}

impl ProbeArgs {
    pub fn options(&self) -> ProbeOptions {
        let btf = if self.no_btf {
            BtfSource::Disabled
        } else if let Some(path) = &self.btf {
            BtfSource::File(path.clone())
        } else {
            BtfSource::Default
        };
        let victim = if self.no_btf && self.victim_probe == VictimProbe::Auto {
            VictimProbe::Tracepoint
        } else {
            self.victim_probe
        };
        ProbeOptions {
            victim,
            oom_kill: self.oom_kill_probe,
            btf,
            ring_buffer_bytes: self.ring_buffer_bytes,
            ebpf_log: log::log_enabled!(log::Level::Debug),
        }
    }
}

/// The `start` record for an attached tracer.
pub fn start_record(
    host: HostFacts,
    tracer: &probes::Tracer,
    collector: CollectorStatus,
    mut notes: Vec<String>,
) -> Start {
    let boot_ns = clock::boot_ns();
    notes.extend(tracer.notes.iter().cloned());
    Start {
        schema: SCHEMA_VERSION,
        time: clock::rfc3339_from_boot_ns(boot_ns),
        boot_ns,
        version: env!("CARGO_PKG_VERSION").into(),
        host,
        probes: tracer.probes.clone(),
        collector,
        notes,
    }
}

/// Writes `requested` to /proc/self/oom_score_adj: the recorder must outlive
/// the processes it records. Failure (lowering needs CAP_SYS_RESOURCE) is
/// reported, never fatal.
pub fn protect_self(requested: i32) -> SelfSetting {
    let path = "/proc/self/oom_score_adj";
    let error = std::fs::write(path, requested.to_string()).err().map(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (lowering oom_score_adj needs CAP_SYS_RESOURCE)"
        } else {
            ""
        };
        format!("cannot set {path} to {requested}: {e}{hint}")
    });
    let applied = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    SelfSetting {
        requested,
        applied,
        error,
    }
}

/// Sets the collector's nice value. setpriority(PRIO_PROCESS, 0) applies to
/// the calling thread only on Linux, so this runs on the thread that then
/// runs the event loop (a current-thread runtime: the only thread that
/// writes records).
pub fn prioritize_self(requested: i32) -> SelfSetting {
    // SAFETY: setpriority takes plain integers.
    let set = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, requested) };
    let error = (set != 0).then(|| {
        let e = std::io::Error::last_os_error();
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (a negative nice value needs CAP_SYS_NICE)"
        } else {
            ""
        };
        format!("cannot set the collector's nice value to {requested}: {e}{hint}")
    });
    // getpriority can legitimately return -1, so errno tells failure apart.
    // SAFETY: errno is thread-local; getpriority takes plain integers.
    let applied = unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        (*libc::__errno_location() == 0).then_some(nice)
    };
    SelfSetting {
        requested,
        applied,
        error,
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK. Raising it needs
/// CAP_SYS_RESOURCE; later kernels charge the memcg instead, so a failure
/// here is only worth a debug line.
pub fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads one rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {} (fine on Linux 5.11+)",
            std::io::Error::last_os_error()
        );
    }
}
