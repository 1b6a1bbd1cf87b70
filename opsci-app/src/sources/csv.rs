//! The course's CSV formats, as the course ships them:
//!
//! - products: `name,description,stock_available,barcode[,status]`, comma
//!   separated, quoted fields allowed; ids 1..N in file order unless the file
//!   has an `id` column; a `status` column is ignored (statuses are derived);
//! - events: `value;metadata`, semicolon separated, `metadata` is JSON;
//! - stock: `id,amount,type`.
//!
//! Each data row becomes a [`Row`] (key and JSON value for its topic) or a
//! [`RowError`] naming its line and the reason.

use std::io::Read;

use serde_json::json;

/// Which file format, and so which topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Products → the product topic.
    Products,
    /// Events → the event topic.
    Events,
    /// Stock movements → the stock topic.
    Stock,
}

/// A record to produce: its key (`None`: no key) and JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based line of the file.
    pub line: u64,
    /// Record key.
    pub key: Option<String>,
    /// Record value (JSON).
    pub value: String,
}

/// A row that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line of the file.
    pub line: u64,
    /// Why.
    pub reason: String,
    /// The row's text, fields joined again.
    pub text: String,
}

/// Parses a whole file of `kind`; a file whose header lacks a required
/// column is one error for line 1.
pub fn parse(kind: Kind, input: impl Read) -> Vec<Result<Row, RowError>> {
    let delimiter = if kind == Kind::Events { b';' } else { b',' };
    let mut reader = ::csv::ReaderBuilder::new().delimiter(delimiter).flexible(true).from_reader(input);
    let headers = match reader.headers() {
        Ok(h) => h.iter().map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>(),
        Err(e) => {
            return vec![Err(RowError { line: 1, reason: format!("unreadable header: {e}"), text: String::new() })]
        }
    };
    let required: &[&str] = match kind {
        Kind::Products => &["name", "description", "stock_available", "barcode"],
        Kind::Events => &["value", "metadata"],
        Kind::Stock => &["id", "amount", "type"],
    };
    if let Some(missing) = required.iter().find(|c| !headers.iter().any(|h| h == *c)) {
        let text = headers.join(&(delimiter as char).to_string());
        return vec![Err(RowError { line: 1, reason: format!("header has no `{missing}` column"), text })];
    }
    // Optional trailing columns (such as `status`) may be left out of a row.
    let needed = required.iter().filter_map(|c| headers.iter().position(|h| h == c)).max().map_or(0, |i| i + 1);
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(index as u64 + 2, |p| p.line());
                rows.push(Err(RowError { line, reason: format!("unreadable row: {e}"), text: String::new() }));
                continue;
            }
        };
        let line = record.position().map_or(index as u64 + 2, |p| p.line());
        let text = record.iter().collect::<Vec<_>>().join(&(delimiter as char).to_string());
        let fields = Fields { headers: &headers, record: &record };
        let parsed = if record.len() < needed {
            Err(format!("expected {needed} fields, found {}", record.len()))
        } else {
            match kind {
                Kind::Products => product(&fields, index as u64 + 1),
                Kind::Events => event(&fields),
                Kind::Stock => movement(&fields),
            }
        };
        rows.push(match parsed {
            Ok((key, value)) => Ok(Row { line, key, value: value.to_string() }),
            Err(reason) => Err(RowError { line, reason, text }),
        });
    }
    rows
}

type Parsed = Result<(Option<String>, serde_json::Value), String>;

/// A row's fields by column name.
struct Fields<'r> {
    headers: &'r [String],
    record: &'r ::csv::StringRecord,
}

impl<'r> Fields<'r> {
    fn has(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h == name)
    }

    /// The trimmed field of column `name`, empty when absent.
    fn get(&self, name: &str) -> &'r str {
        let record = self.record;
        self.headers.iter().position(|h| h == name).and_then(|i| record.get(i)).map(str::trim).unwrap_or_default()
    }
}

fn integer(field: &str, what: &str) -> Result<i64, String> {
    field.parse::<i64>().map_err(|_| format!("{what} is not an integer: {field:?}"))
}

