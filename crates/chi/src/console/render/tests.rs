use super::*;
use crate::console::model::{
    Balancing, BreakerRow, Ejection, InstanceRow, Process, RampRow, RegistryRow, RegistryState,
    ServiceBalance, ServiceRow, Share, Stamped, Writes,
};
use crate::xds::clients::{Answer, ClientStatus, Exchange, Sent, TypeStatus};

const HOSTILE: &str = "<script>alert('x')</script>&\"";

fn instance(id: &str, health: &'static str) -> InstanceRow {
    InstanceRow {
        id: id.to_owned(),
        address: "10.0.0.7".to_owned(),
        port: 8080,
        health,
        why: (health == "unhealthy").then(|| "probe here: connect failed".to_owned()),
        version: "v2".to_owned(),
        region: Some("eu-west-1".to_owned()),
        zone: Some("eu-west-1b".to_owned()),
        weight: 3,
        origins: vec!["consul".to_owned(), "etcd".to_owned()],
    }
}

fn status(writes: bool) -> Status {
    Status {
        process: Process {
            command: "agent",
            version: "0.1.0",
            writes: Writes {
                allowed: writes,
                why: "test".to_owned(),
            },
        },
        services: vec![
            ServiceRow {
                name: "checkout".to_owned(),
                instances: vec![instance("c1", "healthy"), instance("c2", "unhealthy")],
            },
            ServiceRow {
                name: HOSTILE.to_owned(),
                instances: vec![instance(HOSTILE, "unknown")],
            },
        ],
        registries: vec![RegistryRow {
            backend: "consul".to_owned(),
            state: RegistryState::Down,
            since: 1_700_000_000_000,
            last_error: Some(Stamped {
                message: "listing services: connection refused".to_owned(),
                at: 1_700_000_001_000,
            }),
            services: 2,
        }],
        registrations: Vec::new(),
        balancing: Balancing {
            note: None,
            services: vec![ServiceBalance {
                service: "checkout".to_owned(),
                strategy: "weighted_round_robin".to_owned(),
                window: 60,
                picks: vec![
                    Share {
                        id: "c1".to_owned(),
                        picks: 30,
                    },
                    Share {
                        id: "c2".to_owned(),
                        picks: 10,
                    },
                ],
                ejections: vec![Ejection {
                    id: "c2".to_owned(),
                    remaining_ms: 6_500,
                    times: 2,
                }],
                breaker: Some(BreakerRow {
                    max_requests: 100,
                    refusals: 4,
                    in_flight: vec![("c1".to_owned(), 3)],
                }),
                ramps: vec![RampRow {
                    id: "c1".to_owned(),
                    percent: 45,
                    remaining_ms: 5_000,
                }],
            }],
        },
        xds: None,
        at: 1_700_000_002_000,
    }
}

#[test]
fn registry_data_is_escaped_everywhere() {
    let html = page(&status(true), &Filter::default());
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the console's own script tag"
    );
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
    assert!(!html.contains("alert('x')"));
}

#[test]
fn services_are_semantic_tables_with_health_and_why() {
    let s = sections(&status(false));
    assert!(
        s.services
            .contains("<caption><span class=\"svc\">checkout</span>")
    );
    assert!(s.services.contains("<th scope=\"row\">c2</th>"));
    assert!(
        s.services
            .contains("<span class=\"health h-unhealthy\">unhealthy</span>")
    );
    assert!(s.services.contains("probe here: connect failed"));
    assert!(s.services.contains("consul, etcd"), "the origins");
    assert!(s.services.contains("10.0.0.7:8080"));
    assert!(s.services.contains("2 services, 3 instances, 1 unhealthy."));
    assert!(
        !s.services.contains("Deregister"),
        "no write control when writes are off"
    );
    let writable = sections(&status(true));
    assert!(writable.services.contains(
        "<button type=\"button\" class=\"deregister\" data-service=\"checkout\" data-id=\"c1\""
    ));
}

