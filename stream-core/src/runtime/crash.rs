//! Crash points, for tests only: with the cargo feature `crash-points`, the
//! process aborts (no destructor, no flush, as under SIGKILL) the `n`-th time
//! it reaches the point named by `STREAM_CORE_CRASH_AT=<point>:<n>`, after
//! printing `crash point <point>` to standard error. Without the feature,
//! [`reached`] is `false` and every check compiles away.
//!
//! The points, in the order a commit and a restore reach them:
//!
//! | point | where |
//! |---|---|
//! | `outputs_flushed` | a task's outputs and store changes are acknowledged, no commit record sent |
//! | `between_commit_records` | the commit record of the first of several changelogs is acknowledged |
//! | `before_commit_transaction` | everything is acknowledged; `commit_transaction` is next |
//! | `after_commit_transaction` | the transaction is committed; the local store is not written |
//! | `stores_written` | the local store holds the commit |
//! | `checkpoint_writing` | a local checkpoint is written aside, not yet renamed into place |
//! | `mid_restore` | a record of a changelog was applied to a store being restored |

/// Whether this is the time to crash at `point` (counting this call).
#[cfg(feature = "crash-points")]
pub(crate) fn reached(point: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let value = std::env::var("STREAM_CORE_CRASH_AT").ok()?;
        let (name, n) = value.split_once(':')?;
        Some((name.to_string(), n.parse().ok()?))
    });
    match target {
        Some((name, n)) if name == point => HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n,
        _ => false,
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn reached(_point: &str) -> bool {
    false
}

/// Aborts the process at `point`.
pub(crate) fn now(point: &str) -> ! {
    eprintln!("crash point {point}");
    std::process::abort()
}

/// Aborts the process if this is the time to crash at `point`.
#[inline(always)]
pub(crate) fn at(point: &str) {
    if reached(point) {
        now(point)
    }
}
