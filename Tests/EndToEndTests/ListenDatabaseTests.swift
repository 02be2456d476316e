import ControlDatabase
import FerryServer
import FerryTestSupport
import Foundation
import Testing

/// Where ferryd LISTENs for NOTIFY hints, and the start-up check that LISTEN there really
/// delivers: through a transaction-pooling PgBouncer it silently does not.
@Suite struct ListenDatabaseTests {
    @Test func theListenURLIsTheGivenOneElseTheMigrationURLElseTheDatabaseURL() throws {
        let database = try DatabaseURL(parsing: "postgres://ferry@db:6432/ferry")
        let direct = try DatabaseURL(parsing: "postgres://ferry@db:5432/ferry")
        let other = try DatabaseURL(parsing: "postgres://ferry@listen:5432/ferry")
        var configuration = ServerConfiguration()
        #expect(configuration.listenURL(databaseURL: database) == database)
        configuration.migrationDatabaseURL = direct
        #expect(configuration.listenURL(databaseURL: database) == direct)
        configuration.listenDatabase = .url(other)
        #expect(configuration.listenURL(databaseURL: database) == other)
        configuration.listenDatabase = .none
        #expect(configuration.listenURL(databaseURL: database) == nil)
    }

    @Test func aDirectConnectionPassesTheCheck() async throws {
        let url = try await TestPostgres.shared.freshDatabase("listen_direct")
        // It throws unless the probe notification arrived within its timeout (the time spent
        // connecting on a busy machine is not part of that, so it is not measured here).
        try await ServerConfiguration().checkListenDelivers(databaseURL: url, logger: logger)
    }

    @Test func aTransactionPoolerIsRefusedWithOneLineNamingTheWayOut() async throws {
        let url = try await TestPostgres.shared.freshDatabase("listen_pooled")
        let bouncer = try await PgBouncer.start(in: try await TestPostgres.shared.server(), poolMode: "transaction", poolSize: 4)
        do {
            let pooled = try bouncer.url(database: url.database)
            // The pooled URL is a working database URL: only LISTEN fails there.
            #expect(try await ControlQueries.scalar(pooled, "SELECT 1") == 1)

            // Without a migration URL the database URL is used for LISTEN, and refused.
            var configuration = ServerConfiguration()
            let error = await #expect(throws: StartupFailure.self) {
                try await configuration.checkListenDelivers(databaseURL: pooled, logger: logger)
            }
            let message = error?.message ?? ""
            #expect(message.contains("LISTEN on \(pooled)") && message.contains("the database URL, used for LISTEN"), "\(message)")
            #expect(message.contains("--listen-database-url none"), "\(message)")
            #expect(!message.contains("\n"))

            // With a direct migration URL, that one is used and passes.
            configuration.migrationDatabaseURL = url
            try await configuration.checkListenDelivers(databaseURL: pooled, logger: logger)

            // A pooled URL given for LISTEN is refused too, naming the flag.
            configuration.listenDatabase = .url(pooled)
            let given = await #expect(throws: StartupFailure.self) {
                try await configuration.checkListenDelivers(databaseURL: url, logger: logger)
            }
            #expect(given?.message.contains("(--listen-database-url)") == true, "\(given?.message ?? "")")

            // Polling only: nothing to check.
            configuration.listenDatabase = .none
            try await configuration.checkListenDelivers(databaseURL: pooled, logger: logger)
        } catch {
            await bouncer.stop()
            throw error
        }
        await bouncer.stop()
    }

    @Test func aSessionPoolerDeliversAndPasses() async throws {
        // The check is whether LISTEN delivers, not whether a pooler is in between: in session
        // mode a client keeps its server session, and notifications arrive.
        let url = try await TestPostgres.shared.freshDatabase("listen_session")
        let bouncer = try await PgBouncer.start(in: try await TestPostgres.shared.server(), poolMode: "session", poolSize: 4)
        do {
            try await ServerConfiguration().checkListenDelivers(databaseURL: try bouncer.url(database: url.database), logger: logger)
        } catch {
            await bouncer.stop()
            throw error
        }
        await bouncer.stop()
    }
}
