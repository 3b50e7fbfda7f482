//! (reliability suite: names) — filled in by its own commit.
