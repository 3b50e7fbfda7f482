//! Tables and JSON for instances, and durations as people read them.
//!
//! Everything printed from a registry (names, ids, tags, metadata, a registry's error text) is
//! someone else's data: a tag holding `ESC [ 2 J` would clear the reader's terminal, and a
//! right-to-left override would reorder what they read. [`clean`] escapes such characters in
//! text and tables, [`json`] in JSON (where it stays valid JSON of the same value).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use chi_discovery::Instance;

/// `d` as people read it: three significant digits at most in the largest unit that keeps it
/// at least 1 (`850 ns`, `20.9 ms`, `1.5 s`, `2 min 5 s`), where `{:?}` prints `20.888951ms`.
pub(crate) fn human(d: Duration) -> String {
    let ns = d.as_nanos();
    let scaled = |unit: f64, name: &str| {
        let v = ns as f64 / unit;
        let text = if v >= 100.0 {
            format!("{v:.0}")
        } else if v >= 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.2}")
        };
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            &text
        };
        format!("{text} {name}")
    };
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => scaled(1e3, "µs"),
        1_000_000..1_000_000_000 => scaled(1e6, "ms"),
        1_000_000_000..60_000_000_000 => scaled(1e9, "s"),
        _ => {
            let secs = d.as_secs();
            match secs % 60 {
                0 => format!("{} min", secs / 60),
                s => format!("{} min {s} s", secs / 60),
            }
        }
    }
}

/// True for characters a terminal acts on instead of showing: control characters (C0, DEL, C1:
/// ESC and CSI start escape sequences) and the bidirectional formatting characters (Unicode
/// UAX #9), which reorder the text around them.
fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every [`hostile`] character escaped as Rust writes it (`\n`, `\u{1b}`); the text
/// itself when it has none (no copy).
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(hostile) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' => out.extend(c.escape_debug()),
            c if hostile(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `value` as pretty JSON, with the [`hostile`] characters serde_json leaves as they are (DEL,
/// C1, bidirectional formatting) written as `\uXXXX`: the same JSON value, safe on a terminal.
pub(crate) fn json<T: serde::Serialize + ?Sized>(
    value: &T,
    pretty: bool,
) -> serde_json::Result<String> {
    let text = if pretty {
        serde_json::to_string_pretty(value)?
    } else {
        serde_json::to_string(value)?
    };
    // serde_json escapes C0 controls inside strings; the only raw one it writes is the pretty
    // layout's newline.
    let escape = |c: char| c != '\n' && hostile(c);
    if !text.chars().any(escape) {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escape(c) {
            // Only inside strings: serde_json writes no such character elsewhere.
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// A left-aligned text table: a header row, then rows, columns two spaces apart. Cells are
/// [`clean`]ed.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(|c| c.as_ref()));
    }
    out
}

/// The columns of an instance table.
pub(crate) const INSTANCE_HEADER: &[&str] = &[
    "ID", "NAME", "VERSION", "ADDRESS", "TAGS", "META", "WEIGHT", "HEALTH",
];

/// One instance as a table row.
pub(crate) fn instance_row(i: &Instance) -> Vec<String> {
    let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    vec![
        i.id.clone(),
        i.name.clone(),
        dash(i.version.clone()),
        i.authority(),
        dash(i.tags.join(",")),
        dash(
            i.meta
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        i.weight.to_string(),
        i.health.to_string(),
    ]
}

/// Instances as a table, sorted by id.
pub(crate) fn instance_table(instances: &[Instance]) -> String {
    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let rows: Vec<Vec<String>> = sorted.into_iter().map(instance_row).collect();
    table(INSTANCE_HEADER, &rows)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{clean, human, json, table};

    #[test]
    fn terminal_controls_from_registry_data_are_escaped() {
        assert_eq!(clean("plain-ünï"), "plain-ünï");
        assert_eq!(
            clean("a\u{1b}[2Jb\u{9b}31mc\nd\u{7f}e\u{202e}f"),
            "a\\u{1b}[2Jb\\u{9b}31mc\\nd\\u{7f}e\\u{202e}f"
        );
        let t = table(&["ID"], &[vec!["x\u{1b}]0;owned\u{7}".to_owned()]]);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{7}'), "{t:?}");
        let j = json(
            &serde_json::json!({"tag": "\u{1b}[2J\u{9b}\u{202e}"}),
            false,
        )
        .expect("json");
        let pretty = json(&serde_json::json!({"a": 1}), true).expect("json");
        assert_eq!(pretty, "{\n  \"a\": 1\n}", "the layout stays");
        assert_eq!(j, r#"{"tag":"\u001b[2J\u009b\u202e"}"#);
        let back: serde_json::Value = serde_json::from_str(&j).expect("still JSON");
        assert_eq!(back["tag"], "\u{1b}[2J\u{9b}\u{202e}");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        let cases = [
            (Duration::from_nanos(850), "850 ns"),
            (Duration::from_nanos(20_888_951), "20.9 ms"),
            (Duration::from_micros(1_500), "1.5 ms"),
            (Duration::from_micros(2_345), "2.35 ms"),
            (Duration::from_millis(200), "200 ms"),
            (Duration::from_nanos(45_600), "45.6 µs"),
            (Duration::from_secs(10), "10 s"),
            (Duration::from_millis(1_500), "1.5 s"),
            (Duration::from_secs(60), "1 min"),
            (Duration::from_secs(125), "2 min 5 s"),
            (Duration::ZERO, "0 ns"),
        ];
        for (d, want) in cases {
            assert_eq!(human(d), want, "{d:?}");
        }
    }
}
