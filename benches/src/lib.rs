//! Criterion benchmarks of the workspace live in `benches/`; this crate has no code of its own.
