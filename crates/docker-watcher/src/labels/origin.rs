//! Where a rewritten label came from (pure): the GoDoxy pre-pass rewrites labels (keys in
//! any case, `$N`, inline YAML mappings, shortcut lists, `:1234`) into dockward's grammar,
//! and an error about a rewritten label must name the label the user wrote, and the field
//! or item in it, not the rewritten key (`label proxy.ssh (field port)="22:22:22"`, not
//! `label proxy.ssh.port=…`).

use std::collections::BTreeMap;

use route_spec::fields::Clipped;

use super::model::{LabelError, PartText};

/// A label as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    /// The label key as written (`proxy.SSH.Port`, `proxy.ssh`, `proxy.ports`).
    pub(super) key: String,
    /// Where in its value: a field of an inline YAML mapping (`field port`), an item of a
    /// shortcut list (`item 2`); `None` for the whole label.
    pub(super) part: Option<String>,
    /// The value as written: the label's, or that field's or item's.
    pub(super) value: String,
}

impl Origin {
    /// A whole label.
    pub(super) fn whole(key: &str, value: &str) -> Self {
        Origin { key: key.to_string(), part: None, value: value.to_string() }
    }

    /// The field at `path` (as written) of an inline YAML mapping in this label.
    pub(super) fn field(&self, path: &str, value: &str) -> Self {
        Origin { key: self.key.clone(), part: Some(format!("field {path}")), value: value.to_string() }
    }

    /// The `n`-th item (from 1) of a shortcut list in this label.
    pub(super) fn item(&self, n: usize, value: &str) -> Self {
        Origin { key: self.key.clone(), part: Some(format!("item {n}")), value: value.to_string() }
    }

    /// An error about this label (or its field or item).
    pub(super) fn error(&self, alias: Option<&str>, reason: impl Into<String>) -> LabelError {
        LabelError::Label {
            alias: alias.map(str::to_string),
            key: self.key.clone(),
            part: self.part.clone(),
            value: self.value.clone(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Origin {
    /// `proxy.ssh (field port)`, or the key alone, escaped as errors show names.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", Clipped::bare(&self.key), PartText(&self.part))
    }
}

/// Points `errors` about rewritten labels (by their key in `origins`, rewritten key →
/// origin) back at the labels as written, their key, value and part; a reason naming a
/// rewritten label as the other setter of a field names the written one too.
pub(super) fn restore(errors: &mut [LabelError], origins: &BTreeMap<String, Origin>) {
    for e in errors {
        let LabelError::Label { key, part, value, reason, .. } = e else { continue };
        if let Some(o) = origins.get(key.as_str()) {
            key.clone_from(&o.key);
            part.clone_from(&o.part);
            value.clone_from(&o.value);
        }
        // `port of alias "ssh" is also set by proxy.#1.port; set it once`.
        if let Some((head, tail)) = reason.split_once(" is also set by ")
            && let Some((other, rest)) = tail.split_once("; ")
            && let Some(o) = origins.get(other)
        {
            *reason = format!("{head} is also set by {o}; {rest}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_label_as_written_with_its_field_or_item() {
        let inline = Origin::whole("proxy.SSH", "port: 22:22:22\nscheme: tcp");
        let shortcut = Origin::whole("proxy.ports", "2222:22,x");
        let origins: BTreeMap<String, Origin> = [
            ("proxy.ssh.port".to_string(), inline.field("Port", "22:22:22")),
            ("proxy.#2.port".to_string(), shortcut.item(2, "x")),
            ("proxy.web.port".to_string(), Origin::whole("proxy.web.port", ":99999")),
        ]
        .into_iter()
        .collect();
        let mut errors = vec![
            LabelError::label(Some("ssh"), "proxy.ssh.port", "22:22:22", "too many ':'"),
            LabelError::label(None, "proxy.#2.port", "x", "#2 is beyond the aliases"),
            LabelError::label(Some("web"), "proxy.web.port", "0:99999", "99999 is not a port"),
            LabelError::label(
                Some("a"),
                "proxy.a.port",
                "1:2",
                "port of alias \"a\" is also set by proxy.#2.port; set it once",
            ),
        ];
        restore(&mut errors, &origins);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "label proxy.SSH (field Port)=\"22:22:22\": too many ':'",
                "label proxy.ports (item 2)=\"x\": #2 is beyond the aliases",
                "label proxy.web.port=\":99999\": 99999 is not a port",
                "label proxy.a.port=\"1:2\": port of alias \"a\" is also set by proxy.ports (item 2); set it once",
            ]
        );
        assert_eq!(errors[0].key(), Some("proxy.SSH"));
    }
}
