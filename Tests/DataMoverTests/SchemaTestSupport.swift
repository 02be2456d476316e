import ControlDatabase
import DataMover
import EmbeddedPostgres
import FerryTestSupport
import Foundation
import LibPQ
import Logging
import PostgresNIO
import Testing

/// Helpers of the schema tests: scripts through libpq, reads and rebuilds through PostgresNIO,
/// dumps through pg_dump.
enum SchemaTesting {
    static let logger = testLogger("ferry.test.schema")

    static func libpq(_ url: DatabaseURL) async throws -> PQConnection {
        try await PQThread.run {
            var parameters = [("host", url.host), ("port", String(url.port)), ("user", url.user), ("dbname", url.database),
                              ("sslmode", "disable")]
            if let password = url.password { parameters.append(("password", password)) }
            return try PQConnection(parameters: parameters)
        }
    }

    /// Runs a script of several statements (the simple protocol), on a connection of its own.
    static func runScript(_ sql: String, on url: DatabaseURL) async throws {
        let connection = try await libpq(url)
        defer { connection.close() }
        try await PQThread.run { try connection.execute(sql) }
    }

    /// Reads `tenant` as the plan step does: in a read-only repeatable-read transaction, which
    /// must end with the search_path it started with.
    static func read(_ tenant: String, on url: DatabaseURL) async throws -> TenantSchema {
        try await url.withConnection(logger: logger) { connection in
            try await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: logger)
            let before = try await connection.execute("SHOW search_path", logger: logger).first?.decode(String.self)
            let schema = try await SchemaReader.read(tenant: tenant, on: connection, logger: logger)
            let after = try await connection.execute("SHOW search_path", logger: logger).first?.decode(String.self)
            #expect(before == after, "the reader left search_path changed")
            try await connection.execute("COMMIT", logger: logger)
            return schema
        }
    }

    /// Recreates `schema` as `target` on `url` phase by phase, moving the data from
    /// `source` in between as the clone does (binary COPY where the table allows it).
    static func rebuild(_ schema: TenantSchema, as target: String, on url: DatabaseURL, from source: DatabaseURL) async throws {
        let statements = schema.statements(into: target)
        try await url.withConnection(logger: logger) { connection in
            func run(_ sql: [String]) async throws {
                for statement in sql {
                    do {
                        try await connection.execute(PostgresQuery(unsafeSQL: statement), logger: logger)
                    } catch {
                        Issue.record("\(statement)\n failed: \(String(reflecting: error))")
                        throw error
                    }
                }
            }
            try await connection.execute(PostgresQuery(unsafeSQL: "SET search_path = \(identifier(target))"), logger: logger)
            try await run(statements.prelude)
            for table in schema.tables { try await run(statements.createTable[table.name] ?? []) }
            for table in schema.tables {
                try await copy(table, from: schema.tenant, on: source, to: target, on: url)
            }
            for table in schema.tables { try await run(statements.indexes[table.name] ?? []) }
            try await run(statements.foreignKeys)
            try await run(statements.validations)
            try await run(statements.postData)
        }
    }

    static func copy(_ table: TableDefinition, from tenant: String, on source: DatabaseURL, to target: String, on url: DatabaseURL) async throws {
        let columns = table.copyColumns.map(identifier).joined(separator: ", ")
        let format = table.binarySafe ? " WITH (FORMAT binary)" : ""
        let reader = try await libpq(source)
        let writer = try await libpq(url)
        defer {
            reader.close()
            writer.close()
        }
        try await PQThread.run {
            try reader.startCopyOut("COPY \(identifier(tenant)).\(identifier(table.name)) (\(columns)) TO STDOUT\(format)")
            try writer.startCopyIn("COPY \(identifier(target)).\(identifier(table.name)) (\(columns)) FROM STDIN\(format)")
            while try reader.readCopyData({ try writer.writeCopyData($0) }) {}
            try writer.endCopyIn()
        }
    }

    static func identifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

}
