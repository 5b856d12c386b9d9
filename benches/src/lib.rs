//! Criterion benchmarks for chatcore live in `benches/benches/`; run them with
//! `cargo bench -p chatcore-benches`. See BENCHMARKS.md at the repository root.
