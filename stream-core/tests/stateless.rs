//! Stateless operators through the test driver.

use stream_core::serdes::{Json, Utf8, I64};
use stream_core::{partition_for_key, Consumed, Produced, StreamsBuilder, TestDriver};

type R = stream_core::Result<()>;

fn s(x: &str) -> String {
    x.to_string()
}

fn words() -> (StreamsBuilder, stream_core::KStream<String, String>) {
    let builder = StreamsBuilder::new();
    let stream = builder.stream("in", Consumed::with(Utf8, Utf8));
    (builder, stream)
}

#[test]
fn map_filter_and_map_values() -> R {
    let (builder, stream) = words();
    stream
        .filter(|_, v| !v.is_empty())
        .filter_not(|k, _| k == "skip")
        .map_values(|v: String| v.len() as i64)
        .map(|k, n| (format!("{k}!"), n * 2))
        .to("out", Produced::with(Utf8, I64));
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("in", Utf8, Utf8);
    input.pipe(s("a"), s("xyz"))?;
    input.pipe(s("b"), s(""))?;
    input.pipe(s("skip"), s("long value"))?;
    input.pipe(s("c"), s("hi"))?;
    let out = driver.output_topic("out", Utf8, I64).read_key_values()?;
    assert_eq!(out, [(s("a!"), 6), (s("c!"), 4)]);
    Ok(())
}

#[test]
fn flat_map_and_flat_map_values_keep_timestamps_and_headers() -> R {
    let (builder, stream) = words();
    stream
        .flat_map_values(|v: String| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .flat_map(|k, w| vec![(k.clone(), w.clone()), (w, k)])
        .to("out", Produced::with(Utf8, Utf8));
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("in", Utf8, Utf8);
    let mut record = stream_core::testing::TestRecord::new(s("k"), s("x y"), 42);
    record.headers.add("trace", "t1");
    input.pipe_record(record)?;
    let out = driver.output_topic("out", Utf8, Utf8).read_records()?;
    let pairs: Vec<_> = out.iter().map(|r| (r.key.as_str(), r.value.as_str())).collect();
    assert_eq!(pairs, [("k", "x"), ("x", "k"), ("k", "y"), ("y", "k")]);
    assert!(out.iter().all(|r| r.timestamp == 42 && r.headers.get_str("trace") == Some("t1")));
    Ok(())
}

#[test]
fn peek_sees_every_record_and_passes_it_on() -> R {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (builder, stream) = words();
    let log = seen.clone();
    stream.peek(move |k, v| log.lock().unwrap().push(format!("{k}={v}"))).to("out", Produced::with(Utf8, Utf8));
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("in", Utf8, Utf8);
    input.pipe(s("a"), s("1"))?;
    input.pipe(s("b"), s("2"))?;
    assert_eq!(*seen.lock().unwrap(), ["a=1", "b=2"]);
    assert_eq!(driver.output_topic("out", Utf8, Utf8).len(), 2);
    Ok(())
}

#[test]
fn split_sends_each_record_to_the_first_matching_branch() -> R {
    let (builder, stream) = words();
    let branches = stream.split().branch(|_, v| v.starts_with('a')).branch(|_, v| v.len() > 3).default_branch();
    assert_eq!(branches.len(), 3);
    // Attach in reverse order: branch numbering must not depend on it.
    branches[2].to("rest", Produced::with(Utf8, Utf8));
    branches[1].to("long", Produced::with(Utf8, Utf8));
    branches[0].to("a", Produced::with(Utf8, Utf8));
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("in", Utf8, Utf8);
    for v in ["apple", "banana", "fig", "avocado", "kiwi"] {
        input.pipe(s("k"), s(v))?;
    }
    let read = |t: &str| -> Vec<String> {
        driver.output_topic(t, Utf8, Utf8).read_key_values().unwrap().into_iter().map(|(_, v)| v).collect()
    };
    assert_eq!(read("a"), ["apple", "avocado"]);
    assert_eq!(read("long"), ["banana", "kiwi"]);
    assert_eq!(read("rest"), ["fig"]);
    Ok(())
}

#[test]
fn split_without_default_drops_unmatched_records() -> R {
    let (builder, stream) = words();
    let branches = stream.split().branch(|_, v| v == "keep").no_default_branch();
    branches[0].to("out", Produced::with(Utf8, Utf8));
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("in", Utf8, Utf8);
    input.pipe(s("k"), s("drop"))?;
    input.pipe(s("k"), s("keep"))?;
    assert_eq!(driver.output_topic("out", Utf8, Utf8).read_key_values()?, [(s("k"), s("keep"))]);
    Ok(())
}

#[test]
fn merge_interleaves_two_sources_in_arrival_order() -> R {
    let builder = StreamsBuilder::new();
    let a = builder.stream("a", Consumed::with(Utf8, Utf8));
    let b = builder.stream("b", Consumed::with(Utf8, Utf8)).map_values(|v: String| v.to_uppercase());
    a.merge(&b).to("out", Produced::with(Utf8, Utf8));
    let driver = TestDriver::new(builder.build()?)?;
    let (ia, ib) = (driver.input_topic("a", Utf8, Utf8), driver.input_topic("b", Utf8, Utf8));
    ia.pipe(s("1"), s("x"))?;
    ib.pipe(s("2"), s("y"))?;
    ia.pipe(s("3"), s("z"))?;
    let values: Vec<_> =
        driver.output_topic("out", Utf8, Utf8).read_key_values()?.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, ["x", "Y", "z"]);
    Ok(())
}

