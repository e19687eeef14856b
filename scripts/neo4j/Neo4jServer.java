// A Neo4j Community server for the test suite: Neo4j as a library, Bolt on 127.0.0.1:<port>, auth off.
// Started by scripts/neo4j/start with Java's single-file source launcher; stops on SIGTERM.
import java.nio.file.Path;

import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.io.ByteUnit;

public class Neo4jServer {
    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[0]);
        int port = Integer.parseInt(args[1]);
        DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(home)
                .setConfig(BoltConnector.enabled, true)
                .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
                .setConfig(GraphDatabaseSettings.auth_enabled, false)
                .setConfig(GraphDatabaseSettings.pagecache_memory, ByteUnit.mebiBytes(256))
                .build();
        // Opening the default database before saying "ready" means the first Bolt session never waits.
        dbms.database(GraphDatabaseSettings.DEFAULT_DATABASE_NAME).executeTransactionally("RETURN 1");
        Runtime.getRuntime().addShutdownHook(new Thread(dbms::shutdown));
        System.out.println("neo4j ready on 127.0.0.1:" + port);
        Thread.currentThread().join();
    }
}
