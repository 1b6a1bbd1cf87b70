//! Property tests: the driver's aggregations equal plain folds, windowed counts
//! equal a direct computation, and the RocksDB and in-memory stores behave
//! like a simple model (and like each other) under random operations.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use proptest::prelude::*;
use stream_core::serdes::{Bincode, Utf8, I64};
use stream_core::state::{InMemoryStore, KeyValueStore, RocksDbInstance};
use stream_core::testing::TestRecord;
use stream_core::{
    partition_for_key, Consumed, Grouped, Materialized, StreamsBuilder, TestDriver, TimeWindows, WindowedSerde,
};

fn records() -> impl Strategy<Value = Vec<(String, i64)>> {
    prop::collection::vec(((0u8..24).prop_map(|k| format!("key-{k}")), -1_000i64..1_000), 0..200)
}

/// Folds `records` through count / reduce (max) / aggregate (sum, and the
/// list of values) on the driver, keyed as given or re-keyed by `rekey`.
fn run_folds(records: &[(String, i64)], partitions: u32, rekey: bool) -> TestDriver {
    let builder = StreamsBuilder::new();
    let stream = builder.stream("in", Consumed::with(Utf8, I64));
    let grouped = if rekey {
        stream.group_by(|k: &String, _| k[..5].to_string(), Grouped::with(Utf8, I64))
    } else {
        stream.group_by_key(Grouped::with(Utf8, I64))
    };
    grouped.count("count");
    grouped.reduce("max", |a, b| a.max(b));
    grouped.aggregate(|| 0, |_, v, sum| sum + v, Materialized::new("sum", I64));
    grouped.aggregate(
        Vec::new,
        |_, v, mut all: Vec<i64>| {
            all.push(v);
            all
        },
        Materialized::new("all", Bincode::new()),
    );
    let driver = TestDriver::builder(builder.build().unwrap()).partitions(partitions).build().unwrap();
    let input = driver.input_topic("in", Utf8, I64);
    for (i, (k, v)) in records.iter().enumerate() {
        if i % 7 == 0 {
            input.pipe_batch([TestRecord::new(k.clone(), *v, i as i64)]).unwrap();
        } else {
            input.pipe_at(k.clone(), *v, i as i64).unwrap();
        }
    }
    driver
}

