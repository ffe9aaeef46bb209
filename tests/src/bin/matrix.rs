//! Runs the attach-mode matrix (see `oomtrace_tests::matrix`) on the running
//! kernel: on the host, or as the payload of a VM's /init.
//!
//! Usage: oomtrace-matrix [--oomtrace PATH] [--workload PATH] [--mode NAME]
//! [--scenario NAME[,NAME...]] (the binaries default to siblings of this
//! one; --mode runs only that one, --scenario only those). Exits 1 if any
//! scenario failed.
#![allow(
    clippy::unwrap_used,
    reason = "a test runner: failing loudly is the point"
)]

use std::{path::PathBuf, process::ExitCode};

use oomtrace_tests::{Env, matrix};

fn main() -> ExitCode {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let mut oomtrace = dir.join("oomtrace");
    let mut workload = dir.join("oomtrace-workload");
    let mut mode = None;
    let mut scenario = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--oomtrace" => oomtrace = PathBuf::from(value()),
            "--workload" => workload = PathBuf::from(value()),
            "--mode" => mode = Some(value()),
            "--scenario" => scenario = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    let env = Env::new(oomtrace, workload);
    let totals = matrix::run(&env, mode.as_deref(), scenario.as_deref());
    if totals.fail == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
