//! oomtrace: a Linux OOM-kill tracer.
//!
//! Data flow: `probes` loads the eBPF programs with offsets from `offsets`
//! (BTF) and layouts from `tracefs`; `cmd::run` reads the ring buffer,
//! `decode`s kernel records, `enrich`es them into `schema` records, `join`s
//! each kill with its victim's exit, and writes them to a `sink`.

mod attribution;
mod clock;
mod cmd;
mod decode;
mod enrich;
mod host;
mod join;
mod offsets;
mod probes;
mod schema;
mod sink;
mod tracefs;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Trace Linux OOM kills from inside the kernel.
///
/// For every process the kernel's OOM killer kills, oomtrace writes one
/// record, taken at the moment of the kill: the victim (pid, comm,
/// oom_score_adj, RSS by kind), its cgroup and that memcg's usage and limit,
/// the task whose allocation failed, why this victim was chosen (where the
/// kernel allows hooking oom_kill_process), and the victim's exit (137 =
/// 128 + SIGKILL), joined from the kernel's own exit hook.
///
/// Start with `oomtrace check` to see what this kernel allows, then
/// `oomtrace run`. Needs root (CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN).
#[derive(Debug, Parser)]
#[command(name = "oomtrace", version, max_term_width = 100)]
struct Cli {
    /// More diagnostics on stderr (-v: info, -vv: debug, including the
    /// eBPF programs' own messages). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trace OOM kills, one record per line, until SIGINT or SIGTERM.
    ///
    /// Writes a `start` record once every probe is attached (the ready
    /// signal), then one `oom_kill` record per kill, `lost` if the kernel
    /// had to drop records, and `stop` at the end. Exit status 0 on a
    /// signal or when the reader of stdout goes away.
    ///
    /// Example: oomtrace run --format text
    Run(cmd::run::RunArgs),
    /// Show this machine's facts and what would attach where, and why.
    ///
    /// Loads and attaches every probe for real, then detaches. Exits 1 when
    /// no OOM kill could be traced.
    Check(cmd::check::CheckArgs),
    /// Print the JSON Schema of the output records.
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_target(false)
        .init();
    let result = match cli.command {
        Command::Run(args) => cmd::run::run(args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => cmd::check::check(args),
        Command::Schema => cmd::schema::schema().map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("oomtrace: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
