//! The one text-table renderer of the CLI (`dockward routes`, `dockward check`), and the
//! escaping of anything else it prints.
//!
//! The shape: a header line, then one line per row; cells left-aligned and padded to their
//! column's *display* width, two spaces between columns, no trailing spaces.
//!
//! Cells come from aliases, hosts, file paths, container names and error texts that anyone
//! who can label a container chooses, so every cell is
//! - **escaped** ([`escape`]): control characters (newline, ESC, ...), bidi overrides and
//!   line separators show as visible `\n`, `\u{1b}`, `\u{202e}`, so a value can neither
//!   forge a row nor recolour, hide or reorder the terminal's output;
//! - **clipped** to [`MAX_CELL_WIDTH`] display columns, ending in `…[clipped: N chars]`;
//! - **padded by hand**, never with a `format!` width (which panics above 65,535).

use std::borrow::Cow;
use std::fmt::Write as _;

use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

/// The widest a cell is shown, in display columns (the clip marker included).
pub const MAX_CELL_WIDTH: usize = 1024;

/// Whether `c` must not reach a terminal as it is: control characters (C0, DEL, C1), the
/// bidirectional formatting characters, line and paragraph separators, and invisible
/// zero-width characters that are not part of any script (U+200B, U+2060–U+2064, U+FEFF).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// Writes the visible form of a character that [`needs_escape`].
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `text` safe to print on a terminal: every character that could move the cursor, change
/// colours, hide text or reorder it shows as a visible escape (`\n`, `\u{1b}`, `\u{202e}`).
/// Text without such characters is returned as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A cell as shown: escaped, and clipped to [`MAX_CELL_WIDTH`] display columns with an
/// ellipsis and the length of the whole value (`…[clipped: 100000 chars]`).
pub fn cell(text: &str) -> String {
    let escaped = escape(text);
    if escaped.width() <= MAX_CELL_WIDTH {
        return escaped.into_owned();
    }
    let marker = format!("…[clipped: {} chars]", text.chars().count());
    let room = MAX_CELL_WIDTH.saturating_sub(marker.width());
    let mut out = String::new();
    let mut width = 0;
    for c in escaped.chars() {
        let w = c.width().unwrap_or(0);
        if width + w > room {
            break;
        }
        width += w;
        out.push(c);
    }
    out.push_str(&marker);
    out
}

/// Renders `header` and `rows` as a table; every cell goes through [`cell`]. Rows shorter
/// than the header leave their last columns empty; cells beyond the header are dropped.
pub fn render<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let lines: Vec<Vec<String>> = std::iter::once(header.iter().map(|h| cell(h)).collect())
        .chain(rows.iter().map(|row| row.iter().take(header.len()).map(|c| cell(c.as_ref())).collect()))
        .collect();
    let mut widths = vec![0usize; header.len()];
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.width());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let start = out.len();
        for (i, w) in widths.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let c = line.get(i).map(String::as_str).unwrap_or_default();
            out.push_str(c);
            out.extend(std::iter::repeat_n(' ', w.saturating_sub(c.width())));
        }
        let end = start + out[start..].trim_end_matches(' ').len();
        out.truncate(end);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_the_widest_cell_and_lines_have_no_trailing_spaces() {
        let table = render(&["A", "BB", "C"], &[vec!["xyz", "1", ""], vec!["p", "", "q"]]);
        assert_eq!(table, "A    BB  C\nxyz  1\np        q\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(render::<&str>(&["A", "B"], &[]), "A  B\n");
    }

    #[test]
    fn columns_align_by_display_width_not_by_chars_or_bytes() {
        // "日本" is two chars, six bytes and four columns; "é" (e + combining acute) is one column.
        let table = render(&["NAME", "X"], &[vec!["日本", "1"], vec!["e\u{301}", "2"], vec!["abcd", "3"]]);
        assert_eq!(table, "NAME  X\n日本  1\ne\u{301}     2\nabcd  3\n");
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        assert_eq!(escape("plain ascii, ünïcode, 日本"), "plain ascii, ünïcode, 日本");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape("\x1b[31mRED\x1b[0m"), "\\u{1b}[31mRED\\u{1b}[0m");
        assert_eq!(escape("127.0.0.1\u{202e}"), "127.0.0.1\\u{202e}");
        assert_eq!(escape("\u{7f}\u{85}\u{2028}\u{2066}\u{feff}"), "\\u{7f}\\u{85}\\u{2028}\\u{2066}\\u{feff}");
    }

    #[test]
    fn a_newline_or_escape_sequence_in_a_cell_cannot_forge_a_row() {
        let alias = "web\nssh-backdoor  tcp  0.0.0.0:22";
        let key = "proxy.esc\x1b[31mRED\x1b[0m.port";
        let table = render(&["ALIAS", "STATE"], &[vec![alias, "listening"], vec![key, "error: \x1b[8mhidden"]]);
        assert_eq!(
            table,
            "\
ALIAS                                 STATE
web\\nssh-backdoor  tcp  0.0.0.0:22    listening
proxy.esc\\u{1b}[31mRED\\u{1b}[0m.port  error: \\u{1b}[8mhidden
"
        );
        assert_eq!(table.lines().count(), 3);
        assert!(!table.contains('\x1b'));
    }

    #[test]
    fn a_cell_longer_than_any_format_width_is_clipped_not_a_panic() {
        let huge = "x".repeat(100_000);
        let table = render(&["A", "B"], &[vec![huge.as_str(), "after"]]);
        let row = table.lines().nth(1).expect("a row");
        let marker = "…[clipped: 100000 chars]";
        assert!(row.starts_with(&format!("{}{marker}  after", "x".repeat(MAX_CELL_WIDTH - marker.chars().count()))));
        assert_eq!(row.split("  ").next().map(|c| c.width()), Some(MAX_CELL_WIDTH));
    }

    #[test]
    fn clipping_counts_columns_of_the_escaped_text() {
        let wide = "日".repeat(70_000);
        let c = cell(&wide);
        assert!(c.width() <= MAX_CELL_WIDTH, "{}", c.width());
        assert!(c.ends_with("…[clipped: 70000 chars]"));
        let controls = "\x1b".repeat(70_000);
        let c = cell(&controls);
        assert!(c.width() <= MAX_CELL_WIDTH && c.starts_with("\\u{1b}") && !c.contains('\x1b'));
    }
}