fn product(field: &Fields<'_>, position: u64) -> Parsed {
    let id = if field.has("id") {
        u64::try_from(integer(field.get("id"), "id")?).map_err(|_| format!("id is negative: {:?}", field.get("id")))?
    } else {
        position
    };
    let name = field.get("name");
    if name.is_empty() {
        return Err("name is empty".to_string());
    }
    let stock = integer(field.get("stock_available"), "stock_available")?;
    if stock < 0 {
        return Err(format!("stock_available is negative: {stock}"));
    }
    let value = json!({
        "id": id,
        "name": name,
        "description": field.get("description"),
        "stock_available": stock,
        "barcode": field.get("barcode"),
    });
    Ok((Some(id.to_string()), value))
}

fn event(field: &Fields<'_>) -> Parsed {
    let metadata: serde_json::Value =
        serde_json::from_str(field.get("metadata")).map_err(|e| format!("metadata is not JSON: {e}"))?;
    Ok((None, json!({ "value": field.get("value"), "metadata": metadata })))
}

fn movement(field: &Fields<'_>) -> Parsed {
    let id = integer(field.get("id"), "id")?;
    let amount = integer(field.get("amount"), "amount")?;
    // The type is passed on as written: the topology validates movements.
    Ok((Some(id.to_string()), json!({ "id": id, "amount": amount, "type": field.get("type") })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(kind: Kind, text: &str) -> Vec<Result<(Option<String>, String), (u64, String)>> {
        parse(kind, text.as_bytes())
            .into_iter()
            .map(|r| r.map(|row| (row.key, row.value)).map_err(|e| (e.line, e.reason)))
            .collect()
    }

    #[test]
    fn products_with_quotes_and_positional_ids() {
        let rows = values(
            Kind::Products,
            "name,description,stock_available,barcode,status\n\"Pear, green\",\"says \"\"hi\"\"\",12,123,safe\nFig,,x,9\nKiwi,k,3,77\n",
        );
        assert_eq!(rows.len(), 3);
        let (key, value) = rows[0].clone().unwrap();
        assert_eq!(key.as_deref(), Some("1"));
        let v: serde_json::Value = serde_json::from_str(&value).unwrap();
        assert_eq!(
            (v["name"].as_str(), v["description"].as_str(), v["stock_available"].as_i64()),
            (Some("Pear, green"), Some("says \"hi\""), Some(12))
        );
        assert_eq!(rows[1].clone().unwrap_err().0, 3);
        assert!(rows[1].clone().unwrap_err().1.contains("stock_available"));
        assert_eq!(rows[2].clone().unwrap().0.as_deref(), Some("3"), "ids follow the file order, bad rows included");
    }

    #[test]
    fn products_with_an_id_column_keep_their_ids() {
        let rows = values(Kind::Products, "id,name,description,stock_available,barcode\n42,Pear,,1,0\n-1,Fig,,1,0\n");
        assert_eq!(rows[0].clone().unwrap().0.as_deref(), Some("42"));
        assert!(rows[1].is_err());
    }

    #[test]
    fn events_are_semicolon_separated_with_json_metadata() {
        let rows = values(Kind::Events, "value;metadata\nsale;{\"shop\": 3}\noops;{not json\nshort\n");
        let v: serde_json::Value = serde_json::from_str(&rows[0].clone().unwrap().1).unwrap();
        assert_eq!(v["metadata"]["shop"], 3);
        assert!(rows[1].clone().unwrap_err().1.contains("metadata is not JSON"));
        assert!(rows[2].clone().unwrap_err().1.contains("expected 2 fields"));
    }

    #[test]
    fn stock_rows_need_integer_ids_and_amounts() {
        let rows = values(Kind::Stock, "id,amount,type\n201,37,OUT\n3,ten,IN\nx,1,IN\n5,0,SIDEWAYS\n");
        assert_eq!(rows[0].clone().unwrap(), (Some("201".into()), r#"{"amount":37,"id":201,"type":"OUT"}"#.into()));
        assert!(rows[1].clone().unwrap_err().1.contains("amount"));
        assert!(rows[2].clone().unwrap_err().1.contains("id"));
        assert!(rows[3].is_ok(), "semantic checks belong to the topology");
    }

    #[test]
    fn a_missing_column_is_reported_once() {
        let rows = values(Kind::Stock, "id,amount\n1,2\n");
        assert_eq!(rows, [Err((1, "header has no `type` column".to_string()))]);
    }
}
