//! The tasks behind a [`HealthChecker`](super::HealthChecker): one follows a service's membership
//! and starts or stops a checking task per instance; each checking task probes its instance at the
//! interval, records the result and publishes transitions. Kept apart from the checker's API so
//! the timing rules (jitter only shortens a wait, one probe per instance at a time, a permit per
//! probe) read in one place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::{Inner, InstanceHealth, Transition, lock};
use crate::health::{CheckError, HealthSink, HealthState, Probe, Thresholds};
use crate::instance::{HealthCheck, HealthStatus, Instance};
use crate::registry::{Change, WatchStream};
use crate::util::AbortOnDrop;

/// Follows one service's membership, with one checking task per instance.
pub(super) async fn follow(
    inner: Arc<Inner>,
    service: String,
    check: HealthCheck,
    probe: Arc<dyn Probe>,
    mut watcher: WatchStream,
) {
    let mut running: HashMap<String, (Instance, AbortOnDrop)> = HashMap::new();
    let sink: Arc<dyn HealthSink> = inner.client.clone();
    let forget = |id: &str| {
        let mut states = lock(&inner.states);
        states.forget(&(service.clone(), id.to_owned()));
        inner.client.clear_health(&service, id);
    };
    let start = |mut i: Instance| {
        // The key is the watched name, whatever the registry put in the instance.
        i.name = service.clone();
        let generation = lock(&inner.states).start((service.clone(), i.id.clone()));
        AbortOnDrop::spawn(run_instance(
            inner.clone(),
            i,
            check.clone(),
            probe.clone(),
            sink.clone(),
            Some(generation),
        ))
    };
    while let Some(event) = watcher.next().await {
        let upserts = match event {
            Ok(Change::Reset(all)) => {
                let keep: std::collections::HashSet<&str> =
                    all.iter().map(|i| i.id.as_str()).collect();
                let gone: Vec<String> = running
                    .keys()
                    .filter(|id| !keep.contains(id.as_str()))
                    .cloned()
                    .collect();
                for id in gone {
                    running.remove(&id);
                    forget(&id);
                }
                all
            }
            Ok(Change::Add(i) | Change::Update(i)) => vec![i],
            Ok(Change::Remove(i)) => {
                if running.remove(&i.id).is_some() {
                    forget(&i.id);
                }
                continue;
            }
            Err(e) => {
                tracing::debug!(%service, error = %e, "health checker's watch reports an error; it resyncs on its own");
                continue;
            }
        };
        for i in upserts {
            let same_target = running
                .get(&i.id)
                .is_some_and(|(old, _)| old.address == i.address && old.port == i.port);
            if !same_target {
                if running.remove(&i.id).is_some() {
                    // Moved to another address: its old results say nothing about the new one.
                    forget(&i.id);
                }
                let task = start(i.clone());
                running.insert(i.id.clone(), (i, task));
            }
        }
    }
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return interval;
    }
    interval.mul_f64(1.0 - rand::random::<f64>() * jitter)
}

/// Checks one instance until aborted (or until it is deregistered as critical).
pub(super) async fn run_instance(
    inner: Arc<Inner>,
    instance: Instance,
    check: HealthCheck,
    probe: Arc<dyn Probe>,
    sink: Arc<dyn HealthSink>,
    generation: Option<u64>,
) {
    let interval = check.interval.max(Duration::from_millis(1));
    let timeout = check.timeout.max(Duration::from_millis(1));
    let key = (instance.name.clone(), instance.id.clone());
    // A check's own rise / fall win over the checker's.
    let thresholds = Thresholds::new(
        check.rise.unwrap_or(inner.thresholds.rise),
        check.fall.unwrap_or(inner.thresholds.fall),
    );
    let mut state = HealthState::new(thresholds);
    let mut checks: u64 = 0;
    if inner.jitter > 0.0 {
        tokio::time::sleep(interval.mul_f64(rand::random::<f64>() * inner.jitter)).await;
    }
    loop {
        let started = Instant::now();
        let result = {
            let Ok(_permit) = inner.permits.acquire().await else {
                return;
            };
            match tokio::time::timeout(timeout, probe.check(&instance)).await {
                Ok(r) => r,
                Err(_) => Err(CheckError::Timeout { after: timeout }),
            }
        };
        checks += 1;
        let from = state.status();
        let changed = state.record(result.is_ok());
        let error = result.err();
        {
            let mut states = lock(&inner.states);
            if !states.may_publish(&key, generation) {
                return;
            }
            states.health.insert(
                key.clone(),
                InstanceHealth {
                    status: state.status(),
                    since: state.since(),
                    successes: state.successes(),
                    failures: state.failures(),
                    checks,
                    last_error: error.clone(),
                },
            );
            if let Some(to) = changed {
                sink.set_health(&key.0, &key.1, to);
            }
        }
        if let Some(to) = changed {
            match to {
                HealthStatus::Healthy => {
                    tracing::info!(service = %key.0, id = %key.1, probe = probe.kind(), "instance is healthy")
                }
                _ => {
                    tracing::warn!(service = %key.0, id = %key.1, probe = probe.kind(), error = ?error, "instance is unhealthy")
                }
            }
            let _ = inner.events.send(Transition {
                service: key.0.clone(),
                id: key.1.clone(),
                from,
                to,
                at: state.since(),
                reason: if to == HealthStatus::Healthy {
                    None
                } else {
                    error
                },
            });
        }
        if let Some(after) = check.deregister_critical_service_after
            && state.status() == HealthStatus::Unhealthy
            && state.elapsed() >= after
        {
            tracing::warn!(service = %key.0, id = %key.1, ?after, "critical too long; deregistering");
            match sink.deregister(&key.0, &key.1).await {
                Ok(()) => {
                    let mut states = lock(&inner.states);
                    if states.may_publish(&key, generation) {
                        states.health.remove(&key);
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(service = %key.0, id = %key.1, error = %e, "deregistration failed; will retry")
                }
            }
        }
        tokio::time::sleep_until(crate::util::after(
            started,
            jittered(interval, inner.jitter),
        ))
        .await;
    }
}
