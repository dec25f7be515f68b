// The Spark Structured Streaming peer of benches/peers.py: Kafka source, the
// JSON value parsed into the contract's columns (ts kept as the text sent: it
// comes as RFC 3339 or epoch millis) with the Kafka timestamp beside them, appended to a Delta
// table per micro-batch through foreachBatch with txnAppId/txnVersion (Delta's
// idempotent writes: a batch replayed after a failure is skipped), on a
// processing-time trigger. Runs until killed. A single-file source program:
//   java -cp "<spark jars>/*" SparkStream.java BOOTSTRAP TOPIC TABLE CHECKPOINT TRIGGER_MS
import org.apache.spark.api.java.function.VoidFunction2;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.streaming.Trigger;
import org.apache.spark.sql.types.StructType;

import static org.apache.spark.sql.functions.col;
import static org.apache.spark.sql.functions.from_json;

public class SparkStream {
    static final String SCHEMA =
            "event_id STRING, ts STRING, user_id STRING, page STRING, action STRING, "
            + "country STRING, price DOUBLE";

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], table = args[2], checkpoint = args[3];
        long triggerMs = Long.parseLong(args[4]);
        SparkSession spark = SparkSession.builder()
                .master("local[2]")
                .appName("weir-peer")
                .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
                .config("spark.sql.catalog.spark_catalog",
                        "org.apache.spark.sql.delta.catalog.DeltaCatalog")
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", "2")
                .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
                .getOrCreate();
        Dataset<Row> events = spark.readStream()
                .format("kafka")
                .option("kafka.bootstrap.servers", bootstrap)
                .option("subscribe", topic)
                .option("startingOffsets", "earliest")
                .option("failOnDataLoss", "true")
                // The batch size the other peers are given, so a backlog is
                // drained in batches as theirs is, not in one.
                .option("maxOffsetsPerTrigger", "100000")
                .load()
                .select(from_json(col("value").cast("string"), StructType.fromDDL(SCHEMA)).as("e"),
                        col("partition").as("_partition"), col("offset").as("_offset"),
                        col("timestamp").as("_kafka_ts"))
                .select("e.*", "_partition", "_offset", "_kafka_ts");
        VoidFunction2<Dataset<Row>, Long> append = (batch, id) -> batch.write()
                .format("delta")
                .mode("append")
                .option("txnAppId", "weir-peer-spark")
                .option("txnVersion", id)
                .save(table);
        events.writeStream()
                .foreachBatch(append)
                .option("checkpointLocation", checkpoint)
                .trigger(Trigger.ProcessingTime(triggerMs))
                .start()
                .awaitTermination();
    }
}
