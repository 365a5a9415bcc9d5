//! The storage conformance suite: every store operation and state transition,
//! written once against `JobStore` and run on each backend.
//!
//! PostgreSQL cases connect to `SPOOL_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), each in a schema of its own.
//! Where PostgreSQL cannot be reached they are skipped with a loud line on
//! stderr, unless `CI=true`, where they fail.

mod api_keys;
mod batches;
mod completions;
mod concurrency_keys;
mod conformance;
mod fair_share;
mod lists;
mod pg;
mod rate_limits;
mod schedules;
mod webhooks;

use std::sync::Arc;

use spool::store::{JobStore, SqliteStore};
use tempfile::TempDir;

/// A fresh SQLite store in its own directory (kept alive with the store).
pub async fn sqlite_store() -> Option<(Arc<dyn JobStore>, TempDir)> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("conformance.db").display());
    let store = SqliteStore::open(&url).await.expect("the store opens");
    Some((Arc::new(store), dir))
}

/// A fresh PostgreSQL store in a schema of its own (dropped with the guard),
/// or `None` when the test is skipped.
pub async fn postgres_store() -> Option<(Arc<dyn JobStore>, pg::Schema)> {
    let schema = pg::Schema::create().await?;
    let store = schema.open().await;
    Some((Arc::new(store), schema))
}

// Every case, wherever it is written, under one name the suite macro uses.
use api_keys::*;
use batches::*;
use completions::*;
use concurrency_keys::*;
use conformance::*;
use fair_share::*;
use lists::*;
use rate_limits::*;
use schedules::*;
use webhooks::*;

/// Runs each conformance case against a backend: a module of tests named
/// after the cases, each on a fresh store from `$open` (`None`: skipped).
macro_rules! conformance_suite {
    ($backend:ident, $open:path, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some((store, _guard)) = $open().await else { return };
                    crate::$case(store).await;
                }
            )*
        }
    };
}

