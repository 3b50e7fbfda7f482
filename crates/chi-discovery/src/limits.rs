//! How much an instance may carry: the bounds on its tags and metadata that every registration
//! passes ([`Instance::validate_registration`]).
//!
//! Every registry stores tags and metadata whole and sends them to every client of the service,
//! on every change: one registrant with a million tags costs every watcher that much memory and
//! bandwidth, and the `chi agent` API would take them from anyone who reaches it. The bounds are
//! far above what service metadata needs and near Consul's own (64 metadata pairs, keys of 128
//! and values of 512 characters), so an instance chi accepts is one every backend takes. Reads
//! do not apply them: an instance another tool registered is served as it is.

use crate::error::{Error, Result};
use crate::instance::Instance;

/// Most tags one instance may carry.
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 256;
/// Most metadata pairs one instance may carry.
pub const MAX_META: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_META_KEY_BYTES: usize = 256;
/// Longest metadata value, in bytes.
pub const MAX_META_VALUE_BYTES: usize = 1024;

/// Checks the sizes of `instance`'s tags and metadata; the error names the field, the value (cut
/// short) and the bound.
pub(crate) fn check_sizes(instance: &Instance) -> Result<()> {
    if instance.tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            "tags",
            format!("{} tags", instance.tags.len()),
            format!("at most {MAX_TAGS} tags per instance"),
        ));
    }
    for tag in &instance.tags {
        too_long("tag", tag, MAX_TAG_BYTES)?;
    }
    if instance.meta.len() > MAX_META {
        return Err(Error::invalid(
            "meta",
            format!("{} pairs", instance.meta.len()),
            format!("at most {MAX_META} metadata pairs per instance"),
        ));
    }
    for (key, value) in &instance.meta {
        too_long("meta key", key, MAX_META_KEY_BYTES)?;
        if value.len() > MAX_META_VALUE_BYTES {
            return Err(Error::invalid(
                "meta value",
                format!("{key}={}", shortened(value)),
                format!(
                    "must be at most {MAX_META_VALUE_BYTES} bytes, got {}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
}

fn too_long(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() <= max {
        return Ok(());
    }
    Err(Error::invalid(
        what,
        shortened(value),
        format!("must be at most {max} bytes, got {}", value.len()),
    ))
}

/// The first 32 characters of `value` and `...`, control characters escaped: enough to find it.
fn shortened(value: &str) -> String {
    let head: String = value.chars().take(32).collect();
    format!("{}...", head.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Instance {
        Instance::new("svc", "127.0.0.1", 80)
    }

    fn message(i: &Instance) -> String {
        i.validate_registration()
            .expect_err("over a bound")
            .to_string()
    }

    #[test]
    fn instances_at_the_bounds_pass() {
        let mut i = base();
        i.tags = (0..MAX_TAGS)
            .map(|n| format!("{n:0>width$}", width = MAX_TAG_BYTES))
            .collect();
        i.meta = (0..MAX_META)
            .map(|n| {
                (
                    format!("{n:0>width$}", width = MAX_META_KEY_BYTES),
                    "v".repeat(MAX_META_VALUE_BYTES),
                )
            })
            .collect();
        i.validate_registration().expect("at the bounds");
    }

    #[test]
    fn each_bound_is_an_error_naming_its_field() {
        let mut i = base();
        i.tags = vec!["t".into(); MAX_TAGS + 1];
        assert_eq!(
            message(&i),
            "invalid tags `65 tags`: at most 64 tags per instance"
        );

        let mut i = base().with_tag("x".repeat(MAX_TAG_BYTES + 1));
        i.tags.push("ok".into());
        assert!(
            message(&i).starts_with("invalid tag `xxxxxxxx")
                && message(&i).ends_with("must be at most 256 bytes, got 257"),
            "{}",
            message(&i)
        );

        let mut i = base();
        i.meta = (0..=MAX_META)
            .map(|n| (n.to_string(), "v".into()))
            .collect();
        assert_eq!(
            message(&i),
            "invalid meta `65 pairs`: at most 64 metadata pairs per instance"
        );

        let i = base().with_meta("k".repeat(MAX_META_KEY_BYTES + 1), "v");
        assert!(
            message(&i).starts_with("invalid meta key `kkk"),
            "{}",
            message(&i)
        );

        let i = base().with_meta("region", "\u{1b}[2J".repeat(400));
        let m = message(&i);
        assert!(
            m.starts_with("invalid meta value `region=\\u{1b}[2J")
                && m.ends_with("must be at most 1024 bytes, got 1600"),
            "{m}"
        );
        assert!(
            !m.contains('\u{1b}'),
            "control characters are escaped: {m:?}"
        );
    }

    #[test]
    fn reads_do_not_apply_the_bounds() {
        let mut i = base();
        i.tags = vec!["t".into(); MAX_TAGS * 2];
        i.validate()
            .expect("validate checks what every backend relies on");
    }
}
