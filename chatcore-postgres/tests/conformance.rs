//! The chatcore conformance suites (`Store` and `SessionStore`) against PostgreSQL
//! (`CHATCORE_POSTGRES_URL`), each scenario on its own database.

mod common;

chatcore::store_conformance_tests!(common::fresh_store);
chatcore::session_store_conformance_tests!(common::fresh_session_store);
