//! The console's HTML, rendered on the server from a [`Status`]: the whole page for `GET /ui`
//! (complete without JavaScript: every table is there, and the filter form works as a plain
//! `GET`), and each section alone for the live updates, which the page's script swaps in. One
//! renderer, so the page with and without JavaScript shows the same markup.
//!
//! Everything from a registry or a client is escaped ([`Esc`]): names may hold any character
//! but `/`, `\` and controls (docs/DESIGN.md §9), `<script>` included.

mod sections;

use std::fmt::{self, Display, Write};

use serde::Serialize;

use super::model::Status;

pub(crate) use sections::Filter;

/// Text escaped for HTML content and quoted attribute values.
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

/// The sections the live updates replace, by the `data-section` they fill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Sections {
    pub(crate) services: String,
    pub(crate) balancing: String,
    pub(crate) registries: String,
    /// `chi xds` only.
    pub(crate) xds: Option<String>,
}

/// One bar chart's data: a service's picks per instance (drawn by the page's script).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Chart {
    pub(crate) service: String,
    pub(crate) strategy: String,
    pub(crate) window: u64,
    pub(crate) bars: Vec<(String, u64)>,
}

/// Renders every section (unfiltered: the page's script filters).
pub(crate) fn sections(status: &Status) -> Sections {
    sections_filtered(status, &Filter::default())
}

fn sections_filtered(status: &Status, filter: &Filter) -> Sections {
    Sections {
        services: sections::services(status, filter),
        balancing: sections::balancing(status),
        registries: sections::registries(status),
        xds: status.xds.as_ref().map(|c| sections::xds(c)),
    }
}

/// The charts of the balancing section.
pub(crate) fn charts(status: &Status) -> Vec<Chart> {
    status
        .balancing
        .services
        .iter()
        .map(|b| Chart {
            service: b.service.clone(),
            strategy: b.strategy.clone(),
            window: b.window,
            bars: b.picks.iter().map(|s| (s.id.clone(), s.picks)).collect(),
        })
        .collect()
}

/// The whole page, its services filtered by `filter` (the no-JavaScript form).
pub(crate) fn page(status: &Status, filter: &Filter) -> String {
    let s = sections_filtered(status, filter);
    let command = status.process.command;
    let writes = &status.process.writes;
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chi {command} console</title>
<link rel="stylesheet" href="/ui/console.css">
<link rel="icon" href="/ui/favicon.svg" type="image/svg+xml">
<script type="module" src="/ui/console.js"></script>
</head>
<body data-writes="{writes_allowed}">
<a class="skip" href="#main">Skip to content</a>
<header class="top">
<h1>chi <span class="command">{command}</span></h1>
<p class="meta">version {version} · <span class="badge {badge}" title="{why}">{mode}</span> <span class="why">{why}</span></p>
<p id="live" class="live" role="status" aria-live="polite">Static page taken at {at}; <a href="/ui">reload</a> for news.</p>
<p id="notice" class="live" role="status" aria-live="polite"></p>
</header>
<nav aria-label="Sections"><ul>
<li><a href="#services">Services</a></li>
<li><a href="#balancing">Balancing</a></li>
<li><a href="#registries">Registries</a></li>
{xds_link}</ul></nav>
<main id="main" tabindex="-1">
<section id="services" aria-labelledby="services-title" tabindex="-1">
<h2 id="services-title">Services</h2>
<form class="filters" role="search" method="get" action="/ui" aria-label="Filter instances">
<label for="filter">Filter</label>
<input id="filter" name="q" type="search" value="{q}" autocomplete="off" spellcheck="false" aria-describedby="filter-hint">
<span id="filter-hint" class="hint">service, instance, address, version, zone or registry</span>
<input id="healthy-only" name="healthy" type="checkbox" value="1"{checked} aria-describedby="healthy-hint">
<label for="healthy-only">Healthy only</label>
<span id="healthy-hint" class="hint">hides unhealthy instances; unknown ones stay, as with <code>chi discover --healthy</code></span>
<button id="apply" type="submit">Apply</button>
</form>
<p id="shown" class="shown" aria-live="polite"></p>
<div data-section="services">{services}</div>
</section>
<section id="balancing" aria-labelledby="balancing-title" tabindex="-1">
<h2 id="balancing-title">Balancing</h2>
<div data-section="balancing">{balancing}</div>
</section>
<section id="registries" aria-labelledby="registries-title" tabindex="-1">
<h2 id="registries-title">Registries</h2>
<div data-section="registries">{registries}</div>
</section>
{xds_section}</main>
<footer><p>Served by this process from assets built into the binary. JSON: <a href="/ui/api/state">/ui/api/state</a>.</p></footer>
</body>
</html>
"##,
        writes_allowed = writes.allowed,
        version = Esc(status.process.version),
        badge = if writes.allowed { "rw" } else { "ro" },
        mode = if writes.allowed {
            "writes on"
        } else {
            "read-only"
        },
        why = Esc(&writes.why),
        at = sections::clock(status.at),
        xds_link = if s.xds.is_some() {
            "<li><a href=\"#xds\">xDS clients</a></li>\n"
        } else {
            ""
        },
        q = Esc(&filter.text),
        checked = if filter.healthy_only { " checked" } else { "" },
        services = s.services,
        balancing = s.balancing,
        registries = s.registries,
        xds_section = match &s.xds {
            Some(x) => format!(
                "<section id=\"xds\" aria-labelledby=\"xds-title\" tabindex=\"-1\">\n<h2 id=\"xds-title\">xDS clients</h2>\n<div data-section=\"xds\">{x}</div>\n</section>\n"
            ),
            None => String::new(),
        },
    );
    out
}

#[cfg(test)]
mod tests;
