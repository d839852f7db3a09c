//! Progress on standard error: drawn only when it is a terminal, never into a pipe or a file.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` steps (`counts` shows them, e.g. `{pos}/{len} events`), or a spinner with
/// the elapsed time when `total` is 0; hidden when standard error is not a terminal.
pub fn progress(what: &str, total: u64, counts: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = if total == 0 {
        let spinner = ProgressBar::new_spinner();
        spinner.enable_steady_tick(Duration::from_millis(120));
        spinner
    } else {
        ProgressBar::new(total)
    };
    let template = if total == 0 {
        format!("{what} {{spinner}} {counts} ({{elapsed}})")
    } else {
        format!("{what} {{bar:40}} {counts} ({{eta}})")
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}
