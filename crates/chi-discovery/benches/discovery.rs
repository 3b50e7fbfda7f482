//! Discovery cache benchmarks (written next).

fn main() {}