proptest! {
    #[test]
    fn aggregations_equal_a_plain_fold(records in records(), partitions in prop::sample::select(vec![1u32, 3, 8]), rekey: bool) {
        let driver = run_folds(&records, partitions, rekey);
        let key_of = |k: &String| if rekey { k[..5].to_string() } else { k.clone() };
        let mut count: BTreeMap<String, i64> = BTreeMap::new();
        let mut max: BTreeMap<String, i64> = BTreeMap::new();
        let mut sum: BTreeMap<String, i64> = BTreeMap::new();
        let mut all: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (k, v) in &records {
            let k = key_of(k);
            *count.entry(k.clone()).or_default() += 1;
            max.entry(k.clone()).and_modify(|m| *m = (*m).max(*v)).or_insert(*v);
            *sum.entry(k.clone()).or_default() += v;
            all.entry(k).or_default().push(*v);
        }
        let sorted = |mut v: Vec<(String, i64)>| { v.sort(); v };
        prop_assert_eq!(sorted(driver.store("count", Utf8, I64).all().unwrap()), count.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(sorted(driver.store("max", Utf8, I64).all().unwrap()), max.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(sorted(driver.store("sum", Utf8, I64).all().unwrap()), sum.into_iter().collect::<Vec<_>>());
        let mut lists = driver.store("all", Utf8, Bincode::<Vec<i64>>::new()).all().unwrap();
        lists.sort();
        prop_assert_eq!(lists, all.into_iter().collect::<Vec<_>>());
    }
}

fn windowed_records() -> impl Strategy<Value = Vec<(u8, i64)>> {
    prop::collection::vec((0u8..5, 0i64..300), 0..150)
}

proptest! {
    #[test]
    fn windowed_counts_equal_a_direct_computation(
        records in windowed_records(),
        size in 1i64..40,
        advance_div in 1i64..4,
        grace in 0i64..30,
        partitions in 1u32..4,
    ) {
        let advance = (size / advance_div).max(1);
        let windows = TimeWindows::hopping(Duration::from_millis(size as u64), Duration::from_millis(advance as u64))
            .grace(Duration::from_millis(grace as u64));
        let builder = StreamsBuilder::new();
        builder
            .stream("in", Consumed::with(Utf8, I64))
            .group_by_key(Grouped::with(Utf8, I64))
            .windowed_by(windows)
            .count("w");
        let driver = TestDriver::builder(builder.build().unwrap()).partitions(partitions).build().unwrap();
        let input = driver.input_topic("in", Utf8, I64);
        for (k, ts) in &records {
            input.pipe_at(format!("k{k}"), 0, *ts).unwrap();
        }

        // Direct computation: stream time per partition; a record counts in
        // every window [s, s + size) with s a multiple of advance containing
        // it, unless that window closed (s + size + grace <= stream time).
        let mut stream_time: BTreeMap<u32, i64> = BTreeMap::new();
        let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
        let mut late = 0;
        for (k, ts) in &records {
            let key = format!("k{k}");
            let p = partition_for_key(key.as_bytes(), partitions);
            let now = stream_time.entry(p).or_insert(i64::MIN);
            *now = (*now).max(*ts);
            let mut dropped = false;
            for start in (ts - size - advance)..=*ts {
                if start.rem_euclid(advance) != 0 || !(start <= *ts && *ts < start + size) {
                    continue;
                }
                if start + size + grace <= *now {
                    dropped = true;
                } else {
                    *expected.entry((key.clone(), start)).or_default() += 1;
                }
            }
            late += dropped as u64;
        }
        let mut actual: Vec<((String, i64), i64)> = driver
            .store("w", WindowedSerde::new(Utf8, Duration::from_millis(size as u64)), I64)
            .all()
            .unwrap()
            .into_iter()
            .map(|(w, c)| {
                assert_eq!(w.window.end - w.window.start, size);
                ((w.key, w.window.start), c)
            })
            .collect();
        actual.sort();
        prop_assert_eq!(actual, expected.into_iter().collect::<Vec<_>>());
        prop_assert_eq!(driver.metrics().late_dropped, late);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Get(Vec<u8>),
    Range(Option<(Vec<u8>, bool)>, Option<(Vec<u8>, bool)>),
    Prefix(Vec<u8>),
    BeginRecord,
    RollbackRecord,
    Commit,
    Abort,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0xff]), 0..4)
}

fn bound() -> impl Strategy<Value = Option<(Vec<u8>, bool)>> {
    prop::option::of((key(), any::<bool>()))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key().prop_map(Op::Delete),
        2 => key().prop_map(Op::Get),
        2 => (bound(), bound()).prop_map(|(a, b)| Op::Range(a, b)),
        1 => key().prop_map(Op::Prefix),
        1 => Just(Op::BeginRecord),
        1 => Just(Op::RollbackRecord),
        1 => Just(Op::Commit),
        1 => Just(Op::Abort),
    ]
}

