import ControlDatabase
import Foundation
import Logging
import PostgresNIO

/// Small queries the tests use to look at a control database.
public enum ControlQueries {
    /// Runs one query and returns its single integer (-1 when it returns no row).
    public static func scalar(_ url: DatabaseURL, _ sql: String, logger: Logger = testLogger()) async throws -> Int {
        try await url.withConnection(logger: logger) { connection in
            let rows = try await connection.execute(PostgresQuery(unsafeSQL: sql), logger: logger)
            return try rows.first?.decode(Int.self) ?? -1
        }
    }

    /// Each recorded migration version with how often it is recorded.
    public static func recordedVersions(_ url: DatabaseURL, logger: Logger = testLogger()) async throws -> [Int: Int] {
        try await url.withConnection(logger: logger) { connection in
            let rows = try await connection.execute("SELECT version, count(*)::int FROM ferry_schema_migrations GROUP BY version", logger: logger)
            var counts: [Int: Int] = [:]
            for row in rows {
                let (version, count) = try row.decode((Int, Int).self)
                counts[version] = count
            }
            return counts
        }
    }

    /// The tables the initial schema promises.
    public static let schemaTables = [
        "instances", "jobs", "job_instances", "job_events", "job_tables", "instance_replace_results",
        "tenant_claims", "job_artifacts", "leases",
    ]

    /// How many of ``schemaTables`` exist, and how many of the concurrently built indexes are valid.
    public static func schemaCompleteness(_ url: DatabaseURL) async throws -> (tables: Int, validIndexes: Int) {
        let tables = try await scalar(url, "SELECT count(*)::int FROM unnest(ARRAY['\(schemaTables.joined(separator: "','"))']) AS t(name) WHERE to_regclass(t.name) IS NOT NULL")
        let indexes = try await scalar(url, """
            SELECT count(*)::int FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relname IN ('jobs_status_created_idx', 'jobs_root_attempt_idx') AND i.indisvalid
            """)
        return (tables, indexes)
    }
}
