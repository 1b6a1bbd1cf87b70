//! The app's counters, and the Prometheus text exposition of them together
//! with the runtime's metrics (served at `/metrics`).
//!
//! Counters of the topology count records as they are processed: a batch
//! processed again after a crash (exactly-once discards its first effects)
//! is counted again, so they measure work, not results.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use stream_core::runtime::RuntimeMetrics;

use crate::model::Status;
use crate::topology::Reason;

/// Counters shared by the topology, the Strapi sync and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct AppMetrics {
    movements_applied: AtomicU64,
    movements_rejected: AtomicU64,
    rejections: [AtomicU64; Reason::CODES.len()],
    strapi_ok: AtomicU64,
    strapi_errors: AtomicU64,
    strapi_backlog: AtomicU64,
    strapi_events: AtomicU64,
}

impl AppMetrics {
    /// A movement was applied to a product's stock.
    pub fn movement_applied(&self) {
        self.movements_applied.fetch_add(1, Ordering::Relaxed);
    }

    /// A movement was rejected (and sent to the error topic).
    pub fn movement_rejected(&self, reason: &Reason) {
        self.movements_rejected.fetch_add(1, Ordering::Relaxed);
        self.rejected(reason);
    }

    /// A record was sent to the error topic.
    pub fn rejected(&self, reason: &Reason) {
        self.rejections[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A Strapi request succeeded (`true`) or failed.
    pub fn strapi_request(&self, ok: bool) {
        let counter = if ok { &self.strapi_ok } else { &self.strapi_errors };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Products whose latest state is not yet in Strapi.
    pub fn set_strapi_backlog(&self, products: usize) {
        self.strapi_backlog.store(products as u64, Ordering::Relaxed);
    }

    /// An event was written to Strapi.
    pub fn strapi_event(&self) {
        self.strapi_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Strapi requests so far: (succeeded, failed).
    pub fn strapi_requests(&self) -> (u64, u64) {
        (self.strapi_ok.load(Ordering::Relaxed), self.strapi_errors.load(Ordering::Relaxed))
    }

    /// Products waiting to be written to Strapi.
    pub fn strapi_backlog(&self) -> u64 {
        self.strapi_backlog.load(Ordering::Relaxed)
    }

    /// Events written to Strapi.
    pub fn strapi_events(&self) -> u64 {
        self.strapi_events.load(Ordering::Relaxed)
    }
}

/// One metric family in the Prometheus text format.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.out, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.out, " {value}");
        self
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The Prometheus text exposition of the runtime's metrics, the app's
/// counters and the number of products by status held by this instance.
pub fn render(runtime: &RuntimeMetrics, app: &AppMetrics, products: &BTreeMap<Status, u64>) -> String {
    let mut out = String::new();
    let o = &mut out;
    let t = &runtime.totals;
    for (name, help, value) in [
        ("opsci_records_in_total", "Records read from source topics.", t.records_in),
        ("opsci_records_out_total", "Records written to output and repartition topics.", t.records_out),
        ("opsci_dead_lettered_total", "Undecodable or failing records sent to the error topic.", t.dead_lettered),
        ("opsci_commits_total", "Successful commits.", runtime.commits),
        ("opsci_restored_records_total", "Store records restored from changelogs.", runtime.restored_records),
        ("opsci_strapi_events_total", "Events written to Strapi.", app.strapi_events()),
    ] {
        Family::new(o, name, "counter", help).sample(name, &[], value);
    }

    let name = "opsci_movements_total";
    let mut family = Family::new(o, name, "counter", "Stock movements processed, by outcome.");
    let rejected = app.movements_rejected.load(Ordering::Relaxed);
    family.sample(name, &[("outcome", "applied")], app.movements_applied.load(Ordering::Relaxed));
    family.sample(name, &[("outcome", "rejected")], rejected);

    let name = "opsci_rejections_total";
    let mut family = Family::new(o, name, "counter", "Records sent to the error topic by the app, by reason.");
    for (code, counter) in Reason::CODES.iter().zip(&app.rejections) {
        family.sample(name, &[("reason", code)], counter.load(Ordering::Relaxed));
    }

    let name = "opsci_consumer_lag";
    let mut family = Family::new(o, name, "gauge", "Records not yet read, per source partition.");
    for ((topic, partition), lag) in &runtime.lag {
        family.sample(name, &[("topic", topic), ("partition", &partition.to_string())], lag);
    }

    let name = "opsci_commit_latency_seconds";
    let mut family = Family::new(o, name, "summary", "Time taken by commits.");
    family.sample(&format!("{name}_sum"), &[], runtime.commit_latency_total.as_secs_f64());
    family.sample(&format!("{name}_count"), &[], runtime.commits);
    let name = "opsci_commit_latency_seconds_max";
    Family::new(o, name, "gauge", "Longest commit so far.").sample(name, &[], runtime.commit_latency_max.as_secs_f64());

    let name = "opsci_tasks";
    let restoring = runtime.tasks.values().filter(|t| t.restoring).count();
    Family::new(o, name, "gauge", "Tasks assigned to this instance, by state.")
        .sample(name, &[("state", "running")], runtime.tasks.len() - restoring)
        .sample(name, &[("state", "restoring")], restoring);

    let name = "opsci_products";
    let mut family = Family::new(o, name, "gauge", "Products held by this instance, by status.");
    for status in [Status::Safe, Status::Danger, Status::Empty] {
        family.sample(name, &[("status", &status.to_string())], products.get(&status).copied().unwrap_or(0));
    }

    let (ok, failed) = app.strapi_requests();
    let name = "opsci_strapi_requests_total";
    Family::new(o, name, "counter", "Requests to Strapi, by outcome.").sample(name, &[("outcome", "ok")], ok).sample(
        name,
        &[("outcome", "error")],
        failed,
    );
    let name = "opsci_strapi_backlog";
    Family::new(o, name, "gauge", "Products whose latest state is not in Strapi yet.").sample(
        name,
        &[],
        app.strapi_backlog(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let app = AppMetrics::default();
        app.movement_applied();
        app.movement_rejected(&Reason::UnknownProduct { id: 4 });
        app.strapi_request(false);
        let mut runtime = RuntimeMetrics::default();
        runtime.lag.insert(("st\"ock".into(), 2), 7);
        let text = render(&runtime, &app, &BTreeMap::from([(Status::Danger, 3)]));
        for line in [
            "opsci_movements_total{outcome=\"applied\"} 1",
            "opsci_movements_total{outcome=\"rejected\"} 1",
            "opsci_rejections_total{reason=\"unknown_product\"} 1",
            "opsci_rejections_total{reason=\"bad_amount\"} 0",
            "opsci_consumer_lag{topic=\"st\\\"ock\",partition=\"2\"} 7",
            "opsci_products{status=\"danger\"} 3",
            "opsci_products{status=\"safe\"} 0",
            "opsci_strapi_requests_total{outcome=\"error\"} 1",
            "# TYPE opsci_commit_latency_seconds summary",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
