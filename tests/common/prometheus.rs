//! A strict reader of the Prometheus text exposition format (0.0.4), enough to tell that
//! `/metrics` is well formed and to read its samples.
//!
//! Checks: every sample belongs to a family declared by a `# TYPE` line before it; a family
//! is declared once; names and label names are valid; label values are properly quoted
//! and escaped; values are numbers; no series appears twice.

use std::collections::{BTreeMap, HashSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name, suffix included (`dockward_route_bytes_in_total`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → type, from `# TYPE` lines.
    pub types: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include every pair of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
    }
}

fn valid_name(name: &str, colons: bool) -> bool {
    let mut chars = name.chars();
    let first_ok = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    chars.next().is_some_and(first_ok) && chars.all(|c| first_ok(c) || c.is_ascii_digit())
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => text.parse::<f64>().map_err(|_| format!("{text:?} is not a number")),
    }
}

/// Parses `{k="v",...}` starting after the `{`; returns the labels and the rest of the line.
fn parse_labels(mut rest: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once('=').ok_or("label without '='")?;
        let name = name.trim();
        if !valid_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut chars = after.strip_prefix('"').ok_or("label value not quoted")?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name:?} given twice"));
        }
        rest = &after[1 + end + 1..];
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses and checks an exposition.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut series = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if exp.types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(at(format!("family {name} declared twice")));
                    }
                }
                (Some("HELP"), Some(name), _) if !valid_name(name, true) => {
                    return Err(at(format!("bad metric name {name:?}")));
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(inner) => parse_labels(inner).map_err(at)?,
            None => (BTreeMap::new(), &line[name_end..]),
        };
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        let declared = exp.types.contains_key(name)
            || ["_total", "_sum", "_count", "_bucket"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|family| exp.types.contains_key(family)));
        if !declared {
            return Err(at(format!("sample {name} has no # TYPE before it")));
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("series given twice".into()));
        }
        exp.samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_well_formed_exposition() {
        let exp = parse(
            "# HELP x_total things\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"\"} 3\n# TYPE y gauge\ny 1.5\n",
        )
        .unwrap();
        assert_eq!(exp.value("x_total", &[("a", "1"), ("b", "q\"")]), Some(3.0));
        assert_eq!(exp.value("y", &[]), Some(1.5));
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "x 1\n",
            "# TYPE x gauge\nx{a=1} 1\n",
            "# TYPE x gauge\nx{a=\"1\"} one\n",
            "# TYPE x gauge\n# TYPE x gauge\n",
            "# TYPE x gauge\nx 1\nx 2\n",
            "# TYPE x wat\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
