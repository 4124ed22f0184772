//! The parts of `make bench` that are plain data: reading the load generators' output (wrk's text,
//! oha's JSON), CPU time and memory from `/proc`, medians and ratios, and rendering the results as
//! Markdown and JSON. The binary starts the processes and runs the load: `src/variants.rs` says
//! what each variant's Envoy config and request are, `src/measure.rs` runs the load and reads CPU
//! and memory, `src/main.rs` puts them in order and writes the report.

pub mod keyd_report;
pub mod noop;
pub mod parse;
pub mod procfs;
pub mod report;
pub mod rls;
pub mod stats;

/// An error of the benchmark harness: what went wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error(message.to_owned())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
