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

    /// `pg_dump --schema-only` of one schema, as lines without comments, blank lines,
    /// settings and restrict keys, with the schema names in `names` replaced by `SCHEMA`.
    static func dump(_ schema: String, of url: DatabaseURL, replacing names: [String]) async throws -> [String] {
        let cluster = try await TestPostgres.shared.server()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: cluster.binaries.directory + "/pg_dump")
        process.arguments = ["--schema-only", "--schema=\(schema)", "-h", url.host, "-p", String(url.port), "-U", url.user, url.database]
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = url.password
        process.environment = environment
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        // Read before waiting: a dump larger than the pipe's buffer would block pg_dump.
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let errorText = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw SystemProcessError(message: "pg_dump exited with \(process.terminationStatus): \(errorText)")
        }
        return String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).compactMap { line in
            // \restrict and \unrestrict carry a random key per dump.
            if line.hasPrefix("--") || line.hasPrefix("SET ") || line.hasPrefix("SELECT pg_catalog.set_config")
                || line.hasPrefix("\\restrict ") || line.hasPrefix("\\unrestrict ") {
                return nil
            }
            var text = String(line)
            for name in names { text = text.replacingOccurrences(of: name, with: "SCHEMA") }
            return text
        }
    }

    struct SystemProcessError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// Per table: its row count and an md5 of its rows as text, sorted.
    static func contents(of schema: String, tables: [String], on url: DatabaseURL) async throws -> [String: String] {
        try await url.withConnection(logger: logger) { connection in
            var contents: [String: String] = [:]
            for table in tables {
                let sql = "SELECT count(*)::text || ' ' || md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) "
                    + "FROM \(identifier(schema)).\(identifier(table)) x"
                contents[table] = try await connection.execute(PostgresQuery(unsafeSQL: sql), logger: logger).first?.decode(String.self)
            }
            return contents
        }
    }
}
