//! Results: one section per scenario with notes and a table, printed to
//! stdout as each scenario ends, and written as Markdown by `--write-docs`
//! with the machine, the server versions, the date and the command.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::machine::Machine;

/// A table of strings with a header row.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|header| header.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len(), "row width != header width");
        self.rows.push(row);
    }

    /// Renders the table with columns padded to their widest cell.
    pub fn to_text(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|column| {
                std::iter::once(&self.headers)
                    .chain(&self.rows)
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |row: &Vec<String>| {
            row.iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut text = line(&self.headers);
        for row in &self.rows {
            text.push('\n');
            text.push_str(&line(row));
        }
        text
    }

    pub fn to_markdown(&self) -> String {
        let line = |row: &Vec<String>| format!("| {} |", row.join(" | "));
        let mut text = line(&self.headers);
        text.push('\n');
        text.push_str(&format!("|{}", "---|".repeat(self.headers.len())));
        for row in &self.rows {
            text.push('\n');
            text.push_str(&line(row));
        }
        text
    }
}

/// The results of one scenario.
#[derive(Clone, Debug)]
pub struct Section {
    pub title: String,
    pub table: Table,
    /// Sentences printed under the table: setup, caveats, peaks.
    pub notes: Vec<String>,
}

impl Section {
    pub fn to_text(&self) -> String {
        let mut text = format!("\n== {} ==\n{}\n", self.title, self.table.to_text());
        for note in &self.notes {
            text.push_str(&format!("  * {note}\n"));
        }
        text
    }

    fn to_markdown(&self) -> String {
        let mut text = format!("### {}\n\n{}\n\n", self.title, self.table.to_markdown());
        for note in &self.notes {
            text.push_str(&format!("- {note}\n"));
        }
        text
    }
}

/// Everything one invocation measured.
#[derive(Default)]
pub struct Report {
    pub sections: Vec<Section>,
    /// Server versions, such as `etcd 3.4.23`.
    pub versions: Vec<String>,
    /// Scenarios that failed, with the error.
    pub failures: Vec<String>,
}

impl Report {
    /// Prints `section` to stdout and keeps it.
    pub fn add(&mut self, section: Section) {
        println!("{}", section.to_text());
        self.sections.push(section);
    }

    /// Writes the report as a Markdown page to `path`.
    pub fn write_markdown(&self, path: &Path, machine: &Machine, command: &str) -> Result<()> {
        let mut page = String::new();
        page.push_str("# Benchmarks\n\n");
        page.push_str(
            "Measured by `parley-bench` (crate `bench/`), which starts every server itself on \
             127.0.0.1 with data in a temporary folder and drives it with the same payloads \
             and concurrency. Parley and etcd acknowledge a write only after it is synced to \
             disk on a majority; NATS JetStream 2.9 does not sync each write (see the notes). \
             The load generator runs on the same machine as the servers and shares its cores. \
             Rerun with:\n\n",
        );
        let _ = writeln!(
            page,
            "```sh\napt-get install -y etcd-server nats-server\n\
             cargo build --release -p parley -p parley-bench\n{command}\n```\n"
        );
        page.push_str("## Machine\n\n");
        page.push_str(&machine.to_markdown());
        let _ = writeln!(page, "\n## Versions\n");
        for version in &self.versions {
            let _ = writeln!(page, "- {version}");
        }
        page.push_str("\n## Results\n\n");
        for section in &self.sections {
            page.push_str(&section.to_markdown());
            page.push('\n');
        }
        if !self.failures.is_empty() {
            page.push_str("## Failed scenarios\n\n");
            for failure in &self.failures {
                let _ = writeln!(page, "- {failure}");
            }
        }
        std::fs::write(path, page).with_context(|| format!("failed to write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_table_pads_columns() {
        let mut table = Table::new(&["system", "ops/s"]);
        table.push(vec!["parley".into(), "1,000".into()]);
        table.push(vec!["etcd".into(), "20".into()]);
        assert_eq!(table.to_text(), "system  ops/s\nparley  1,000\netcd    20");
    }

    #[test]
    fn markdown_table_has_a_separator_row() {
        let mut table = Table::new(&["a", "b"]);
        table.push(vec!["1".into(), "2".into()]);
        assert_eq!(table.to_markdown(), "| a | b |\n|---|---|\n| 1 | 2 |");
    }
}
