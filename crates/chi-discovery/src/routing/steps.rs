//! How a [`Smart`](super::Smart) router keeps its plan current: three steps, each with its own
//! inputs, recomputed only when they changed.
//!
//! | step | inputs | output | recomputed when |
//! | --- | --- | --- | --- |
//! | [`Deal`] | the snapshot; the clients of deterministic subsetting | this client's instances: the snapshot's, or its subset | the snapshot's revision or the clients' version moves |
//! | [`SlowStart`] (the ramp) | the dealt instances; the clock | the weight factors of the instances that ramp | the dealt instances change, or a ramp step is due |
//! | [`Planner`] | the dealt instances; the factors | the [`Plan`]: leaves by version and place, each with its balancer (a weighted stand-in while something ramps, for strategies that ignore weights) and a generation of its own | the dealt instances or the factors change |
//!
//! Every step's output carries a version that moves only when the output does, and the next
//! step compares versions. So a ramp step re-plans without dealing again (a deal is
//! `O(clients × n log n)`); a snapshot or a client list that deals this client the same
//! instances re-plans nothing, and only the published [`View`] moves on to the new revision.
//!
//! The steps run behind the router's mutex, on the first pick that finds the [`View`] out of
//! date; picks never wait for them and only read the view.

use std::sync::Arc;

use rustc_hash::FxHashMap;
use tokio::time::Instant;

use super::plan::{Balancers, Carry, MakeLeaf, Plan, Rules};
use super::slow_start::{Ramp, Ramps, SlowStartConfig};
use super::subset::SubsetSource;
use crate::instance::Instance;
use crate::snapshot::Snapshot;

/// What picks read: the current plan and the inputs it is current for, swapped in whole.
pub(super) struct View<B> {
    /// The snapshot revision the plan is current for (`None`: nothing planned yet).
    pub(super) revision: Option<u64>,
    /// The version of the subsetting clients it was dealt from (0 without subsetting).
    pub(super) clients: u64,
    /// Slow start: the plan's weights hold until then.
    pub(super) until: Option<Instant>,
    pub(super) plan: Arc<Plan<B>>,
}

impl<B> View<B> {
    /// The view of a router that has planned nothing yet: current for no snapshot.
    pub(super) fn none() -> Self {
        View {
            revision: None,
            clients: 0,
            until: None,
            plan: Arc::new(Plan::empty()),
        }
    }

    /// True while the plan holds for a snapshot of `revision` and the clients of version
    /// `clients`: the deal is the current one and no ramp step is due (one clock read while
    /// something ramps, none otherwise).
    #[inline]
    pub(super) fn is_current(&self, revision: u64, clients: u64) -> bool {
        self.revision == Some(revision)
            && self.clients == clients
            && self.until.is_none_or(|t| Instant::now() < t)
    }
}

/// Step 1: this client's instances, the snapshot's or (deterministic subsetting) the subset
/// dealt to it.
#[derive(Default)]
pub(super) struct Deal {
    /// The inputs `dealt` comes from: the snapshot's revision and the clients' version.
    from: Option<(u64, u64)>,
    pub(super) dealt: Arc<[Instance]>,
    /// Moves when `dealt` changes.
    pub(super) version: u64,
    /// Deals made so far (a test's witness that a step did not run).
    pub(super) runs: u64,
}

impl Deal {
    fn refresh(&mut self, snapshot: &Snapshot, source: Option<&SubsetSource>, clients: u64) {
        let from = (snapshot.revision(), clients);
        if self.from == Some(from) {
            return;
        }
        self.from = Some(from);
        self.runs += 1;
        match source {
            None => {
                self.dealt = snapshot.shared();
                self.version += 1;
            }
            Some(source) => {
                let dealt = source.filter(snapshot.instances());
                if *dealt != *self.dealt {
                    self.dealt = dealt.into();
                    self.version += 1;
                }
            }
        }
    }
}

/// Step 2, slow start's ramp: the weight factors of the dealt instances that ramp.
pub(super) struct SlowStart {
    config: SlowStartConfig,
    /// When each instance started its ramp.
    starts: Ramps,
    /// The deal version `factors` comes from.
    from: Option<u64>,
    /// When the next ramp step is due (`None`: nothing ramps).
    pub(super) until: Option<Instant>,
    pub(super) factors: FxHashMap<String, f64>,
    /// Moves when `factors` changes.
    pub(super) version: u64,
}

impl SlowStart {
    pub(super) fn new(config: SlowStartConfig) -> Self {
        SlowStart {
            config,
            starts: Ramps::default(),
            from: None,
            until: None,
            factors: FxHashMap::default(),
            version: 0,
        }
    }

    /// The instances ramping at `now` (reads only).
    pub(super) fn ramping(&self, now: Instant) -> Vec<Ramp> {
        self.starts.ramping(&self.config, now)
    }