/// Every case, listed once: `with_every_case!(m!(args))` expands to
/// `m!(args, [cases])`.
macro_rules! with_every_case {
    ($suite:ident!($($args:tt)*)) => {
        $suite!($($args)*, [
            submitted_jobs_can_be_read_back_and_listed,
            claims_take_the_best_priority_first_then_fifo_and_count_an_attempt,
            claims_never_take_more_than_asked_or_jobs_of_other_queues,
            an_attempts_outcome_is_fenced_by_attempt_and_owner,
            outcomes_stored_at_the_same_moment_each_get_their_own_answer,
            outcomes_that_refill_their_slots_hand_each_waiting_job_to_one_of_them,
            a_submission_claims_its_own_job_only_when_nothing_else_in_its_queue_waits,
            a_refill_takes_nothing_from_a_queue_paused_in_the_store,
            a_failed_attempt_with_a_retry_goes_back_to_scheduled_with_its_error,
            a_job_that_succeeds_after_a_failure_shows_no_error_and_keeps_its_history,
            released_jobs_go_back_to_the_queue_without_counting_the_attempt,
            a_queue_paused_in_the_store_gives_no_claims_until_resumed,
            a_queue_is_deleted_only_without_unfinished_jobs_and_keeps_its_finished_ones,
            due_jobs_are_promoted_and_the_next_due_time_is_reported,
            capacity_counts_scheduled_and_queued_jobs_only,
            a_submission_is_all_or_nothing,
            unknown_queues_are_refused,
            keys_are_unique_among_active_jobs,
            idempotency_keys_replay_or_refuse,
            cancelling_waiting_running_and_finished_jobs,
            retry_starts_a_new_series_for_failed_or_cancelled_jobs_only,
            expired_leases_are_rescued_and_the_old_owner_is_fenced,
            an_exclusive_start_rescues_every_job_of_other_owners,
            renewing_leases_reports_jobs_asked_to_cancel,
            renewing_leases_lets_a_job_its_owner_does_not_name_lapse_into_rescue,
            progress_is_stored_for_the_current_attempt_only,
            prune_deletes_only_old_terminal_jobs,
            queues_are_created_updated_and_counted,
            queue_counts_match_the_jobs_after_concurrent_writes,
            the_oldest_ready_job_of_each_queue_is_found_across_its_priorities,
            queue_counts_match_the_jobs_after_every_kind_of_transition,
            batch_counts_follow_every_transition_and_the_last_job_decides_the_status,
            a_batch_whose_jobs_succeed_together_finishes_once_with_each_result_numbered_once,
            a_batch_larger_than_one_insert_stores_each_job_as_submitted,
            results_come_in_finishing_order_after_a_cursor,
            a_dependent_waits_until_its_dependencies_succeed_and_gets_their_results,
            a_failed_dependency_cancels_its_dependents_transitively,
            cancelling_a_waiting_dependency_cancels_its_dependents,
            unknown_dependencies_are_refused_and_nothing_is_stored,
            cancelling_a_batch_cancels_waiting_jobs_and_stops_running_ones,
            retries_respect_finished_batches_and_failed_dependencies,
            prune_keeps_the_jobs_of_a_batch_as_long_as_the_batch,
            a_job_with_a_callback_gets_one_webhook_when_it_ends_and_none_before,
            attempts_are_recorded_and_the_first_body_is_kept,
            a_failed_delivery_is_never_claimed_again,
            a_lapsed_claim_is_claimed_again_and_an_exclusive_start_releases_claims,
            cancelled_and_cascaded_jobs_get_their_webhooks,
            a_batch_webhook_is_written_once_when_the_batch_finishes,
            prune_deletes_webhooks_past_the_retention,
            a_keys_limit_holds_within_one_claim_and_across_claims,
            a_job_whose_key_is_full_does_not_hold_up_the_jobs_behind_it,
            an_ended_holder_frees_its_slot_for_the_next_claim,
            different_keys_and_tenants_are_counted_apart_and_queues_together,
            jobs_without_a_key_are_claimed_as_before,
            each_job_is_held_to_its_own_limit,
            metadata_filters_list_newest_first_and_pages_stitch_by_cursor,
            every_filter_lists_newest_first_across_states_and_pages_stitch_by_cursor,
            stored_keys_are_hashed_listed_until_revoked_and_their_last_use_only_moves_forward,
            claims_serve_tenants_round_robin_then_priority_then_fifo,
            a_tenant_behind_10_000_jobs_of_another_starts_within_20_claims,
            a_tenants_full_key_passes_the_turn_without_holding_up_another_tenant,
            a_queued_jobs_position_counts_the_rounds_before_it,
            a_jobs_trace_context_is_stored_and_read_back,
            a_limit_admits_its_burst_then_one_job_per_interval_and_says_when,
            a_saturated_key_does_not_hold_up_another_keys_jobs,
            changing_a_limit_applies_to_the_next_claim,
            a_hold_closes_a_key_until_it_ends,
            deleting_a_limit_lets_its_jobs_start_unlimited,
            expired_jobs_are_never_claimed_and_end_cancelled_without_an_attempt,
            firing_at_an_injected_now_advances_and_makes_one_job_per_fire_time,
            two_firings_of_one_due_schedule_make_one_job,
            after_ten_minutes_of_downtime_skip_latest_and_all_catch_up_0_1_and_every_missed_fire,
            overlap_skip_records_a_skipped_fire_while_the_previous_job_is_active,
            overlap_cancel_previous_cancels_the_active_job_then_fires,
            a_refused_admission_is_recorded_and_the_schedule_advances,
        ]);
    };
}

with_every_case!(conformance_suite!(sqlite, crate::sqlite_store));
with_every_case!(conformance_suite!(postgres, crate::postgres_store));

/// SQLite fills a submitter's free slot from the admission's own write:
/// the job of an idle queue is running when `submit_and_claim` returns.
#[tokio::test]
async fn a_submission_to_an_idle_queue_is_claimed_by_its_own_write() {
    let Some((store, _dir)) = sqlite_store().await else {
        return;
    };
    completions::assert_an_idle_queues_submission_is_claimed(store).await;
}
