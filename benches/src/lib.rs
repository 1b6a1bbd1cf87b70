//! Criterion benchmarks of the workspace live in `benches/`, the peers of the side-by-side benchmark in `peers/` and `src/bin/`; this crate has no library code.
