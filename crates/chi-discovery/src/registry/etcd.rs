//! etcd v3 registry adapter (feature `etcd`).
