//! (reliability suite: faults) — filled in by its own commit.
