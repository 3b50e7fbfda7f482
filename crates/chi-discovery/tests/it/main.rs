//! Integration tests: one binary, one module per area. Registry tests run against real servers
//! that the harness starts on loopback (see `harness`).

mod harness;
mod health;

#[cfg(feature = "consul")]
mod consul;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "nacos")]
mod nacos;
