//! The console's live view: one task, started by the first viewer, that keeps the registries'
//! view ([`Collector`]) and turns it, with the process's [`Feed`], into [`Frame`]s published on a
//! `tokio::sync::watch` channel. Every page and event stream reads the latest frame; a frame is
//! published only when what it shows changed, and at most every [`DEBOUNCE`] after a change.
//!
//! The task, and with it every registry watch, stops [`LINGER`] after the last viewer left.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use chi_discovery::routing::{REGION_META, ZONE_META};
use chi_discovery::{HealthStatus, Instance, Registry};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::collect::Collector;
use super::feed::{Feed, Verdict};
use super::model::{InstanceRow, Process, ServiceRow, Status};
use super::render::{self, Chart, Sections};
use crate::sync;
use crate::xds::clients::unix_ms;

/// How long a view is kept after its last viewer left (a reload finds it warm).
const LINGER: Duration = Duration::from_secs(30);
/// How often a frame is made while nothing changes (counters and timers move).
const TICK: Duration = Duration::from_secs(1);
/// How long after a change the frame is made (a burst of changes makes one frame).
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long the first frame waits for every registry to answer.
const READY_MAX: Duration = Duration::from_secs(2);

/// What one update shows.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) status: Status,
    /// The status as JSON (`/ui/api/state`).
    pub(crate) json: String,
    /// The event the page's script applies: the sections' HTML and the charts' data.
    pub(crate) event: String,
}

#[derive(Serialize)]
struct Event<'a> {
    sections: &'a Sections,
    charts: Vec<Chart>,
    services: usize,
    instances: usize,
}

/// The live view; see the module docs.
pub(crate) struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<dyn Registry>,
    feed: Arc<dyn Feed>,
    process: Process,
    frames: watch::Sender<Option<Arc<Frame>>>,
    runner: Mutex<Runner>,
}

struct Runner {
    task: Option<JoinHandle<()>>,
    /// When a viewer last asked.
    wanted: Instant,
}

impl Live {
    pub(crate) fn new(registry: Arc<dyn Registry>, feed: Arc<dyn Feed>, process: Process) -> Live {
        Live {
            inner: Arc::new(Inner {
                registry,
                feed,
                process,
                frames: watch::Sender::new(None),
                runner: Mutex::new(Runner {
                    task: None,
                    wanted: Instant::now(),
                }),
            }),
        }
    }

    /// Every frame from now on (the current one first, once there is one).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Arc<Frame>>> {
        let rx = self.inner.frames.subscribe();
        self.wake();
        rx
    }

    /// The latest frame, waiting for the first one (`None` if it takes more than a few seconds).
    pub(crate) async fn current(&self) -> Option<Arc<Frame>> {
        let mut rx = self.subscribe();
        let wait = rx.wait_for(Option::is_some);
        match tokio::time::timeout(READY_MAX * 3, wait).await {
            Ok(Ok(frame)) => frame.clone(),
            _ => None,
        }
    }

    /// Starts the task unless it runs, and notes that a viewer asked.
    fn wake(&self) {
        let mut runner = self.inner.runner();
        runner.wanted = Instant::now();
        if runner.task.as_ref().is_none_or(JoinHandle::is_finished) {
            runner.task = Some(tokio::spawn(run(Arc::downgrade(&self.inner))));
        }
    }
}

impl Inner {
    fn runner(&self) -> MutexGuard<'_, Runner> {
        sync::lock(&self.runner)
    }

    /// True (and the task slot emptied) when nobody watches and nobody asked for a while.
    fn idle(&self) -> bool {
        let mut runner = self.runner();
        let idle = self.frames.receiver_count() == 0 && runner.wanted.elapsed() > LINGER;
        if idle {
            runner.task = None;
        }
        idle
    }
}

async fn run(inner: Weak<Inner>) {
    let Some(registry) = inner.upgrade().map(|i| i.registry.clone()) else {
        return;
    };
    let collector = Collector::start(&registry);
    let started = Instant::now();
    while !collector.is_ready() && started.elapsed() < READY_MAX {
        let _ = tokio::time::timeout(DEBOUNCE, collector.changed().notified()).await;
    }
    loop {
        let Some(i) = inner.upgrade() else { return };
        let frame = build(&collector, i.feed.as_ref(), &i.process);
        i.frames.send_if_modified(|current| {
            if current.as_ref().is_some_and(|f| f.event == frame.event) {
                return false;
            }
            *current = Some(Arc::new(frame));
            true
        });
        if i.idle() {
            return;
        }
        drop(i);
        tokio::select! {
            () = collector.changed().notified() => tokio::time::sleep(DEBOUNCE).await,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One frame from what the collector and the feed know now.
fn build(collector: &Collector, feed: &dyn Feed, process: &Process) -> Frame {
    let merged = collector.services();
    let verdicts = feed.verdicts();
    let registrations = feed.registrations();
    let services: Vec<ServiceRow> = merged
        .iter()
        .map(|(name, instances)| ServiceRow {
            name: name.clone(),
            instances: instances
                .values()
                .map(|(i, origins)| {
                    let verdict = verdicts.get(&(name.clone(), i.id.clone()));
                    row(i, origins, verdict)
                })
                .collect(),
        })
        .collect();
    let failing = |backend: &str| {
        registrations
            .iter()
            .any(|r| r.backends.iter().any(|b| b.backend == backend && !b.up))
    };
    let status = Status {
        process: process.clone(),
        registries: collector.registries(failing),
        balancing: feed.balancing(&merged),
        registrations,
        services,
        xds: feed.xds_clients(),
        at: unix_ms(SystemTime::now()),
    };
    let sections = render::sections(&status);
    let event = Event {
        sections: &sections,
        charts: render::charts(&status),
        services: status.services.len(),
        instances: status.services.iter().map(|s| s.instances.len()).sum(),
    };
    let event = serde_json::to_string(&event).unwrap_or_default();
    let json = serde_json::to_string(&status).unwrap_or_default();
    Frame {
        status,
        json,
        event,
    }
}

/// An instance's row: the process's verdict where it has one, else the registry's health and
/// who reported it.
fn row(i: &Instance, origins: &[String], verdict: Option<&Verdict>) -> InstanceRow {
    let (health, why) = match verdict {
        Some(v) => (v.health, v.why.clone()),
        None => {
            let why = match i.health {
                HealthStatus::Unhealthy => {
                    Some(format!("reported unhealthy by {}", origins.join(", ")))
                }
                HealthStatus::Unknown => Some("no check has reported yet".to_owned()),
                HealthStatus::Healthy => None,
            };
            (i.health, why)
        }
    };
    InstanceRow {
        id: i.id.clone(),
        address: i.address.clone(),
        port: i.port,
        health: health.as_str(),
        why,
        version: i.version.clone(),
        region: i.meta.get(REGION_META).cloned(),
        zone: i.meta.get(ZONE_META).cloned(),
        weight: i.effective_weight(),
        origins: origins.to_vec(),
    }
}
