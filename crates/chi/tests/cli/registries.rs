//! The library harness's real registries. Its `etcd`, `consul` and `nacos` modules are gated on
//! the library's cargo features, which this crate does not have, so they are included here.

#![allow(dead_code, unreachable_pub)]

pub(crate) use crate::harness::*;

#[path = "../../../chi-discovery/tests/it/harness/consul.rs"]
pub(crate) mod consul;
#[path = "../../../chi-discovery/tests/it/harness/etcd.rs"]
pub(crate) mod etcd;
#[path = "../../../chi-discovery/tests/it/harness/nacos.rs"]
pub(crate) mod nacos;
