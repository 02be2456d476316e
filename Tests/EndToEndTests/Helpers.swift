import ControlDatabase
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

let logger = testLogger()

/// Runs one query and returns its single integer.
func scalar(_ url: DatabaseURL, _ sql: String) async throws -> Int {
    try await url.withConnection(logger: logger) { connection in
        let rows = try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
        for try await value in rows.decode(Int.self) { return value }
        return -1
    }
}

/// The versions in the version table with how often each is recorded.
func recordedVersions(_ url: DatabaseURL) async throws -> [Int: Int] {
    try await url.withConnection(logger: logger) { connection in
        let rows = try await connection.query("SELECT version, count(*)::int FROM ferry_schema_migrations GROUP BY version", logger: logger)
        var counts: [Int: Int] = [:]
        for try await (version, count) in rows.decode((Int, Int).self) { counts[version] = count }
        return counts
    }
}

/// Every table the initial schema promises, and the concurrently built indexes, valid.
func expectCompleteSchema(_ url: DatabaseURL, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let tables = ["instances", "jobs", "job_instances", "job_events", "job_tables", "instance_replace_results",
                  "tenant_claims", "job_artifacts", "leases"]
    let present = try await scalar(url, "SELECT count(*)::int FROM unnest(ARRAY['\(tables.joined(separator: "','"))']) AS t(name) WHERE to_regclass(t.name) IS NOT NULL")
    #expect(present == tables.count, "tables missing", sourceLocation: sourceLocation)
    let validIndexes = try await scalar(url, """
        SELECT count(*)::int FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname IN ('jobs_status_created_idx', 'jobs_root_attempt_idx') AND i.indisvalid
        """)
    #expect(validIndexes == 2, "concurrent indexes missing or invalid", sourceLocation: sourceLocation)
}

/// A copy of the built-in migrations in a temporary directory, plus `extra` files.
func migrationsDirectory(extra: [String: String] = [:], replacing: [String: String] = [:]) throws -> String {
    let directory = FileManager.default.temporaryDirectory.path + "/ferry-migrations-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for migration in try MigrationSet.builtIn().migrations {
        let name = migration.id + ".sql"
        try (replacing[name] ?? migration.sql).write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
    }
    for (name, sql) in extra {
        try sql.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8)
    }
    return directory
}
