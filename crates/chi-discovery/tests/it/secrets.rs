//! (reliability suite: secrets) — filled in by its own commit.
