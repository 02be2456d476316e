import ControlDatabase
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing

let logger = testLogger()

func scalar(_ url: DatabaseURL, _ sql: String) async throws -> Int {
    try await ControlQueries.scalar(url, sql)
}

func recordedVersions(_ url: DatabaseURL) async throws -> [Int: Int] {
    try await ControlQueries.recordedVersions(url)
}

/// Every table the initial schema promises, and the concurrently built indexes, valid.
func expectCompleteSchema(_ url: DatabaseURL, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let (tables, indexes) = try await ControlQueries.schemaCompleteness(url)
    #expect(tables == ControlQueries.schemaTables.count, "tables missing", sourceLocation: sourceLocation)
    #expect(indexes == 2, "concurrent indexes missing or invalid", sourceLocation: sourceLocation)
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
