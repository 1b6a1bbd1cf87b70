//! Stateful operators, tables, joins, windows, punctuation and the topology
//! checks, through the test driver.

use std::time::Duration;

use stream_core::processor::{Processor, ProcessorContext, PunctuationType, StoreHandle};
use stream_core::serdes::{Bincode, Bytes, Json, Utf8, I64};
use stream_core::{
    changelog_topic, Change, Consumed, Grouped, Materialized, Produced, Record, StreamsBuilder, TestDriver,
    TimeWindows, TopologyError, Window, Windowed, WindowedSerde,
};

type R = stream_core::Result<()>;

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn count_reduce_and_aggregate_per_key() -> R {
    let builder = StreamsBuilder::new();
    let grouped = builder.stream("in", Consumed::with(Utf8, I64)).group_by_key(Grouped::with(Utf8, I64));
    grouped.count("count").to_stream().to("count", Produced::with(Utf8, I64));
    grouped.reduce("max", |a, b| a.max(b)).to_stream().to("max", Produced::with(Utf8, I64));
    grouped
        .aggregate(
            Vec::new,
            |_, v, mut all: Vec<i64>| {
                all.push(v);
                all
            },
            Materialized::new("all", Bincode::new()),
        )
        .to_stream()
        .to("all", Produced::with(Utf8, Json::new()));
    let driver = TestDriver::builder(builder.build()?).partitions(2).build()?;
    let input = driver.input_topic("in", Utf8, I64);
    for (k, v) in [("a", 3), ("b", 1), ("a", 7), ("a", 5)] {
        input.pipe(s(k), v)?;
    }
    let counts = driver.output_topic("count", Utf8, I64).read_key_values()?;
    assert_eq!(counts, [(s("a"), 1), (s("b"), 1), (s("a"), 2), (s("a"), 3)]);
    let all = driver.output_topic("all", Utf8, Json::<Vec<i64>>::new()).read_key_values()?;
    assert_eq!(all.last(), Some(&(s("a"), vec![3, 7, 5])));
    assert_eq!(driver.store("count", Utf8, I64).get(&s("a"))?, Some(3));
    assert_eq!(driver.store("count", Utf8, I64).get(&s("b"))?, Some(1));
    assert_eq!(driver.store("max", Utf8, I64).get(&s("a"))?, Some(7));
    assert_eq!(driver.store("all", Utf8, Bincode::<Vec<i64>>::new()).get(&s("a"))?, Some(vec![3, 7, 5]));
    assert_eq!(driver.store("count", Utf8, I64).get(&s("zzz"))?, None);
    let maxes: Vec<i64> = driver
        .output_topic("max", Utf8, I64)
        .read_key_values()?
        .into_iter()
        .filter(|(k, _)| k == "a")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(maxes, [3, 7, 7]);
    Ok(())
}

#[test]
fn store_changes_reach_the_changelog_topic_once_per_commit() -> R {
    let builder = StreamsBuilder::new();
    builder.stream("in", Consumed::with(Utf8, I64)).group_by_key(Grouped::with(Utf8, I64)).count("counts");
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("in", Utf8, I64);
    // One commit for the batch: the changelog carries the latest value per key.
    input.pipe_batch((0..5).map(|i| stream_core::testing::TestRecord::new(s("a"), i, i)))?;
    input.pipe(s("b"), 0)?;
    let changelog = driver.read_raw(&changelog_topic("test-app", "counts"));
    let entries: Vec<(Vec<u8>, i64)> = changelog
        .iter()
        .map(|r| {
            (r.record.key.clone().unwrap(), i64::from_be_bytes(r.record.value.clone().unwrap().try_into().unwrap()))
        })
        .collect();
    assert_eq!(entries, [(b"a".to_vec(), 5), (b"b".to_vec(), 1)]);
    Ok(())
}

#[test]
fn table_from_topic_upserts_and_deletes_and_emits_changes() -> R {
    let builder = StreamsBuilder::new();
    let table = builder.table("prices", Consumed::with(Utf8, I64), "prices");
    table
        .changes()
        .map_values(|c: Change<i64>| format!("{:?}->{:?}", c.old, c.new))
        .to("changes", Produced::with(Utf8, Utf8));
    table.to_stream().to("latest", Produced::with(Utf8, I64));
    let driver = TestDriver::new(builder.build()?)?;
    let prices = driver.input_topic("prices", Utf8, I64);
    prices.pipe(s("pear"), 3)?;
    prices.pipe(s("pear"), 4)?;
    prices.pipe_raw(Some(b"pear"), None, 0)?; // tombstone
    let changes = driver.output_topic("changes", Utf8, Utf8).read_key_values()?;
    assert_eq!(
        changes,
        [(s("pear"), s("None->Some(3)")), (s("pear"), s("Some(3)->Some(4)")), (s("pear"), s("Some(4)->None"))]
    );
    assert_eq!(driver.output_topic("latest", Utf8, I64).read_key_values()?, [(s("pear"), 3), (s("pear"), 4)]);
    assert_eq!(driver.store("prices", Utf8, I64).get(&s("pear"))?, None);
    Ok(())
}

