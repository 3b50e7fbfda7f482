//! An adapter's side of the outage policy ([`super`]): the empty answers of a server that just
//! came back.
//!
//! A restarted server (a Consul dev agent, an rnacos node, a Nacos server after a reconnect, a
//! `chi agent` on its embedded registry) answers "no instances" until the registrants notice and
//! register again. Believing it would empty every client's list meanwhile. So an empty answer for a service that had instances is
//! believed only once the server has answered without a transport failure for a grace period
//! (the idea of Nacos' own push-empty protection). A healthy server's "zero instances" is
//! honoured after that.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::Recovery;
use crate::error::{Error, Result};
use crate::instance::Instance;

#[derive(Debug)]
struct State {
    /// Whether the server answers, and since when.
    up: Recovery,
    /// Services last seen with instances.
    had: HashSet<String>,
}

/// What one adapter knows about its server's empty answers.
#[derive(Debug)]
pub(crate) struct EmptyGuard {
    state: Mutex<State>,
}

impl EmptyGuard {
    /// `trusted_at_start`: whether answers are believed before any failure was seen (Consul);
    /// otherwise the grace period runs from now (Nacos, whose SDK may still be syncing).
    pub(crate) fn new(trusted_at_start: bool) -> Self {
        let up = if trusted_at_start {
            Recovery::Trusted
        } else {
            Recovery::Since(Instant::now())
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
            Ok(_) => st.up.answered(Instant::now()),
            Err(Error::Unavailable { .. } | Error::Timeout { .. }) => st.up.failed(),
            Err(_) => {}
        }
    }

    /// Marks the server down whatever the error was (a watch whose check failed), or although it
    /// answered (a Consul server that knows no leader): the grace period starts again at the
    /// next answer.
    pub(crate) fn down(&self) {
        self.state().up.failed();
    }

    /// True when `list` may be believed: it has instances, or the service had none, or the
    /// server has answered for `grace` without interruption.
    pub(crate) fn believe(&self, service: &str, list: &[Instance], grace: Duration) -> bool {
        let mut st = self.state();
        if !list.is_empty() {
            st.had.insert(service.to_owned());
            return true;
        }
        if st.had.contains(service) && !st.up.is_trusted(grace, Instant::now()) {
            return false;
        }
        st.had.remove(service);
        true
    }
}
