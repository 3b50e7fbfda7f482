//! Integration tests of the `chi` binary: each runs the real executable.
//!
//! The embedded registry is shared the way users share it: a `chi agent` serves it on its admin
//! port and the other commands (and other agents) reach it with `--registry chi://host:port`.

mod agent;
mod agent_multi;
mod agent_tls;
mod auth;
mod bounds;
mod check;
mod config;
mod console;
mod crash;
mod dns;
mod names;
mod orca;
mod proxy;
mod proxy_client_region;
mod proxy_picks;
mod real;
mod registry_chi;
mod select;
mod support;
mod xds;
mod xds_csds;
mod xds_health;
mod xds_orca;
mod xds_real;
mod xds_resilience;
mod xds_tls;
