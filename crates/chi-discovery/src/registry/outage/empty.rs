//! Protection against the empty answers of a registry that just came back.
//!
//! A restarted server (a Consul dev agent, an rnacos node, a Nacos server after a reconnect)
//! answers "no instances" until the registrants notice and register again. Believing it would
//! empty every client's list meanwhile. So an empty answer for a service that had instances is
//! believed only once the server has answered without a transport failure for a grace period
//! (the idea of Nacos' own push-empty protection). A healthy server's "zero instances" is
//! honoured after that.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::instance::Instance;

/// Whether the server answers, and since when.
#[derive(Clone, Copy)]
enum Up {
    /// Answering and never failed since this client started: believed at once.
    Always,
    /// Answering again since then.
    Since(Instant),
    /// Not answering (its last call failed to reach it).
    Down,
}

struct State {
    up: Up,
    /// Services last seen with instances.
    had: HashSet<String>,
}

/// What one adapter knows about its server's empty answers.
pub(crate) struct EmptyGuard {
    state: Mutex<State>,
}

impl EmptyGuard {
    /// `trusted_at_start`: whether answers are believed before any failure was seen (Consul);
    /// otherwise the grace period runs from now (Nacos, whose SDK may still be syncing).
    pub(crate) fn new(trusted_at_start: bool) -> Self {
        let up = if trusted_at_start {
            Up::Always
        } else {
            Up::Since(Instant::now())
        };
        EmptyGuard {
            state: Mutex::new(State {
                up,
                had: HashSet::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        crate::util::lock(&self.state)
    }

    /// Notes the outcome of a call to the server: a transport failure marks it down, an answer
    /// after that starts the grace period.
    pub(crate) fn note<T>(&self, outcome: &Result<T>) {
        let mut st = self.state();
        match outcome {
            Ok(_) if matches!(st.up, Up::Down) => st.up = Up::Since(Instant::now()),
            Ok(_) => {}
            Err(Error::Unavailable { .. } | Error::Timeout { .. }) => st.up = Up::Down,
            Err(_) => {}
        }
    }

    /// Marks the server down whatever the error was (a watch whose check failed), or although it
    /// answered (a Consul server that knows no leader): the grace period starts again at the
    /// next answer.
    #[cfg(any(feature = "consul", feature = "nacos"))]
    pub(crate) fn down(&self) {
        self.state().up = Up::Down;
    }

    /// True when `list` may be believed: it has instances, or the service had none, or the
    /// server has answered for `grace` without interruption.
    pub(crate) fn believe(&self, service: &str, list: &[Instance], grace: Duration) -> bool {
        let mut st = self.state();
        if !list.is_empty() {
            st.had.insert(service.to_owned());
            return true;
        }
        let trusted = match st.up {
            Up::Always => true,
            Up::Since(t) => t.elapsed() >= grace,
            Up::Down => false,
        };
        if st.had.contains(service) && !trusted {
            return false;
        }
        st.had.remove(service);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one() -> Vec<Instance> {
        vec![Instance::new("svc", "127.0.0.1", 80)]
    }

    #[test]
    fn an_empty_answer_after_a_failure_is_believed_only_after_the_grace() {
        let guard = EmptyGuard::new(true);
        assert!(guard.believe("svc", &one(), Duration::from_secs(60)));
        guard.note::<()>(&Err(Error::Timeout {
            backend: "x".into(),
            after: Duration::from_secs(1),
        }));
        guard.note(&Ok(()));
        assert!(!guard.believe("svc", &[], Duration::from_secs(60)));
        assert!(guard.believe("svc", &[], Duration::ZERO));
        // Once believed empty, the service had no instances: later empties are believed.
        assert!(guard.believe("svc", &[], Duration::from_secs(60)));
        // A service never seen with instances is believed empty at once.
        assert!(guard.believe("other", &[], Duration::from_secs(60)));
    }

    #[test]
    fn trusted_at_start_or_not() {
        let consul = EmptyGuard::new(true);
        assert!(consul.believe("svc", &one(), Duration::from_secs(60)));
        assert!(consul.believe("svc", &[], Duration::from_secs(60)));
        let nacos = EmptyGuard::new(false);
        assert!(nacos.believe("svc", &one(), Duration::from_secs(60)));
        assert!(!nacos.believe("svc", &[], Duration::from_secs(60)));
    }
}
