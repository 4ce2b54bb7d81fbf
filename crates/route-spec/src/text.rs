//! User input in error text: clipped when long, escaped when it could fool a terminal, and
//! the did-you-mean hint for a misspelt name.

use std::fmt::{self, Write as _};

/// A field name or value that is wrong; the text names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as written.
    pub field: String,
    /// The value as written.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", Clipped::bare(&self.field), Clipped::quoted(&self.value), self.reason)
    }
}

/// User input shown in an error, cut short when long: a 100 KB label value must not turn one
/// error line into 100 KB of log. The error keeps the whole text; only its display is clipped.
///
/// ```
/// use route_spec::fields::Clipped;
/// assert_eq!(Clipped::quoted("22:22:22").to_string(), r#""22:22:22""#);
/// let long = "x".repeat(500);
/// assert_eq!(Clipped::quoted(&long).to_string(), format!("{:?}… (500 bytes)", "x".repeat(Clipped::MAX_CHARS)));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a> {
    text: &'a str,
    quoted: bool,
}

impl<'a> Clipped<'a> {
    /// How many characters are shown before the text is cut.
    pub const MAX_CHARS: usize = 80;

    /// Shown as a quoted, escaped string (`{:?}`).
    pub fn quoted(text: &'a str) -> Self {
        Clipped { text, quoted: true }
    }

    /// Shown as written (for names: a field, a label key, an alias), except control and
    /// bidirectional-override characters, which are escaped (`\u{1b}`): a name must not
    /// be able to recolour a terminal or forge a row of output.
    pub fn bare(text: &'a str) -> Self {
        Clipped { text, quoted: false }
    }
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut = self.text.char_indices().nth(Self::MAX_CHARS).map(|(i, _)| i);
        let shown = &self.text[..cut.unwrap_or(self.text.len())];
        if self.quoted {
            write!(f, "{shown:?}")?;
        } else {
            Escaped(shown).fmt(f)?;
        }
        if cut.is_some() {
            write!(f, "… ({} bytes)", self.text.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

impl FieldError {
    /// The error of `value` given to `field`.
    pub fn new(field: &str, value: &str, reason: impl Into<String>) -> Self {
        FieldError { field: field.to_string(), value: value.to_string(), reason: reason.into() }
    }
}

pub(crate) fn err(field: &str, value: &str, reason: impl Into<String>) -> FieldError {
    FieldError::new(field, value, reason)
}

/// The closest known name to `input`, when one is close enough to be a likely typo.
pub fn did_you_mean<'a>(input: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let input = input.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(&input, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// A name shown as written, except [forbidden](is_forbidden) characters, which are escaped
/// (`\u{1b}`), whole (not clipped): for aliases in errors and logs.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_forbidden(c) {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Whether `c` may not appear in an alias or a host: a control character (C0, DEL, C1) or
/// a character that reorders or hides text (bidi embeddings, overrides and isolates, the
/// left-to-right and right-to-left marks, zero-width characters, the byte-order mark).
/// Such a value could forge a row of `dockward routes` or show `127.0.0.1` for another host.
pub fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
        || c == '\u{061C}'
}

/// Checks that a name or host has no [forbidden](is_forbidden) character; the error says
/// which one and where, escaped.
pub fn check_printable(text: &str) -> Result<(), String> {
    match text.char_indices().find(|(_, c)| is_forbidden(*c)) {
        None => Ok(()),
        Some((at, c)) => Err(format!(
            "contains the control or bidirectional character {:?} at byte {at}; only printable text is allowed",
            c
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shown_with_control_and_bidi_characters_escaped() {
        assert_eq!(Clipped::bare("ssh").to_string(), "ssh");
        assert_eq!(Clipped::bare("a\u{1b}[31mRED").to_string(), "a\\u{1b}[31mRED");
        assert_eq!(Clipped::bare("x\ny").to_string(), "x\\ny");
        assert_eq!(Clipped::bare("1.0.0.721\u{202e}").to_string(), "1.0.0.721\\u{202e}");
        assert_eq!(Clipped::quoted("a\u{202e}b").to_string(), "\"a\\u{202e}b\"");
    }

    #[test]
    fn control_and_bidi_characters_are_refused_by_name() {
        assert!(check_printable("db-1.example").is_ok());
        assert!(check_printable("é-ü").is_ok(), "non-ASCII letters are fine");
        for bad in ["a\u{1b}b", "a\nb", "a\tb", "\u{202e}", "\u{2066}x", "x\u{200e}", "\u{feff}", "\u{85}"] {
            let e = check_printable(bad).unwrap_err();
            assert!(e.starts_with("contains the control or bidirectional character '\\"), "{bad:?}: {e}");
        }
        assert_eq!(
            check_printable("ok\u{202e}").unwrap_err(),
            "contains the control or bidirectional character '\\u{202e}' at byte 2; only printable text is allowed"
        );
    }
}
