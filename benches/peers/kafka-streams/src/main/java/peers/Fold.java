package peers;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The keyed stock fold: JSON movements ({@code {"id":7,"amount":3,"type":"IN"}})
 * keyed by product id, folded per product into a RocksDB store with
 * {@code groupByKey().aggregate()}, each new stock written to the output as
 * decimal text.
 */
final class Fold {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Fold() {}

    static long delta(String movement) {
        try {
            JsonNode node = JSON.readTree(movement);
            long amount = node.get("amount").asLong();
            return "IN".equals(node.get("type").asText()) ? amount : -amount;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static Topology topology(String source, String sink) {
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(source, Consumed.with(Serdes.String(), Serdes.String()))
                .mapValues(Fold::delta)
                .groupByKey(Grouped.with(Serdes.String(), Serdes.Long()))
                .aggregate(
                        () -> 0L,
                        (id, delta, stock) -> stock + delta,
                        Materialized.<String, Long, KeyValueStore<Bytes, byte[]>>as("stock")
                                .withKeySerde(Serdes.String())
                                .withValueSerde(Serdes.Long()))
                .toStream()
                .mapValues(String::valueOf)
                .to(sink, Produced.with(Serdes.String(), Serdes.String()));
        return builder.build();
    }
}
