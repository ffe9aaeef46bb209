//! oomtrace's output records: the public contract, schema version 1.
//!
//! `oomtrace run` writes one of these per line, as JSON (NDJSON) or as text.
//! This crate holds their types and nothing else of the collector: the
//! collector fills them, and `oomtrace report`, the tests and anyone's own
//! code read them with [`read`].
//!
//! Rules every record follows:
//! - `type` names the record and `schema` is [`SCHEMA_VERSION`].
//! - `hostname`, `boot_id` and `run_id` say where it comes from: together
//!   with `seq` they identify a kill across collector restarts and nodes.
//! - Sizes are bytes. `time` is RFC 3339 UTC with nanoseconds and `boot_ns`
//!   is CLOCK_BOOTTIME (the clock of `bpf_ktime_get_boot_ns`).
//! - A value this kernel or attach mode cannot give is `null`: never made
//!   up, never read from a guessed offset.
//!
//! Compatibility: within a schema version, fields are only added, and every
//! added field is optional in the JSON Schema (`#[serde(default)]` here), so
//! records written before it still validate and still read. Renaming or
//! removing a field, or changing its meaning, bumps `schema`. Unknown fields,
//! record types and enum values (from a newer oomtrace) are read, not
//! rejected: they come out as [`Record::Unknown`] and `Unknown` variants.

mod kill;
mod memory;
mod rank;
pub mod read;
mod sample;
mod schema;
mod session;
mod signal;
mod stall;
pub mod text;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use kill::{
    CgroupRef, Constraint, Container, Exit, K8s, KernelLog, KillSource, LateExit, LimitScope,
    MemcgSource, MemcgUnknown, Oom, OomKill, Qos, Rss, Runtime, Trigger, Victim, comm_fields,
    text_fields,
};
pub use memory::{KernelStat, Memcg, MemcgEvents, MemcgLevel};
pub use rank::{RankCandidate, RankMemcg, RankProcess, RankSkip};
pub use sample::{Growth, GrowthKind, Memory, MemoryStat, Pressure, PressureSource};
pub use schema::{
    breaking_changes, committed_schema_path, field_tables, fill_field_tables, json_schema,
};
pub use session::{
    AttachAttempt, AttachMode, CgroupMode, CollectorStatus, Counters, Heartbeat, Hook, HostFacts,
    KernelLogStatus, Lost, MemoryController, ProbeStatus, SelfSetting, Start, Stop, StopReason,
};
pub use signal::{
    CONTAINER_RUNTIMES, ContainerExit, ExitCause, KindEvidence, OtherOomKills, Sender, SenderKind,
    SignalCode, SignalKill, SignalSource, SigtermBefore, USERSPACE_OOM_KILLERS,
    sender_kind_by_comm,
};
pub use stall::{OomStall, StallCause, StallPhase, StuckTask};

pub const SCHEMA_VERSION: u32 = 1;

/// One line of output.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Start(Box<Start>),
    OomKill(Box<OomKill>),
    LateExit(Box<LateExit>),
    SignalKill(Box<SignalKill>),
    ContainerExit(Box<ContainerExit>),
    OomStall(Box<OomStall>),
    Lost(Box<Lost>),
    Heartbeat(Box<Heartbeat>),
    Stop(Box<Stop>),
    /// One process, from `oomtrace rank --json`.
    RankProcess(Box<RankProcess>),
    /// One memory cgroup with a limit, from `oomtrace rank --json`.
    RankMemcg(Box<RankMemcg>),
    /// A record type from a newer oomtrace (read, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl Record {
    /// The record's `type`, as written.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::OomKill(_) => "oom_kill",
            Self::LateExit(_) => "late_exit",
            Self::SignalKill(_) => "signal_kill",
            Self::ContainerExit(_) => "container_exit",
            Self::OomStall(_) => "oom_stall",
            Self::Lost(_) => "lost",
            Self::Heartbeat(_) => "heartbeat",
            Self::Stop(_) => "stop",
            Self::RankProcess(_) => "rank_process",
            Self::RankMemcg(_) => "rank_memcg",
            Self::Unknown => "unknown",
        }
    }

    /// The record's `schema`; None for a record of an unknown type.
    pub fn schema(&self) -> Option<u32> {
        match self {
            Self::Start(r) => Some(r.schema),
            Self::OomKill(r) => Some(r.schema),
            Self::LateExit(r) => Some(r.schema),
            Self::SignalKill(r) => Some(r.schema),
            Self::ContainerExit(r) => Some(r.schema),
            Self::OomStall(r) => Some(r.schema),
            Self::Lost(r) => Some(r.schema),
            Self::Heartbeat(r) => Some(r.schema),
            Self::Stop(r) => Some(r.schema),
            Self::RankProcess(r) => Some(r.schema),
            Self::RankMemcg(r) => Some(r.schema),
            Self::Unknown => None,
        }
    }

    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Self::Start(r) => Some(&r.origin),
            Self::OomKill(r) => Some(&r.origin),
            Self::LateExit(r) => Some(&r.origin),
            Self::SignalKill(r) => Some(&r.origin),
            Self::ContainerExit(r) => Some(&r.origin),
            Self::OomStall(r) => Some(&r.origin),
            Self::Lost(r) => Some(&r.origin),
            Self::Heartbeat(r) => Some(&r.origin),
            Self::Stop(r) => Some(&r.origin),
            Self::RankProcess(r) => Some(&r.origin),
            Self::RankMemcg(r) => Some(&r.origin),
            Self::Unknown => None,
        }
    }
}

/// Where a record comes from, in every record. Null only in records written
/// before these fields existed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Origin {
    /// The node's hostname (`/proc/sys/kernel/hostname`).
    #[serde(default)]
    pub hostname: Option<String>,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): new at every
    /// boot, different on every node.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// Random, new at every collector start: `seq` restarts at 0 with it.
    #[serde(default)]
    pub run_id: Option<String>,
}
