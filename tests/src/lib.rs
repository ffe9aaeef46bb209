//! oomtrace's end-to-end test harness and scenarios. Everything here needs
//! root: it creates memory cgroups, causes real OOM kills in them, and reads
//! the kernel log.

pub mod attribution;
pub mod cgroup;
pub mod collector;
pub mod contract;
pub mod deploy;
pub mod faults;
pub mod fired_limit;
pub mod kmsg;
pub mod matrix;
pub mod memcg_counters;
pub mod memory;
pub mod memory_edges;
pub mod memory_scale;
pub mod messages;
pub mod metrics;
pub mod operations;
pub mod paths;
pub mod rank;
pub mod readme;
pub mod report;
pub mod runtimes;
pub mod scenarios;
pub mod signals;
pub mod signals_vm;
pub mod stall;
pub mod storm;
pub mod workload;

pub use collector::Env;
