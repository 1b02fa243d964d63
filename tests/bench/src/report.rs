//! Result tables. Every scenario describes its figures once, as columns and
//! cells; the same description prints a single run, the side-by-side
//! comparison (with ratios against the first row) and the JSON output, so a
//! scenario's figures cannot drift between them.

use std::fmt::Write as _;

/// A column: its heading, whether a ratio against the first row follows
/// it, and whether it is aligned right (numbers) or left (text).
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub head: &'static str,
    pub ratio: bool,
    pub right: bool,
}

/// A column of numbers.
pub const fn col(head: &'static str) -> Col {
    Col { head, ratio: false, right: true }
}

/// A column of numbers followed by a `ratio` column against the first row.
pub const fn ratio(head: &'static str) -> Col {
    Col { head, ratio: true, right: true }
}

/// A column of text.
pub const fn text(head: &'static str) -> Col {
    Col { head, ratio: false, right: false }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// A number and its decimals.
    Num(f64, usize),
    Text(String),
    /// Not measured (no server PID, nothing to show).
    None,
}

impl Cell {
    pub fn num(v: f64, decimals: usize) -> Cell {
        Cell::Num(v, decimals)
    }

    pub fn opt(v: Option<f64>, decimals: usize) -> Cell {
        v.map_or(Cell::None, |v| Cell::Num(v, decimals))
    }

    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    fn value(&self) -> Option<f64> {
        match self {
            Cell::Num(v, _) => Some(*v),
            _ => None,
        }
    }

    fn render(&self) -> String {
        match self {
            Cell::Num(v, d) => format!("{v:.d$}", d = *d),
            Cell::Text(s) => s.clone(),
            Cell::None => "-".into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Cell::Num(v, _) => serde_json::json!(v),
            Cell::Text(s) => serde_json::json!(s),
            Cell::None => serde_json::Value::Null,
        }
    }
}

/// What a scenario's report gives the tables.
pub trait Row {
    /// The scenario's columns, after the first (`runtime`).
    fn columns() -> Vec<Col>;
    fn cells(&self) -> Vec<Cell>;
    /// False if anything was lost, doubled or reordered.
    fn clean(&self) -> bool;
    /// Warnings worth printing under the table (a bottlenecked generator, closes).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// A second table with the run's details (the ramp's steps).
    fn detail(&self, _name: &str) -> Option<Table> {
        None
    }
}

/// A markdown table with a title line.
pub struct Table {
    pub title: String,
    /// The first column's heading: what the rows are.
    first: &'static str,
    cols: Vec<Col>,
    rows: Vec<(String, Vec<Cell>)>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, cols: Vec<Col>) -> Table {
        Table { title: title.into(), first: "runtime", cols, rows: Vec::new(), notes: Vec::new() }
    }

    /// Names the first column (`runtime` by default).
    pub fn first(mut self, head: &'static str) -> Table {
        self.first = head;
        self
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub fn of<R: Row>(title: impl Into<String>) -> Table {
        Table::new(title, R::columns())
    }

    pub fn push(&mut self, name: &str, cells: Vec<Cell>) {
        assert_eq!(cells.len(), self.cols.len(), "a row of {name} does not fit the table {}", self.title);
        self.rows.push((name.to_string(), cells));
    }

    /// Adds a report's row and its notes.
    pub fn push_row<R: Row>(&mut self, name: &str, r: &R) {
        self.push(name, r.cells());
        self.notes.extend(r.notes().into_iter().map(|n| format!("{name}: {n}")));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.title);
        let mut head = vec![self.first.to_string()];
        let mut rule = vec!["---".to_string()];
        for c in &self.cols {
            head.push(c.head.to_string());
            rule.push(if c.right { "---:" } else { "---" }.to_string());
            if c.ratio {
                head.push("ratio".into());
                rule.push("---:".into());
            }
        }
        let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
        let _ = writeln!(out, "{}", line(&head));
        let _ = writeln!(out, "{}", line(&rule));
        let base = self.rows.first().map(|(_, cells)| cells.clone());
        for (name, cells) in &self.rows {
            let mut line_cells = vec![name.clone()];
            for (k, (c, cell)) in self.cols.iter().zip(cells).enumerate() {
                line_cells.push(cell.render());
                if c.ratio {
                    let b = base.as_ref().and_then(|b| b[k].value());
                    line_cells.push(match (cell.value(), b) {
                        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}x", v / b),
                        _ => "-".into(),
                    });
                }
            }
            let _ = writeln!(out, "{}", line(&line_cells));
        }
        for n in &self.notes {
            let _ = writeln!(out, "\n> {n}");
        }
        out
    }

    /// The rows as JSON objects keyed by column heading.
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|(name, cells)| {
                let mut o = serde_json::Map::new();
                o.insert(self.first.into(), name.clone().into());
                for (c, cell) in self.cols.iter().zip(cells) {
                    o.insert(c.head.into(), cell.json());
                }
                serde_json::Value::Object(o)
            })
            .collect();
        serde_json::json!({ "title": self.title, "rows": rows, "notes": self.notes })
    }
}

/// Prints one report: a one-row table, or JSON.
pub fn print_one<R: Row>(title: &str, name: &str, r: &R, json: bool) {
    let mut t = Table::of::<R>(title).first("server");
    t.push_row(name, r);
    let detail = r.detail(name);
    if json {
        let mut out = t.to_json();
        if let Some(d) = detail {
            out["detail"] = d.to_json();
        }
        println!("{out}");
    } else {
        print!("{}", t.render());
        if let Some(d) = detail {
            print!("\n{}", d.render());
        }
    }
}

pub fn mib(kib: Option<u64>) -> Cell {
    Cell::opt(kib.map(|k| k as f64 / 1024.0), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_against_the_first_row() {
        let mut t = Table::new("t", vec![ratio("rate"), text("note"), ratio("cpu")]);
        t.push("a", vec![Cell::num(200.0, 0), Cell::text("x"), Cell::num(2.0, 2)]);
        t.push("b", vec![Cell::num(100.0, 0), Cell::None, Cell::None]);
        let out = t.render();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "t");
        assert_eq!(lines[1], "| runtime | rate | ratio | note | cpu | ratio |");
        assert_eq!(lines[2], "| --- | ---: | ---: | --- | ---: | ---: |");
        assert_eq!(lines[3], "| a | 200 | 1.00x | x | 2.00 | 1.00x |");
        assert_eq!(lines[4], "| b | 100 | 0.50x | - | - | - |");
    }

    #[test]
    fn a_zero_baseline_gives_no_ratio() {
        let mut t = Table::new("t", vec![ratio("rate")]);
        t.push("a", vec![Cell::num(0.0, 0)]);
        t.push("b", vec![Cell::num(5.0, 1)]);
        assert!(t.render().contains("| b | 5.0 | - |"));
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn rows_must_fit() {
        Table::new("t", vec![col("a")]).push("x", vec![]);
    }

    #[test]
    fn json_keys_are_the_headings() {
        let mut t = Table::new("t", vec![col("p99 ms")]);
        t.push("a", vec![Cell::num(1.5, 2)]);
        assert_eq!(t.to_json()["rows"][0]["p99 ms"], 1.5);
        assert_eq!(t.to_json()["rows"][0]["runtime"], "a");
    }
}
