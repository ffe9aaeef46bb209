//! The kernel side, from userspace: what this machine is (`host`), where
//! its struct fields are (`btf`, `tracefs`), which hooks exist and how each
//! attaches (`hooks`, `attach`), and what the programs hand over (`ring`,
//! `maps`), on the programs' clock (`clock`); and what the OOM killer itself
//! logs about each kill (`kmsg`).

pub mod attach;
mod attach_types;
pub mod btf;
pub mod clock;
pub mod hooks;
pub mod host;
pub mod kmsg;
pub mod maps;
pub mod promises;
pub mod ring;
pub mod tracefs;
pub mod userns;