fn join_topology(left: bool) -> stream_core::Result<stream_core::Topology> {
    let builder = StreamsBuilder::new();
    let names = builder.table("names", Consumed::with(Utf8, Utf8), "names");
    let orders = builder.stream("orders", Consumed::with(Utf8, I64));
    let joined = if left {
        orders.left_join(&names, |qty: &i64, name: Option<&String>| {
            format!("{}x{}", qty, name.map_or("?", |n| n.as_str()))
        })
    } else {
        orders.join(&names, |qty: &i64, name: &String| format!("{qty}x{name}"))
    };
    joined.to("out", Produced::with(Utf8, Utf8));
    Ok(builder.build()?)
}

#[test]
fn inner_and_left_stream_table_joins() -> R {
    for left in [false, true] {
        let driver = TestDriver::builder(join_topology(left)?).partitions(4).build()?;
        let names = driver.input_topic("names", Utf8, Utf8);
        let orders = driver.input_topic("orders", Utf8, I64);
        orders.pipe(s("p1"), 1)?; // before the table knows p1
        names.pipe(s("p1"), s("apple"))?;
        orders.pipe(s("p1"), 2)?;
        names.pipe(s("p1"), s("green apple"))?;
        orders.pipe(s("p1"), 3)?;
        orders.pipe(s("p2"), 4)?;
        let out: Vec<String> =
            driver.output_topic("out", Utf8, Utf8).read_key_values()?.into_iter().map(|(_, v)| v).collect();
        if left {
            assert_eq!(out, ["1x?", "2xapple", "3xgreen apple", "4x?"]);
        } else {
            assert_eq!(out, ["2xapple", "3xgreen apple"]);
        }
    }
    Ok(())
}

#[test]
fn join_against_an_aggregated_table() -> R {
    let builder = StreamsBuilder::new();
    let totals = builder
        .stream("deposits", Consumed::with(Utf8, I64))
        .group_by_key(Grouped::with(Utf8, I64))
        .aggregate(|| 0, |_, v, sum| sum + v, Materialized::new("balance", I64));
    builder
        .stream("withdrawals", Consumed::with(Utf8, I64))
        .left_join(&totals, |w: &i64, balance: Option<&i64>| balance.copied().unwrap_or(0) >= *w)
        .map_values(|ok: bool| if ok { s("ok") } else { s("refused") })
        .to("decisions", Produced::with(Utf8, Utf8));
    let driver = TestDriver::builder(builder.build()?).partitions(3).build()?;
    let (dep, wd) = (driver.input_topic("deposits", Utf8, I64), driver.input_topic("withdrawals", Utf8, I64));
    wd.pipe(s("ann"), 5)?;
    dep.pipe(s("ann"), 10)?;
    wd.pipe(s("ann"), 5)?;
    wd.pipe(s("ann"), 11)?;
    let out: Vec<String> =
        driver.output_topic("decisions", Utf8, Utf8).read_key_values()?.into_iter().map(|(_, v)| v).collect();
    assert_eq!(out, ["refused", "ok", "refused"]);
    Ok(())
}

