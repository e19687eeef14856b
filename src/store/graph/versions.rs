//! The version rules both graph backends apply inside their write transactions, once the item is locked
//! and its live version read. A live version of 0 means "absent" (never written, deleted or expired).

use crate::error::{StoreError, StoreResult};

/// Compare-and-set: an expected version, when given, must be the live one (`Some(0)` = "only if absent").
pub fn check_expected(expected: Option<i64>, live: i64) -> StoreResult<()> {
    match expected {
        Some(expected) if expected != live => Err(StoreError::VersionConflict { expected, current: live }),
        _ => Ok(()),
    }
}

/// An update replaces exactly the version before it: `updated` must be `live + 1`.
pub fn check_successor(live: i64, updated: i64) -> StoreResult<()> {
    check_expected(Some(updated - 1), live)
}

/// The version a write stores over the live one (agent state: 1 for a new key).
pub fn next_version(live: i64) -> i64 {
    live + 1
}

/// A delete needs something live to delete, then passes the compare-and-set.
pub fn check_delete(expected: Option<i64>, live: i64) -> StoreResult<()> {
    if live == 0 {
        return Err(StoreError::NotFound);
    }
    check_expected(expected, live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(result: StoreResult<()>) -> (i64, i64) {
        match result {
            Err(StoreError::VersionConflict { expected, current }) => (expected, current),
            other => panic!("expected a version conflict, got {other:?}"),
        }
    }

    #[test]
    fn compare_and_set_follows_the_expected_version() {
        assert!(check_expected(None, 7).is_ok());
        assert!(check_expected(Some(7), 7).is_ok());
        assert!(check_expected(Some(0), 0).is_ok(), "Some(0) creates");
        assert_eq!(conflict(check_expected(Some(0), 3)), (0, 3), "Some(0) never replaces");
        assert!(check_successor(4, 5).is_ok());
        assert_eq!(conflict(check_successor(5, 5)), (4, 5));
        assert!(matches!(check_delete(None, 0), Err(StoreError::NotFound)));
        assert_eq!(conflict(check_delete(Some(2), 3)), (2, 3));
        assert!(check_delete(Some(3), 3).is_ok());
        assert_eq!(next_version(0), 1);
    }
}
