//! chatcore-redis: filled in by its own issue.
