//! Changes and liveness to and from the wire: the agent turns its registry's answers into
//! [`Event`]s and [`Alive`]; the client turns them back.

use super::wire::{Alive, Event};
use crate::registry::{Change, Liveness};

impl From<Change> for Event {
    fn from(c: Change) -> Self {
        match c {
            Change::Reset(instances) => Event::Reset { instances },
            Change::Add(instance) => Event::Added { instance },
            Change::Remove(instance) => Event::Removed { instance },
            Change::Update(instance) => Event::Updated { instance },
        }
    }
}

impl From<Liveness> for Alive {
    fn from(l: Liveness) -> Self {
        Alive {
            alive: l == Liveness::Alive,
        }
    }
}

impl From<Alive> for Liveness {
    fn from(a: Alive) -> Self {
        if a.alive {
            Liveness::Alive
        } else {
            Liveness::Lost
        }
    }
}

/// What a watch line means to the consumer: a change, an error the agent reported, or nothing
/// (a heartbeat).
#[cfg(feature = "chi")]
pub(super) fn change(event: Event) -> Option<std::result::Result<Change, String>> {
    match event {
        Event::Heartbeat => None,
        Event::Reset { instances } => Some(Ok(Change::Reset(instances))),
        Event::Added { instance } => Some(Ok(Change::Add(instance))),
        Event::Removed { instance } => Some(Ok(Change::Remove(instance))),
        Event::Updated { instance } => Some(Ok(Change::Update(instance))),
        Event::Error { message } => Some(Err(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Instance;

    #[test]
    fn events_are_the_json_lines_chi_watch_prints() {
        let i = Instance::new("web", "127.0.0.1", 8080).with_id("web-1");
        let line = serde_json::to_value(Event::from(Change::Add(i.clone()))).expect("json");
        assert_eq!(line["type"], "added");
        assert_eq!(line["instance"]["id"], "web-1");
        let line = serde_json::to_value(Event::from(Change::Reset(vec![i]))).expect("json");
        assert_eq!(line["type"], "reset");
        assert_eq!(line["instances"][0]["port"], 8080);
        assert_eq!(
            serde_json::to_string(&Event::Heartbeat).expect("json"),
            r#"{"type":"heartbeat"}"#
        );
        let back: Event =
            serde_json::from_str(r#"{"type":"error","message":"down"}"#).expect("parse");
        assert_eq!(
            back,
            Event::Error {
                message: "down".into()
            }
        );
    }

    #[test]
    fn liveness_round_trips() {
        for l in [Liveness::Alive, Liveness::Lost] {
            assert_eq!(Liveness::from(Alive::from(l)), l);
        }
    }
}
