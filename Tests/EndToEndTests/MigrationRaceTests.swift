import ControlDatabase
import FerryTestSupport
import Foundation
import Testing

/// Many `ferryd migrate` processes started at the same instant on a fresh database, directly
/// and through a transaction-pooling PgBouncer: each must succeed, each version must be
/// recorded exactly once, exactly one process must report applying it, and the schema must
/// be complete.
@Suite(.serialized) struct MigrationRaceTests {
    static let replicas = 8
    static let rounds = 3

    @Test func eightMigratorsAtOnceDirect() async throws {
        for round in 1...Self.rounds {
            let url = try await TestPostgres.shared.freshDatabase("race_direct")
            try await race(url: url, label: "direct round \(round)")
            try await expectCompleteSchema(url)
        }
    }

    @Test func eightMigratorsAtOnceThroughTransactionPooling() async throws {
        let bouncer = try await PgBouncer.start(in: try await TestPostgres.shared.server(), poolMode: "transaction", poolSize: 5)
        do {
            for round in 1...Self.rounds {
                let direct = try await TestPostgres.shared.freshDatabase("race_pooled")
                try await race(url: try bouncer.url(database: direct.database), label: "pgbouncer round \(round)")
                try await expectCompleteSchema(direct)
            }
        } catch {
            await bouncer.stop()
            throw error
        }
        await bouncer.stop()
    }

    private func race(url: DatabaseURL, label: String) async throws {
        let command = [FerryBinaries.ferryd, "migrate", "--log-level", "warning"]
        let results = try await runTogether(
            Array(repeating: command, count: Self.replicas),
            environment: ["FERRY_DATABASE_URL": url.secretURLString])
        for (index, result) in results.enumerated() {
            #expect(result.status == 0, "\(label): migrator \(index) failed: \(result.output)")
        }
        let migrations = try MigrationSet.builtIn().migrations
        let counts = try await recordedVersions(url)
        #expect(counts == Dictionary(uniqueKeysWithValues: migrations.map { ($0.version, 1) }), "\(label)")
        // Exactly one process applied each migration; the others found it applied.
        for migration in migrations {
            let appliers = results.filter { $0.output.contains(migration.id) }.count
            #expect(appliers == 1, "\(label): \(migration.id) reported applied by \(appliers) processes")
        }
    }
}
