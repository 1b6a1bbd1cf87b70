//! A small client of Strapi's REST API: the product and event calls the sync
//! needs, reading Strapi 5 responses (`documentId`, flat attributes) and
//! Strapi 4 responses (numeric `id`, nested `attributes`) alike.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::metrics::AppMetrics;
use crate::model::ProductState;

/// A Strapi API token; never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a Strapi call failed. No variant holds the token.
#[derive(Debug, thiserror::Error)]
pub enum StrapiError {
    /// No HTTP answer (Strapi down, unreachable, timed out).
    #[error("{method} {path}: Strapi unreachable: {reason}")]
    Unreachable {
        /// Method.
        method: &'static str,
        /// Path (no host, no token).
        path: String,
        /// What the HTTP client said.
        reason: String,
    },
    /// An HTTP error status.
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        /// Method.
        method: &'static str,
        /// Path.
        path: String,
        /// The status.
        status: u16,
        /// Strapi's error message, or the start of the body.
        message: String,
    },
    /// A 2xx answer without what was expected.
    #[error("{method} {path}: unexpected answer: {body}")]
    Unexpected {
        /// Method.
        method: &'static str,
        /// Path.
        path: String,
        /// The start of the body.
        body: String,
    },
}

impl StrapiError {
    /// Whether the entry asked for does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StrapiError::Status { status: 404, .. })
    }
}

/// Where an entry is: its `documentId` (Strapi 5) or its numeric `id`
/// (Strapi 4), as used in `/api/<type>/<entry>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EntryRef(pub String);

/// An entry of a Strapi response: where it is, and its attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Its reference.
    pub entry: EntryRef,
    /// Its attributes (flat in Strapi 5, `attributes` in Strapi 4).
    pub attributes: Value,
}

impl Entry {
    /// Reads one element of a response's `data`.
    pub fn parse(data: &Value) -> Option<Entry> {
        let reference = match data.get("documentId").and_then(Value::as_str) {
            Some(document) => document.to_string(),
            None => match data.get("id")? {
                Value::Number(id) => id.to_string(),
                Value::String(id) => id.clone(),
                _ => return None,
            },
        };
        let attributes = data.get("attributes").cloned().unwrap_or_else(|| data.clone());
        Some(Entry { entry: EntryRef(reference), attributes })
    }
}

/// A product as Strapi holds it (the fields the app writes).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct StrapiProduct {
    /// Name.
    pub name: String,
    /// Barcode.
    pub barcode: Option<String>,
    /// Stock.
    pub stock_available: i64,
    /// Status.
    pub status: Option<String>,
}

impl Entry {
    /// The entry's attributes read as a product.
    pub fn product(&self) -> StrapiProduct {
        serde_json::from_value(self.attributes.clone()).unwrap_or_default()
    }
}

/// A page of a collection: its entries and how many pages there are.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Pages in the collection (`meta.pagination.pageCount`).
    pub page_count: u64,
}

/// The largest page Strapi serves by default.
pub const MAX_PAGE_SIZE: u64 = 100;

/// A Strapi REST client; cheap to clone.
#[derive(Clone)]
pub struct StrapiClient {
    base: String,
    token: Token,
    agent: ureq::Agent,
    metrics: Arc<AppMetrics>,
}

impl std::fmt::Debug for StrapiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrapiClient").field("base", &self.base).finish_non_exhaustive()
    }
}

/// The body of a product create or update: absolute values only.
pub fn product_body(state: &ProductState) -> Value {
    let p = &state.product;
    json!({"data": {
        "name": p.name,
        "description": p.description,
        "barcode": p.barcode,
        "stock_available": state.stock,
        "status": state.status,
    }})
}

