package peers;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;
import org.apache.kafka.streams.state.TimestampedKeyValueStore;
import org.apache.kafka.streams.state.ValueAndTimestamp;

/**
 * The OPSCI topology of opsci-app (opsci-app/src/topology.rs) in Kafka
 * Streams: the product table; movements parsed and
 * validated (malformed ones to {@code error}), repartitioned by product id
 * and folded into the stock (never below zero; unknown products and
 * insufficient stock to {@code error}); every product loaded and every
 * movement applied to {@code catalogue} with its stock and status; a status
 * change to {@code event}. The status policy is the app's default: empty at
 * 0, danger under 10 % of the product's {@code stock_available}.
 */
final class Opsci {
    private static final ObjectMapper JSON = new ObjectMapper();

    private Opsci() {}

    /** A movement parsed: a valid one (keyed by product id) or its rejection. */
    record Parsed(String envelope, String rejection) {}

    /** What the fold did: a rejection, or the product's new state and maybe a status event. */
    record Outcome(String rejection, String state, String event) {}

    /** The topology on topics {@code product}, {@code stock}, {@code error}, {@code catalogue}, {@code event}. */
    static Topology topology(String product, String stockTopic, String error, String catalogue, String event) {
        StreamsBuilder builder = new StreamsBuilder();
        KTable<String, String> products = builder.table(product, Consumed.with(Serdes.String(), Serdes.String()),
                Materialized.<String, String, KeyValueStore<Bytes, byte[]>>as("products")
                        .withKeySerde(Serdes.String()).withValueSerde(Serdes.String()));
        builder.addStateStore(Stores.keyValueStoreBuilder(
                Stores.persistentKeyValueStore("stock"), Serdes.String(), Serdes.Long()));
        products.toStream()
                .process(ProductStates::new, "stock")
                .to(catalogue, Produced.with(Serdes.String(), Serdes.String()));

        KStream<String, Parsed> parsed = builder.stream(stockTopic, Consumed.with(Serdes.String(), Serdes.String()))
                .process(ParseMovements::new);
        parsed.filter((k, p) -> p.rejection() != null).mapValues(Parsed::rejection)
                .to(error, Produced.with(Serdes.String(), Serdes.String()));
        KStream<String, Outcome> outcomes = parsed.filter((k, p) -> p.envelope() != null).mapValues(Parsed::envelope)
                .repartition(Repartitioned.with(Serdes.String(), Serdes.String()).withName("stock-by-product"))
                .process(StockFold::new, "products", "stock");
        outcomes.filter((k, o) -> o.rejection() != null).mapValues(Outcome::rejection)
                .to(error, Produced.with(Serdes.String(), Serdes.String()));
        outcomes.filter((k, o) -> o.state() != null).mapValues(Outcome::state)
                .to(catalogue, Produced.with(Serdes.String(), Serdes.String()));
        outcomes.filter((k, o) -> o.event() != null).mapValues(Outcome::event)
                .to(event, Produced.with(Serdes.String(), Serdes.String()));
        return builder.build();
    }

    /** {@code text} as JSON, or null if it is not JSON. */
    static JsonNode parse(String text) {
        try {
            return text == null ? null : JSON.readTree(text);
        } catch (IOException e) {
            return null;
        }
    }

    static String status(long stock, long reference) {
        long threshold = (Math.max(reference, 0) * 10 + 99) / 100;
        return stock <= 0 ? "empty" : stock < threshold ? "danger" : "safe";
    }

    static ObjectNode source(RecordMetadata meta) {
        return JSON.createObjectNode().put("topic", meta.topic()).put("partition", meta.partition())
                .put("offset", meta.offset());
    }

    static String rejection(String code, String detailKey, Object detail, String message, String record,
            JsonNode source) {
        ObjectNode reason = JSON.createObjectNode().put("code", code);
        reason.set(detailKey, JSON.valueToTree(detail));
        ObjectNode out = JSON.createObjectNode();
        out.set("reason", reason);
        out.put("message", message).put("record", record);
        out.set("source", source);
        return out.toString();
    }

    static String state(JsonNode product, long stock) {
        ObjectNode out = JSON.createObjectNode();
        out.set("product", product);
        out.put("stock", stock).put("status", status(stock, product.path("stock_available").asLong()));
        return out.toString();
    }

    /** Checks a stock record; keys valid ones by product id. */
    static final class ParseMovements implements Processor<String, String, String, Parsed> {
        private ProcessorContext<String, Parsed> context;

