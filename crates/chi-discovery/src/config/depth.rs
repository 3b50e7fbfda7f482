//! A bound on how deeply a config file nests, checked before the YAML parser sees it.
//!
//! The parser's time grows with the square of the nesting of flow collections (libyaml keeps a
//! "simple key" per open `[` or `{` and walks them all at every token: 40,000 `[` take 6 s, 200,000
//! over a minute), and its deserializer gives up at 128 levels only after parsing everything. A
//! chi config nests fewer than 10 levels, so a linear pre-scan refuses a file deeper than
//! [`MAX_DEPTH`] at once, with the line. The scan counts, per line, the block levels open (one per
//! indentation still open, plus each compact `- ` or `? ` that starts the line) and the flow
//! collections open (`[` and `{` outside quotes and comments); block scalars (`|`, `>`) are
//! skipped. It may over-count (a `[` inside a plain scalar), never under-count what the parser
//! would open.

use crate::error::{Error, Result};

/// The deepest nesting a config file may have.
pub const MAX_DEPTH: usize = 64;

/// Refuses `text` when it nests deeper than [`MAX_DEPTH`].
pub(crate) fn check(text: &str) -> Result<()> {
    let mut scan = Scan::default();
    for (n, line) in text.lines().enumerate() {
        if let Some(depth) = scan.line(line)
            && depth > MAX_DEPTH
        {
            return Err(Error::config(
                "config",
                format!(
                    "nests deeper than {MAX_DEPTH} levels at line {} (a chi config needs fewer \
                     than 10); refused before parsing",
                    n + 1
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Default)]
struct Scan {
    /// Indentations of the block levels open.
    indents: Vec<usize>,
    /// Flow collections open.
    flow: usize,
    /// Inside a quoted scalar that goes on to the next line.
    quote: Option<u8>,
    /// Inside a block scalar whose parent line had this indentation.
    block_scalar: Option<usize>,
}

impl Scan {
    /// Takes one line; the deepest nesting it reached, when it has content.
    fn line(&mut self, line: &str) -> Option<usize> {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let rest = &bytes[indent..];
        if let Some(parent) = self.block_scalar {
            if rest.is_empty() || indent > parent {
                return None;
            }
            self.block_scalar = None;
        }
        let mut at = indent;
        let mut block = self.indents.len();
        if self.flow == 0 && self.quote.is_none() {
            if rest.is_empty() || rest[0] == b'#' {
                return None;
            }
            while self.indents.last().is_some_and(|top| *top >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
            block = self.indents.len();
            // Compact nesting: `- - - x` or `? - x` opens a level per indicator on one line.
            while let Some(&c) = bytes.get(at)
                && (c == b'-' || c == b'?')
                && bytes.get(at + 1).is_none_or(|n| *n == b' ')
            {
                block += 1;
                at += 1;
                while bytes.get(at) == Some(&b' ') {
                    at += 1;
                }
            }
        }
        let mut deepest = block + self.flow;
        let mut prev = if at == 0 { b' ' } else { bytes[at - 1] };
        while at < bytes.len() {
            let c = bytes[at];
            match self.quote {
                Some(b'\'') if c == b'\'' => {
                    if bytes.get(at + 1) == Some(&b'\'') {
                        at += 1;
                    } else {
                        self.quote = None;
                    }
                }
                Some(b'"') if c == b'\\' => at += 1,
                Some(b'"') if c == b'"' => self.quote = None,
                Some(_) => {}
                None => {
                    let starts_scalar = matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':');
                    match c {
                        b'#' if matches!(prev, b' ' | b'\t') => break,
                        b'\'' | b'"' if starts_scalar => self.quote = Some(c),
                        b'[' | b'{' => {
                            self.flow += 1;
                            deepest = deepest.max(block + self.flow);
                        }
                        b']' | b'}' => self.flow = self.flow.saturating_sub(1),
                        _ => {}
                    }
                }
            }
            prev = c;
            at += 1;
        }
        if self.flow == 0 && self.quote.is_none() && is_block_scalar_header(bytes) {
            self.block_scalar = Some(indent);
        }
        Some(deepest)
    }
}

/// True when `line` ends with a block scalar header (`key: |`, `- >-`, `|2`), comment aside.
fn is_block_scalar_header(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    let code = match text.find(" #") {
        Some(i) => &text[..i],
        None => &text,
    };
    let Some(last) = code.trim_end().rsplit([' ', '\t']).next() else {
        return false;
    };
    let mut chars = last.chars();
    matches!(chars.next(), Some('|' | '>'))
        && chars.all(|c| c == '+' || c == '-' || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn depth(text: &str) -> usize {
        let mut scan = Scan::default();
        text.lines().filter_map(|l| scan.line(l)).max().unwrap_or(0)
    }

    #[test]
    fn counts_block_and_flow_levels() {
        assert_eq!(depth("a: 1\n"), 1);
        assert_eq!(depth("a:\n  b:\n    c: [1, {d: 2}]\n  e: 3\n"), 5);
        assert_eq!(depth("- - - x\n"), 4);
        assert_eq!(depth("a: \"[[[[\" # [[[[\n"), 1);
        assert_eq!(depth("a: 'it''s [' \nb: don't [x]\n"), 2);
        assert_eq!(depth("a: |\n  [[[[[[\n  {{{{\nb: 1\n"), 1);
        assert_eq!(depth("a: [1,\n  [2,\n   [3]]]\n"), 4);
    }

    #[test]
    fn the_example_config_is_shallow() {
        let text = include_str!("../../../../examples/chi-config.yaml");
        let d = depth(text);
        assert!((3..=10).contains(&d), "{d}");
        check(text).expect("the example passes");
    }

    #[test]
    fn deep_nesting_is_refused_fast_with_the_line() {
        let n = 200_000;
        for text in [
            format!("service_discovery: {}{}", "[".repeat(n), "]".repeat(n)),
            format!("service_discovery: {}{}", "{a: ".repeat(n), "}".repeat(n)),
            format!("service_discovery:\n  {}x\n", "- ".repeat(n)),
            format!("a: 1\nb: {}\n", "[\n".repeat(n)),
        ] {
            let start = Instant::now();
            let e = crate::config::Config::from_yaml_with_env(&text, |_| None)
                .expect_err("too deep")
                .to_string();
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{:?}",
                start.elapsed()
            );
            assert!(
                e.starts_with("config: nests deeper than 64 levels at line "),
                "{e}"
            );
        }
    }

    #[test]
    fn nesting_at_the_bound_passes_the_scan() {
        let text = format!(
            "a: {}{}\n",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        check(&text).expect("64 levels");
        let text = format!("a: {}{}\n", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        check(&text).expect_err("65 levels");
    }
}
