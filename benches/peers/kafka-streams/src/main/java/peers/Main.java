package peers;

import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;

/**
 * Runs one of the Kafka Streams peers of the side-by-side benchmark
 * (benches/benches/peers.rs) until it is stopped:
 *
 * <pre>
 *   java -cp 'DIR/*' peers.Main fold  BOOTSTRAP APPLICATION_ID STATE_DIR INPUT OUTPUT
 *   java -cp 'DIR/*' peers.Main opsci BOOTSTRAP APPLICATION_ID STATE_DIR PRODUCT STOCK ERROR CATALOGUE EVENT
 * </pre>
 *
 * Exactly-once ({@code exactly_once_v2}), 100 ms commit interval, and no
 * record cache ({@code statestore.cache.max.bytes} 0), so that every input
 * has its output, as in the other systems; {@code CACHE_BYTES} sets it.
 * {@code GROUP_INSTANCE_ID} makes it a static member of its group.
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws InterruptedException {
        if (args.length < 4) {
            System.err.println("usage: peers.Main fold|opsci BOOTSTRAP APPLICATION_ID STATE_DIR TOPICS...");
            System.exit(2);
        }
        Topology topology = switch (args[0]) {
            case "fold" -> Fold.topology(args[4], args[5]);
            case "opsci" -> Opsci.topology(args[4], args[5], args[6], args[7], args[8]);
            default -> throw new IllegalArgumentException("unknown peer " + args[0]);
        };
        Properties props = new Properties();
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, args[2]);
        props.put(StreamsConfig.STATE_DIR_CONFIG, args[3]);
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100);
        props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, Long.parseLong(
                System.getenv().getOrDefault("CACHE_BYTES", "0")));
        props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        String instance = System.getenv("GROUP_INSTANCE_ID");
        if (instance != null) {
            props.put(StreamsConfig.consumerPrefix(ConsumerConfig.GROUP_INSTANCE_ID_CONFIG), instance);
        }
        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close();
            stopped.countDown();
        }));
        streams.start();
        stopped.await();
    }
}