#[test]
fn the_form_filters_without_javascript() {
    let text = Filter {
        text: "C1".to_owned(),
        healthy_only: false,
    };
    let html = page(&status(false), &text);
    assert!(html.contains("data-instance=\"checkout/c1\""));
    assert!(!html.contains("data-instance=\"checkout/c2\""));
    assert!(html.contains("value=\"C1\""), "the field keeps its text");
    let healthy = Filter {
        text: String::new(),
        healthy_only: true,
    };
    let html = page(&status(false), &healthy);
    assert!(html.contains("data-instance=\"checkout/c1\""));
    assert!(!html.contains("data-instance=\"checkout/c2\""));
    assert!(html.contains("name=\"healthy\" type=\"checkbox\" value=\"1\" checked"));
}

#[test]
fn balancing_shows_picks_ejections_breaker_and_ramps() {
    let s = sections(&status(false));
    let b = &s.balancing;
    assert!(b.contains("figure class=\"chart\" data-chart=\"checkout\""));
    assert!(b.contains("<td class=\"num\">75.0 %</td>"), "{b}");
    assert!(
        b.contains("c2: ejected, back in 7s (ejection time ×2"),
        "{b}"
    );
    assert!(
        b.contains("at most 100 requests in flight per instance; 4 refused; in flight: c1 (3)")
    );
    assert!(b.contains("c1: 45 % of its weight, full in 5s"));
    let charts = charts(&status(false));
    assert_eq!(
        charts[0].bars,
        vec![("c1".to_owned(), 30), ("c2".to_owned(), 10)]
    );
}

#[test]
fn registries_show_state_since_and_last_error() {
    let s = sections(&status(false));
    assert!(
        s.registries
            .contains("<span class=\"state s-down\">down</span>")
    );
    assert!(
        s.registries
            .contains("datetime=\"2023-11-14T22:13:20Z\">22:13:20 UTC")
    );
    assert!(
        s.registries
            .contains("listing services: connection refused")
    );
}

#[test]
fn xds_clients_show_what_was_sent_and_the_answer() {
    let mut st = status(false);
    let sent = |version: &str| Sent {
        version: version.into(),
        nonce: "1".into(),
        count: 1,
        resources: vec!["checkout".to_owned()],
        removed: Vec::new(),
        at: 1_700_000_000_000,
    };
    st.xds = Some(vec![ClientStatus {
        stream: 1,
        variant: "sotw",
        peer: Some("127.0.0.1:5000".to_owned()),
        connected_at: 1_700_000_000_000,
        node: "edge-1".to_owned(),
        region: Some("eu-west-1".to_owned()),
        zone: Some("eu-west-1a".to_owned()),
        types: vec![
            TypeStatus {
                kind: "CDS",
                exchange: Exchange {
                    sent: Some(sent("7")),
                    answer: Some(Answer {
                        nonce: "1".into(),
                        accepted: true,
                        version: Some("7".into()),
                        error: None,
                        at: 1_700_000_000_100,
                    }),
                },
            },
            TypeStatus {
                kind: "EDS",
                exchange: Exchange {
                    sent: Some(sent("8")),
                    answer: Some(Answer {
                        nonce: "2".into(),
                        accepted: false,
                        version: None,
                        error: Some("<bad> endpoint".to_owned()),
                        at: 1_700_000_000_200,
                    }),
                },
            },
        ],
    }]);
    let x = sections(&st).xds.expect("an xDS section");
    assert!(x.contains("<span class=\"svc\">edge-1</span>"));
    assert!(x.contains("locality eu-west-1 / eu-west-1a · sotw stream 1 from 127.0.0.1:5000"));
    assert!(x.contains("<span class=\"ack\">ACK</span> of version 7"));
    assert!(x.contains("<span class=\"nack\">NACK</span>: &lt;bad&gt; endpoint"));
    assert!(page(&st, &Filter::default()).contains("href=\"#xds\""));
}
