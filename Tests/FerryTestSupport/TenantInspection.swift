import ControlDatabase
import EmbeddedPostgres
import Foundation
import Logging
import PostgresNIO

/// Looks at a tenant (a schema) from outside Ferry, to compare a copy with its source by
/// other means than Ferry's own: pg_dump for the schema, sorted row text for the data.
public enum TenantInspection {
    /// `pg_dump --schema-only` of `schema`, normalized so two tenants of one shape compare
    /// equal: the schema's name replaced by `TENANT`, comments, `SET` lines, blank lines and
    /// ownership lines dropped.
    public static func schemaDump(_ url: DatabaseURL, schema: String) async throws -> [String] {
        let binaries = try PostgresBinaries.locate()
        let file = FileManager.default.temporaryDirectory.path + "/ferry-dump-\(UUID().uuidString).sql"
        defer { try? FileManager.default.removeItem(atPath: file) }
        let result = try await RunningProcess.run(
            [binaries.directory + "/pg_dump", "--schema-only", "--no-owner", "--no-privileges", "--schema=\(schema)", "--file=\(file)",
             "--host=\(url.host)", "--port=\(url.port)", "--username=\(url.user)", url.database],
            environment: ["PGPASSWORD": url.password ?? ""])
        guard result.status == 0 else { throw DumpError(message: "pg_dump failed: \(result.output)") }
        let text = try String(contentsOfFile: file, encoding: .utf8)
        return normalize(text, schema: schema)
    }

    /// The lines only one of two dumps has, for a failure message.
    public static func difference(_ a: [String], _ b: [String]) -> String {
        let onlyA = a.filter { !b.contains($0) }
        let onlyB = b.filter { !a.contains($0) }
        return "only in the first: \(onlyA.prefix(10)); only in the second: \(onlyB.prefix(10))" + (a.count == b.count ? "" : " (\(a.count) vs \(b.count) lines)")
    }

    public struct DumpError: Error, CustomStringConvertible {
        public var message: String
        public init(message: String) { self.message = message }
        public var description: String { message }
    }

    static func normalize(_ dump: String, schema: String) -> [String] {
        dump.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            .filter { !$0.hasPrefix("--") && !$0.hasPrefix("SET ") && !$0.hasPrefix("SELECT pg_catalog.set_config") && !$0.hasPrefix("\\restrict") && !$0.hasPrefix("\\unrestrict") }
            .map { line in
                // Qualified names, and regclass literals (nextval('s.seq'::regclass)); never
                // another string literal, which a copy must keep as it is.
                var line = line.replacingOccurrences(of: "SCHEMA \(schema)", with: "SCHEMA TENANT")
                let name = NSRegularExpression.escapedPattern(for: schema)
                for (pattern, template) in [("(?<![\\w'\".])\"?\(name)\"?\\.", "TENANT."), ("'\(name)\\.([^']*)'::regclass", "'TENANT.$1'::regclass")] {
                    let expression = try! NSRegularExpression(pattern: pattern)
                    line = expression.stringByReplacingMatches(in: line, range: NSRange(line.startIndex..., in: line), withTemplate: template)
                }
                return line
            }
    }

    /// Runs a script with psql (several statements, dollar quotes, psql's own rules), stopping
    /// at the first error.
    public static func runScript(_ url: DatabaseURL, _ sql: String) async throws {
        let binaries = try PostgresBinaries.locate()
        let file = FileManager.default.temporaryDirectory.path + "/ferry-script-\(UUID().uuidString).sql"
        try sql.write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let result = try await RunningProcess.run(
            [binaries.directory + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", file,
             "--host=\(url.host)", "--port=\(url.port)", "--username=\(url.user)", url.database],
            environment: ["PGPASSWORD": url.password ?? ""])
        guard result.status == 0 else { throw DumpError(message: "psql failed: \(result.output)") }
    }

    /// Every table of `schema` with its row count and the md5 of its rows' text, sorted:
    /// equal for two tables exactly when they hold the same rows.
    public static func data(_ url: DatabaseURL, schema: String, logger: Logger = testLogger()) async throws -> [String: String] {
        try await url.withConnection(logger: logger) { connection in
            try await pinSettings(connection, logger: logger)
            let tables = try await connection.execute("""
                SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = \(schema) AND c.relkind = 'r' ORDER BY 1
                """, logger: logger).map { try $0.decode(String.self) }
            var result: [String: String] = [:]
            for table in tables {
                let name = "\"\(schema.replacingOccurrences(of: "\"", with: "\"\""))\".\"\(table.replacingOccurrences(of: "\"", with: "\"\""))\""
                let row = try await connection.execute(PostgresQuery(unsafeSQL: """
                    SELECT count(*)::text || ':' || md5(coalesce(string_agg(x.t, E'\\n' ORDER BY x.t), ''))
                      FROM (SELECT (r.*)::text AS t FROM \(name) r) x
                    """), logger: logger).first
                result[table] = try row?.decode(String.self) ?? ""
            }
            return result
        }
    }

    /// What the source's statistics say was written to `schema`'s tables (inserted, updated,
    /// deleted rows) and how many objects the schema holds: both unchanged after a read.
    public static func writes(_ url: DatabaseURL, schema: String, logger: Logger = testLogger()) async throws -> (tupleWrites: Int64, objects: Int64) {
        try await url.withConnection(logger: logger) { connection in
            // Statistics are reported by backends with a delay; flush this view's cache.
            try await connection.execute("SELECT pg_stat_clear_snapshot()", logger: logger)
            let writes = try await connection.execute("""
                SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_all_tables WHERE schemaname = \(schema)
                """, logger: logger).first!.decode(Int64.self)
            let objects = try await connection.execute("""
                SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = \(schema))
                     + (SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = \(schema))
                     + (SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = \(schema))
                     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = \(schema))
                """, logger: logger).first!.decode(Int64.self)
            return (writes, objects)
        }
    }

    /// The same text output settings Ferry's sessions use, so row text compares across servers.
    static func pinSettings(_ connection: PostgresConnection, logger: Logger) async throws {
        for setting in ["SET datestyle = 'ISO, YMD'", "SET intervalstyle = 'postgres'", "SET timezone = 'UTC'",
                        "SET extra_float_digits = 3", "SET bytea_output = 'hex'", "SET lc_monetary = 'C'"] {
            try await connection.execute(PostgresQuery(unsafeSQL: setting), logger: logger)
        }
    }
}