        @Override
        public void init(ProcessorContext<String, Parsed> context) {
            this.context = context;
        }

        @Override
        public void process(Record<String, String> record) {
            ObjectNode source = source(context.recordMetadata().orElseThrow());
            String text = record.value() == null ? "" : record.value();
            JsonNode node = parse(text);
            String rejected = null;
            if (node == null || !node.isObject()) {
                rejected = rejection("malformed_json", "detail", "not a JSON object", "malformed JSON", text, source);
            } else if (!node.path("id").canConvertToLong() || !node.path("id").isIntegralNumber()
                    || node.path("id").asLong() < 0) {
                rejected = rejection("bad_id", "detail", node.path("id").toString(), "bad id", text, source);
            } else if (!node.path("amount").isIntegralNumber() || node.path("amount").asLong() <= 0) {
                rejected = rejection("bad_amount", "detail", node.path("amount").toString(), "bad amount", text,
                        source);
            } else if (!"IN".equals(node.path("type").asText()) && !"OUT".equals(node.path("type").asText())) {
                rejected = rejection("bad_type", "detail", node.path("type").toString(), "bad type", text, source);
            }
            if (rejected != null) {
                context.forward(record.withValue(new Parsed(null, rejected)));
                return;
            }
            ObjectNode envelope = JSON.createObjectNode();
            envelope.set("movement", node);
            envelope.set("source", source);
            context.forward(record.withKey(node.get("id").asText()).withValue(new Parsed(envelope.toString(), null)));
        }
    }

    /** Folds movements into each product's stock; never below zero. */
    static final class StockFold implements Processor<String, String, String, Outcome> {
        private ProcessorContext<String, Outcome> context;
        private TimestampedKeyValueStore<String, String> products;
        private KeyValueStore<String, Long> stock;

        @Override
        public void init(ProcessorContext<String, Outcome> context) {
            this.context = context;
            this.products = context.getStateStore("products");
            this.stock = context.getStateStore("stock");
        }

        @Override
        public void process(Record<String, String> record) {
            JsonNode envelope = parse(record.value());
            JsonNode movement = envelope.get("movement");
            JsonNode source = envelope.get("source");
            String text = movement.toString();
            ValueAndTimestamp<String> found = products.get(record.key());
            JsonNode product = found == null ? null : parse(found.value());
            if (product == null) {
                long id = movement.get("id").asLong();
                context.forward(record.withValue(new Outcome(
                        rejection("unknown_product", "id", id, "unknown product " + id, text, source), null, null)));
                return;
            }
            long reference = product.path("stock_available").asLong();
            Long stored = stock.get(record.key());
            long old = stored == null ? reference : stored;
            long amount = movement.get("amount").asLong();
            long updated = "IN".equals(movement.get("type").asText()) ? old + amount : old - amount;
            if (updated < 0) {
                context.forward(record.withValue(new Outcome(rejection("insufficient_stock", "available", old,
                        "insufficient stock: OUT " + amount + " with " + old + " in stock", text, source), null,
                        null)));
                return;
            }
            stock.put(record.key(), updated);
            String oldStatus = status(old, reference);
            String newStatus = status(updated, reference);
            String event = null;
            if (!oldStatus.equals(newStatus)) {
                ObjectNode out = JSON.createObjectNode();
                out.put("value", product.path("name").asText() + " (product " + record.key() + ") is now "
                        + newStatus + ": " + updated + " in stock (was " + oldStatus + ")");
                out.set("metadata", JSON.createObjectNode().put("product", product.path("id").asLong())
                        .put("old_status", oldStatus).put("status", newStatus).put("stock", updated));
                event = out.toString();
            }
            context.forward(record.withValue(new Outcome(null, state(product, updated), event)));
        }
    }

    /** A product loaded: its catalogue state with the current stock. */
    static final class ProductStates implements Processor<String, String, String, String> {
        private ProcessorContext<String, String> context;
        private KeyValueStore<String, Long> stock;

        @Override
        public void init(ProcessorContext<String, String> context) {
            this.context = context;
            this.stock = context.getStateStore("stock");
        }

        @Override
        public void process(Record<String, String> record) {
            JsonNode product = parse(record.value());
            if (product == null) {
                return;
            }
            Long stored = stock.get(record.key());
            long current = stored == null ? product.path("stock_available").asLong() : stored;
            context.forward(record.withValue(state(product, current)));
        }
    }
}
