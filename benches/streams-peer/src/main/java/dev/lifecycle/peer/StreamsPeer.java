package dev.lifecycle.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParseException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.NullNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.File;
import java.io.IOException;
import java.math.BigDecimal;
import java.math.RoundingMode;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.IdentityHashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.LongAdder;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.util.Utf8;
import org.apache.avro.util.internal.Accessor;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.Stores;

/**
 * The Kafka Streams peer: the JVM twin of {@code benches/peer/peer.py}. It reads the same
 * Confluent-framed Avro topic, validates every record by the same rules (same reasons, same
 * order) and keeps the same per-user aggregate, here in a persistent RocksDB key-value store
 * (changelogged, cached) under exactly-once v2, as a real Streams application would. No output
 * topic, like the Python peer.
 *
 * <pre>
 *     java -jar streams-peer.jar BOOTSTRAP TOPIC COUNT SCHEMAS_DIR STATE_DIR [NUM_STREAM_THREADS]
 * </pre>
 *
 * Waits until COUNT records have been processed, then prints one JSON line on stdout:
 * elapsed seconds (first record to last), seen, valid, invalid, users. Logs go to stderr.
 */
public final class StreamsPeer {
    static final String USAGE =
            "usage: java -jar streams-peer.jar BOOTSTRAP TOPIC COUNT SCHEMAS_DIR STATE_DIR [NUM_STREAM_THREADS]";

    static final String STORE = "users";
    static final String SOURCE = "events";
    static final String PROCESSOR = "validate-aggregate";

    static final Pattern EVENT_TYPE =
            // UNIX_LINES: '$' may match before a final '\n' only, as Python's '$' does.
            Pattern.compile("^[a-z][a-z0-9_]*\\.[a-z][a-z0-9_]*$", Pattern.UNIX_LINES);
    static final int MAX_ID_LEN = 128;
    static final long MAX_FUTURE_MS = 300L * 1000;
    static final long MAX_AGE_MS = 365L * 86_400 * 1000;
    static final long SESSION_GAP_MS = 30L * 60 * 1000;

    /** fastavro turns timestamp-millis into a datetime: outside years 1..9999 that raises (a decode error). */
    static final long MIN_DATETIME_MS = -62_135_596_800_000L;
    static final long MAX_DATETIME_MS = 253_402_300_799_999L;
    /** Python's int() refuses integer text of more than 4300 digits (json.loads raises ValueError). */
    static final int PY_INT_MAX_STR_DIGITS = 4300;

    static final JsonNodeFactory NODES = JsonNodeFactory.instance;

    /** Rejection reasons, the names peer.py uses. */
    enum Reason {
        NOT_AVRO("not_avro"),
        AVRO_DECODE_ERROR("avro_decode_error"),
        MISSING_REQUIRED_FIELD("missing_required_field"),
        INVALID_EVENT_TYPE("invalid_event_type"),
        UNKNOWN_EVENT_TYPE("unknown_event_type"),
        TIMESTAMP_OUT_OF_RANGE("timestamp_out_of_range"),
        INVALID_PROPERTIES("invalid_properties");

        final String label;

        Reason(String label) {
            this.label = label;
        }
    }

    // Shared by the main thread and every stream thread's processors.
    static final AtomicLong SEEN = new AtomicLong();
    static final LongAdder VALID = new LongAdder();
    static final LongAdder[] REJECTED = new LongAdder[Reason.values().length];
    static final Set<String> USERS = ConcurrentHashMap.newKeySet();
    static final AtomicLong FIRST_NANOS = new AtomicLong();
    static volatile boolean started;
    static volatile long endNanos;
    static volatile boolean ended;
    static volatile long target = Long.MAX_VALUE;

    static {
        for (int i = 0; i < REJECTED.length; i++) {
            REJECTED[i] = new LongAdder();
        }
    }

    private StreamsPeer() {}

