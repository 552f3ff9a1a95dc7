//! Progress bars for large trees, drawn on stderr and only on a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Trees with more config files than this get a progress bar.
pub const LARGE_TREE: usize = 200;

/// A bar of `len` steps, or a hidden one when the tree is small or stderr
/// is not a terminal.
pub fn bar(files: usize, len: u64, message: &'static str) -> ProgressBar {
    if files <= LARGE_TREE || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr()).with_style(style);
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A spinner for a step whose length is unknown (the library's first scan),
/// hidden on small trees and off a terminal.
pub fn spinner(files: usize, message: String) -> ProgressBar {
    if files <= LARGE_TREE || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style);
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}
