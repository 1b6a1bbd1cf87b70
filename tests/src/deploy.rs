//! The deployment files (`docker-compose.yml`, `deploy/`): where they are, and
//! which metrics the Grafana dashboard queries.
//!
//! [`dashboard_metrics`] is the list of metric names the app must export at
//! `/metrics` for every panel of `deploy/grafana/dashboards/opsci.json` to
//! show data: `tests/tests/deploy.rs` checks it against the names the app
//! promises, and a test of the running app can check it against its output.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The repository's root directory (the Cargo workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

/// `deploy/grafana/dashboards/opsci.json`.
pub fn dashboard_path() -> PathBuf {
    repo_root().join("deploy/grafana/dashboards/opsci.json")
}

/// The dashboard, parsed.
///
/// # Panics
/// When the file is missing or is not JSON.
pub fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// Every `expr` string anywhere in `value` (panel targets, panels nested in
/// rows), in document order.
pub fn exprs(value: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, item) in map {
                    match (key.as_str(), item) {
                        ("expr", Value::String(expr)) => out.push(expr.clone()),
                        _ => walk(item, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

/// The metric names of the app in a PromQL expression: every `opsci_[a-z_]+`
/// that is a whole identifier (not the tail of a longer name).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const PREFIX: &str = "opsci_";
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = expr[from..].find(PREFIX) {
        let start = from + found;
        let mut end = start + PREFIX.len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let whole = (start == 0 || !is_ident(bytes[start - 1])) && end > start + PREFIX.len();
        if whole {
            names.insert(expr[start..end].to_string());
        }
        from = end;
    }
    names
}

/// Every metric name of the app that the Grafana dashboard queries.
///
/// # Panics
/// When the dashboard is missing or is not JSON.
pub fn dashboard_metrics() -> BTreeSet<String> {
    exprs(&dashboard()).iter().flat_map(|expr| metric_names(expr)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_whole_identifiers() {
        let names = metric_names(
            "sum(rate(opsci_commit_latency_seconds_sum[1m])) / sum(rate(opsci_commit_latency_seconds_count[1m])) \
             + x_opsci_not_this + max(opsci_tasks{state=\"running\"})",
        );
        let expected: BTreeSet<String> =
            ["opsci_commit_latency_seconds_count", "opsci_commit_latency_seconds_sum", "opsci_tasks"]
                .into_iter()
                .map(String::from)
                .collect();
        assert_eq!(names, expected);
    }

    #[test]
    fn exprs_are_found_in_nested_panels() {
        let dashboard = serde_json::json!({
            "panels": [
                {"type": "row", "panels": [{"targets": [{"expr": "opsci_a"}]}]},
                {"targets": [{"expr": "opsci_b"}, {"refId": "B"}]}
            ]
        });
        assert_eq!(exprs(&dashboard), ["opsci_a", "opsci_b"]);
    }
}
