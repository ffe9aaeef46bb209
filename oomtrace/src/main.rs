//! oomtrace: a Linux OOM-kill tracer.
//!
//! The data flow, folder by folder:
//! - `kernel/`: the programs' side seen from userspace: host facts, struct
//!   offsets from BTF, the hook table and its one attach chain, the ring
//!   buffer and the maps;
//! - `pipeline/`: kernel events in, records out: convert, attribute
//!   (container, pod, limit), join each kill with its victim's exit;
//! - `output/`: encoding and the writer behind a bounded queue;
//! - `report/`: `oomtrace report`, the post-mortem over stored records;
//! - `cli/`: the subcommands, which parse arguments and wire the parts.
//!
//! The records themselves are the `oomtrace-record` crate (`record/`).

mod cli;
#[cfg(test)]
mod fixtures;
mod kernel;
mod output;
mod pipeline;
mod rank;
mod report;

fn main() -> std::process::ExitCode {
    cli::main()
}
