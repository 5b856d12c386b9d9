//! chatcore-sqlite: filled in by its own issue.
