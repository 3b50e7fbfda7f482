//! (reliability suite: partition) — filled in by its own commit.
