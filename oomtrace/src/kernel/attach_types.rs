//! What attaching takes (which modes, which BTF) and how it fails, for
//! `attach.rs`: the options `run` and `check` build from their flags, and
//! the errors with the words an operator acts on.

use std::path::PathBuf;

use aya::programs::ProgramError;
use oomtrace_record::AttachMode;

use super::{btf::BtfError, hooks::HookSpec, tracefs::TracefsError};

/// Which modes of a hook may be tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ModeChoice {
    /// Every mode, best first.
    #[default]
    Auto,
    /// This mode only.
    Only(AttachMode),
    /// Do not attach the hook.
    Off,
}

impl ModeChoice {
    pub(super) fn allows(self, mode: AttachMode) -> bool {
        match self {
            Self::Auto => true,
            Self::Only(only) => only == mode,
            Self::Off => false,
        }
    }
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
    pub mark_victim: ModeChoice,
    pub oom_kill_process: ModeChoice,
    pub signal_generate: ModeChoice,
    pub btf: BtfSource,
    /// Overrides the ring buffer size (a power-of-two multiple of the page size).
    pub ring_buffer_bytes: Option<u32>,
    /// Let the programs' aya-log diagnostics through (at debug level).
    pub ebpf_log: bool,
}

impl ProbeOptions {
    pub(super) fn choice(&self, spec: &HookSpec) -> ModeChoice {
        match spec.hook {
            oomtrace_record::Hook::MarkVictim => self.mark_victim,
            oomtrace_record::Hook::OomKillProcess => self.oom_kill_process,
            oomtrace_record::Hook::SignalGenerate => self.signal_generate,
            _ => ModeChoice::Auto,
        }
    }
}

/// Why the collector cannot trace at all. Every message says what to do,
/// and prints each cause once (a variant either prints its cause or is
/// transparent, never both: anyhow's `{:#}` would repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this oomtrace was built without its eBPF programs (AYA_BUILD_SKIP); rebuild it with \
         `cargo xtask build`"
    )]
    NoObject,
    #[error(
        "oomtrace runs in a user namespace other than the host's ({uid_map}), and the kernel \
         allows BPF (creating maps, loading programs) only with capabilities in the initial \
         user namespace: uid 0 and the capabilities this process has inside its own \
         namespace do not count. Run oomtrace on the host, or in a container that shares \
         the host's user namespace (root or CAP_BPF + CAP_PERFMON; not rootless Docker or \
         Podman, no --userns, no Kubernetes `hostUsers: false`)"
    )]
    UserNamespace { uid_map: String },
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("the eBPF object has no map {0}; it does not match this collector")]
    MissingMap(&'static str),
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    /// `hint` is empty, or a sentence on the likely cause (ending in a
    /// space) when every attempt shares one.
    #[error(
        "no OOM kill can be traced: mark_victim could not be attached ({why}). {hint}`oomtrace \
         check` shows the whole attach plan"
    )]
    NoVictimProbe { why: String, hint: String },
}

/// Why one mode of a hook did not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Why there is none: `--no-btf`, or the error reading it.
    #[error("needs kernel BTF, {0}")]
    NoBtf(String),
    #[error("this kernel's {0} passes only a pid (TP_PROTO(int pid), before 6.9), not the task")]
    NoTaskArgument(&'static str),
    #[error("{0} not found in this kernel's BTF")]
    MissingFields(String),
    #[error("{0} is not a function in this kernel's BTF (inlined?)")]
    NotInBtf(&'static str),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// tracefs could not be mounted (the error, kept from the first try).
    #[error("{0}")]
    TracefsUnusable(String),
    #[error("program {0} is missing from the eBPF object")]
    NoProgram(&'static str),
    #[error("{program}: {reason}")]
    Program {
        program: &'static str,
        reason: String,
    },
    #[error("loading the eBPF object: {0}")]
    Load(String),
    #[error("reading kernel BTF for fentry: {0}")]
    FentryBtf(String),
}

/// An error and its causes, on one line.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
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
pub(super) fn describe(error: &ProgramError) -> String {
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
