//! The Strapi project of `strapi/` against a real Strapi 5 process, on
//! SQLite and on a real PostgreSQL: the API token, the course's product and
//! event types over REST (with the event position fields the app's sync
//! queries), and a restart.

use integration_tests::postgres::Postgres;
use integration_tests::strapi::Strapi;
use serde_json::{json, Value};

fn document_id(data: &Value) -> String {
    data["documentId"].as_str().unwrap_or_else(|| panic!("no documentId in {data}")).to_string()
}

#[test]
fn products_and_events_over_rest_survive_a_restart_on_sqlite() {
    products_and_events_over_rest_survive_a_restart(Strapi::start());
}

#[test]
fn products_and_events_over_rest_survive_a_restart_on_postgres() {
    let postgres = Postgres::start();
    let strapi = Strapi::start_on_postgres(&postgres.database("strapi"));
    products_and_events_over_rest_survive_a_restart(strapi);
    let indexes = postgres.psql("strapi", "SELECT indexname FROM pg_indexes WHERE tablename = 'events'").expect("psql");
    for index in ["events_kafka_position", "events_kafka_origin"] {
        assert!(indexes.lines().any(|l| l == index), "no {index} on events: {indexes}");
    }
}

fn products_and_events_over_rest_survive_a_restart(mut strapi: Strapi) {
    // The token: required, and only the right one. Without a token the
    // users-permissions public role answers (403); a wrong token is 401.
    let anonymous = strapi.request_as(None, "GET", "/api/products", None);
    assert_eq!(anonymous.status, 403, "{:?}", anonymous.body);
    let wrong = strapi.request_as(Some("not-the-token"), "GET", "/api/products", None);
    assert_eq!(wrong.status, 401, "{:?}", wrong.body);
    assert_eq!(wrong.error_name(), "UnauthorizedError");
    let wrong_write =
        strapi.request_as(Some("not-the-token"), "POST", "/api/products", Some(&json!({"data": {"name": "Intruder"}})));
    assert_eq!(wrong_write.status, 401, "{:?}", wrong_write.body);
    let empty = strapi.get("/api/products");
    assert_eq!(empty.status, 200, "{:?}", empty.body);
    assert_eq!(empty.data(), &json!([]));
    assert_eq!(empty.body["meta"]["pagination"]["total"], 0);

    // Create: flat attributes under `data`, with documentId and id.
    let created = strapi.post(
        "/api/products",
        &json!({"data": {
            "name": "Pear",
            "description": "Conference pears",
            "stock_available": 40,
            "barcode": "3760000000011",
            "status": "safe"
        }}),
    );
    assert_eq!(created.status, 201, "{:?}", created.body);
    let pear = created.data();
    let pear_id = document_id(pear);
    assert!(pear["id"].is_u64(), "{pear}");
    assert_eq!(pear["name"], "Pear");
    assert_eq!(pear["stock_available"], 40);
    assert_eq!(pear["status"], "safe");
    assert_eq!(pear["barcode"], "3760000000011");

    // Defaults: stock_available 0, the rest null.
    let apple = strapi.post("/api/products", &json!({"data": {"name": "Apple", "barcode": "3760000000028"}}));
    assert_eq!(apple.status, 201, "{:?}", apple.body);
    assert_eq!(apple.data()["stock_available"], 0);
    assert_eq!(apple.data()["status"], Value::Null);
    let apple_id = document_id(apple.data());

    // Update by documentId: only the fields sent change.
    let updated =
        strapi.put(&format!("/api/products/{pear_id}"), &json!({"data": {"stock_available": 3, "status": "danger"}}));
    assert_eq!(updated.status, 200, "{:?}", updated.body);
    assert_eq!(updated.data()["stock_available"], 3);
    assert_eq!(updated.data()["status"], "danger");
    assert_eq!(updated.data()["name"], "Pear");
    assert_eq!(document_id(updated.data()), pear_id);

    // List with a filter on a field, and paginate.
    let by_barcode = strapi.get("/api/products?filters[barcode][$eq]=3760000000011&pagination[pageSize]=10");
    assert_eq!(by_barcode.status, 200, "{:?}", by_barcode.body);
    let found = by_barcode.data().as_array().expect("a list");
    assert_eq!(found.len(), 1, "{:?}", by_barcode.body);
    assert_eq!(document_id(&found[0]), pear_id);
    assert_eq!(found[0]["stock_available"], 3);
    assert_eq!(by_barcode.body["meta"]["pagination"]["total"], 1);
    let in_danger = strapi.get("/api/products?filters[status][$eq]=danger");
    assert_eq!(in_danger.data().as_array().map(Vec::len), Some(1), "{:?}", in_danger.body);
    let page = strapi.get("/api/products?sort=id:asc&pagination[page]=2&pagination[pageSize]=1");
    assert_eq!(page.status, 200, "{:?}", page.body);
    assert_eq!(document_id(&page.data()[0]), apple_id);
    assert_eq!(page.body["meta"]["pagination"], json!({"page": 2, "pageSize": 1, "pageCount": 2, "total": 2}));

    // Validation: a status outside the enumeration is a 400 and changes nothing.
    let invalid = strapi.post("/api/products", &json!({"data": {"name": "Bad", "status": "bogus"}}));
    assert_eq!(invalid.status, 400, "{:?}", invalid.body);
    assert_eq!(invalid.error_name(), "ValidationError");
    assert_eq!(invalid.body["error"]["details"]["errors"][0]["path"], json!(["status"]));
    let invalid_update = strapi.put(&format!("/api/products/{pear_id}"), &json!({"data": {"status": "bogus"}}));
    assert_eq!(invalid_update.status, 400, "{:?}", invalid_update.body);
    assert_eq!(strapi.get(&format!("/api/products/{pear_id}")).data()["status"], "danger");
    let unknown_field = strapi.post("/api/products", &json!({"data": {"name": "Bad", "colour": "red"}}));
    assert_eq!(unknown_field.status, 400, "{:?}", unknown_field.body);
    assert_eq!(strapi.get("/api/products").body["meta"]["pagination"]["total"], 2);

    // Not found.
    let missing = strapi.get("/api/products/no-such-document");
    assert_eq!(missing.status, 404, "{:?}", missing.body);
    assert_eq!(missing.error_name(), "NotFoundError");

    // An event with JSON metadata, read back as the same JSON.
    let metadata = json!({"product": pear_id, "stock": 3, "tags": ["stock", "danger"], "ratio": 0.075, "none": null});
    let event = strapi.post("/api/events", &json!({"data": {"value": "Pear is in danger", "metadata": metadata}}));
    assert_eq!(event.status, 201, "{:?}", event.body);
    let event_id = document_id(event.data());
    assert_eq!(event.data()["metadata"], metadata);
    let read = strapi.get(&format!("/api/events/{event_id}"));
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.data()["value"], "Pear is in danger");
    assert_eq!(read.data()["metadata"], metadata);

    // Events with where the app read them, found by position: offsets are
    // big integers, compared as numbers (9 before 10).
    for (partition, offset) in [(0, 9), (0, 10), (1, 3)] {
        let body = json!({"data": {"value": format!("at {offset}"), "metadata": {},
            "kafka_topic": "event", "kafka_partition": partition, "kafka_offset": offset.to_string()}});
        let created = strapi.post("/api/events", &body);
        assert_eq!(created.status, 201, "{:?}", created.body);
    }
    let last = strapi.get(
        "/api/events?filters[kafka_topic][$eq]=event&filters[kafka_partition][$eq]=0\
         &sort=kafka_offset:desc&pagination[pageSize]=1",
    );
    assert_eq!(last.status, 200, "{:?}", last.body);
    assert_eq!(last.data()[0]["value"], "at 10", "{:?}", last.body);
    assert_eq!(last.data()[0]["kafka_offset"], "10", "{:?}", last.body);
    let unknown = strapi.get("/api/events?filters[no_such_field][$eq]=1");
    assert_eq!(unknown.status, 400, "a query on a field the type lacks is refused: {:?}", unknown.body);

    // Delete.
    let deleted = strapi.delete(&format!("/api/products/{apple_id}"));
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    assert_eq!(strapi.get(&format!("/api/products/{apple_id}")).status, 404);

    // Down: requests fail; back up on the same URL, token and database.
    let url = strapi.url();
    strapi.stop();
    assert!(strapi.try_request_as(Some(strapi.token()), "GET", "/api/products", None).is_err());
    strapi.restart();
    assert_eq!(strapi.url(), url);
    let after = strapi.get(&format!("/api/products/{pear_id}"));
    assert_eq!(after.status, 200, "{:?}", after.body);
    assert_eq!(after.data()["stock_available"], 3);
    assert_eq!(after.data()["status"], "danger");
    let all = strapi.get("/api/products");
    assert_eq!(all.body["meta"]["pagination"]["total"], 1, "{:?}", all.body);
    let events = strapi.get("/api/events?filters[value][$eq]=Pear is in danger");
    assert_eq!(events.data()[0]["metadata"], metadata, "{:?}", events.body);
    let wrong = strapi.request_as(Some("not-the-token"), "GET", "/api/events", None);
    assert_eq!(wrong.status, 401, "{:?}", wrong.body);

    // The token's value never reaches Strapi's log.
    assert!(!strapi.log().contains(strapi.token()), "the token is in Strapi's log");
}
