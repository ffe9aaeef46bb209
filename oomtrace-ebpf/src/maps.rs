//! The maps every program shares: the record stream and the counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use oomtrace_ebpf::{
    KernelSigkill, KillScratch, OomContext, OomMm, SigtermSeen, counter, scratch_slot,
};

/// The one ordered stream of records to the collector. A kill record is
/// `KILL_RECORD_MIN` (1,824) bytes plus its cgroup path's length, at most
/// `KILL_RECORD_MAX` (5,919), and the ring adds an 8-byte header: 1 MiB
/// holds about 550 kills with 60-byte paths, 500 with kubelet-length ones
/// (250 bytes), 176 at the longest. The collector can resize it
/// (`map_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Where each CPU builds a kill record before it is copied into `EVENTS` at
/// its used length (`bpf_ringbuf_output`): a reservation has a size fixed
/// at load time, the longest record's, and a path's length is only known
/// once walked. A program does not nest in itself on a CPU, but a signal
/// can be generated in an interrupt on top of another program, so each
/// program that builds a record has its own slot
/// (`oomtrace_ebpf::scratch_slot`).
#[map]
pub static KILL_SCRATCH: PerCpuArray<KillScratch> =
    PerCpuArray::with_max_entries(scratch_slot::LEN, 0);

/// SIGKILLs the kernel sent (SI_KERNEL), by target tid, for `mark_victim`
/// to claim: see `oomtrace_ebpf::KernelSigkill`. The LRU drops the
/// unclaimed ones (the kernel's other SIGKILLs, such as
/// zap_pid_ns_processes()'s when a container's PID 1 dies).
#[map]
pub static OOM_SIGKILLS: LruHashMap<u32, KernelSigkill> = LruHashMap::with_max_entries(1024, 0);

/// The mm of each recent OOM victim: see `oomtrace_ebpf::OomMm`.
#[map]
pub static OOM_MMS: LruHashMap<u64, OomMm> = LruHashMap::with_max_entries(256, 0);

/// The last SIGTERM each thread group got, by tgid: see
/// `oomtrace_ebpf::SigtermSeen`.
#[map]
pub static SIGTERMS: LruHashMap<u32, SigtermSeen> = LruHashMap::with_max_entries(4096, 0);

/// `oom_kill_process` context, keyed by the killing thread's pid_tgid (see
/// `OomContext`).
#[map]
pub static OOM_CONTEXTS: HashMap<u64, OomContext> = HashMap::with_max_entries(1024, 0);

/// Loss counters and the kill sequence (see `oomtrace_ebpf::counter`).
#[map]
static COUNTERS: Array<u64> = Array::with_max_entries(counter::LEN, 0);

/// Adds one to a counter and returns its previous value.
#[inline(always)]
pub fn bump(index: u32) -> u64 {
    match COUNTERS.get_ptr_mut(index) {
        Some(value) => fetch_add(value, 1),
        None => 0,
    }
}

/// A full memory barrier: an atomic read-modify-write of a counter, adding
/// 0 (`lock xadd` on x86, `ldaddal` on arm64). What was stored before it is
/// visible to every CPU before anything loaded after it, which plain map
/// updates (a store under a bucket lock) do not promise.
#[inline(always)]
pub fn full_fence() {
    if let Some(value) = COUNTERS.get_ptr_mut(counter::KILL_SEQ) {
        fetch_add(value, 0);
    }
}

/// Adds `n` to the u64 at `word` and returns its previous value, in one
/// instruction atomic across CPUs: BPF_ATOMIC BPF_ADD|BPF_FETCH (Linux
/// 5.12+). core's AtomicU64 is not available on the bpf target (it has no
/// compare-and-swap), so this is the instruction itself.
#[inline(always)]
pub fn fetch_add(word: *mut u64, n: u64) -> u64 {
    let mut value = n;
    // SAFETY: callers pass an 8-byte aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_add((u64 *)({p} + 0), {v})",
            p = in(reg) word,
            v = inout(reg) value,
        );
    }
    value
}

/// Sets `bits` in the u64 at `word` and returns its previous value:
/// BPF_ATOMIC BPF_OR|BPF_FETCH, fully ordered, so what was stored before it
/// is seen by whoever reads the bit.
#[inline(always)]
pub fn fetch_or(word: *mut u64, bits: u64) -> u64 {
    let mut value = bits;
    // SAFETY: callers pass an 8-byte aligned u64 in a map value.
    unsafe {
        core::arch::asm!(
            "{v} = atomic_fetch_or((u64 *)({p} + 0), {v})",
            p = in(reg) word,
            v = inout(reg) value,
        );
    }
    value
}
