//! Tables and JSON for instances, and durations as people read them.

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

/// A left-aligned text table: a header row, then rows, columns two spaces apart.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
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
    for row in rows {
        line(&mut row.iter().map(String::as_str));
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

    use super::human;

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
