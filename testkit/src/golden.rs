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

/// Partitions (sorted) as ranges for script output: `0-2,5`; `-` when there are none.
pub fn ranges(partitions: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < partitions.len() {
        let mut j = i;
        while j + 1 < partitions.len() && partitions[j + 1] == partitions[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            partitions[i].to_string()
        } else {
            format!("{}-{}", partitions[i], partitions[j])
        });
        i = j + 1;
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

/// A script's time argument: `250ms` or `2s`.
pub fn duration(value: &str) -> Result<std::time::Duration, String> {
    let (number, unit_ms) = match value.strip_suffix("ms") {
        Some(n) => (n, 1),
        None => match value.strip_suffix('s') {
            Some(n) => (n, 1000),
            None => return Err(format!("not a duration (ms or s): {value}")),
        },
    };
    let n: u64 = number
        .parse()
        .map_err(|e| format!("not a duration (ms or s): {value}: {e}"))?;
    Ok(std::time::Duration::from_millis(n * unit_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_durations() {
        assert_eq!(ranges(&[]), "-");
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(duration("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(duration("2s"), Ok(std::time::Duration::from_secs(2)));
        assert!(duration("2").is_err());
        assert!(duration("xs").is_err());
    }
}
