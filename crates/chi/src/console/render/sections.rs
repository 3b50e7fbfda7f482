//! The page's sections: services, balancing, registries and xDS clients. Semantic tables (a
//! caption, column and row headers), so screen readers announce where a cell is; every value
//! escaped.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::Esc;
use crate::console::model::{InstanceRow, ServiceBalance, Status};
use crate::xds::clients::{ClientStatus, TypeStatus};

/// What the no-JavaScript form asks for (`/ui?q=...&healthy=1`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub(crate) text: String,
    pub(crate) healthy_only: bool,
}

impl Filter {
    fn keeps(&self, service: &str, i: &InstanceRow) -> bool {
        (!self.healthy_only || i.health != "unhealthy")
            && (self.text.is_empty() || haystack(service, i).contains(&self.text.to_lowercase()))
    }
}

/// What the text filter searches, lowercased (the page's script reads it from `data-text`).
fn haystack(service: &str, i: &InstanceRow) -> String {
    let mut parts = vec![service, &i.id, &i.address, i.health, &i.version];
    parts.extend(i.region.as_deref());
    parts.extend(i.zone.as_deref());
    parts.extend(i.origins.iter().map(String::as_str));
    let port = i.port.to_string();
    parts.push(&port);
    parts.join(" ").to_lowercase()
}

/// `09:32:11 UTC` in a `<time>` carrying the full instant.
pub(crate) fn clock(ms: u64) -> String {
    let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
    let text = full.to_string();
    let hms = text.get(11..19).unwrap_or(&text);
    format!("<time datetime=\"{text}\">{hms} UTC</time>")
}

/// `7s`, `1m 5s`: a span rounded to the second.
fn span(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
}

fn or_dash(v: Option<&str>) -> String {
    match v {
        Some(v) if !v.is_empty() => Esc(v).to_string(),
        _ => "<span class=\"none\">—</span>".to_owned(),
    }
}

