import ControlDatabase
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

/// The migration runner against a real PostgreSQL server (and a real PgBouncer).
@Suite struct MigratorTests {
    let logger = testLogger()

    @Test func appliesEveryBuiltInMigrationOnceAndThenNothing() async throws {
        let url = try await TestPostgres.shared.freshDatabase("apply")
        let set = try MigrationSet.builtIn()
        let first = try await Migrator(url: url, migrations: set, logger: logger).run()
        #expect(first.applied == set.migrations.map(\.id))
        #expect(first.alreadyApplied.isEmpty)

        let second = try await Migrator(url: url, migrations: set, logger: logger).run()
        #expect(second.applied.isEmpty)
        #expect(second.alreadyApplied == set.migrations.map(\.id))
        try await expectCompleteSchema(url)
    }

    @Test func concurrentMigratorsInOneProcessApplyEachVersionOnce() async throws {
        let url = try await TestPostgres.shared.freshDatabase("inproc")
        let set = try MigrationSet.builtIn()
        let reports = try await withThrowingTaskGroup(of: Migrator.Report.self) { group in
            for _ in 0..<12 {
                group.addTask { try await Migrator(url: url, migrations: set, logger: logger).run() }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        // Every migration was applied by exactly one of the twelve.
        for migration in set.migrations {
            #expect(reports.filter { $0.applied.contains(migration.id) }.count == 1)
        }
        try await expectVersionsRecordedOnce(url, set)
    }

    @Test func refusesAChangedMigrationAndTouchesNothing() async throws {
        let url = try await TestPostgres.shared.freshDatabase("drift")
        let original = try MigrationSet([try Migration(fileName: "0001_a.sql", sql: "CREATE TABLE a (x int);")])
        try await Migrator(url: url, migrations: original, logger: logger).run()

        let drifted = try MigrationSet([
            try Migration(fileName: "0001_a.sql", sql: "CREATE TABLE a (x bigint);"),
            try Migration(fileName: "0002_b.sql", sql: "CREATE TABLE b (x int);"),
        ])
        let error = await #expect(throws: MigrationError.self) {
            try await Migrator(url: url, migrations: drifted, logger: logger).run()
        }
        #expect(error?.code == .checksumMismatch)
        #expect(error?.message.contains("migration 0001_a was changed after it was applied") == true)
        // 0002 was not applied: nothing is touched once drift is seen.
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_schema_migrations") == 1)
        #expect(try await scalar(url, "SELECT (to_regclass('b') IS NULL)::int") == 1)
    }

    @Test func refusesADatabaseNewerThanTheBinary() async throws {
        let url = try await TestPostgres.shared.freshDatabase("newer")
        let newer = try MigrationSet([
            try Migration(fileName: "0001_a.sql", sql: "CREATE TABLE a (x int);"),
            try Migration(fileName: "0002_b.sql", sql: "CREATE TABLE b (x int);"),
        ])
        try await Migrator(url: url, migrations: newer, logger: logger).run()

        let older = try MigrationSet([try Migration(fileName: "0001_a.sql", sql: "CREATE TABLE a (x int);")])
        let error = await #expect(throws: MigrationError.self) {
            try await Migrator(url: url, migrations: older, logger: logger).run()
        }
        #expect(error?.code == .databaseNewer)
        #expect(error?.message.contains("0002_b") == true)
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_schema_migrations") == 2)
    }

