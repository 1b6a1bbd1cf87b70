//! Error policies: fail, skip and dead letter, for records that do not decode
//! and records whose processing fails; a failing record has no effect.

use serde::{Deserialize, Serialize};
use stream_core::serdes::{Json, Utf8, I64};
use stream_core::{
    dead_letter, Consumed, ErrorPolicy, Grouped, Materialized, Produced, StreamError, StreamsBuilder, StreamsConfig,
    TestDriver,
};

type R = stream_core::Result<()>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Movement {
    amount: i64,
}

/// Sums movement amounts per key; amounts over 1000 fail *after* the store
/// was updated, so the undo of a failing record is visible.
fn topology() -> stream_core::Topology {
    let builder = StreamsBuilder::new();
    builder
        .stream("stock", Consumed::with(Utf8, Json::<Movement>::new()))
        .group_by_key(Grouped::with(Utf8, Json::new()))
        .aggregate(|| 0, |_, m: Movement, sum| sum + m.amount, Materialized::new("stock", I64))
        .to_stream()
        .try_map_values(|sum: i64| if sum > 1000 { Err(format!("stock {sum} over capacity")) } else { Ok(sum) })
        .to("levels", Produced::with(Utf8, I64));
    builder.build().expect("valid topology")
}

fn driver(policy: ErrorPolicy) -> stream_core::Result<TestDriver> {
    TestDriver::builder(topology()).config(StreamsConfig::new("app").on_error(policy)).partitions(3).build()
}

#[test]
fn dead_letter_keeps_the_original_bytes_and_names_the_source_and_the_error() -> R {
    let driver = driver(ErrorPolicy::DeadLetter("error".into()))?;
    let input = driver.input_topic("stock", Utf8, Json::<Movement>::new());
    input.pipe("p1".into(), Movement { amount: 5 })?;
    input.pipe_raw(Some(b"p1"), Some(b"{not json"), 7)?;
    input.pipe_raw(Some(b"p1"), Some(br#"{"amount":"ten"}"#), 8)?;
    input.pipe_raw(Some(b"p1"), None, 9)?;
    input.pipe("p1".into(), Movement { amount: 2000 })?;
    input.pipe("p1".into(), Movement { amount: 1 })?;

    let dead = driver.read_raw("error");
    assert_eq!(dead.len(), 4);
    let partition = stream_core::partition_for_key(b"p1", 3).to_string();
    let expectations: [(Option<&[u8]>, &str, &str, &str); 4] = [
        (Some(b"{not json"), "1", "deserialization", "json decode failed"),
        (Some(br#"{"amount":"ten"}"#), "2", "deserialization", "invalid type"),
        (None, "3", "deserialization", "tombstone"),
        (Some(br#"{"amount":2000}"#), "4", "processing", "stock 2005 over capacity"),
    ];
    for (record, (value, offset, stage, message)) in dead.iter().zip(expectations) {
        let r = &record.record;
        assert_eq!(r.key.as_deref(), Some(&b"p1"[..]));
        assert_eq!(r.value.as_deref(), value);
        assert_eq!(r.headers.get_str(dead_letter::TOPIC), Some("stock"));
        assert_eq!(r.headers.get_str(dead_letter::PARTITION), Some(partition.as_str()));
        assert_eq!(r.headers.get_str(dead_letter::OFFSET), Some(offset));
        assert_eq!(r.headers.get_str(dead_letter::STAGE), Some(stage));
        let got = r.headers.get_str(dead_letter::MESSAGE).unwrap_or_default();
        assert!(got.contains(message), "{got:?} should mention {message:?}");
    }
    // The failing 2000 left no trace: neither in the store nor in the output.
    assert_eq!(driver.store("stock", Utf8, I64).get(&"p1".into())?, Some(6));
    assert_eq!(driver.output_topic("levels", Utf8, I64).read_key_values()?, [("p1".into(), 5), ("p1".into(), 6)]);
    assert_eq!(driver.metrics().dead_lettered, 4);
    assert_eq!(driver.metrics().records_in, 6);
    Ok(())
}

#[test]
fn skip_drops_and_counts_failing_records() -> R {
    let driver = driver(ErrorPolicy::Skip)?;
    let input = driver.input_topic("stock", Utf8, Json::<Movement>::new());
    input.pipe_raw(Some(b"p1"), Some(b"[]"), 0)?;
    input.pipe("p1".into(), Movement { amount: 1001 })?;
    input.pipe("p1".into(), Movement { amount: 3 })?;
    assert_eq!(driver.metrics().skipped, 2);
    assert_eq!(driver.store("stock", Utf8, I64).get(&"p1".into())?, Some(3));
    assert!(driver.read_raw("error").is_empty());
    Ok(())
}

#[test]
fn fail_stops_with_a_typed_error_naming_the_record() -> R {
    let driver = driver(ErrorPolicy::Fail)?;
    let input = driver.input_topic("stock", Utf8, Json::<Movement>::new());
    input.pipe("p1".into(), Movement { amount: 1 })?;
    let error = input.pipe_raw(Some(b"p1"), Some(b"oops"), 0).unwrap_err();
    match &error {
        StreamError::Failed { stage, topic, offset, source, .. } => {
            assert_eq!((*stage, topic.as_str(), *offset), ("deserialization", "stock", 1));
            assert!(matches!(**source, StreamError::Deserialization(_)));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains("stock"), "{error}");
    let error = input.pipe("p1".into(), Movement { amount: 5000 }).unwrap_err();
    assert!(matches!(error, StreamError::Failed { stage: "processing", .. }), "{error:?}");
    assert_eq!(driver.store("stock", Utf8, I64).get(&"p1".into())?, Some(1));
    Ok(())
}

#[test]
fn a_key_that_does_not_decode_is_an_error_value_too() -> R {
    let builder = StreamsBuilder::new();
    builder.stream("in", Consumed::with(I64, Utf8)).to("out", Produced::with(I64, Utf8));
    let driver =
        TestDriver::builder(builder.build()?).config(StreamsConfig::new("app").dead_letter_to("dlq")).build()?;
    let input = driver.input_topic("in", I64, Utf8);
    input.pipe_raw(Some(b"abc"), Some(b"v"), 0)?; // 3 bytes: not an i64
    input.pipe_raw(None, Some(b"v"), 0)?; // no key at all
    input.pipe(7, "ok".into())?;
    let dead = driver.read_raw("dlq");
    assert_eq!(dead.len(), 2);
    assert!(dead.iter().all(|d| d
        .record
        .headers
        .get_str(dead_letter::MESSAGE)
        .unwrap_or_default()
        .contains("expected 8 bytes")));
    assert_eq!(driver.output_topic("out", I64, Utf8).read_key_values()?, [(7, "ok".to_string())]);
    Ok(())
}
