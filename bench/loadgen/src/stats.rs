//! Percentiles over recorded samples and the one-line JSON the script tabulates.

use std::fmt::Write;

/// Samples in nanoseconds, sorted on demand.
#[derive(Default)]
pub struct Samples {
    ns: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples { ns: Vec::with_capacity(n), sorted: false }
    }

    pub fn push(&mut self, ns: u64) {
        self.ns.push(ns);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.ns.extend(other.ns);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// The `q` quantile (0..=1) in microseconds; nearest-rank, so p99 of 100 samples is the 99th.
    pub fn quantile_us(&mut self, q: f64) -> f64 {
        if self.ns.is_empty() {
            return f64::NAN;
        }
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        let rank = ((q * self.ns.len() as f64).ceil() as usize).clamp(1, self.ns.len());
        self.ns[rank - 1] as f64 / 1000.0
    }

    pub fn mean_us(&self) -> f64 {
        if self.ns.is_empty() {
            return f64::NAN;
        }
        self.ns.iter().map(|&v| v as f64).sum::<f64>() / self.ns.len() as f64 / 1000.0
    }

    /// Adds `p50_us`, `p99_us`, `p999_us`, `mean_us` and `max_us` to `line`.
    pub fn summarize(&mut self, line: &mut JsonLine) {
        line.num("p50_us", self.quantile_us(0.50));
        line.num("p99_us", self.quantile_us(0.99));
        line.num("p999_us", self.quantile_us(0.999));
        line.num("mean_us", self.mean_us());
        line.num("max_us", self.quantile_us(1.0));
    }
}

/// One JSON object on one line, built field by field (no serde: keeps the tool's build small).
pub struct JsonLine {
    buf: String,
}

impl JsonLine {
    pub fn new(test: &str) -> Self {
        let mut line = JsonLine { buf: String::from("{") };
        line.str("test", test);
        line
    }

    fn key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        let _ = write!(self.buf, "\"{key}\":");
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        self.buf.push('"');
        for c in value.chars() {
            match c {
                '"' => self.buf.push_str("\\\""),
                '\\' => self.buf.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.buf, "\\u{:04x}", c as u32);
                }
                c => self.buf.push(c),
            }
        }
        self.buf.push('"');
        self
    }

    /// A number; NaN and infinities become `null`.
    pub fn num(&mut self, key: &str, value: f64) -> &mut Self {
        self.key(key);
        if value.is_finite() {
            if value.fract() == 0.0 && value.abs() < 1e15 {
                let _ = write!(self.buf, "{}", value as i64);
            } else {
                let _ = write!(self.buf, "{value:.3}");
            }
        } else {
            self.buf.push_str("null");
        }
        self
    }

    pub fn int(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.buf, "{value}");
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.buf.push_str(if value { "true" } else { "false" });
        self
    }

    /// A value that is already JSON (an array or object built by the caller).
    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key);
        self.buf.push_str(json);
        self
    }

    /// Prints the line to stdout (line-buffered, so a script polling the file sees it at once).
    pub fn print(mut self) {
        self.buf.push('}');
        println!("{}", self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples::default();
        for v in 1..=100u64 {
            s.push(v * 1000);
        }
        assert_eq!(s.quantile_us(0.5), 50.0);
        assert_eq!(s.quantile_us(0.99), 99.0);
        assert_eq!(s.quantile_us(0.999), 100.0);
        assert_eq!(s.quantile_us(1.0), 100.0);
    }

    #[test]
    fn json_line_escapes_and_nulls() {
        let mut l = JsonLine::new("t");
        l.str("s", "a\"b").num("n", f64::NAN).num("f", 1.5).int("i", 3);
        l.buf.push('}');
        assert_eq!(l.buf, r#"{"test":"t","s":"a\"b","n":null,"f":1.500,"i":3}"#);
    }
}
