//! Which limit fired. The memcg whose limit fired is reported exactly from
//! the kernel's own `oom-kill:` line when it is read, and otherwise derived
//! from the usage of the memcgs that hold both the victim and the task whose
//! allocation failed. These scenarios build the nested layouts where a naive
//! derivation names the wrong cgroup, and check the record against what the
//! kernel logged.

use serde_json::Value;

use crate::{
    cgroup::MemCgroup,
    collector::{Collector, Env},
    kmsg::Kmsg,
    scenarios::{LIMIT, Workload, assert_exit_137, assert_sigkilled},
};

const KILL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Issue 12's case. /P is limited to 64 MiB and holds B and C. The victim
/// (oom_score_adj 1000) holds 24 MiB in B, and B's own limit is set just above
/// its usage, so B sits at its limit. A task in C then allocates until P's
/// limit fires. The kernel says `oom_memcg=/P`; B must not be blamed.
///
/// The victim is idle when it is killed, so on Linux 6.13+ its exit hook can
/// run before the OOM killer marks it: its exit must still be joined (it
/// was lost in half the runs before the registry learned of exits before
/// `mark_victim`).
///
/// Two collectors watch the same kill: one reads the kernel log (the
/// default), one does not (`--no-kernel-log`) and must derive /P from the
/// levels that hold both tasks.
pub fn sibling_at_its_own_limit_is_not_blamed(env: &Env) {
    let mut p = MemCgroup::create("nested", Some(LIMIT));
    let p_path = p.path.clone();
    let c_dir = p.child("C", None).dir_str().to_string();
    let b = p.child("B", None);
    let b_dir = b.dir_str().to_string();
    let mut with_log = Collector::start(env, &[]);
    let mut without_log = Collector::start(env, &["--no-kernel-log"]);
    let mut kmsg = Kmsg::open();
    let mut victim = Workload::spawn(
        env,
        "alloc",
        &["--cgroup", &b_dir, "--adj", "1000", "--hold-mib", "24"],
    );
    victim.said("held");
    b.set_limit(b.usage() + 64 * 1024);
    let mut trigger = Workload::spawn(env, "alloc", &["--cgroup", &c_dir, "--adj", "0"]);
    assert_sigkilled(victim.wait(), "the victim in B");
    let kernel = kmsg.killed(victim.pid(), KILL_TIMEOUT);
    // The trigger goes on allocating into P, and is killed in turn.
    assert_sigkilled(trigger.wait(), "the allocator in C");
    if let Some(line) = &kernel.context {
        assert_eq!(
            line.oom_memcg.as_deref(),
            Some(p_path.as_str()),
            "the kernel's oom_memcg"
        );
    }
    for (collector, reads_log) in [(&mut with_log, true), (&mut without_log, false)] {
        let record = collector.kill_of(victim.pid(), KILL_TIMEOUT);
        // The victim sleeps until the kill, so it can reach its exit hook
        // before the OOM killer has marked it (Linux 6.13+): still joined.
        assert_exit_137(&record);
        let oom = &record["oom"];
        assert_eq!(
            oom["memcg_path"],
            p_path.as_str(),
            "P's limit fired, not B's: {record}"
        );
        assert_eq!(oom["limit_scope"], "cgroup", "{record}");
        assert_eq!(record["memcg"]["path"], format!("{p_path}/B"), "{record}");
        assert_kernel_log(&record, reads_log, kernel.context.is_some());
    }
}

/// `oom.kernel_log` and `oom.memcg_source` agree with what the kernel
/// printed: `matched` and `kernel_log` when the test's own reading of
/// /dev/kmsg found the `oom-kill:` line for this kill; `absent` when the
/// kernel's ratelimit held it back.
pub fn assert_kernel_log(record: &Value, reads_log: bool, kernel_printed_summary: bool) {
    let oom = &record["oom"];
    let hooked = oom["memcg_source"] == "oom_kill_process";
    match (reads_log, kernel_printed_summary) {
        (false, _) => {
            assert_eq!(oom["kernel_log"], "not_read", "{record}");
            if !hooked {
                assert_eq!(oom["memcg_source"], "usage_at_limit", "{record}");
            }
        }
        (true, true) => {
            assert_eq!(oom["kernel_log"], "matched", "{record}");
            assert_eq!(oom["constraint"], "memcg", "{record}");
            if !hooked {
                assert_eq!(oom["memcg_source"], "kernel_log", "{record}");
            }
        }
        (true, false) => {
            assert_eq!(oom["kernel_log"], "absent", "{record}");
            if !hooked {
                assert_eq!(oom["memcg_source"], "usage_at_limit", "{record}");
            }
        }
    }
}