    fn refresh(&mut self, deal: &Deal, skip_unhealthy: bool, now: Instant) {
        let due = self.until.is_some_and(|t| now >= t);
        if self.from == Some(deal.version) && !due {
            return;
        }
        self.from = Some(deal.version);
        let usable: Vec<&Instance> = deal
            .dealt
            .iter()
            .filter(|i| !skip_unhealthy || i.health.is_usable())
            .collect();
        let factors = self.starts.factors(&self.config, &usable, now);
        self.until = (!factors.is_empty()).then(|| now + self.config.step());
        if factors != self.factors {
            self.factors = factors;
            self.version += 1;
        }
    }
}

/// Step 3: the plan of the dealt instances under their ramp, and the generation counter that
/// tells plans apart.
pub(super) struct Planner<B> {
    /// The leaf balancers of the router's strategy.
    pub(super) own: Box<MakeLeaf<B>>,
    /// Their weighted stand-ins while something ramps, for strategies that ignore weights.
    pub(super) stand_in: Option<Box<MakeLeaf<B>>>,
    /// The deal and ramp versions `plan` comes from.
    from: Option<(u64, u64)>,
    pub(super) plan: Arc<Plan<B>>,
    carry: Carry<B>,
    /// Plans built so far: the next plan's generation.
    pub(super) built: u64,
}

impl<B> Planner<B> {
    pub(super) fn new(own: Box<MakeLeaf<B>>) -> Self {
        Planner {
            own,
            stand_in: None,
            from: None,
            plan: Arc::new(Plan::empty()),
            carry: Carry::default(),
            built: 0,
        }
    }

    fn refresh(&mut self, deal: &Deal, ramp: Option<&SlowStart>, rules: &Rules) {
        let from = (deal.version, ramp.map_or(0, |r| r.version));
        if self.from == Some(from) {
            return;
        }
        self.from = Some(from);
        let (plan, carry) = self.build(&deal.dealt, ramp, rules);
        self.plan = Arc::new(plan);
        self.carry = carry;
    }

    /// A plan of `instances` under `ramp`, with the next generation, and what it would hand on.
    fn build(
        &mut self,
        instances: &[Instance],
        ramp: Option<&SlowStart>,
        rules: &Rules,
    ) -> (Plan<B>, Carry<B>) {
        let none = FxHashMap::default();
        let factors = ramp.map_or(&none, |r| &r.factors);
        let (make, stand_in) = match &self.stand_in {
            Some(stand_in) if !factors.is_empty() => (&**stand_in, true),
            _ => (&*self.own, false),
        };
        let generation = self.built;
        self.built += 1;
        let balancers = Balancers {
            make,
            stand_in,
            previous: &self.carry,
        };
        Plan::build(instances, factors, rules, balancers, generation)
    }
}

/// The three steps of one router; see the module docs.
pub(super) struct Steps<B> {
    pub(super) deal: Deal,
    pub(super) ramp: Option<SlowStart>,
    pub(super) planner: Planner<B>,
}

impl<B> Steps<B> {
    pub(super) fn new(own: Box<MakeLeaf<B>>) -> Self {
        Steps {
            deal: Deal::default(),
            ramp: None,
            planner: Planner::new(own),
        }
    }

    /// Runs the steps whose inputs changed for `snapshot` and the clients of version `clients`
    /// (dealt from `source`), and returns the view of the result.
    pub(super) fn refresh(
        &mut self,
        snapshot: &Snapshot,
        source: Option<&SubsetSource>,
        clients: u64,
        rules: &Rules,
    ) -> View<B> {
        let now = Instant::now();
        self.deal.refresh(snapshot, source, clients);
        if let Some(ramp) = &mut self.ramp {
            ramp.refresh(&self.deal, rules.skip_unhealthy, now);
        }
        self.planner.refresh(&self.deal, self.ramp.as_ref(), rules);
        View {
            revision: Some(snapshot.revision()),
            clients,
            until: self.ramp.as_ref().and_then(|r| r.until),
            plan: self.planner.plan.clone(),
        }
    }

    /// A view for a snapshot older than the current plan's (a picker that raced a swap): its
    /// own deal and plan, under the current ramp, with balancers carried from the current plan;
    /// no step's state changes.
    pub(super) fn aside(
        &mut self,
        snapshot: &Snapshot,
        source: Option<&SubsetSource>,
        clients: u64,
        rules: &Rules,
    ) -> View<B> {
        let dealt: Arc<[Instance]> = match source {
            Some(source) => source.filter(snapshot.instances()).into(),
            None => snapshot.shared(),
        };
        let (plan, _) = self.planner.build(&dealt, self.ramp.as_ref(), rules);
        View {
            revision: Some(snapshot.revision()),
            clients,
            until: self.ramp.as_ref().and_then(|r| r.until),
            plan: Arc::new(plan),
        }
    }
}
