//! Nacos registry adapter (feature `nacos`).
