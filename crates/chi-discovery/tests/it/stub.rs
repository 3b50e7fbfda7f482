//! (reliability suite: stub) — filled in by its own commit.
