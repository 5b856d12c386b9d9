//! chatcore-mysql: filled in by its own issue.