    public static void main(String[] args) throws Exception {
        // Before any logger exists: slf4j-simple to stderr at WARN (a -D on the command line wins).
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        // A string's length is read from the record: never let a corrupt one allocate more than a
        // Kafka record could hold (fastavro reads what is there and fails; so does this).
        if (System.getProperty("org.apache.avro.limits.string.maxLength") == null) {
            System.setProperty("org.apache.avro.limits.string.maxLength", String.valueOf(64 << 20));
        }

        if (args.length < 5 || args.length > 6) {
            System.err.println(USAGE);
            System.exit(2);
        }
        String bootstrap = args[0];
        String topic = args[1];
        long count;
        int threads = 1;
        try {
            count = Long.parseLong(args[2]);
            if (args.length == 6) {
                threads = Integer.parseInt(args[5]);
            }
            if (count < 0 || threads < 1) {
                throw new NumberFormatException();
            }
        } catch (NumberFormatException e) {
            System.err.println(USAGE);
            System.exit(2);
            return;
        }
        File schemas = new File(args[3]);
        String stateDir = args[4];

        Schema envelope = new Schema.Parser().parse(new File(schemas, "envelope.avsc"));
        Map<String, Check> properties = loadProperties(new File(schemas, "events"));
        long nowMs = System.currentTimeMillis();
        target = count;

        Properties config = new Properties();
        String suffix = UUID.randomUUID().toString().replace("-", "").substring(0, 12);
        config.put(StreamsConfig.APPLICATION_ID_CONFIG, "bench-streams-peer-" + suffix);
        config.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        config.put(StreamsConfig.STATE_DIR_CONFIG, stateDir);
        config.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        config.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        config.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        config.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        // commit.interval.ms: left at the exactly-once default (100 ms).

        Topology topology = new Topology();
        topology.addSource(SOURCE, Serdes.ByteArray().deserializer(), Serdes.ByteArray().deserializer(), topic);
        topology.addProcessor(PROCESSOR, () -> new PeerProcessor(envelope, properties, nowMs), SOURCE);
        topology.addStateStore(
                Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(STORE), Serdes.String(), Serdes.ByteArray())
                        .withCachingEnabled(),
                PROCESSOR);

        KafkaStreams streams = new KafkaStreams(topology, config);
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("streams-peer: stream thread failed: " + e);
            e.printStackTrace(System.err);
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.start();

        long deadline = System.nanoTime() + Duration.ofHours(1).toNanos();
        while (SEEN.get() < count && System.nanoTime() < deadline) {
            KafkaStreams.State state = streams.state();
            if (state == KafkaStreams.State.ERROR
                    || state == KafkaStreams.State.PENDING_ERROR
                    || state == KafkaStreams.State.PENDING_SHUTDOWN
                    || state == KafkaStreams.State.NOT_RUNNING) {
                System.err.println("streams-peer: Kafka Streams is " + state + " after " + SEEN.get() + " records");
                break;
            }
            Thread.sleep(50);
        }
        long stop = System.nanoTime();
        double elapsed;
        if (!started) {
            elapsed = 0.0;
        } else if (ended) {
            elapsed = (endNanos - FIRST_NANOS.get()) / 1e9;
        } else {
            elapsed = (stop - FIRST_NANOS.get()) / 1e9; // gave up: up to now, as peer.py does
        }

        boolean closed = streams.close(CloseOptions.timeout(Duration.ofSeconds(30)));
        if (closed) {
            streams.cleanUp(); // this run's local RocksDB state: its application.id is never reused
        } else {
            System.err.println("streams-peer: Kafka Streams did not close within 30 s");
        }
        long seen = SEEN.get();
        long valid = VALID.sum();
        StringBuilder reasons = new StringBuilder();
        for (Reason r : Reason.values()) {
            reasons.append(' ').append(r.label).append('=').append(REJECTED[r.ordinal()].sum());
        }
        System.err.println("streams-peer: rejected" + reasons);

