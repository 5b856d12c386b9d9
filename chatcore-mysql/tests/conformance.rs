//! The chatcore conformance suite against MariaDB/MySQL (`CHATCORE_MYSQL_URL`), each scenario
//! on its own database.

mod common;

chatcore::store_conformance_tests!(common::fresh_store);
