// Runs a SQL script in Apache Spark with Delta Lake (local mode, in-memory
// catalog) and prints every statement's rows as JSON lines, each prefixed with
// the statement's index and a tab: the test suite's Spark reader. Started as a
// single-file source program (`java -cp "<jars>/*" SparkSql.java SCRIPT`), so
// it needs no build of its own. Statements are separated by ";" at a line end.
import java.nio.file.Files;
import java.nio.file.Path;

import org.apache.spark.sql.SparkSession;

public class SparkSql {
    public static void main(String[] args) throws Exception {
        String script = Files.readString(Path.of(args[0]));
        SparkSession spark = SparkSession.builder()
                .master("local[2]")
                .appName("weir-interop")
                .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
                .config("spark.sql.catalog.spark_catalog",
                        "org.apache.spark.sql.delta.catalog.DeltaCatalog")
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.ui.enabled", "false")
                .config("spark.sql.jsonGenerator.ignoreNullFields", "false")
                .config("spark.sql.shuffle.partitions", "2")
                .getOrCreate();
        int index = 0;
        for (String statement : script.split(";\\s*\\n")) {
            if (statement.isBlank()) {
                continue;
            }
            for (String row : spark.sql(statement).toJSON().collectAsList()) {
                System.out.println(index + "\t" + row);
            }
            index++;
        }
        spark.stop();
    }
}
