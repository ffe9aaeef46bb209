//! oomtrace's eBPF programs. Built for `bpfel-unknown-none` by aya-build from
//! `oomtrace/build.rs` and embedded in the collector, which decides at run
//! time which of them to load and attach (see `oomtrace/src/probes.rs`).
//!
//! Programs, and the kernel prototype each depends on:
//! - `mark_victim_raw`: raw tracepoint `mark_victim`,
//!   `TP_PROTO(struct task_struct *task, uid_t uid)` (6.9+) or
//!   `TP_PROTO(int pid)` before; only arg0 is used, and only where BTF says it
//!   is a `struct task_struct *` (the collector checks).
//! - `mark_victim_tp`: classic tracepoint `oom:mark_victim`, fields at offsets
//!   read from tracefs.
//! - `oom_kill_process_{fentry,kprobe}` and `_{fexit,kretprobe}`:
//!   `static void oom_kill_process(struct oom_control *oc, const char *message)`
//!   in mm/oom_kill.c.
//! - `sched_process_exit_{raw,tp}`: `sched_process_exit`, which do_exit()
//!   fires after setting `tsk->exit_code` and decrementing `signal->live`.
//! - `signal_generate_raw`: raw tracepoint `signal_generate`,
//!   `TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct
//!   *task, int group, int result)`, fired by __send_signal_locked().
//!
//! Modules: `programs` (the entry points), `signals` (the signal hook and
//! containers' PID 1 exits), `registry` (the `VICTIMS` map and
//! its key rule), `maps` (the record stream and counters), `kernel` (reads
//! of kernel memory at offsets from BTF).
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// Inline BPF assembly, for the one atomic instruction core does not offer here.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod kernel;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod registry;
#[cfg(target_arch = "bpf")]
mod signals;

/// The host build of this binary is empty: the programs exist only for the
/// bpf target. (`cargo build --workspace` still type-checks the crate.)
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a program the verifier accepted: a panic path would be an
    // infinite loop, which the verifier rejects at load time.
    loop {}
}

#[cfg(target_arch = "bpf")]
// GPL-compatible, as bpf_probe_read_kernel and friends require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
