//! How `bus containers` prints: JSON, text tables and streams, or TSV;
//! to stdout or `-o FILE`; with colour only where it is wanted.

use super::super::Failure;
use clap::ValueEnum;
use serde_json::Value;
use std::io::{IsTerminal, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    #[default]
    Json,
    Text,
    Tsv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

/// Where and how output goes.
pub struct Out {
    pub format: Format,
    pub quiet: bool,
    pub color: bool,
    /// Output goes to a terminal (not `-o FILE`, not a pipe).
    pub to_terminal: bool,
    sink: Box<dyn Write>,
}

impl Out {
    pub fn new(
        format: Format,
        quiet: bool,
        color: ColorChoice,
        no_color: bool,
        file: Option<&std::path::Path>,
    ) -> Result<Out, Failure> {
        let sink: Box<dyn Write> = match file {
            Some(p) => Box::new(
                std::fs::File::create(p)
                    .map_err(|e| Failure::error(format!("cannot write {}: {e}", p.display())))?,
            ),
            None => Box::new(std::io::stdout()),
        };
        let env_off = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match (no_color, color) {
            (true, _) => false,
            (_, ColorChoice::Always) => true,
            (_, ColorChoice::Never) => false,
            (_, ColorChoice::Auto) => !env_off && std::io::stderr().is_terminal(),
        };
        Ok(Out {
            format,
            quiet,
            color,
            to_terminal: file.is_none() && std::io::stdout().is_terminal(),
            sink,
        })
    }

    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.sink.write_all(bytes).map_err(Failure::write)?;
        self.sink.flush().map_err(Failure::write)?;
        Ok(())
    }

    pub fn line(&mut self, text: &str) -> Result<(), Failure> {
        writeln!(self.sink, "{text}").map_err(Failure::write)?;
        Ok(())
    }

    /// Pretty JSON.
    pub fn json(&mut self, v: &Value) -> Result<(), Failure> {
        let text = serde_json::to_string_pretty(v).unwrap_or_default();
        self.line(&text)
    }

    /// A table: aligned columns (text) or tab-separated with a header (tsv).
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> Result<(), Failure> {
        if self.format == Format::Tsv {
            self.line(&header.join("\t"))?;
            for r in rows {
                let cells: Vec<String> = r.iter().map(|c| tsv_escape(c)).collect();
                self.line(&cells.join("\t"))?;
            }
            return Ok(());
        }
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let fmt_row = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let head = fmt_row(header.iter().map(|h| h.to_string()).collect());
        let head = if self.color {
            format!("\x1b[1m{head}\x1b[0m")
        } else {
            head
        };
        self.line(&head)?;
        for r in rows {
            self.line(&fmt_row(r.clone()))?;
        }
        Ok(())
    }
}

/// TSV cells cannot hold tabs or newlines: escape them.
pub fn tsv_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints an error (and guidance) to stderr.
pub fn print_error(color: bool, message: &str) {
    let label = if color {
        "\x1b[31merror\x1b[0m"
    } else {
        "error"
    };
    eprintln!("bus: {label}: {message}");
}

/// The bytes of a log chunk (`data`, or `data_base64` decoded).
pub fn chunk_bytes(chunk: &Value) -> Vec<u8> {
    match chunk.get("data_base64").and_then(Value::as_str) {
        Some(b) => crate::contract::bytes::base64_decode("data_base64", b).unwrap_or_default(),
        None => chunk
            .get("data")
            .and_then(Value::as_str)
            .unwrap_or("")
            .as_bytes()
            .to_vec(),
    }
}

/// The bytes of a result's `stdout` or `stderr` (decoded when the result
/// says `"output_encoding": "base64"`).
pub fn result_bytes(result: &Value, stream: &str) -> Vec<u8> {
    let text = result.get(stream).and_then(Value::as_str).unwrap_or("");
    if result.get("output_encoding").and_then(Value::as_str) == Some("base64") {
        crate::contract::bytes::base64_decode(stream, text).unwrap_or_default()
    } else {
        text.as_bytes().to_vec()
    }
}
