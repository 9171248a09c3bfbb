//! Printing: aligned tables and `Field: value` lists for people, JSON for scripts.

use serde::Serialize;

/// Prints a value as pretty JSON on stdout.
pub fn json<T: Serialize + ?Sized>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("values we print always serialize"));
}

/// A table printed with columns padded to their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len() - 1;
            for (i, cell) in row.iter().enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Prints `label: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
    for (label, value) in pairs {
        println!("{:<width$} {value}", format!("{label}:"), width = width);
    }
}

/// `-` for an absent value in tables.
pub fn or_dash(value: Option<String>) -> String {
    value.unwrap_or_else(|| "-".into())
}

/// A spinner with a message on stderr, shown only on a terminal and never with `--json`,
/// so scripts see nothing of it.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn spinner(json: bool) -> Progress {
        use std::io::IsTerminal;
        let bar = (std::io::stderr().is_terminal() && !json).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .expect("valid progress template"),
            );
            bar
        });
        Progress { bar }
    }

    /// Updates the message; `message` is only called when there is a terminal to show it.
    pub fn show(&self, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message());
            bar.tick();
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let mut t = Table::new(&["A", "BB"]);
        t.row(vec!["long cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          BB\nlong cell  x\n");
    }
}
