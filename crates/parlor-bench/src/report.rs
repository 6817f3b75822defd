//! Output: progress lines on stderr while running, then a readable table and one JSON
//! line on stdout. The JSON line always starts with `{"scenario":` (the report structs
//! declare `scenario` first; serde keeps declaration order), so scripts can pick it out
//! with `grep '^{"scenario":'` and compare runs.

use anyhow::bail;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A table with a header row, printed with aligned columns.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let line = |out: &mut String, cells: &[String]| {
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                // First column left-aligned (labels), the others right-aligned (numbers).
                if i == 0 {
                    let _ = write!(out, "  {cell:<width$}");
                } else {
                    let _ = write!(out, "  {cell:>width$}");
                }
            }
            out.push('\n');
        };
        line(&mut out, &self.header);
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(&mut out, &rule);
        for row in &self.rows {
            line(&mut out, row);
        }
        println!("{out}");
    }
}

/// A two-column table of figures.
pub fn print_figures(title: &str, rows: &[(&str, String)]) {
    let mut table = Table::new(title, &["figure", "value"]);
    for (name, value) in rows {
        table.row(vec![(*name).to_owned(), value.clone()]);
    }
    table.print();
}

/// Prints the report as one JSON line on stdout.
pub fn print_json<T: Serialize>(report: &T) -> anyhow::Result<()> {
    let line = serde_json::to_string(report)?;
    if !line.starts_with("{\"scenario\":") {
        bail!("internal: report JSON must start with {{\"scenario\":");
    }
    println!("{line}");
    Ok(())
}

/// Prints a progress line on stderr every second until dropped.
pub struct Progress(JoinHandle<()>);

impl Progress {
    pub fn start(mut line: impl FnMut() -> String + Send + 'static) -> Progress {
        Progress(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", line());
            }
        }))
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// ---- formatting ----

/// `1234567` → `1,234,567`.
pub fn count(v: u64) -> String {
    let digits = v.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .filter_map(|g| std::str::from_utf8(g).ok())
        .collect();
    groups.join(",")
}

/// A rate per second, rounded to a whole number.
pub fn per_sec(v: f64) -> String {
    if v.is_finite() && v >= 0.0 {
        format!("{}/s", count(v.round() as u64))
    } else {
        "n/a".to_owned()
    }
}

/// Milliseconds with microsecond precision.
pub fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

pub fn secs(v: f64) -> String {
    format!("{v:.3} s")
}

pub fn bytes(v: u64) -> String {
    let mib = v as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.1} KiB", v as f64 / 1024.0)
    }
}

/// `n/a` for a figure that could not be measured (e.g. no server process id).
pub fn or_na<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".to_owned())
}

/// `a / b`, or `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Rounds for the JSON line: enough digits, no float noise.
pub fn round3(v: f64) -> f64 {
    (v * 1_000.0).round() / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn json_line_must_start_with_scenario() {
        #[derive(Serialize)]
        struct Good {
            scenario: &'static str,
            x: u32,
        }
        #[derive(Serialize)]
        struct Bad {
            x: u32,
        }
        assert!(print_json(&Good {
            scenario: "t",
            x: 1
        })
        .is_ok());
        assert!(print_json(&Bad { x: 1 }).is_err());
    }
}
