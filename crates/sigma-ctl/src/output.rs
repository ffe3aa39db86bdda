//! Output: aligned tables and detail views for people, JSON or YAML of the API's objects for
//! scripts.

use std::io::{IsTerminal, Write};

use serde_json::Value;
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns (lists) or `Field: value` lines (single objects), for people.
    Table,
    /// The API's JSON objects, as sigma-api sent them.
    Json,
    /// The same objects as YAML.
    Yaml,
}

/// Whether to colour: only for tables, only when stdout is a terminal, and never when
/// `NO_COLOR` is set to anything non-empty.
pub fn use_color(format: Format) -> bool {
    format == Format::Table
        && std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A colour or emphasis of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Paint {
    /// As it is.
    #[default]
    Plain,
    /// Bold.
    Bold,
    /// Dimmed (absent values, finished things).
    Dim,
    /// Green (healthy).
    Green,
    /// Yellow (in transition).
    Yellow,
    /// Red (gone, failing).
    Red,
    /// Cyan (new, not yet in service).
    Cyan,
}

impl Paint {
    fn code(self) -> Option<&'static str> {
        Some(match self {
            Paint::Plain => return None,
            Paint::Bold => "1",
            Paint::Dim => "2",
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Red => "31",
            Paint::Cyan => "36",
        })
    }

    /// `text` wrapped in this paint's ANSI codes when `color` is on.
    pub fn apply(self, text: &str, color: bool) -> String {
        match self.code() {
            Some(c) if color => format!("\x1b[{c}m{text}\x1b[0m"),
            _ => text.to_string(),
        }
    }
}

/// One table cell: its text and paint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cell {
    /// The text (one line).
    pub text: String,
    /// How to paint it.
    pub paint: Paint,
}

impl Cell {
    /// A plain cell.
    pub fn new(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            paint: Paint::Plain,
        }
    }

    /// A painted cell.
    pub fn painted(text: impl Into<String>, paint: Paint) -> Cell {
        Cell {
            text: text.into(),
            paint,
        }
    }

    /// The text of an optional value, or a dimmed `-`.
    pub fn opt(v: Option<impl Into<String>>) -> Cell {
        match v {
            Some(s) => Cell::new(s),
            None => Cell::painted("-", Paint::Dim),
        }
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::new(s)
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::new(s)
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// A table with a header row; columns are as wide as their widest cell, two spaces apart.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// How many rows it has.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: one line per row, no trailing spaces, header bold when `color`.
    pub fn render(&self, color: bool) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (i, c) in r.iter().take(n).enumerate() {
                widths[i] = widths[i].max(width(&c.text));
            }
        }
        let mut out = String::new();
        let header: Vec<Cell> = self
            .headers
            .iter()
            .map(|h| Cell::painted(h.clone(), Paint::Bold))
            .collect();
        for r in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = r.get(i).cloned().unwrap_or_default();
                let text = cell.text.replace(['\n', '\r', '\t'], " ");
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(&cell.paint.apply(&text, color));
                if i + 1 < n {
                    line.push_str(&" ".repeat(w.saturating_sub(width(&text))));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A single object as `Field:  value` lines, values aligned; a multi-line value continues
/// indented under its first line.
#[derive(Debug, Clone, Default)]
pub struct Details {
    rows: Vec<(String, Cell)>,
}

impl Details {
    /// An empty view.
    pub fn new() -> Details {
        Details::default()
    }

    /// Adds a field.
    pub fn field(&mut self, label: &str, value: impl Into<Cell>) -> &mut Details {
        self.rows.push((label.to_string(), value.into()));
        self
    }

    /// The view as text.
    pub fn render(&self, color: bool) -> String {
        let w = self
            .rows
            .iter()
            .map(|(l, _)| width(l) + 1)
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (label, cell) in &self.rows {
            let label = format!("{label}:");
            let pad = " ".repeat(w - width(&label) + 2);
            for (i, line) in cell.text.lines().enumerate() {
                if i == 0 {
                    out.push_str(&Paint::Bold.apply(&label, color));
                    out.push_str(&pad);
                } else {
                    out.push_str(&" ".repeat(w + 2));
                }
                out.push_str(&cell.paint.apply(line, color));
                out.push('\n');
            }
            if cell.text.is_empty() {
                out.push_str(&Paint::Bold.apply(&label, color));
                out.push('\n');
            }
        }
        out
    }
}

/// Where a command's results go, and how.
pub struct Output<'a> {
    /// The format.
    pub format: Format,
    /// Whether tables may be coloured.
    pub color: bool,
    w: &'a mut dyn Write,
}

