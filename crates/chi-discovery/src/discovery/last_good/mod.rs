//! The last-known-good file: each service's last good list on disk, so that a process that
//! restarts while the registry is down starts with the last list instead of nothing.
//!
//! Why: the cache already keeps serving the last good list through an outage (docs/DESIGN.md
//! §4), but only in memory; a process that restarts (a deploy, a crash, a node drain) during
//! the outage has no list and fails every call to every service it depends on, which turns a
//! registry outage into an outage of everything. Others keep a copy for this: Nacos' clients
//! write every service's list to their naming cache directory and serve from it (its
//! `FailoverReactor` and failover directory; `namingLoadCacheAtStart`) when the server cannot
//! be reached, and gRPC keeps a channel on its last good address list when the name resolver
//! then reports an error instead of dropping to nothing.
//!
//! The rules, so the file can only help:
//!
//! - **What is written**: a list the registry answered successfully (a discover, a refresh, a
//!   watch update), never a list served stale, and only when it changed; a healthy registry's
//!   confirmed empty answer is written too (an empty list), so after a restart the process
//!   serves what it would have served had it kept running: the service has no instances.
//! - **When**: after the answer is in the cache, by a writer thread of its own; a pick never
//!   waits for a disk, and a failed write is a warning, never an error of the discovery call.
//! - **How**: atomically (a temporary file in the same directory, fsynced, renamed into place),
//!   with a format version, the service name, the registry's identity
//!   ([`Registries::identity`](crate::registry::Registries::identity)), the time and a
//!   checksum.
//! - **When it is read**: only when the first discover of a service cannot get an answer (a
//!   transient error after the retries), and only if it passes every check: a corrupt or
//!   truncated file, a checksum mismatch, another version, another service or another registry
//!   is ignored with a warning. Its list is served marked stale ([`Snapshot::is_stale`]), and the
//!   background refresh's first live answer replaces it. It never outranks a live answer.
//!
//! Nothing deletes a file: a service that is forgotten or evicted from the cache keeps its last
//! list on disk for the next start.
//!
//! [`Snapshot::is_stale`]: crate::Snapshot::is_stale

mod file;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::SystemTime;

pub(crate) use file::Loaded;

use crate::instance::Instance;
use crate::util::lock;

/// Where and for which registry the cache keeps last-known-good files
/// ([`CacheConfig::last_known_good`](super::CacheConfig::last_known_good)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastKnownGood {
    /// The directory: one file per service, created when the first list is written. A relative
    /// path is relative to the process's working directory.
    pub dir: PathBuf,
    /// The identity of the registry the lists come from (from the config,
    /// [`Registries::identity`](crate::registry::Registries::identity)); a file written for
    /// another identity is never read.
    pub registry: String,
}

impl LastKnownGood {
    /// Files in `dir`, for lists from `registry`.
    pub fn new(dir: impl Into<PathBuf>, registry: impl Into<String>) -> Self {
        LastKnownGood {
            dir: dir.into(),
            registry: registry.into(),
        }
    }

    /// The file that holds the last good list of `service`. Its name is built from the service
    /// name (percent-encoded, with a hash), never taken from it.
    pub fn path(&self, service: &str) -> PathBuf {
        self.dir.join(file::file_name(service))
    }
}

/// One list to write.
struct Job {
    service: String,
    instances: Vec<Instance>,
}

/// The cache's side of the files: queues writes to a writer thread, reads on demand.
pub(crate) struct Store {
    config: LastKnownGood,
    /// The writer thread's queue, started with the first write. The thread ends, after writing
    /// what is queued, when the store (the cache, the client) is dropped.
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    /// Held while a list is stored in the cache and queued here, so the queue's order is the
    /// cache's order and the file ends with the cache's last list.
    pub(crate) order: Mutex<()>,
}

impl Store {
    pub(crate) fn new(config: LastKnownGood) -> Self {
        Store {
            config,
            writer: Mutex::new(None),
            order: Mutex::new(()),
        }
    }

    pub(crate) fn config(&self) -> &LastKnownGood {
        &self.config
    }

    /// Queues `instances`, a live answer of the registry, to be written as the last good list of
    /// `service`. Never blocks on I/O.
    pub(crate) fn save(&self, service: &str, instances: Vec<Instance>) {
        let job = Job {
            service: service.to_owned(),
            instances,
        };
        let mut slot = lock(&self.writer);
        let job = match slot.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                // The thread is gone (it cannot panic on a write, but if it did): start another.
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::channel();
        let config = self.config.clone();
        let spawned = std::thread::Builder::new()
            .name("chi-last-good".into())
            .spawn(move || writer(&config, &rx));
        match spawned {
            Ok(_) => {
                // The receiver lives in the thread just started, so this send cannot fail.
                let _ = tx.send(job);
                *slot = Some(tx);
            }
            Err(e) => tracing::warn!(
                service = %job.service,
                error = %e,
                "cannot start the last-known-good writer; the list is not saved"
            ),
        }
    }

    /// The last good list of `service` from its file, if there is one that passes every check.
    /// Blocking I/O: call it off the runtime's threads. A rejected file is logged and ignored.
    pub(crate) fn load(&self, service: &str) -> Option<Loaded> {
        let path = self.config.path(service);
        match file::read(&self.config.dir, service, &self.config.registry) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    %service,
                    path = %path.display(),
                    error = %e,
                    "ignoring the last-known-good file"
                );
                None
            }
        }
    }
}

/// The writer thread: takes every queued job, keeps the last per service, writes those.
fn writer(config: &LastKnownGood, rx: &mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut latest: HashMap<String, Vec<Instance>> = HashMap::new();
        latest.insert(first.service, first.instances);
        while let Ok(job) = rx.try_recv() {
            latest.insert(job.service, job.instances);
        }
        for (service, instances) in latest {
            write(config, &service, &instances);
        }
    }
}

fn write(config: &LastKnownGood, service: &str, instances: &[Instance]) {
    let result = file::encode(service, &config.registry, instances, SystemTime::now())
        .and_then(|bytes| file::write_atomic(&config.dir, service, &bytes));
    match result {
        Ok(path) => tracing::debug!(
            %service,
            path = %path.display(),
            instances = instances.len(),
            "wrote the last-known-good list"
        ),
        Err(e) => tracing::warn!(
            %service,
            dir = %config.dir.display(),
            error = %e,
            "cannot write the last-known-good list; the previous file, if any, is kept"
        ),
    }
}