#[test]
fn co_partitioning_is_checked_with_a_clear_error() -> R {
    let result =
        TestDriver::builder(join_topology(false)?).topic_partitions("names", 2).topic_partitions("orders", 3).build();
    match result {
        Err(stream_core::StreamError::Topology(TopologyError::NotCopartitioned { topics, counts })) => {
            assert_eq!(topics, ["names", "orders"]);
            assert_eq!(counts, [2, 3]);
            let message = TopologyError::NotCopartitioned { topics, counts }.to_string();
            assert!(message.contains("must be co-partitioned"), "{message}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("co-partitioning not checked"),
    }
    Ok(())
}

#[test]
fn a_repartition_topic_takes_the_count_of_the_table_it_joins() -> R {
    let builder = StreamsBuilder::new();
    let names = builder.table("names", Consumed::with(Utf8, Utf8), "names");
    builder
        .stream("orders", Consumed::with(Utf8, Utf8))
        .select_key(|_, product: &String| product.clone())
        .repartition(stream_core::Repartitioned::with(Utf8, Utf8).named("by-product"))
        .join(&names, |order: &String, name: &String| format!("{order}:{name}"))
        .to("out", Produced::with(Utf8, Utf8));
    let driver =
        TestDriver::builder(builder.build()?).topic_partitions("orders", 5).topic_partitions("names", 2).build()?;
    assert_eq!(driver.plan().topics.get("test-app-by-product-repartition"), Some(&2));
    driver.input_topic("names", Utf8, Utf8).pipe(s("p9"), s("plum"))?;
    driver.input_topic("orders", Utf8, Utf8).pipe(s("order-1"), s("p9"))?;
    assert_eq!(driver.output_topic("out", Utf8, Utf8).read_key_values()?, [(s("p9"), s("p9:plum"))]);
    Ok(())
}

#[test]
fn joining_after_a_key_change_without_repartition_is_a_build_error() {
    let builder = StreamsBuilder::new();
    let names = builder.table("names", Consumed::with(Utf8, Utf8), "names");
    builder
        .stream("orders", Consumed::with(Utf8, Utf8))
        .select_key(|_, v: &String| v.clone())
        .join(&names, |a: &String, b: &String| format!("{a}{b}"))
        .to("out", Produced::with(Utf8, Utf8));
    match builder.build() {
        Err(TopologyError::RepartitionRequired { operation: "join", changed_by }) => {
            assert!(changed_by.starts_with("KSTREAM-KEY-SELECT"), "{changed_by}")
        }
        other => panic!("expected RepartitionRequired, got {other:?}"),
    }
}

#[test]
fn other_topology_errors() {
    let builder = StreamsBuilder::new();
    builder.stream("a", Consumed::with(Utf8, Utf8)).to("x", Produced::with(Utf8, Utf8));
    builder.stream("a", Consumed::with(Utf8, Utf8)).to("y", Produced::with(Utf8, Utf8));
    assert_eq!(builder.build().unwrap_err(), TopologyError::TopicReadTwice(s("a")));

    assert_eq!(StreamsBuilder::new().build().unwrap_err(), TopologyError::Empty);

    let builder = StreamsBuilder::new();
    let g = builder.stream("a", Consumed::with(Utf8, Utf8)).group_by_key(Grouped::with(Utf8, Utf8));
    g.count("same");
    g.count("same");
    assert_eq!(builder.build().unwrap_err(), TopologyError::DuplicateName(s("same")));

    let builder = StreamsBuilder::new();
    builder.stream("a", Consumed::with(Utf8, Utf8)).process("p", &["missing"], || Echo);
    assert!(matches!(builder.build().unwrap_err(), TopologyError::UnknownStore { .. }));
}

struct Echo;
impl Processor for Echo {
    type KIn = String;
    type VIn = String;
    type KOut = String;
    type VOut = String;
    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
        record: Record<String, String>,
    ) -> stream_core::Result<()> {
        ctx.forward(record)
    }
}

#[test]
fn tumbling_windows_with_grace_drop_and_count_late_records() -> R {
    let builder = StreamsBuilder::new();
    let windows = TimeWindows::tumbling(Duration::from_millis(10)).grace(Duration::from_millis(5));
    builder
        .stream("clicks", Consumed::with(Utf8, Utf8))
        .group_by_key(Grouped::with(Utf8, Utf8))
        .windowed_by(windows)
        .count("clicks")
        .to_stream()
        .to("counts", Produced::with(WindowedSerde::new(Utf8, Duration::from_millis(10)), I64));
    let driver = TestDriver::new(builder.build()?)?;
    let clicks = driver.input_topic("clicks", Utf8, Utf8);
    for t in [1, 3, 12, 9, 14, 16, 2, 25] {
        // at t=16 stream time reaches 16 > 10 + 5: window [0,10) closes, so t=2 is late.
        clicks.pipe_at(s("u"), s("click"), t)?;
    }
    let store = driver.store("clicks", WindowedSerde::new(Utf8, Duration::from_millis(10)), I64);
    let w = |start| Windowed { key: s("u"), window: Window { start, end: start + 10 } };
    assert_eq!(store.get(&w(0))?, Some(3));
    assert_eq!(store.get(&w(10))?, Some(3));
    assert_eq!(store.get(&w(20))?, Some(1));
    assert_eq!(driver.metrics().late_dropped, 1);
    let out =
        driver.output_topic("counts", WindowedSerde::new(Utf8, Duration::from_millis(10)), I64).read_key_values()?;
    assert_eq!(out.len(), 7, "every accepted record updates its window");
    assert_eq!(out.last(), Some(&(w(20), 1)));
    Ok(())
}

#[test]
fn hopping_windows_count_each_record_in_every_window_containing_it() -> R {
    let builder = StreamsBuilder::new();
    let windows =
        TimeWindows::hopping(Duration::from_millis(10), Duration::from_millis(5)).grace(Duration::from_secs(60));
    builder
        .stream("e", Consumed::with(Utf8, Utf8))
        .group_by_key(Grouped::with(Utf8, Utf8))
        .windowed_by(windows)
        .count("w");
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("e", Utf8, Utf8);
    for t in [0, 4, 7, 12] {
        input.pipe_at(s("k"), s("x"), t)?;
    }
    let all = driver.store("w", WindowedSerde::new(Utf8, Duration::from_millis(10)), I64).all()?;
    let counts: Vec<(i64, i64)> = all.into_iter().map(|(w, c)| (w.window.start, c)).collect();
    // [-5,5): 0,4  [0,10): 0,4,7  [5,15): 7,12  [10,20): 12
    assert_eq!(counts, [(-5, 2), (0, 3), (5, 2), (10, 1)]);
    Ok(())
}

#[test]
fn expired_windows_are_purged_after_retention() -> R {
    let builder = StreamsBuilder::new();
    let windows = TimeWindows::tumbling(Duration::from_millis(10)).retention(Duration::from_millis(20));
    builder
        .stream("e", Consumed::with(Utf8, Utf8))
        .group_by_key(Grouped::with(Utf8, Utf8))
        .windowed_by(windows)
        .count("w");
    let driver = TestDriver::new(builder.build()?)?;
    let input = driver.input_topic("e", Utf8, Utf8);
    input.pipe_at(s("k"), s("x"), 1)?;
    input.pipe_at(s("k"), s("x"), 25)?;
    let starts = || -> Vec<i64> {
        driver
            .store("w", WindowedSerde::new(Utf8, Duration::from_millis(10)), I64)
            .all()
            .unwrap()
            .into_iter()
            .map(|(w, _)| w.window.start)
            .collect()
    };
    assert_eq!(starts(), [0, 20]);
    // Window [0,10) is expired from stream time 30 on; purging runs at most
    // once per window advance of stream time, so it is gone by 25 + 10.
    input.pipe_at(s("k"), s("x"), 35)?;
    assert_eq!(starts(), [20, 30]);
    Ok(())
}

/// Sums values per key in a store and, on punctuation, forwards the sums.
struct Summer {
    kind: PunctuationType,
    store: Option<StoreHandle<String, i64>>,
}

impl Processor for Summer {
    type KIn = String;
    type VIn = i64;
    type KOut = String;
    type VOut = i64;

    fn init(&mut self, ctx: &mut ProcessorContext<'_, String, i64>) -> stream_core::Result<()> {
        self.store = Some(ctx.store_handle("sums", Utf8, I64)?);
        ctx.schedule(Duration::from_millis(100), self.kind);
        Ok(())
    }

    fn process(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        r: Record<String, i64>,
    ) -> stream_core::Result<()> {
        let mut store = ctx.store(self.store.as_ref().unwrap());
        let sum = store.get(&r.key)?.unwrap_or(0) + r.value;
        store.put(&r.key, &sum).map_err(Into::into)
    }

    fn punctuate(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, i64>,
        kind: PunctuationType,
        time: i64,
    ) -> stream_core::Result<()> {
        assert_eq!(kind, self.kind);
        assert!(ctx.record_metadata().is_none());
        let handle = self.store.clone().unwrap();
        let sums = ctx.store(&handle).all()?;
        for (key, sum) in sums {
            ctx.forward(Record::new(key.clone(), sum, time))?;
            ctx.store(&handle).delete(&key)?;
        }
        Ok(())
    }
}

fn summer_driver(kind: PunctuationType) -> stream_core::Result<TestDriver> {
    let builder = StreamsBuilder::new();
    builder.add_state_store("sums");
    builder
        .stream("in", Consumed::with(Utf8, I64))
        .process("summer", &["sums"], move || Summer { kind, store: None })
        .to("out", Produced::with(Utf8, I64));
    TestDriver::builder(builder.build()?).wall_clock(1_000).build()
}

#[test]
fn stream_time_punctuation_flushes_the_store() -> R {
    let driver = summer_driver(PunctuationType::StreamTime)?;
    let input = driver.input_topic("in", Utf8, I64);
    let out = driver.output_topic("out", Utf8, I64);
    input.pipe_at(s("a"), 1, 0)?;
    input.pipe_at(s("a"), 2, 50)?;
    driver.advance_wall_clock(Duration::from_secs(10))?; // wall clock does not matter
    assert!(out.is_empty());
    input.pipe_at(s("b"), 5, 99)?;
    assert!(out.is_empty());
    input.pipe_at(s("a"), 4, 100)?; // stream time reaches 100: punctuate once
    let records = out.read_records()?;
    assert_eq!(
        records.iter().map(|r| (r.key.as_str(), r.value, r.timestamp)).collect::<Vec<_>>(),
        [("a", 7, 100), ("b", 5, 100)]
    );
    input.pipe_at(s("a"), 1, 150)?;
    assert!(out.is_empty());
    input.pipe_at(s("a"), 1, 420)?; // several intervals at once: one punctuation
    assert_eq!(out.read_key_values()?, [(s("a"), 2)]);
    assert_eq!(driver.metrics().punctuations, 2);
    Ok(())
}

#[test]
fn wall_clock_punctuation_follows_the_driver_clock() -> R {
    let driver = summer_driver(PunctuationType::WallClock)?;
    let input = driver.input_topic("in", Utf8, I64);
    let out = driver.output_topic("out", Utf8, I64);
    input.pipe_at(s("a"), 1, 5_000_000)?;
    assert!(out.is_empty(), "stream time does not trigger wall-clock punctuation");
    driver.advance_wall_clock(Duration::from_millis(99))?;
    assert!(out.is_empty());
    driver.advance_wall_clock(Duration::from_millis(1))?;
    let records = out.read_records()?;
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].value, records[0].timestamp), (1, 1_100));
    assert_eq!(driver.store("sums", Utf8, I64).get(&s("a"))?, None, "the punctuation emptied the store");
    Ok(())
}

