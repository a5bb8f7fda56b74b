// Flink 2.3 SQL over the handbook's card transactions: the card features of
// rules/features.tl (transactions and average amount per card over the last
// 1, 7 and 30 days, the current one included; weekend and night flags) as
// OVER windows, event time. Flink computes one OVER window per query, so the
// three windows are three INSERTs of one statement set over the same source.
//
// args: CSV (id,customer,ts_ms,amount) [blackhole|sum]
//   blackhole: rows to a blackhole sink, timed;
//   sum: the rows collected, and the sum of each count column printed, to
//        compare with tripline's features over the same file.
import org.apache.flink.configuration.Configuration;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.StatementSet;
import org.apache.flink.table.api.TableEnvironment;
import org.apache.flink.types.Row;
import org.apache.flink.util.CloseableIterator;

public class FeatureBench {
  static String window(int days) {
    return "SELECT id, " +
      "CASE WHEN DAYOFWEEK(rt) IN (1, 7) THEN 1 ELSE 0 END AS weekend, " +
      "CASE WHEN HOUR(rt) <= 6 THEN 1 ELSE 0 END AS night, " +
      "COUNT(*) OVER w AS nb, AVG(amount) OVER w AS avg_amount FROM tx " +
      "WINDOW w AS (PARTITION BY customer ORDER BY rt " +
      "RANGE BETWEEN INTERVAL '" + days + "' DAY PRECEDING AND CURRENT ROW)";
  }

  public static void main(String[] a) throws Exception {
    String path = a[0];
    String mode = a.length > 1 ? a[1] : "blackhole";
    Configuration conf = new Configuration();
    conf.setString("parallelism.default", "1");
    EnvironmentSettings s = EnvironmentSettings.newInstance().inStreamingMode().withConfiguration(conf).build();
    TableEnvironment t = TableEnvironment.create(s);
    t.executeSql("CREATE TABLE tx (id BIGINT, customer BIGINT, ts_ms BIGINT, amount DOUBLE, " +
      "rt AS TO_TIMESTAMP_LTZ(ts_ms, 3), WATERMARK FOR rt AS rt) " +
      "WITH ('connector'='filesystem','path'='file://" + path + "','format'='csv')");
    int[] days = {1, 7, 30};
    long t0 = System.nanoTime();
    if (mode.equals("sum")) {
      for (int d : days) {
        long rows = 0, nb = 0;
        try (CloseableIterator<Row> it = t.executeSql(window(d)).collect()) {
          while (it.hasNext()) {
            Row r = it.next();
            rows++;
            nb += (Long) r.getField("nb");
          }
        }
        System.out.println("window_days=" + d + " rows=" + rows + " sum_nb=" + nb);
      }
    } else {
      StatementSet set = t.createStatementSet();
      for (int d : days) {
        t.executeSql("CREATE TABLE sink" + d + " (id BIGINT, weekend INT, night INT, nb BIGINT, avg_amount DOUBLE) " +
          "WITH ('connector'='blackhole')");
        set.addInsertSql("INSERT INTO sink" + d + " " + window(d));
      }
      set.execute().await();
    }
    System.out.printf("elapsed_s=%.2f%n", (System.nanoTime() - t0) / 1e9);
  }
}
