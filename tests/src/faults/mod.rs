//! Fault scenarios: what the collector does when the kernel or the world
//! misbehaves. Correctness only; speed is measured by `cargo xtask bench`.
//!
//! - `stuck`: victims that cannot finish exiting (a hung FUSE mount);
//! - `storms`: 200 kills at once, in the allocator's and in production's
//!   shape (shell pipelines), and SIGTERM in the middle of one;
//! - `backpressure`: a ring buffer too small, and a reader that stops;
//! - `output`: a stdout that blocks at shutdown, a full disk, a rotated
//!   log file, stdout closed at start.

mod backpressure;
mod output;
mod storms;
mod stuck;

use std::time::Duration;

pub use backpressure::{
    blocked_reader_does_not_stall_the_ring, tiny_ring_buffer_counts_every_loss,
};
pub use output::{
    closed_stdout_at_start_is_said_loudly, full_disk_keeps_whole_lines_and_resumes,
    sighup_reopens_and_other_signals_stop_cleanly,
    sigterm_with_blocked_output_stops_in_bounded_time,
};
pub use storms::{
    pipeline_storm_joins_every_exit, pipeline_storm_late_exits_complete_the_join,
    sigterm_mid_storm_flushes_everything, storm_every_kill_once,
};
pub use stuck::stuck_victims_are_evicted_at_the_cap;

const KILL_TIMEOUT: Duration = Duration::from_secs(30);
