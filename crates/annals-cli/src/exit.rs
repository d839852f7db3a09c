//! Errors and exit codes that scripts can rely on.

use std::process::ExitCode;

/// Any other failure.
pub const ERROR: u8 = 1;
/// Bad usage (clap's own code for it).
#[allow(dead_code)]
pub const USAGE: u8 = 2;
/// The store (or input file) does not exist, or is not an annals store.
pub const NOT_A_STORE: u8 = 3;
/// Another process has the store open.
pub const LOCKED: u8 = 4;
/// The store is damaged (or `verify` found a problem).
pub const CORRUPT: u8 = 5;

/// A failure, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// What to print.
    pub message: String,
    /// The exit code.
    pub code: u8,
    /// The reader of standard output went away (`annals export store - | head`): the command
    /// ends quietly with 0, as command-line tools do.
    pub broken_pipe: bool,
}

impl CliError {
    /// A failure with exit code `code`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code,
            broken_pipe: false,
        }
    }

    /// Prints the error and returns its exit code (nothing, and 0, for a closed pipe).
    pub fn report(&self) -> ExitCode {
        if self.broken_pipe {
            return ExitCode::SUCCESS;
        }
        eprintln!("annals: {}", self.message);
        ExitCode::from(self.code)
    }
}

impl From<annals::Error> for CliError {
    fn from(e: annals::Error) -> Self {
        let code = match &e {
            annals::Error::Locked { .. } => LOCKED,
            annals::Error::NotAStore { .. } | annals::Error::UnsupportedVersion { .. } => {
                NOT_A_STORE
            }
            annals::Error::Corrupt { .. } => CORRUPT,
            e if e
                .io_error()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) =>
            {
                NOT_A_STORE
            }
            _ => ERROR,
        };
        CliError::new(code, e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            NOT_A_STORE
        } else {
            ERROR
        };
        CliError {
            broken_pipe: e.kind() == std::io::ErrorKind::BrokenPipe,
            ..CliError::new(code, e.to_string())
        }
    }
}

impl From<annals_bench::BenchError> for CliError {
    fn from(e: annals_bench::BenchError) -> Self {
        CliError::new(ERROR, e.to_string())
    }
}

/// Result of a command.
pub type CliResult<T = ExitCode> = Result<T, CliError>;
