//! The unused-rule report: every grant of the shipped RBAC (role, resource,
//! verb) must have been used by some scenario of this run, as recorded by
//! the in-memory API server under `PREWARM_RBAC_USAGE_DIR`. `scripts/test.sh`
//! runs it last (`--ignored`), after every other test has recorded its use.

use std::path::PathBuf;

use prewarm::testkit::apiserver::rbac::{recorded_uses, Grant, USAGE_DIR_ENV};
use prewarm::testkit::apiserver::Policy;

/// Grants no scenario can exercise here, each with the reason.
const NOT_EXERCISED: &[(&str, &str, &str)] = &[];

#[test]
#[ignore = "run by scripts/test.sh after the other tests"]
fn every_shipped_rbac_grant_is_used_by_a_scenario() {
    let dir = PathBuf::from(
        std::env::var_os(USAGE_DIR_ENV).expect("PREWARM_RBAC_USAGE_DIR names the usage directory"),
    );
    let used = recorded_uses(&dir);
    assert!(!used.is_empty(), "no usage recorded in {}", dir.display());
    let excused = |g: &Grant| {
        NOT_EXERCISED
            .iter()
            .any(|(r, v, _)| *r == g.resource && *v == g.verb)
    };
    let unused: Vec<String> = Policy::shipped()
        .grants()
        .into_iter()
        .filter(|g| !used.contains(g) && !excused(g))
        .map(|g| g.to_string())
        .collect();
    assert!(
        unused.is_empty(),
        "RBAC grants no scenario used (remove them, add a scenario, or excuse them in \
         tests/it/rbac.rs with a reason):\n  {}",
        unused.join("\n  ")
    );
}
