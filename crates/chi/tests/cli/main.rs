//! Integration tests of the `chi` binary: each runs the real executable.
//!
//! The embedded registry is shared the way users share it: a `chi agent` serves it on its admin
//! port and the other commands (and other agents) reach it with `--registry chi://host:port`.

/// The library's registry harness: where the real registry binaries are, free ports.
#[allow(unexpected_cfgs)]
#[path = "../../../chi-discovery/tests/it/harness/mod.rs"]
mod harness;

mod registries;

mod agent;
mod check;
mod config;
mod crash;
mod names;
mod proxy;
mod real;
mod select;
mod support;
mod xds;