impl<'a> Output<'a> {
    /// Output to `w`.
    pub fn new(format: Format, color: bool, w: &'a mut dyn Write) -> Output<'a> {
        Output { format, color, w }
    }

    /// Whether the output is for people (a table) rather than a script.
    pub fn human(&self) -> bool {
        self.format == Format::Table
    }

    /// Writes text as it is.
    pub fn text(&mut self, s: &str) -> Result<()> {
        self.w.write_all(s.as_bytes()).map_err(Error::Output)
    }

    /// Writes one line.
    pub fn line(&mut self, s: &str) -> Result<()> {
        self.text(s)?;
        self.text("\n")
    }

    /// Writes a table.
    pub fn table(&mut self, t: &Table) -> Result<()> {
        let s = t.render(self.color);
        self.text(&s)
    }

    /// Writes a detail view.
    pub fn details(&mut self, d: &Details) -> Result<()> {
        let s = d.render(self.color);
        self.text(&s)
    }

    /// Writes an API object as JSON or YAML (nothing for an empty answer).
    pub fn value(&mut self, v: &Value) -> Result<()> {
        if v.is_null() {
            return Ok(());
        }
        let s = match self.format {
            Format::Yaml => to_yaml(v),
            Format::Json | Format::Table => {
                let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::Input {
                    source_name: "output".into(),
                    message: format!("cannot render JSON: {e}"),
                })?;
                s.push('\n');
                s
            }
        };
        self.text(&s)
    }

    /// Paints text when colour is on.
    pub fn paint(&self, text: &str, p: Paint) -> String {
        p.apply(text, self.color)
    }
}

/// YAML 1.1 words that read as booleans or null (compared case-insensitively).
const YAML_WORDS: [&str; 9] = ["y", "yes", "n", "no", "true", "false", "on", "off", "null"];

/// Whether a string may be written as a plain YAML scalar and still be read back as this
/// string by YAML 1.1 and 1.2 readers alike: it starts with a letter, holds only letters,
/// digits and `._/-`, and is not a boolean or null word (`NO`, Norway's country code, is the
/// boolean false in YAML 1.1).
fn yaml_plain(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && !YAML_WORDS.iter().any(|w| w.eq_ignore_ascii_case(s))
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_f64() => {
            // YAML 1.1 floats need a dot, and no exponent without one.
            let f = n.as_f64().unwrap_or_default();
            let s = format!("{f}");
            if s.contains('.') { s } else { format!("{s}.0") }
        }
        Value::Number(n) => n.to_string(),
        Value::String(s) if yaml_plain(s) => s.clone(),
        // A JSON string is a valid YAML double-quoted scalar.
        other => other.to_string(),
    }
}

fn yaml_nested(v: &Value) -> bool {
    match v {
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => false,
    }
}

fn yaml_inline(v: &Value) -> String {
    match v {
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
        s => yaml_scalar(s),
    }
}