/// The reference: a committed map, the current view, and the view at the
/// start of the current record.
#[derive(Default)]
struct Model {
    committed: BTreeMap<Vec<u8>, Vec<u8>>,
    current: BTreeMap<Vec<u8>, Vec<u8>>,
    record_start: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn to_bound(b: &Option<(Vec<u8>, bool)>) -> Bound<&[u8]> {
    match b {
        None => Bound::Unbounded,
        Some((k, true)) => Bound::Included(k.as_slice()),
        Some((k, false)) => Bound::Excluded(k.as_slice()),
    }
}

fn in_range(k: &[u8], from: Bound<&[u8]>, to: Bound<&[u8]>) -> bool {
    (match from {
        Bound::Included(a) => k >= a,
        Bound::Excluded(a) => k > a,
        Bound::Unbounded => true,
    }) && (match to {
        Bound::Included(b) => k <= b,
        Bound::Excluded(b) => k < b,
        Bound::Unbounded => true,
    })
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn rocksdb_and_memory_stores_behave_like_the_model(ops in prop::collection::vec(op(), 0..80)) {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksDbInstance::open(dir.path(), &["s".to_string()]).unwrap();
        let mut stores: Vec<Box<dyn KeyValueStore>> = vec![Box::new(InMemoryStore::new("s")), Box::new(rocks.store("s").unwrap())];
        let mut model = Model::default();
        for op in &ops {
            let mut reads: Vec<Pairs> = Vec::new();
            for store in stores.iter_mut() {
                match op {
                    Op::Put(k, v) => store.put(k, v).unwrap(),
                    Op::Delete(k) => store.delete(k).unwrap(),
                    Op::Get(k) => {
                        let mut borrowed = None;
                        store.with_value(k, &mut |v| borrowed = v.map(<[u8]>::to_vec)).unwrap();
                        let owned = store.get(k).unwrap();
                        prop_assert_eq!(&borrowed, &owned, "with_value and get disagree");
                        reads.push(owned.map(|v| (k.clone(), v)).into_iter().collect())
                    }
                    Op::Range(a, b) => reads.push(store.range(to_bound(a), to_bound(b)).unwrap().map(Result::unwrap).collect()),
                    Op::Prefix(p) => reads.push(store.prefix_scan(p).unwrap().map(Result::unwrap).collect()),
                    Op::BeginRecord => store.begin_record(),
                    Op::RollbackRecord => store.rollback_record(),
                    Op::Commit => store.commit().unwrap(),
                    Op::Abort => store.abort(),
                }
            }
            let expected: Option<Pairs> = match op {
                Op::Put(k, v) => { model.current.insert(k.clone(), v.clone()); None }
                Op::Delete(k) => { model.current.remove(k); None }
                Op::Get(k) => Some(model.current.get(k).map(|v| (k.clone(), v.clone())).into_iter().collect()),
                Op::Range(a, b) => Some(model.current.iter().filter(|(k, _)| in_range(k, to_bound(a), to_bound(b))).map(|(k, v)| (k.clone(), v.clone())).collect()),
                Op::Prefix(p) => Some(model.current.iter().filter(|(k, _)| k.starts_with(p)).map(|(k, v)| (k.clone(), v.clone())).collect()),
                Op::BeginRecord => { model.record_start = model.current.clone(); None }
                Op::RollbackRecord => { model.current = model.record_start.clone(); None }
                Op::Commit => { model.committed = model.current.clone(); model.record_start = model.current.clone(); None }
                Op::Abort => { model.current = model.committed.clone(); model.record_start = model.current.clone(); None }
            };
            if let Some(expected) = expected {
                prop_assert_eq!(&reads[0], &expected, "in-memory store after {:?}", op);
                prop_assert_eq!(&reads[1], &expected, "rocksdb store after {:?}", op);
            }
            // Staged changes are exactly the difference from the committed state.
            let pending: Vec<_> = stores[1].pending_changes().into_iter().filter(|(k, v)| model.committed.get(k) != v.as_ref()).collect();
            let mut diff: Vec<(Vec<u8>, Option<Vec<u8>>)> = model.current.iter().filter(|(k, v)| model.committed.get(*k) != Some(v)).map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
            diff.extend(model.committed.keys().filter(|k| !model.current.contains_key(*k)).map(|k| (k.clone(), None)));
            diff.sort();
            prop_assert_eq!(pending, diff);
        }
        // What was committed is durable: a reopened instance holds exactly it.
        drop(stores);
        drop(rocks);
        let reopened = RocksDbInstance::open(dir.path(), &["s".to_string()]).unwrap().store("s").unwrap();
        let all: Pairs = reopened.range(Bound::Unbounded, Bound::Unbounded).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(all, model.committed.into_iter().collect::<Pairs>());
    }
}
