//! The HTTP and WebSocket suite, written once and run over every store: each case is an
//! `async fn(Arc<dyn Backend>)`, and [`api_suite!`] turns a store factory into one `#[tokio::test]`
//! per case. A real server on 127.0.0.1 port 0, real clients (reqwest, tokio-tungstenite).

#![allow(dead_code)]

pub mod app;
pub mod cases;
pub mod controls;
pub mod stores;

/// One `#[tokio::test]` per case of the suite, each on a fresh store from `$factory`
/// (an `async fn() -> Arc<dyn chatcore::Backend>`).
#[macro_export]
macro_rules! api_suite {
    ($factory:path) => {
        $crate::api_suite!(@cases $factory;
            auth_register_login_logout,
            login_and_registration_are_limited_per_client_address,
            expired_sessions_are_swept_in_the_background,
            unauthenticated_requests_get_401,
            send_notifies_every_socket_of_both_and_no_one_else,
            concurrent_sends_reach_every_socket_exactly_once,
            form_bodies_trailing_slashes_and_reading_by_id,
            message_validation_errors,
            idempotent_retry_returns_same_message_and_notifies_once,
            send_rate_limit_answers_429_with_retry_after,
            send_policies_answer_403_422_or_rewrite,
            unknown_paths_and_wrong_methods_answer_json,
            cross_site_cookie_requests_are_refused,
            history_pages_with_page_before_and_limit,
            user_directory_filters_and_pages,
            reconnect_with_since_gets_exactly_the_missed_messages,
            since_under_concurrent_sends_has_no_gap_and_no_duplicate,
            too_many_missed_messages_ask_for_resync,
            transport_gap_is_caught_up_from_storage,
            a_silently_lost_notification_is_noticed_by_the_next_one,
            crossed_notifications_arrive_in_position_order,
            a_users_oldest_socket_closes_past_the_limit,
            logout_and_expiry_close_that_sessions_sockets,
            oversized_client_frames_close_with_1009,
            a_long_backlog_is_sent_in_pages_in_order,
            reconnecting_client_gets_every_message_once_in_order,
            client_frames_are_ignored_and_pings_keep_it_alive,
            dead_websocket_is_dropped,
            slow_websocket_reader_catches_up_from_storage_in_order,
            shutdown_sends_close_frames,
            unavailable_storage_answers_503,
            inbox_lists_conversations_with_unread_counts_and_pages,
            marking_read_moves_forward_and_notifies_both,
            read_events_are_replayed_by_since_in_order,
            auth_session_names_the_caller,
        );
        $crate::api_suite!(@controls $factory;
            edit_and_delete_answer_by_role,
            edits_and_deletes_reach_both_sockets_and_are_replayed,
            the_edit_window_answers_403_past_it,
            an_edit_window_allows_edits_within_it,
            export_streams_the_whole_history_page_by_page,
            account_deletion_ends_sessions_tombstones_and_reserves_the_name,
            a_session_ended_elsewhere_closes_its_socket_at_the_recheck,
            blocks_refuse_sends_and_edits_both_ways,
            block_routes_answer_errors_and_list_by_name,
        );
    };
    (@controls $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::suite::app::init_logs();
                $crate::suite::controls::$case($factory().await).await;
            }
        )*
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::suite::app::init_logs();
                $crate::suite::cases::$case($factory().await).await;
            }
        )*
    };
}
