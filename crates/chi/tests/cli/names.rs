//! Instance ids with URL-special characters, carried intact over `chi://`: an agent registered
//! as `web?x` through another agent's admin API is registered under that id, and when it stops
//! it removes `web?x` alone (the id was once cut at the `?` and removed `web`).

use crate::support::{Agent, discover_json, ids, registration};

#[test]
fn an_agent_registered_as_web_query_x_removes_only_itself() {
    let host = Agent::start(&registration("web", 19051, "v1", "    id: \"web\"\n"), &[]);
    let url = host.url();
    for id in ["web?x", "web#x", "web%x"] {
        let mut other = Agent::start(
            &registration("web", 19052, "v1", &format!("    id: \"{id}\"\n")),
            &["--registry", &url],
        );
        let mut want = vec![id.to_owned(), "web".to_owned()];
        want.sort();
        assert_eq!(ids(&discover_json(&url, "web", &[])), want, "{id}");
        let (ok, rest) = other.proc.terminate();
        assert!(ok, "{id}: the agent exits 0 after deregistering: {rest:?}");
        assert_eq!(ids(&discover_json(&url, "web", &[])), ["web"], "{id}");
    }
}
