//! chatcore-axum: filled in by its own issue.
