//! The end-to-end scenarios as cargo tests. Run them with `cargo xtask test`
//! (root; one at a time: `--test-threads=1`).

use oomtrace_tests::{
    Env, attribution, faults, fired_limit, memcg_counters, memory, memory_edges, memory_scale,
    messages, operations, paths, readme, report, scenarios, signals, stall,
};

fn env() -> Env {
    Env::from_cargo(env!("CARGO_BIN_EXE_oomtrace-workload"))
}

macro_rules! scenario {
    ($($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $module::$name(&env());
            }
        )*
    };
}

scenario! {
    scenarios::single_threaded_victim,
    scenarios::multi_threaded_victim,
    scenarios::child_killed_parent_survives,
    scenarios::hostile_comm,
    scenarios::two_cgroups_at_once,
    scenarios::cgroup_removed_after_kill,
    scenarios::parent_limit_fires,
    fired_limit::sibling_at_its_own_limit_is_not_blamed,
    memcg_counters::counters_at_the_kill,
    scenarios::leader_exits_before_victim_thread,
    scenarios::exec_from_non_leader_thread,
    paths::cgroup_depth_at_the_limit,
    paths::cgroup_depth_past_the_limit,
    paths::cgroup_depth_fifteen_and_sixteen,
    paths::cgroup_names_of_255_bytes,
    paths::cgroup_path_at_path_max,
    paths::cgroup_path_past_path_max,
    paths::cgroup_name_not_utf8,
    signals::kill_9_from_a_shell_names_the_shell,
    signals::sigkill_after_sigterm_and_group_kills,
    signals::multi_threaded_target_is_one_record,
    signals::shared_mm_kills_belong_to_the_oom_kill,
    signals::marked_while_dying_is_not_an_oom_kill,
    signals::userspace_oom_killer_is_named_and_confirmed,
    signals::signal_kills_off_leaves_nulls,
    signals::sigkill_burst_leaves_room_for_oom_kills,
    attribution::container_init_killed,
    attribution::container_child_killed_container_survives,
    attribution::container_stop_timeout,
    attribution::container_drained_after_a_child_oom,
    attribution::host_pid_container_main_killed,
    attribution::host_pid_container_child_killed,
    faults::stuck_victims_are_evicted_at_the_cap,
    faults::tiny_ring_buffer_counts_every_loss,
    faults::storm_every_kill_once,
    faults::sigterm_mid_storm_flushes_everything,
    faults::pipeline_storm_joins_every_exit,
    faults::pipeline_storm_late_exits_complete_the_join,
    faults::blocked_reader_does_not_stall_the_ring,
    faults::sigterm_with_blocked_output_stops_in_bounded_time,
    faults::full_disk_keeps_whole_lines_and_resumes,
    faults::sighup_reopens_and_other_signals_stop_cleanly,
    faults::closed_stdout_at_start_is_said_loudly,
    operations::no_privileges_is_a_clear_error,
    operations::signals_write_stop,
    operations::closed_stdout_is_quiet,
    operations::classic_tracepoint_modes,
    operations::text_output_to_file,
    operations::check_and_bad_btf,
    operations::starts_within_the_documented_memory,
    messages::user_namespace_is_named,
    messages::hidden_btf_is_named,
    messages::bad_btf_cause_once,
    messages::bad_places_are_clear_errors,
    messages::check_leaves_mounts_as_found,
    messages::check_json_is_a_start_record,
    messages::check_promises_hold,
    memory::leak_is_a_leak,
    memory::slow_leak_is_a_leak,
    memory::fast_leak_is_a_leak,
    memory_edges::steady_victim_of_a_neighbours_spike,
    memory_edges::page_cache_is_reclaimed_not_killed,
    memory::spike_after_idling_is_a_spike,
    memory::tmpfs_fill_is_shmem,
    memory::born_and_killed_between_samples_is_unknown,
    memory::sampling_off_leaves_memory_null,
    memory::pod_limit_leak_shows_the_pods_memory,
    stall::stall_is_reported_from_start_to_end,
    memory_scale::sampler_within_its_cap_among_2000_memcgs,
    report::real_kills_plain_and_docker_json_file,
    report::heartbeats_at_the_interval,
    report::oomtrace_in_a_container_reported_from_its_docker_log,
}

/// `oomtrace run --metrics-addr` and deploy/alerts.yaml, with a real
/// Prometheus and promtool (`metrics::` filters them).
mod metrics {
    #[test]
    fn prometheus_sees_a_real_kill() {
        oomtrace_tests::metrics::prometheus_sees_a_real_kill(&super::env());
    }

    #[test]
    fn alert_rules_pass_promtool() {
        oomtrace_tests::metrics::alert_rules_pass_promtool();
    }
}

/// Causes the kills whose records README.md shows, and saves them for
/// `cargo xtask docs` (which runs this with `--capture`).
#[test]
#[ignore = "run by `cargo xtask docs --capture`"]
fn readme_examples() {
    readme::capture(&env());
}

// Real container runtimes: Docker (a private dockerd), Podman, containerd.
oomtrace_tests::for_each_runtime! {
    pid1_killed: docker_pid1_killed, podman_pid1_killed;
    child_killed_container_survives:
        docker_child_killed_container_survives, podman_child_killed_container_survives;
    child_killed_then_stopped: docker_child_killed_then_stopped, podman_child_killed_then_stopped;
    two_containers_at_once: docker_two_containers_at_once, podman_two_containers_at_once;
    removed_right_after_the_kill:
        docker_removed_right_after_the_kill, podman_removed_right_after_the_kill;
    stop_timeout_is_a_signal_kill:
        docker_stop_timeout_is_a_signal_kill, podman_stop_timeout_is_a_signal_kill;
    host_pid_main_killed: docker_host_pid_main_killed, podman_host_pid_main_killed;
    interrupted_run_is_swept: docker_interrupted_run_is_swept, podman_interrupted_run_is_swept;
}

#[test]
fn containerd_cri_names() {
    oomtrace_tests::runtimes::containerd::containerd_cri_names(&env());
}

// What ships in deploy/: the image and DaemonSet, the systemd unit, the
// logrotate configuration (tests/src/deploy/).
mod deploy {
    use super::env;

    #[test]
    fn image_records_a_storm_with_the_manifest_privileges() {
        oomtrace_tests::deploy::privileges::image_records_a_storm_with_the_manifest_privileges(
            &env(),
        );
    }

    #[test]
    fn daemonset_validates_against_the_kubernetes_schema() {
        oomtrace_tests::deploy::manifest::daemonset_validates_against_the_kubernetes_schema(&env());
    }

    #[test]
    fn systemd_unit_verifies_and_its_filters_suffice() {
        oomtrace_tests::deploy::systemd::systemd_unit_verifies_and_its_filters_suffice(&env());
    }

    #[test]
    fn logrotate_while_kills_happen_loses_and_splits_nothing() {
        oomtrace_tests::deploy::rotation::logrotate_while_kills_happen_loses_and_splits_nothing(
            &env(),
        );
    }
}

/// `oomtrace rank`'s prediction against the kernel's kill (run them with
/// the filter `rank::`).
mod rank {
    use oomtrace_tests::rank;

    use super::env;

    scenario! {
        rank::rank_predicts_the_largest,
        rank::rank_predicts_adj_over_size,
        rank::rank_predicts_a_near_tie,
    }
}
