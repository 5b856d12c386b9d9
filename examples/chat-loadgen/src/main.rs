//! Filled in by its own issue.
fn main() {}
