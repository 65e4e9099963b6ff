//! The goldenscript directory runner: every file of a directory is one scenario, run with a
//! fresh runner; every failing file is reported, not only the first.
//!
//! Regenerate expected output with `UPDATE_GOLDENFILES=1` (goldenscript's own switch) and
//! review the diff.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Runs every file of `dir` (in name order) with a runner from `new_runner`, and panics
/// listing every file that failed (an error, or output that differs from the file: the diff
/// is printed above). Panics as well when the directory holds no file.
pub fn run_dir<R: goldenscript::Runner>(dir: &Path, mut new_runner: impl FnMut() -> R) {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no scripts in {}", dir.display());

    let mut failed = Vec::new();
    for path in &paths {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut runner = new_runner();
            goldenscript::run(&mut runner, path)
        }));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failed.push(format!("{}: {error}", path.display())),
            Err(_) => failed.push(format!("{}: output differs (diff above)", path.display())),
        }
    }
    assert!(failed.is_empty(), "failing scripts:\n{}", failed.join("\n"));
}
