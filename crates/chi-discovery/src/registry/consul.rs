//! Consul registry adapter (feature `consul`).