impl StrapiClient {
    /// A client of the Strapi at `base` (`http://host:1337`), counting its
    /// requests in `metrics`.
    pub fn new(base: &str, token: Token, metrics: Arc<AppMetrics>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        StrapiClient { base: base.trim_end_matches('/').to_string(), token, agent, metrics }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn call(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<Value, StrapiError> {
        let result = self.try_call(method, path, body);
        self.metrics.strapi_request(result.is_ok());
        result
    }

    fn try_call(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<Value, StrapiError> {
        let unreachable =
            |e: ureq::Error| StrapiError::Unreachable { method, path: path.to_string(), reason: e.to_string() };
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Accept", "application/json")
            .header("Authorization", format!("Bearer {}", self.token.0));
        let mut response = match body {
            Some(body) => {
                let request = request
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .map_err(|e| unreachable(e.into()))?;
                self.agent.run(request)
            }
            None => self.agent.run(request.body(()).map_err(|e| unreachable(e.into()))?),
        }
        .map_err(unreachable)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(unreachable)?;
        let value =
            if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::Null) };
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(StrapiError::Status { method, path: path.to_string(), status, message })
    }

    fn entry(&self, method: &'static str, path: &str, body: Option<&Value>) -> Result<Entry, StrapiError> {
        let value = self.call(method, path, body)?;
        value.get("data").and_then(Entry::parse).ok_or_else(|| StrapiError::Unexpected {
            method,
            path: path.to_string(),
            body: value.to_string().chars().take(200).collect(),
        })
    }

    /// One page (1-based) of `collection` (`products`, `events`), oldest first.
    pub fn page(&self, collection: &str, page: u64, page_size: u64) -> Result<Page, StrapiError> {
        let path = format!("/api/{collection}?sort=id:asc&pagination[page]={page}&pagination[pageSize]={page_size}");
        self.list(&path)
    }

    fn list(&self, path: &str) -> Result<Page, StrapiError> {
        let value = self.call("GET", path, None)?;
        let unexpected = || StrapiError::Unexpected {
            method: "GET",
            path: path.to_string(),
            body: value.to_string().chars().take(200).collect(),
        };
        let entries = value.get("data").and_then(Value::as_array).ok_or_else(unexpected)?;
        let entries = entries.iter().map(Entry::parse).collect::<Option<Vec<_>>>().ok_or_else(unexpected)?;
        let page_count = value.pointer("/meta/pagination/pageCount").and_then(Value::as_u64).unwrap_or(1);
        Ok(Page { entries, page_count })
    }

    /// The `count` newest entries of `collection`, newest first.
    pub fn latest(&self, collection: &str, count: u64) -> Result<Vec<Entry>, StrapiError> {
        Ok(self.list(&format!("/api/{collection}?sort=id:desc&pagination[pageSize]={count}"))?.entries)
    }

    /// The first entry of `collection` that `query` (`filters[…]=…&sort=…`)
    /// selects, if any.
    pub fn first(&self, collection: &str, query: &str) -> Result<Option<Entry>, StrapiError> {
        Ok(self.list(&format!("/api/{collection}?{query}&pagination[pageSize]=1"))?.entries.into_iter().next())
    }

    /// Every entry of `collection`, page by page.
    pub fn all(&self, collection: &str) -> Result<Vec<Entry>, StrapiError> {
        let mut entries = Vec::new();
        let mut page = 1;
        loop {
            let Page { entries: more, page_count } = self.page(collection, page, MAX_PAGE_SIZE)?;
            entries.extend(more);
            if page >= page_count {
                return Ok(entries);
            }
            page += 1;
        }
    }

    /// The products whose barcode is `barcode`.
    pub fn products_with_barcode(&self, barcode: &str) -> Result<Vec<Entry>, StrapiError> {
        let encoded: String = barcode
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let path = format!("/api/products?filters[barcode][$eq]={encoded}&pagination[pageSize]={MAX_PAGE_SIZE}");
        Ok(self.list(&path)?.entries)
    }

    /// Creates a product.
    pub fn create_product(&self, state: &ProductState) -> Result<Entry, StrapiError> {
        self.entry("POST", "/api/products", Some(&product_body(state)))
    }

    /// Overwrites a product's fields.
    pub fn update_product(&self, entry: &EntryRef, state: &ProductState) -> Result<Entry, StrapiError> {
        self.entry("PUT", &format!("/api/products/{}", entry.0), Some(&product_body(state)))
    }

    /// Creates an event with `value`, `metadata` and the other fields of `data`.
    pub fn create_event(&self, value: &str, metadata: &Value, mut data: Value) -> Result<Entry, StrapiError> {
        data["value"] = value.into();
        data["metadata"] = metadata.clone();
        self.entry("POST", "/api/events", Some(&json!({ "data": data })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strapi_5_and_strapi_4_entries() {
        let v5 = json!({"id": 7, "documentId": "abc123", "name": "Pear", "stock_available": 3});
        let v4 = json!({"id": 7, "attributes": {"name": "Pear", "stock_available": 3}});
        let five = Entry::parse(&v5).unwrap();
        let four = Entry::parse(&v4).unwrap();
        assert_eq!(five.entry, EntryRef("abc123".into()));
        assert_eq!(four.entry, EntryRef("7".into()));
        assert_eq!(five.attributes["stock_available"], 3);
        assert_eq!(four.attributes["stock_available"], 3);
        assert_eq!(Entry::parse(&json!({"name": "no id"})), None);
    }

    #[test]
    fn never_shows_the_token() {
        let client = StrapiClient::new("http://127.0.0.1:9/", Token::new("s3cr3t"), Arc::default());
        assert!(!format!("{client:?} {:?}", Token::new("s3cr3t")).contains("s3cr3t"));
        let error = client.page("products", 1, 1).unwrap_err();
        assert!(matches!(error, StrapiError::Unreachable { .. }), "{error}");
        assert!(!error.to_string().contains("s3cr3t"));
    }
}