fn yaml_block(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) => {
            for (i, (k, v)) in o.iter().enumerate() {
                // The first key of a list item follows its "- " on the same line.
                if i > 0 || !out.ends_with("- ") {
                    out.push_str(&pad);
                }
                out.push_str(&yaml_scalar(&Value::String(k.clone())));
                out.push(':');
                if yaml_nested(v) {
                    out.push('\n');
                    yaml_block(out, v, indent + 2);
                } else {
                    out.push(' ');
                    out.push_str(&yaml_inline(v));
                    out.push('\n');
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                out.push_str(&pad);
                match item {
                    Value::Object(o) if !o.is_empty() => {
                        out.push_str("- ");
                        yaml_block(out, item, indent + 2);
                    }
                    Value::Array(x) if !x.is_empty() => {
                        out.push_str("-\n");
                        yaml_block(out, item, indent + 2);
                    }
                    _ => {
                        out.push_str("- ");
                        out.push_str(&yaml_inline(item));
                        out.push('\n');
                    }
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&yaml_inline(scalar));
            out.push('\n');
        }
    }
}

/// A JSON value as block-style YAML that YAML 1.1 and 1.2 readers both read back as the same
/// value: strings are plain only when no reader could take them for anything else, and
/// JSON-quoted otherwise.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    if yaml_nested(v) {
        yaml_block(&mut out, v, 0);
    } else {
        out.push_str(&yaml_inline(v));
        out.push('\n');
    }
    out
}

/// A time for people: `2026-05-01 12:00:00 UTC`.
pub fn time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// How long before `now` `t` was: `42s ago`, `5m ago`, `3h ago`, `12d ago` (or `in 5m`).
pub fn ago(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (now - t).whole_seconds();
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let s = match n {
        0..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {s}")
    } else {
        format!("{s} ago")
    }
}

/// A time with its age: `2026-05-01 12:00:00 UTC (5m ago)`.
pub fn time_ago(t: OffsetDateTime, now: OffsetDateTime) -> String {
    format!("{} ({})", time(t), ago(t, now))
}