        ObjectMapper mapper = new ObjectMapper();
        ObjectNode out = mapper.createObjectNode();
        out.put("elapsed_s", elapsed);
        out.put("seen", seen);
        out.put("valid", valid);
        out.put("invalid", seen - valid);
        out.put("users", USERS.size());
        System.out.println(mapper.writeValueAsString(out));
        System.out.flush();
        System.exit(seen >= count ? 0 : 1);
    }

    /** One checker per file of SCHEMAS_DIR/events, keyed by the file name less ".avsc", as peer.py does. */
    static Map<String, Check> loadProperties(File dir) throws IOException {
        File[] files = dir.listFiles();
        if (files == null) {
            throw new IOException("not a directory: " + dir);
        }
        Map<String, Check> out = new HashMap<>();
        for (File f : files) {
            String name = f.getName();
            String type = name.length() >= 5 ? name.substring(0, name.length() - 5) : "";
            // Defaults are checked by fastavro's validate, not when the schema is parsed.
            Schema schema = new Schema.Parser().setValidateDefaults(false).parse(f);
            out.put(type, Check.compile(schema, new IdentityHashMap<>()));
        }
        return out;
    }

    // ------------------------------------------------------------------------------------------
    // The processor: validate, then aggregate into the store.

    static final class PeerProcessor implements Processor<byte[], byte[], Void, Void> {
        private final Validator validator;
        private KeyValueStore<String, byte[]> store;
        private boolean first = true;

        PeerProcessor(Schema envelope, Map<String, Check> properties, long nowMs) {
            this.validator = new Validator(envelope, properties, nowMs);
        }

        @Override
        public void init(ProcessorContext<Void, Void> context) {
            store = context.getStateStore(STORE);
        }

        @Override
        public void process(Record<byte[], byte[]> record) {
            if (first) {
                first = false;
                if (FIRST_NANOS.compareAndSet(0, System.nanoTime())) {
                    started = true;
                }
            }
            Validator v = validator;
            Reason reason = v.validate(record.value());
            if (reason == null) {
                aggregate(v.userId, v.eventType, v.tsMs, v.props);
                VALID.increment();
            } else {
                REJECTED[reason.ordinal()].increment();
            }
            if (SEEN.incrementAndGet() == target) {
                endNanos = System.nanoTime();
                ended = true;
            }
        }

        /** aggregate() of peer.py, read from and written back to the store. */
        private void aggregate(String userId, String kind, long ts, ObjectNode props) {
            byte[] stored = store.get(userId);
            Aggregate u;
            if (stored == null) {
                u = Aggregate.fresh(ts);
                USERS.add(userId);
            } else {
                u = Aggregate.decode(stored);
            }
            u.apply(kind, ts, props);
            store.put(userId, u.encode());
        }
    }

    /** Per-user profile: counts, sessions, revenue, engagement and lifecycle stage. */
    static final class Aggregate {
        static final String[] STAGES = {"acquisition", "activation", "retention", "revenue", "referral"};
        static final byte ACQUISITION = 0;
        static final byte ACTIVATION = 1;
        static final byte RETENTION = 2;
        static final byte REVENUE = 3;
        static final byte REFERRAL = 4;

        long events;
        long sessions;
        long firstSeen;
        long lastSeen;
        double revenue;
        long purchases;
        long shares;
        byte stage;
        double score;
        // "types": event type -> count, in insertion order (a Python dict).
        String[] typeNames;
        long[] typeCounts;
        int types;

        static Aggregate fresh(long ts) {
            Aggregate u = new Aggregate();
            u.firstSeen = ts;
            u.lastSeen = 0;
            u.stage = ACQUISITION;
            u.typeNames = new String[4];
            u.typeCounts = new long[4];
            return u;
        }

        void apply(String kind, long ts, ObjectNode props) {
            if (ts - lastSeen > SESSION_GAP_MS) {
                sessions += 1;
            }
            events += 1;
            firstSeen = Math.min(firstSeen, ts);
            lastSeen = Math.max(lastSeen, ts);
            countType(kind);
            switch (kind) {
                case "transaction.purchase_complete":
                    revenue += pyFloat(props.get("amount"));
                    purchases += 1;
                    break;
                case "transaction.refund":
                    revenue -= pyFloat(props.get("amount"));
                    break;
                case "engagement.share":
                    shares += 1;
                    break;
                default:
                    break;
            }
            double frequency = Math.min(events / 50.0, 1.0);
            double depth = Math.min(types / 8.0, 1.0);
            score = pyRound2(100 * (0.4 + 0.3 * frequency + 0.3 * depth));
            if (shares > 0 && purchases > 0) {
                stage = REFERRAL;
            } else if (purchases > 0) {
                stage = REVENUE;
            } else if (sessions > 1) {
                stage = RETENTION;
            } else if (events >= 3) {
                stage = ACTIVATION;
            }
        }

        private void countType(String kind) {
            for (int i = 0; i < types; i++) {
                if (typeNames[i].equals(kind)) {
                    typeCounts[i] += 1;
                    return;
                }
            }
            if (types == typeNames.length) {
                typeNames = Arrays.copyOf(typeNames, types * 2);
                typeCounts = Arrays.copyOf(typeCounts, types * 2);
            }
            typeNames[types] = kind;
            typeCounts[types] = 1;
            types += 1;
        }

        // Layout: events, sessions, first_seen, last_seen (8 bytes each), revenue (double),
        // purchases, shares (8 each), stage (1), score (double), type count (2), then per type:
        // name length (2), UTF-8 name, count (8). Big-endian.
        byte[] encode() {
            byte[][] names = new byte[types][];
            int size = 8 * 4 + 8 + 8 * 2 + 1 + 8 + 2;
            for (int i = 0; i < types; i++) {
                names[i] = typeNames[i].getBytes(StandardCharsets.UTF_8);
                size += 2 + names[i].length + 8;
            }
            ByteBuffer b = ByteBuffer.allocate(size);
            b.putLong(events).putLong(sessions).putLong(firstSeen).putLong(lastSeen);
            b.putDouble(revenue).putLong(purchases).putLong(shares);
            b.put(stage).putDouble(score);
            b.putShort((short) types);
            for (int i = 0; i < types; i++) {
                b.putShort((short) names[i].length).put(names[i]).putLong(typeCounts[i]);
            }
            return b.array();
        }

        static Aggregate decode(byte[] bytes) {
            ByteBuffer b = ByteBuffer.wrap(bytes);
            Aggregate u = new Aggregate();
            u.events = b.getLong();
            u.sessions = b.getLong();
            u.firstSeen = b.getLong();
            u.lastSeen = b.getLong();
            u.revenue = b.getDouble();
            u.purchases = b.getLong();
            u.shares = b.getLong();
            u.stage = b.get();
            u.score = b.getDouble();
            int n = b.getShort() & 0xffff;
            u.types = n;
            u.typeNames = new String[Math.max(n + 1, 4)];
            u.typeCounts = new long[u.typeNames.length];
            for (int i = 0; i < n; i++) {
                int len = b.getShort() & 0xffff;
                u.typeNames[i] = new String(bytes, b.position(), len, StandardCharsets.UTF_8);
                b.position(b.position() + len);
                u.typeCounts[i] = b.getLong();
            }
            return u;
        }
    }

    /** float(x) of a validated JSON value. */
    static double pyFloat(JsonNode v) {
        if (v == null) {
            return 0.0; // props.get("amount", 0)
        }
        if (v.isNumber()) {
            return v.doubleValue();
        }
        if (v.isBoolean()) {
            return v.booleanValue() ? 1.0 : 0.0;
        }
        return Double.parseDouble(v.asText().strip());
    }

    /** Python's round(x, 2): the exact binary value rounded half-even to 2 decimals. */
    static double pyRound2(double x) {
        if (!Double.isFinite(x)) {
            return x;
        }
        return new BigDecimal(x).setScale(2, RoundingMode.HALF_EVEN).doubleValue();
    }

    /**
     * int(ts.timestamp() * 1000) of the datetime fastavro makes of a timestamp-millis: timestamp()
     * is total microseconds / 10**6, correctly rounded, so the result can be 1 ms below the value.
     */
    static long pyTimestampMs(long ms) {
        double seconds = (double) (ms * 1000L) / 1e6;
        return (long) (seconds * 1000.0);
    }

    // ------------------------------------------------------------------------------------------
    // validate() of peer.py. Not thread-safe: one per processor.

    static final class Validator {
        private final Map<String, Check> properties;
        private final long nowMs;
        private final GenericDatumReader<GenericRecord> reader;
        private final StrictUtf8 strict = new StrictUtf8();
        private final Matcher typeMatcher;
        private final JsonFactory json;
        private final int fEventId;
        private final int fUserId;
        private final int fEventType;
        private final int fTimestamp;
        private final int fSessionId;
        private final int fProperties;
        private BinaryDecoder decoder;
        private GenericRecord reuse;

        // The event when validate() returned null.
        String userId;
        String eventType;
        long tsMs;
        ObjectNode props;

        Validator(Schema envelope, Map<String, Check> properties, long nowMs) {
            this.properties = properties;
            this.nowMs = nowMs;
            // A GenericData of its own: no logical-type conversions (timestamps stay longs); Avro's
            // fast reader (its default) does the decoding.
            this.reader = new GenericDatumReader<>(envelope, envelope, new GenericData());
            this.typeMatcher = EVENT_TYPE.matcher("");
            this.json = JsonFactory.builder()
                    .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS)
                    .streamReadConstraints(StreamReadConstraints.builder()
                            .maxNumberLength(Integer.MAX_VALUE)
                            .build())
                    .build();
            this.fEventId = envelope.getField("event_id").pos();
            this.fUserId = envelope.getField("user_id").pos();
            this.fEventType = envelope.getField("event_type").pos();
            this.fTimestamp = envelope.getField("timestamp").pos();
            this.fSessionId = envelope.getField("session_id").pos();
            this.fProperties = envelope.getField("event_properties").pos();
        }

        /** Null when the record is valid (the event is then in the fields), else the reason. */
        Reason validate(byte[] value) {
            if (value == null || value.length < 5 || value[0] != 0) {
                return Reason.NOT_AVRO;
            }
            // value[1..5]: the schema id, big-endian; one envelope here.
            GenericRecord event;
            long rawTs;
            try {
                decoder = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, decoder);
                event = reader.read(reuse, decoder);
                reuse = event;
                strict.check(event);
                rawTs = (Long) event.get(fTimestamp);
            } catch (IOException | RuntimeException e) {
                reuse = null;
                return Reason.AVRO_DECODE_ERROR;
            }
            if (rawTs < MIN_DATETIME_MS || rawTs > MAX_DATETIME_MS) {
                return Reason.AVRO_DECODE_ERROR; // fastavro raises making the datetime
            }
            String user = str(event.get(fUserId));
            if (badId(str(event.get(fEventId))) || badId(user) || badId(str(event.get(fSessionId)))) {
                return Reason.MISSING_REQUIRED_FIELD;
            }
            String type = str(event.get(fEventType));
            if (!typeMatcher.reset(type).lookingAt()) {
                return Reason.INVALID_EVENT_TYPE;
            }
            Check schema = properties.get(type);
            if (schema == null) {
                return Reason.UNKNOWN_EVENT_TYPE;
            }
            long ts = pyTimestampMs(rawTs);
            if (ts > nowMs + MAX_FUTURE_MS || ts < nowMs - MAX_AGE_MS) {
                return Reason.TIMESTAMP_OUT_OF_RANGE;
            }
            String text = str(event.get(fProperties));
            JsonNode parsed;
            try {
                parsed = parseJson(text == null || text.isEmpty() ? "{}" : text);
            } catch (IOException | RuntimeException e) {
                return Reason.INVALID_PROPERTIES;
            }
            if (!parsed.isObject() || !schema.ok(parsed)) {
                return Reason.INVALID_PROPERTIES;
            }
            userId = user;
            eventType = type;
            tsMs = ts;
            props = (ObjectNode) parsed;
            return null;
        }

        private static String str(Object v) {
            return v == null ? null : v.toString(); // a checked Utf8
        }

        private static boolean badId(String v) {
            // Python's len() counts code points.
            return v.isEmpty() || (v.length() > MAX_ID_LEN && v.codePointCount(0, v.length()) > MAX_ID_LEN);
        }

        /** json.loads(text): one JSON value and nothing after it but whitespace. */
        private JsonNode parseJson(String text) throws IOException {
            try (JsonParser p = json.createParser(text)) {
                JsonToken t = p.nextToken();
                if (t == null) {
                    throw new JsonParseException(p, "no JSON value");
                }
                JsonNode node = readValue(p, t);
                if (p.nextToken() != null) {
                    throw new JsonParseException(p, "extra data");
                }
                return node;
            }
        }

        private static JsonNode readValue(JsonParser p, JsonToken t) throws IOException {
            switch (t) {
                case START_OBJECT: {
                    ObjectNode o = NODES.objectNode();
                    for (JsonToken k = p.nextToken(); k == JsonToken.FIELD_NAME; k = p.nextToken()) {
                        String name = p.currentName();
                        o.set(name, readValue(p, p.nextToken())); // a repeated key: the last wins
                    }
                    return o;
                }
                case START_ARRAY: {
                    ArrayNode a = NODES.arrayNode();
                    for (JsonToken e = p.nextToken(); e != JsonToken.END_ARRAY; e = p.nextToken()) {
                        a.add(readValue(p, e));
                    }
                    return a;
                }
                case VALUE_STRING:
                    return NODES.textNode(p.getText());
                case VALUE_NUMBER_INT: {
                    int digits = p.getTextLength();
                    if (digits > PY_INT_MAX_STR_DIGITS
                            && digits - (p.getTextCharacters()[p.getTextOffset()] == '-' ? 1 : 0)
                                    > PY_INT_MAX_STR_DIGITS) {
                        throw new JsonParseException(p, "integer too long for Python's int()");
                    }
                    switch (p.getNumberType()) {
                        case INT:
                            return NODES.numberNode(p.getIntValue());
                        case LONG:
                            return NODES.numberNode(p.getLongValue());
                        default:
                            return NODES.numberNode(p.getBigIntegerValue());
                    }
                }
                case VALUE_NUMBER_FLOAT: {
                    double d = p.getDoubleValue();
                    if (!Double.isFinite(d)) {
                        // Python accepts exactly NaN, Infinity and -Infinity (and overflowing
                        // numbers such as 1e400); Jackson also takes +Infinity, +INF, -INF.
                        String s = p.getText();
                        char c = s.isEmpty() ? '0' : s.charAt(s.charAt(0) == '-' && s.length() > 1 ? 1 : 0);
                        boolean literal = c == '+' || Character.isLetter(c);
                        if (literal && !(s.equals("NaN") || s.equals("Infinity") || s.equals("-Infinity"))) {
                            throw new JsonParseException(p, "not a Python JSON constant: " + s);
                        }
                    }
                    return NODES.numberNode(d);
                }
                case VALUE_TRUE:
                    return NODES.booleanNode(true);
                case VALUE_FALSE:
                    return NODES.booleanNode(false);
                case VALUE_NULL:
                    return NODES.nullNode();
                default:
                    throw new JsonParseException(p, "unexpected token " + t);
            }
        }
    }

    /**
     * fastavro decodes every string with bytes.decode("utf-8") (errors="strict"): malformed UTF-8
     * anywhere in the record (ids, device, location, referrer...) is a decode error. Avro's reader
     * keeps strings as Utf8 bytes, so each one is checked here, over the whole decoded record.
     */
    static final class StrictUtf8 {
        private final CharsetDecoder utf8 = StandardCharsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);

        void check(Object v) throws CharacterCodingException {
            if (v instanceof Utf8) {
                Utf8 u = (Utf8) v;
                byte[] b = u.getBytes();
                int n = u.getByteLength();
                for (int i = 0; i < n; i++) {
                    if (b[i] < 0) { // not all ASCII: decode for real
                        utf8.reset().decode(ByteBuffer.wrap(b, 0, n));
                        return;
                    }
                }
            } else if (v instanceof GenericRecord) {
                GenericRecord r = (GenericRecord) v;
                int n = r.getSchema().getFields().size();
                for (int i = 0; i < n; i++) {
                    check(r.get(i));
                }
            } else if (v instanceof Collection) {
                for (Object e : (Collection<?>) v) {
                    check(e);
                }
            } else if (v instanceof Map) {
                for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                    check(e.getKey());
                    check(e.getValue());
                }
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // fastavro.validation.validate(datum, schema) over JSON values, compiled from the Avro schema.

    abstract static class Check {
        abstract boolean ok(JsonNode d);

        static Check compile(Schema s, Map<Schema, Check> named) {
            switch (s.getType()) {
                case NULL:
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return d.isNull();
                        }
                    };
                case BOOLEAN:
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return d.isBoolean();
                        }
                    };
                case STRING:
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return d.isTextual();
                        }
                    };
                case INT:
                    // An int, not a bool, in [-2**31, 2**31 - 1].
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return d.isIntegralNumber() && d.canConvertToInt();
                        }
                    };
                case LONG:
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return d.isIntegralNumber() && d.canConvertToLong();
                        }
                    };
                case FLOAT:
                case DOUBLE:
                    // int or float, not bool.
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return d.isNumber();
                        }
                    };
                case BYTES:
                case FIXED:
                    // JSON has no bytes.
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return false;
                        }
                    };
                case ENUM: {
                    Set<String> symbols = new HashSet<>(s.getEnumSymbols());
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            return d.isTextual() && symbols.contains(d.textValue());
                        }
                    };
                }
                case ARRAY: {
                    Check items = compile(s.getElementType(), named);
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            if (!d.isArray()) {
                                return false;
                            }
                            for (JsonNode e : d) {
                                if (!items.ok(e)) {
                                    return false;
                                }
                            }
                            return true;
                        }
                    };
                }
                case MAP: {
                    Check values = compile(s.getValueType(), named);
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            if (!d.isObject()) {
                                return false;
                            }
                            for (Iterator<JsonNode> it = d.elements(); it.hasNext(); ) {
                                if (!values.ok(it.next())) {
                                    return false;
                                }
                            }
                            return true;
                        }
                    };
                }
                case UNION: {
                    List<Schema> branches = s.getTypes();
                    Check[] checks = new Check[branches.size()];
                    for (int i = 0; i < checks.length; i++) {
                        checks[i] = compile(branches.get(i), named);
                    }
                    return new Check() {
                        @Override
                        boolean ok(JsonNode d) {
                            for (Check c : checks) {
                                if (c.ok(d)) {
                                    return true;
                                }
                            }
                            return false;
                        }
                    };
                }
                case RECORD: {
                    Check known = named.get(s);
                    if (known != null) {
                        return known;
                    }
                    RecordCheck r = new RecordCheck(s.getFullName());
                    named.put(s, r);
                    List<Schema.Field> fields = s.getFields();
                    r.names = new String[fields.size()];
                    r.defaults = new JsonNode[fields.size()];
                    r.checks = new Check[fields.size()];
                    for (int i = 0; i < r.names.length; i++) {
                        Schema.Field f = fields.get(i);
                        r.names[i] = f.name();
                        r.defaults[i] = f.hasDefaultValue() ? Accessor.defaultValue(f) : null;
                        r.checks[i] = compile(f.schema(), named);
                    }
                    return r;
                }
                default:
                    throw new IllegalArgumentException("unsupported Avro type " + s.getType());
            }
        }
    }

    static final class RecordCheck extends Check {
        final String fullName;
        String[] names;
        JsonNode[] defaults;
        Check[] checks;

        RecordCheck(String fullName) {
            this.fullName = fullName;
        }

        @Override
        boolean ok(JsonNode d) {
            if (!d.isObject()) {
                return false;
            }
            JsonNode tag = d.get("-type");
            if (tag != null && !(tag.isTextual() && tag.textValue().equals(fullName))) {
                return false;
            }
            for (int i = 0; i < names.length; i++) {
                JsonNode v = d.get(names[i]);
                if (v == null) {
                    // A missing field is its default, else None.
                    v = defaults[i] != null ? defaults[i] : NullNode.getInstance();
                }
                if (!checks[i].ok(v)) {
                    return false;
                }
            }
            return true;
        }
    }
}
