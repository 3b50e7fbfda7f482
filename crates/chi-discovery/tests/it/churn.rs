//! (reliability suite: churn) — filled in by its own commit.