/// A byte count for people: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A VPS status, painted by what it means (shared by the VPS, mesh and contract views).
pub fn status_cell(s: sigma_types::VpsStatus) -> Cell {
    use sigma_types::VpsStatus;
    let paint = match s {
        VpsStatus::Provisioning => Paint::Cyan,
        VpsStatus::Active => Paint::Green,
        VpsStatus::Retiring => Paint::Yellow,
        VpsStatus::Retired => Paint::Dim,
        VpsStatus::Deleted => Paint::Red,
    };
    Cell::painted(s.as_str(), paint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "STATUS", "TAGS"]);
        t.row(vec![
            "edge-1.example.com".into(),
            "active".into(),
            "a,b".into(),
        ]);
        t.row(vec![
            "x".into(),
            "provisioning".into(),
            Cell::opt(None::<String>),
        ]);
        let s = t.render(false);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "NAME                STATUS        TAGS");
        assert_eq!(lines[1], "edge-1.example.com  active        a,b");
        assert_eq!(lines[2], "x                   provisioning  -");
        for l in &lines {
            assert_eq!(l.trim_end(), *l);
        }
        // Every column starts at the same character offset on every line.
        let col = lines[0].find("STATUS").unwrap();
        assert!(lines[1..].iter().all(|l| l[col - 2..col] == *"  "));
    }

    #[test]
    fn colour_does_not_change_alignment() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec![Cell::painted("ok", Paint::Green), "1".into()]);
        t.row(vec![Cell::painted("failing", Paint::Red), "2".into()]);
        let plain = t.render(false);
        let colored = t.render(true);
        assert!(colored.contains("\x1b[32mok\x1b[0m"));
        let strip = |s: &str| {
            let mut out = String::new();
            let mut in_esc = false;
            for ch in s.chars() {
                match (in_esc, ch) {
                    (false, '\x1b') => in_esc = true,
                    (true, 'm') => in_esc = false,
                    (true, _) => {}
                    (false, c) => out.push(c),
                }
            }
            out
        };
        assert_eq!(strip(&colored), plain);
    }

    #[test]
    fn cells_are_one_line_and_wide_characters_count_once() {
        let mut t = Table::new(&["N", "V"]);
        t.row(vec!["München".into(), "a\nb".into()]);
        t.row(vec!["Köln".into(), "c".into()]);
        let s = t.render(false);
        assert!(s.contains("München  a b\n"), "{s}");
        assert!(s.contains("Köln     c\n"), "{s}");
    }

    #[test]
    fn details_align_and_indent_continuations() {
        let mut d = Details::new();
        d.field("ID", "1")
            .field("Hostname", "edge-1")
            .field("Mesh", "{\n  \"a\": 1\n}");
        let s = d.render(false);
        assert_eq!(
            s,
            "ID:        1\nHostname:  edge-1\nMesh:      {\n             \"a\": 1\n           }\n"
        );
    }

    #[test]
    fn times_and_sizes() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(time(t), "2023-11-14 22:13:20 UTC");
        assert_eq!(ago(t, t + time::Duration::seconds(42)), "42s ago");
        assert_eq!(ago(t, t + time::Duration::minutes(90)), "1h ago");
        assert_eq!(ago(t, t + time::Duration::days(3)), "3d ago");
        assert_eq!(ago(t + time::Duration::minutes(5), t), "in 5m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }

    #[test]
    fn yaml_quotes_what_yaml_1_1_would_misread() {
        let v = serde_json::json!({
            "country": "NO",
            "words": ["yes", "On", "off", "y", "null", "~", "true"],
            "numbers_as_text": ["1.0", "0x1F", "1_000", "12:30", "2026-05-01", "+1", ".5", "1e3"],
            "odd": ["", " x", "a: b", "#c", "-", "2001:db8::1", "192.0.2.1", "multi\nline", "it's \"q\""],
            "plain": ["edge-1.example.net", "xrayr", "env", "Falkenstein", "v1.2_3"],
            "numbers": [0, -3, 9100, 0.25, 1e20, 1.5e-7],
            "nested": [{"a": 1, "b": [1, [2, 3], {}], "c": {"d": null}}, [], {}],
            "empty_key": {"": 1, "env=prod": true},
        });
        let y = to_yaml(&v);
        assert!(y.contains("country: \"NO\"\n"), "{y}");
        assert!(y.contains("- \"yes\"\n") && y.contains("- \"On\"\n"), "{y}");
        assert!(
            y.contains("- \"12:30\"\n") && y.contains("- \"2026-05-01\"\n"),
            "{y}"
        );
        assert!(
            y.contains("- edge-1.example.net\n") && y.contains("- Falkenstein\n"),
            "{y}"
        );
        assert!(y.contains("- 100000000000000000000.0\n"), "{y}");
        for line in y.lines() {
            assert!(!line.ends_with(' '), "trailing space in {line:?}");
        }
        let back: Value = yaml_serde::from_str(&y).unwrap();
        assert_eq!(back, v, "reads back as the same value:\n{y}");
        assert_eq!(to_yaml(&serde_json::json!([])), "[]\n");
        assert_eq!(to_yaml(&serde_json::json!("no")), "\"no\"\n");
    }

    #[test]
    fn values_render_as_json_and_yaml() {
        let v = serde_json::json!({"name": "a", "n": 1});
        let mut buf = Vec::new();
        Output::new(Format::Json, false, &mut buf)
            .value(&v)
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&buf).unwrap(),
            v,
            "JSON round-trips"
        );
        let mut buf = Vec::new();
        Output::new(Format::Yaml, false, &mut buf)
            .value(&v)
            .unwrap();
        let back: Value = yaml_serde::from_slice(&buf).unwrap();
        assert_eq!(back, v, "YAML round-trips");
        let mut buf = Vec::new();
        Output::new(Format::Json, false, &mut buf)
            .value(&Value::Null)
            .unwrap();
        assert!(buf.is_empty());
    }
}
