//! Checkers: pure functions from a history (and node logs) to a verdict per guarantee.
//!
//! | id | checker | module |
//! |---|---|---|
//! | G1 | linearizability of the route register, per key (WGL search) | [`register`] |
//! | G2 | no two nodes processed one partition in overlapping intervals | [`stream`] |
//! | G3 | per (key, producer) sequence numbers strictly increasing in every journal read | [`stream`] |
//! | G4 | every acknowledged message present after the final reads; duplicates; recovered | [`stream`] |
//! | G5 | per-partition unavailability windows against the failover bound | [`stream`] |
//! | offsets-stable | no journal offset holds two different messages across reads | [`stream`] |
//! | panics | no node log contains `panicked` | [`logs`] |
//!
//! Verdicts: `pass`, `fail`, `unknown` (the checker could not decide, e.g. the search budget
//! ran out or a final read never succeeded: counted as a failure), `not-run` (the workload
//! could not exercise the guarantee, e.g. an RPC answered `UNIMPLEMENTED`: never a pass) and
//! `n/a` (the guarantee is not about this workload).
//!
//! Checkers never look at the nemesis to excuse a violation, except G5, whose guarantee is
//! itself conditional ("with a connected majority"): it only counts operations by clients
//! bound to nodes that the nemesis left connected to a majority.

pub mod logs;
pub mod register;
pub mod stream;
pub mod wgl;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wgl_tests;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A checker's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The guarantee held in this history.
    #[serde(rename = "pass")]
    Pass,
    /// A violation was found.
    #[serde(rename = "fail")]
    Fail,
    /// Undecided (budget exhausted, data missing): counts as a failure.
    #[serde(rename = "unknown")]
    Unknown,
    /// The workload could not exercise the guarantee (e.g. `UNIMPLEMENTED`): not a pass.
    #[serde(rename = "not-run")]
    NotRun,
    /// The guarantee is not about this workload.
    #[serde(rename = "n/a")]
    NotApplicable,
}

impl Verdict {
    /// Text as shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Unknown => "unknown",
            Verdict::NotRun => "not-run",
            Verdict::NotApplicable => "n/a",
        }
    }

    /// True for `fail` and `unknown`: a violation or an undecided check.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Unknown)
    }
}

/// One checker's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `G1` .. `G5`, or `panics`.
    pub id: String,
    /// What it checks, in a few words.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// One line for people.
    pub summary: String,
    /// Counts and evidence (violations, counterexamples), for results.json.
    pub details: Value,
}

impl CheckResult {
    /// A result.
    pub fn new(id: &str, name: &str, verdict: Verdict, summary: impl Into<String>, details: Value) -> Self {
        CheckResult {
            id: id.to_string(),
            name: name.to_string(),
            verdict,
            summary: summary.into(),
            details,
        }
    }
}
