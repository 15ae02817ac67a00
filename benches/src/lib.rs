//! Benchmarks only; see `benches/hot_path.rs`.