#[test]
fn describe_lists_sources_processors_stores_and_sinks() -> R {
    let builder = StreamsBuilder::new();
    builder
        .stream("in", Consumed::with(Utf8, Bytes))
        .group_by_key(Grouped::with(Utf8, Bytes))
        .count("counts")
        .to_stream()
        .to("out", Produced::with(Utf8, I64));
    let text = builder.build()?.describe().to_string();
    let expected = "\
Topologies:
   Sub-topology: 0
    Source: KSTREAM-SOURCE-0000000000 (topics: [in])
      --> KSTREAM-AGGREGATE-0000000001
    Processor: KSTREAM-AGGREGATE-0000000001 (stores: [counts])
      --> KSTREAM-FLATMAPVALUES-0000000002
      <-- KSTREAM-SOURCE-0000000000
    Processor: KSTREAM-FLATMAPVALUES-0000000002 (stores: [])
      --> KSTREAM-SINK-0000000003
      <-- KSTREAM-AGGREGATE-0000000001
    Sink: KSTREAM-SINK-0000000003 (topic: out)
      <-- KSTREAM-FLATMAPVALUES-0000000002

";
    assert_eq!(text, expected);
    Ok(())
}

#[test]
fn rocksdb_state_survives_a_driver_restart() -> R {
    let dir = tempfile::tempdir().map_err(|e| stream_core::StreamError::processing(e))?;
    let config = stream_core::StreamsConfig::new("app")
        .state(stream_core::state::StateBackend::RocksDb(dir.path().to_path_buf()));
    let topology = || -> stream_core::Result<stream_core::Topology> {
        let builder = StreamsBuilder::new();
        builder.stream("in", Consumed::with(Utf8, I64)).group_by_key(Grouped::with(Utf8, I64)).count("counts");
        Ok(builder.build()?)
    };
    {
        let driver = TestDriver::builder(topology()?).config(config.clone()).partitions(2).build()?;
        let input = driver.input_topic("in", Utf8, I64);
        for k in ["a", "b", "a"] {
            input.pipe(s(k), 0)?;
        }
    }
    let driver = TestDriver::builder(topology()?).config(config).partitions(2).build()?;
    driver.input_topic("in", Utf8, I64).pipe(s("a"), 0)?;
    assert_eq!(driver.store("counts", Utf8, I64).get(&s("a"))?, Some(3));
    assert_eq!(driver.store("counts", Utf8, I64).get(&s("b"))?, Some(1));
    Ok(())
}
