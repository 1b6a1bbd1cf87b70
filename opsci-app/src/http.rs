//! The app's HTTP endpoint (axum):
//!
//! - `GET /metrics`: Prometheus text format ([`crate::metrics::render`]);
//! - `GET /health/live`: 200 while the app runs (a load balancer or an
//!   orchestrator restarts an instance that stops answering it);
//! - `GET /health/ready` (and `GET /health`): 200 when every task assigned to
//!   this instance is restored and running, 503 while one is restoring or
//!   waits for the cluster (send it no queries then);
//! - `GET /products/{id}`: one product's [`ProductState`], from this
//!   instance's stores (404 when no task of this instance holds it);
//! - `GET /products?status=danger&limit=100&after=42`: a page of the
//!   products this instance holds (optionally only those with a status), in
//!   the order of their ids as text, at most `limit` (default 1 000, at most
//!   10 000), after product `after`; when there may be more, a
//!   `Link: <…>; rel="next"` header gives the next page's address.
//!
//! Each instance answers for the partitions assigned to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use stream_core::runtime::{MetricsHandle, StoreReader};
use stream_core::serdes::{Json as JsonSerde, Utf8, I64};

use crate::metrics::{render, AppMetrics};
use crate::model::{Product, ProductState, Status};
use crate::policy::StatusPolicy;
use crate::topology::{product_state, product_states, PRODUCTS_STORE, STOCK_STORE};

/// What the endpoint reads.
#[derive(Clone)]
pub struct ApiState {
    /// The runtime's stores.
    pub stores: StoreReader,
    /// The runtime's metrics.
    pub runtime: MetricsHandle,
    /// The app's counters.
    pub app: Arc<AppMetrics>,
    /// The status policy.
    pub policy: StatusPolicy,
}

fn unavailable(error: stream_core::StoreError) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response()
}

impl ApiState {
    fn products(&self) -> Result<Vec<ProductState>, Response> {
        let products = self.stores.all(PRODUCTS_STORE, Utf8, JsonSerde::<Product>::new()).map_err(unavailable)?;
        let stock = self.stores.all(STOCK_STORE, Utf8, I64).map_err(unavailable)?;
        Ok(product_states(products, stock, &self.policy))
    }

    /// Up to `limit` products with `status` (any when `None`) after product
    /// `after`, in key order, and the key to continue after when the page is full.
    fn page(
        &self,
        status: Option<Status>,
        mut after: Option<String>,
        limit: usize,
    ) -> Result<(Vec<ProductState>, Option<String>), Response> {
        let mut page = Vec::new();
        loop {
            let batch = self
                .stores
                .page(PRODUCTS_STORE, after.as_ref(), limit, Utf8, JsonSerde::<Product>::new())
                .map_err(unavailable)?;
            let last = batch.len() < limit;
            for (key, product) in batch {
                let stock = self.stores.get(STOCK_STORE, &key, Utf8, I64).map_err(unavailable)?;
                let state = product_state(product, stock, &self.policy);
                if status.is_none_or(|s| state.status == s) {
                    page.push(state);
                }
                after = Some(key);
                if page.len() == limit {
                    return Ok((page, after));
                }
            }
            if last {
                return Ok((page, None));
            }
        }
    }

    /// One product, read by key rather than over the whole store.
    fn product(&self, id: u64) -> Result<Option<ProductState>, Response> {
        let key = id.to_string();
        let Some(product) =
            self.stores.get(PRODUCTS_STORE, &key, Utf8, JsonSerde::<Product>::new()).map_err(unavailable)?
        else {
            return Ok(None);
        };
        let stock = self.stores.get(STOCK_STORE, &key, Utf8, I64).map_err(unavailable)?;
        Ok(product_states(vec![(key.clone(), product)], stock.map(|s| (key, s)).into_iter().collect(), &self.policy)
            .pop())
    }
}

/// The routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(ready))
        .route("/health/ready", get(ready))
        .route("/health/live", get(live))
        .route("/products", get(products))
        .route("/products/{id}", get(product))
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut by_status = BTreeMap::<Status, u64>::new();
    for product in state.products().unwrap_or_default() {
        *by_status.entry(product.status).or_default() += 1;
    }
    let text = render(&state.runtime.snapshot(), &state.app, &by_status);
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn live(State(state): State<ApiState>) -> Response {
    let runtime = state.runtime.snapshot();
    let body = serde_json::json!({ "status": "live", "tasks": runtime.tasks.len(), "waiting": runtime.waiting });
    (StatusCode::OK, Json(body)).into_response()
}

async fn ready(State(state): State<ApiState>) -> Response {
    let runtime = state.runtime.snapshot();
    let restoring: Vec<String> =
        runtime.tasks.iter().filter(|(_, t)| t.restoring).map(|(id, _)| id.to_string()).collect();
    let ready = restoring.is_empty() && !runtime.waiting;
    let body = serde_json::json!({
        "status": if ready { "ready" } else if runtime.waiting { "waiting" } else { "restoring" },
        "tasks": runtime.tasks.len(),
        "restoring": restoring,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

/// The default page size of `/products`, and the largest one.
const PAGE: usize = 1_000;
const MAX_PAGE: usize = 10_000;

#[derive(Deserialize)]
struct ProductQuery {
    status: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn products(State(state): State<ApiState>, Query(query): Query<ProductQuery>) -> Response {
    let wanted = match query.status.as_deref().map(|s| serde_json::from_value::<Status>(s.into())) {
        Some(Err(_)) => return bad_request("status must be safe, danger or empty"),
        Some(Ok(status)) => Some(status),
        None => None,
    };
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return bad_request("limit must be between 1 and 10000");
    }
    match state.page(wanted, query.after, limit) {
        Ok((page, None)) => Json(page).into_response(),
        Ok((page, Some(after))) => {
            let status = query.status.map(|s| format!("status={s}&")).unwrap_or_default();
            let next = format!("</products?{status}limit={limit}&after={after}>; rel=\"next\"");
            ([("link", next)], Json(page)).into_response()
        }
        Err(response) => response,
    }
}

async fn product(State(state): State<ApiState>, Path(id): Path<u64>) -> Response {
    match state.product(id) {
        Ok(Some(product)) => Json(product).into_response(),
        Ok(None) => {
            let error = format!("product {id} is not held by this instance");
            (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": error }))).into_response()
        }
        Err(response) => response,
    }
}

/// Serves the routes on `addr` from a thread of its own until `stop` is set.
/// Returns once the socket is bound (or could not be).
pub fn serve(
    addr: SocketAddr,
    state: ApiState,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(addr))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP endpoint: /metrics /health /products");
    std::thread::Builder::new().name("http".into()).spawn(move || {
        runtime.block_on(async move {
            let stopped = async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            axum::serve(listener, router(state)).with_graceful_shutdown(stopped).await
        })
    })
}