#[test]
fn keys_land_on_the_murmur2_partition_and_custom_partitioners_are_obeyed() -> R {
    let (builder, stream) = words();
    stream.to("default", Produced::with(Utf8, Utf8));
    stream.to("by-length", Produced::with(Utf8, Utf8).with_partitioner(|_, v: &String, n| v.len() as u32 % n));
    let driver = TestDriver::builder(builder.build()?).partitions(6).build()?;
    let input = driver.input_topic("in", Utf8, Utf8);
    let keys: Vec<String> = (0..50).map(|i| format!("product-{i}")).collect();
    for k in &keys {
        input.pipe(k.clone(), "v".repeat(k.len() % 7 + 1))?;
    }
    // Every input record was processed by the task of its murmur2 partition.
    for (id, metrics) in driver.task_metrics() {
        let expected = keys.iter().filter(|k| partition_for_key(k.as_bytes(), 6) == id.partition).count() as u64;
        assert_eq!(metrics.records_in, expected, "task {id}");
    }
    for r in driver.output_topic("default", Utf8, Utf8).read_records()? {
        assert_eq!(r.partition, partition_for_key(r.key.as_bytes(), 6));
    }
    for r in driver.output_topic("by-length", Utf8, Utf8).read_records()? {
        assert_eq!(r.partition, r.value.len() as u32 % 6);
    }
    Ok(())
}

#[test]
fn select_key_then_group_repartitions_through_an_internal_topic() -> R {
    let (builder, stream) = words();
    stream
        .select_key(|_, v: &String| v.clone())
        .group_by_key(stream_core::Grouped::with(Utf8, Utf8).named("by-value"))
        .count("counts")
        .to_stream()
        .to("out", Produced::with(Utf8, I64));
    let topology = builder.build()?;
    let description = topology.describe().to_string();
    assert!(description.contains("Sub-topology: 1"), "{description}");
    assert!(description.contains("<application-id>-by-value-repartition"), "{description}");
    let driver = TestDriver::builder(topology).partitions(3).build()?;
    assert_eq!(driver.plan().topics.get("test-app-by-value-repartition"), Some(&3));
    let input = driver.input_topic("in", Utf8, Utf8);
    for (k, v) in [("1", "x"), ("2", "x"), ("3", "y"), ("4", "x")] {
        input.pipe(s(k), s(v))?;
    }
    let mut counts = driver.output_topic("out", Utf8, I64).read_key_values()?;
    counts.sort();
    assert_eq!(counts, [(s("x"), 1), (s("x"), 2), (s("x"), 3), (s("y"), 1)]);
    Ok(())
}

#[test]
fn json_values_round_trip_through_sinks() -> R {
    let builder = StreamsBuilder::new();
    builder
        .stream("in", Consumed::with(Utf8, Json::<Vec<u32>>::new()))
        .map_values(|v: Vec<u32>| v.iter().sum::<u32>())
        .to("out", Produced::with(Utf8, Json::new()));
    let driver = TestDriver::new(builder.build()?)?;
    driver.input_topic("in", Utf8, Json::<Vec<u32>>::new()).pipe(s("k"), vec![1, 2, 3])?;
    assert_eq!(driver.output_topic("out", Utf8, Json::<u32>::new()).read_key_values()?, [(s("k"), 6)]);
    Ok(())
}