/// `1 service`, `2 services`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn authority(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Every service, one table each.
pub(super) fn services(status: &Status, filter: &Filter) -> String {
    let mut out = String::new();
    let instances: usize = status.services.iter().map(|s| s.instances.len()).sum();
    let usable: usize = status.services.iter().map(|s| s.usable()).sum();
    let _ = write!(
        out,
        "<p class=\"count\">{}, {}, {} unhealthy.</p>",
        plural(status.services.len(), "service"),
        plural(instances, "instance"),
        instances - usable
    );
    if status.services.is_empty() {
        out.push_str("<p class=\"empty\">No services: the registries list none yet.</p>");
    }
    let writes = status.process.writes.allowed;
    for s in &status.services {
        let rows: Vec<&InstanceRow> = s
            .instances
            .iter()
            .filter(|i| filter.keeps(&s.name, i))
            .collect();
        if rows.is_empty() && !s.instances.is_empty() {
            continue;
        }
        let name = Esc(&s.name);
        let _ = write!(
            out,
            "<table class=\"instances\" data-service=\"{name}\"><caption><span class=\"svc\">{name}</span> <span class=\"sub\">{}, {} unhealthy</span></caption>\
             <thead><tr><th scope=\"col\">Instance</th><th scope=\"col\">Address</th><th scope=\"col\">Health</th><th scope=\"col\">Why</th><th scope=\"col\">Version</th><th scope=\"col\">Region</th><th scope=\"col\">Zone</th><th scope=\"col\" class=\"num\">Weight</th><th scope=\"col\">Registry</th>{}</tr></thead><tbody>",
            plural(s.instances.len(), "instance"),
            s.instances.len() - s.usable(),
            if writes {
                "<th scope=\"col\">Actions</th>"
            } else {
                ""
            }
        );
        if rows.is_empty() {
            let cols = if writes { 10 } else { 9 };
            let _ = write!(
                out,
                "<tr><td colspan=\"{cols}\" class=\"empty\">No instances now.</td></tr>"
            );
        }
        for i in rows {
            let id = Esc(&i.id);
            let _ = write!(
                out,
                "<tr data-instance=\"{name}/{id}\" data-health=\"{h}\" data-text=\"{text}\"><th scope=\"row\">{id}</th><td>{addr}</td><td><span class=\"health h-{h}\">{h}</span></td><td class=\"why\">{why}</td><td>{version}</td><td>{region}</td><td>{zone}</td><td class=\"num\">{weight}</td><td>{origins}</td>",
                h = i.health,
                text = Esc(&haystack(&s.name, i)),
                addr = Esc(&authority(&i.address, i.port)),
                why = or_dash(i.why.as_deref()),
                version = or_dash(Some(&i.version)),
                region = or_dash(i.region.as_deref()),
                zone = or_dash(i.zone.as_deref()),
                weight = i.weight,
                origins = Esc(&i.origins.join(", ")),
            );
            if writes {
                let _ = write!(
                    out,
                    "<td><button type=\"button\" class=\"deregister\" data-service=\"{name}\" data-id=\"{id}\" aria-label=\"Deregister {id} of {name}\">Deregister</button></td>"
                );
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table>");
    }
    out
}

/// Per service: the chart's place, the picks table, ejections, breaker, ramps.
pub(super) fn balancing(status: &Status) -> String {
    let mut out = String::new();
    let b = &status.balancing;
    if let Some(note) = &b.note {
        let _ = write!(out, "<p class=\"note\">{}</p>", Esc(note));
    }
    if b.services.is_empty() && b.note.is_none() {
        out.push_str(
            "<p class=\"empty\">No picks yet: a service shows here from its first pick.</p>",
        );
    }
    for (n, s) in b.services.iter().enumerate() {
        balance(&mut out, n, s);
    }
    out
}

fn balance(out: &mut String, n: usize, s: &ServiceBalance) {
    let name = Esc(&s.service);
    let total: u64 = s.picks.iter().map(|p| p.picks).sum();
    let _ = write!(
        out,
        "<article class=\"balance\" aria-labelledby=\"bal-{n}\"><h3 id=\"bal-{n}\">{name} <span class=\"strategy\">{strategy}</span></h3>\
         <figure class=\"chart\" data-chart=\"{name}\"><figcaption>Share of picks over the last {w} s: {total} picks</figcaption></figure>\
         <table class=\"picks\"><caption>Picks by instance, last {w} s</caption><thead><tr><th scope=\"col\">Instance</th><th scope=\"col\" class=\"num\">Picks</th><th scope=\"col\" class=\"num\">Share</th></tr></thead><tbody>",
        strategy = Esc(&s.strategy),
        w = s.window,
    );
    for p in &s.picks {
        let share = if total == 0 {
            0.0
        } else {
            p.picks as f64 * 100.0 / total as f64
        };
        let _ = write!(
            out,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{share:.1} %</td></tr>",
            Esc(&p.id),
            p.picks
        );
    }
    out.push_str("</tbody></table><dl class=\"facts\"><dt>Outlier ejections</dt><dd>");
    if s.ejections.is_empty() {
        out.push_str("none");
    } else {
        out.push_str("<ul>");
        for e in &s.ejections {
            let _ = write!(
                out,
                "<li>{}: ejected, back in {} (ejection time ×{}: it grows with each ejection in a row)</li>",
                Esc(&e.id),
                span(e.remaining_ms),
                e.times
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</dd><dt>Circuit breaker</dt><dd>");
    match &s.breaker {
        None => out.push_str("off"),
        Some(b) => {
            let _ = write!(
                out,
                "at most {} requests in flight per instance; {} refused",
                b.max_requests, b.refusals
            );
            if !b.in_flight.is_empty() {
                let busy: Vec<String> = b
                    .in_flight
                    .iter()
                    .map(|(id, n)| format!("{} ({n})", Esc(id)))
                    .collect();
                let _ = write!(out, "; in flight: {}", busy.join(", "));
            }
        }
    }
    out.push_str("</dd><dt>Slow start</dt><dd>");
    if s.ramps.is_empty() {
        out.push_str("no ramp in progress");
    } else {
        out.push_str("<ul>");
        for r in &s.ramps {
            let _ = write!(
                out,
                "<li>{}: {} % of its weight, full in {}</li>",
                Esc(&r.id),
                r.percent,
                span(r.remaining_ms)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</dd></dl></article>");
}

/// Each registry's state, and the process's own registrations.
pub(super) fn registries(status: &Status) -> String {
    let mut out = String::from(
        "<table class=\"registries\"><caption>Registries behind this process</caption><thead><tr><th scope=\"col\">Registry</th><th scope=\"col\">State</th><th scope=\"col\">Since</th><th scope=\"col\" class=\"num\">Services</th><th scope=\"col\">Last error</th></tr></thead><tbody>",
    );
    for r in &status.registries {
        let state = r.state.as_str();
        let error = match &r.last_error {
            Some(e) => format!(
                "{} <span class=\"at\">at {}</span>",
                Esc(&e.message),
                clock(e.at)
            ),
            None => or_dash(None),
        };
        let _ = write!(
            out,
            "<tr><th scope=\"row\">{}</th><td><span class=\"state s-{state}\">{state}</span></td><td>{}</td><td class=\"num\">{}</td><td class=\"why\">{error}</td></tr>",
            Esc(&r.backend),
            clock(r.since),
            r.services
        );
    }
    out.push_str("</tbody></table>");
    if status.registrations.is_empty() {
        return out;
    }
    out.push_str(
        "<table class=\"registrations\"><caption>This process's registrations on each registry</caption><thead><tr><th scope=\"col\">Instance</th><th scope=\"col\">Health</th><th scope=\"col\">Probe error</th><th scope=\"col\">Registry</th><th scope=\"col\">Holds it</th><th scope=\"col\" class=\"num\">Failures in a row (in all)</th><th scope=\"col\">Last error</th><th scope=\"col\" class=\"num\">Re-registrations</th></tr></thead><tbody>",
    );
    for r in &status.registrations {
        for b in &r.backends {
            let _ = write!(
                out,
                "<tr><th scope=\"row\">{id} <span class=\"sub\">{service}</span></th><td><span class=\"health h-{h}\">{h}</span></td><td class=\"why\">{probe}</td><td>{backend}</td><td>{holds}</td><td class=\"num\">{failures} ({errors})</td><td class=\"why\">{error}</td><td class=\"num\">{re}</td></tr>",
                id = Esc(&r.id),
                service = Esc(&r.service),
                h = r.health,
                probe = or_dash(r.probe_error.as_deref()),
                backend = Esc(&b.backend),
                holds = match (b.registered, b.up) {
                    (true, true) => "yes",
                    (true, false) => "yes, its calls fail",
                    (false, _) => "no",
                },
                failures = b.failures,
                errors = b.errors,
                error = or_dash(b.last_error.as_deref()),
                re = b.reregistrations,
            );
        }
    }
    out.push_str("</tbody></table>");
    out
}

/// Each connected xDS client: what it was sent per type, and its answer.
pub(super) fn xds(clients: &[ClientStatus]) -> String {
    let mut out = format!(
        "<p class=\"count\">{} connected.</p>",
        plural(clients.len(), "client")
    );
    if clients.is_empty() {
        out.push_str("<p class=\"empty\">No client connected.</p>");
    }
    for c in clients {
        let node = if c.node.is_empty() {
            "(no node id yet)".to_owned()
        } else {
            Esc(&c.node).to_string()
        };
        let place = [c.region.as_deref(), c.zone.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = write!(
            out,
            "<table class=\"xds\" data-node=\"{node}\"><caption><span class=\"svc\">{node}</span> <span class=\"sub\">locality {place} · {variant} stream {stream} from {peer} · connected {at}</span></caption>\
             <thead><tr><th scope=\"col\">Type</th><th scope=\"col\">Version sent</th><th scope=\"col\">Resources</th><th scope=\"col\">Sent at</th><th scope=\"col\">Answer</th><th scope=\"col\">Answered at</th></tr></thead><tbody>",
            place = if place.is_empty() {
                "none".to_owned()
            } else {
                Esc(&place).to_string()
            },
            variant = c.variant,
            stream = c.stream,
            peer = Esc(c.peer.as_deref().unwrap_or("?")),
            at = clock(c.connected_at),
        );
        for t in &c.types {
            exchange(&mut out, t);
        }
        out.push_str("</tbody></table>");
    }
    out
}

fn exchange(out: &mut String, t: &TypeStatus) {
    let (version, resources, sent_at) = match &t.exchange.sent {
        Some(s) => {
            let mut names: Vec<String> = s.resources.iter().map(|r| Esc(r).to_string()).collect();
            if s.count > s.resources.len() {
                names.push(format!("and {} more", s.count - s.resources.len()));
            }
            names.extend(s.removed.iter().map(|r| format!("removed {}", Esc(r))));
            let names = if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            };
            (Esc(&s.version).to_string(), names, clock(s.at))
        }
        None => (or_dash(None), or_dash(None), or_dash(None)),
    };
    let (answer, answered_at) = match &t.exchange.answer {
        Some(a) if a.accepted => (
            format!(
                "<span class=\"ack\">ACK</span>{}",
                a.version
                    .as_deref()
                    .map(|v| format!(" of version {}", Esc(v)))
                    .unwrap_or_default()
            ),
            clock(a.at),
        ),
        Some(a) => (
            format!(
                "<span class=\"nack\">NACK</span>: {}",
                Esc(a.error.as_deref().unwrap_or(""))
            ),
            clock(a.at),
        ),
        None => ("awaiting an answer".to_owned(), or_dash(None)),
    };
    let _ = write!(
        out,
        "<tr data-type=\"{kind}\"><th scope=\"row\">{kind}</th><td>{version}</td><td>{resources}</td><td>{sent_at}</td><td>{answer}</td><td>{answered_at}</td></tr>",
        kind = t.kind
    );
}