    @Test func aFailingMigrationRollsBackAndIsNotRecorded() async throws {
        let url = try await TestPostgres.shared.freshDatabase("failing")
        let set = try MigrationSet([
            try Migration(fileName: "0001_a.sql", sql: "CREATE TABLE a (x int);"),
            try Migration(fileName: "0002_bad.sql", sql: "CREATE TABLE c (x int);\nSELECT * FROM missing_table;"),
        ])
        let error = await #expect(throws: MigrationError.self) {
            try await Migrator(url: url, migrations: set, logger: logger).run()
        }
        #expect(error?.code == .failed)
        #expect(error?.message == "migration 0002_bad failed: relation \"missing_table\" does not exist (SQLSTATE 42P01)")
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_schema_migrations") == 1)
        #expect(try await scalar(url, "SELECT (to_regclass('c') IS NULL)::int") == 1)
    }

    @Test func nonTransactionalMigrationRunsOutsideATransaction() async throws {
        let url = try await TestPostgres.shared.freshDatabase("notx")
        // CREATE INDEX CONCURRENTLY fails inside a transaction block, so success proves the mode.
        let set = try MigrationSet([
            try Migration(fileName: "0001_a.sql", sql: "CREATE TABLE a (x int);"),
            try Migration(fileName: "0002_idx.sql", sql: "-- ferry:no-transaction\nCREATE INDEX CONCURRENTLY a_x ON a (x);\nCREATE INDEX CONCURRENTLY a_x2 ON a (x);"),
        ])
        #expect(set.migrations[1].isTransactional == false)
        let report = try await Migrator(url: url, migrations: set, logger: logger).run()
        #expect(report.applied == ["0001_a", "0002_idx"])
        #expect(try await scalar(url, "SELECT count(*)::int FROM pg_indexes WHERE tablename = 'a'") == 2)
        // The lease was released.
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_migration_lease") == 0)
    }

    @Test func aLeaseIsExclusiveUntilItExpiresAndRenewalFailsOnceTaken() async throws {
        let url = try await TestPostgres.shared.freshDatabase("lease")
        try await Migrator(url: url, migrations: try MigrationSet([]), logger: logger).run()
        try await url.withConnection(logger: logger) { connection in
            let a = LeaseLock(table: Migrator.leaseTable, name: "x", owner: "a", duration: .seconds(2))
            let b = LeaseLock(table: Migrator.leaseTable, name: "x", owner: "b", duration: .seconds(30))
            #expect(try await a.tryAcquire(on: connection, logger: logger) == .acquired)
            guard case .heldBy(owner: "a", _) = try await b.tryAcquire(on: connection, logger: logger) else {
                Issue.record("b took a lease a holds")
                return
            }
            #expect(try await a.renew(on: connection, logger: logger))
            // Long enough that a busy machine does not expire the lease before a's renewal.
            try await Task.sleep(for: .milliseconds(2500))
            #expect(try await b.tryAcquire(on: connection, logger: logger) == .acquired)
            #expect(try await a.renew(on: connection, logger: logger) == false)
            // a's release must not free b's lease.
            try await a.release(on: connection, logger: logger)
            #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_migration_lease WHERE owner = 'b'") == 1)
        }
    }

    @Test func aMigratorThatLosesItsLeaseStopsItsWorkAndRecordsNothing() async throws {
        let url = try await TestPostgres.shared.freshDatabase("lease_lost")
        let set = try MigrationSet([
            try Migration(fileName: "0001_a.sql", sql: "CREATE TABLE a (x int);"),
            try Migration(fileName: "0002_slow.sql", sql: "-- ferry:no-transaction\nSELECT pg_sleep(20);\nCREATE TABLE after_sleep (x int);"),
        ])
        let migrator = Migrator(url: url, migrations: set, owner: "victim", leaseDuration: .seconds(1), logger: logger)
        let started = ContinuousClock.now
        let running = Task { try await migrator.run() }
        // Once it sleeps under the lease, another owner takes the lease away.
        var stolen = 0
        // Up to a minute for the migrator to reach its statement: the whole suite runs at once.
        for _ in 0..<600 where stolen == 0 {
            try await Task.sleep(for: .milliseconds(100))
            // Fails until the migrator has created the lease table: keep trying.
            stolen = (try? await scalar(url, "WITH s AS (UPDATE ferry_migration_lease SET owner = 'thief', expires_at = now() + interval '1 hour' WHERE owner = 'victim' AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(20)' AND state = 'active') RETURNING 1) SELECT count(*)::int FROM s")) ?? 0
        }
        #expect(stolen == 1)
        let stolenAt = ContinuousClock.now
        let error = await #expect(throws: MigrationError.self) { try await running.value }
        #expect(error?.code == .leaseLost)
        // It stopped at the next renewal, well before the 20 s statement would have ended.
        #expect(ContinuousClock.now - stolenAt < .seconds(15), "stopped \(ContinuousClock.now - stolenAt) after the theft (\(ContinuousClock.now - started) after the start)")
        #expect(try await ControlQueries.recordedVersions(url, logger: logger) == [1: 1])
        // The thief's lease is untouched by the victim's release.
        #expect(try await scalar(url, "SELECT count(*)::int FROM ferry_migration_lease WHERE owner = 'thief'") == 1)
        // The statement stopped on the server too, not just on our side of the socket.
        var stillRunning = 1
        for _ in 0..<50 where stillRunning > 0 {
            stillRunning = try await scalar(url, "SELECT count(*)::int FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(20)' AND pid <> pg_backend_pid()")
            if stillRunning > 0 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(stillRunning == 0, "the lost migration's statement still runs on the server")
    }

    @Test func concurrentMigratorsThroughTransactionPoolingPgBouncer() async throws {
        let url = try await TestPostgres.shared.freshDatabase("bouncer")
        let bouncer = try await PgBouncer.start(in: try await TestPostgres.shared.server(), poolMode: "transaction", poolSize: 4)
        let pooled = try bouncer.url(database: url.database)
        let set = try MigrationSet.builtIn()
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask { try await Migrator(url: pooled, migrations: set, logger: logger).run() }
                }
                try await group.waitForAll()
            }
        } catch {
            await bouncer.stop()
            throw error
        }
        await bouncer.stop()
        try await expectVersionsRecordedOnce(url, set)
        try await expectCompleteSchema(url)
    }

    // MARK: helpers

    private func scalar(_ url: DatabaseURL, _ sql: String) async throws -> Int {
        try await ControlQueries.scalar(url, sql, logger: logger)
    }

    private func expectVersionsRecordedOnce(_ url: DatabaseURL, _ set: MigrationSet) async throws {
        let counts = try await ControlQueries.recordedVersions(url, logger: logger)
        #expect(counts == Dictionary(uniqueKeysWithValues: set.migrations.map { ($0.version, 1) }))
    }

    private func expectCompleteSchema(_ url: DatabaseURL) async throws {
        let (tables, indexes) = try await ControlQueries.schemaCompleteness(url)
        #expect(tables == ControlQueries.schemaTables.count)
        #expect(indexes == 2)
    }
}
