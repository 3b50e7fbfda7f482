//! Tables and JSON for instances.

use std::fmt::Write as _;

use chi_discovery::Instance;

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
