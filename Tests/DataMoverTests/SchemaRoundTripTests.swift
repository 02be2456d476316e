import ControlDatabase
import DataMover
import FerryTestSupport
import Logging
import PostgresNIO
import Testing

/// The fixture tenant read, rebuilt under another name (in the same database and in another
/// one) with its data moved in between, and compared: pg_dump of both schemas, every table's
/// rows, and every sequence's next value.
@Suite("Schema round trip")
struct SchemaRoundTripTests {
    static let source = "tenant_src"
    static let target = "copy_x"

    @Test("rebuilt in the same database under a new name")
    func sameDatabase() async throws {
        let database = try await TestPostgres.shared.freshDatabase("schema_same")
        try await SchemaTesting.runScript(TenantFixture.sql(schema: Self.source), on: database)
        try await roundTrip(source: database, target: database)
    }

    @Test("rebuilt in another database")
    func anotherDatabase() async throws {
        let sourceDatabase = try await TestPostgres.shared.freshDatabase("schema_from")
        let targetDatabase = try await TestPostgres.shared.freshDatabase("schema_to")
        try await SchemaTesting.runScript(TenantFixture.sql(schema: Self.source), on: sourceDatabase)
        try await roundTrip(source: sourceDatabase, target: targetDatabase)
    }

    private func roundTrip(source: DatabaseURL, target: DatabaseURL) async throws {
        let schema = try await SchemaTesting.read(Self.source, on: source)
        #expect(schema.unsupported == [])
        #expect(Set(schema.tables.map(\.name)) == Set(TenantFixture.rowCounts.keys))
        let expectedNext = try await nextValues(of: Self.source, on: source)

        try await SchemaTesting.rebuild(schema, as: Self.target, on: target, from: source)

        let sourceDump = try await TenantInspection.schemaDump(source, schema: Self.source)
        let targetDump = try await TenantInspection.schemaDump(target, schema: Self.target)
        #expect(sourceDump.count > 200)
        #expect(sourceDump == targetDump, "pg_dump differs: \(TenantInspection.difference(sourceDump, targetDump))")

        let tables = schema.tables.map(\.name)
        let sourceContents = try await TenantInspection.data(source, schema: Self.source)
        let targetContents = try await TenantInspection.data(target, schema: Self.target)
        for table in tables {
            #expect(sourceContents[table] == targetContents[table], "rows of \(table)")
            #expect(sourceContents[table]?.hasPrefix("\(TenantFixture.rowCounts[table] ?? -1):") == true, "row count of \(table)")
        }

        try await target.withConnection(logger: SchemaTesting.logger) { connection in
            // The schema's name inside a literal of an index predicate survives: only the
            // definition's ON clause was rewritten.
            let tricky = try await connection.execute(
                "SELECT pg_get_indexdef(\(SchemaTesting.identifier(Self.target) + ".every_type_tricky")::regclass)",
                logger: SchemaTesting.logger).first?.decode(String.self)
            #expect(tricky?.hasSuffix("WHERE (t <> '\(Self.source).every_type'::text)") == true, "\(tricky ?? "no index")")

            for (sequence, expected) in expectedNext {
                let name = SchemaTesting.identifier(Self.target) + "." + SchemaTesting.identifier(sequence)
                let next = try await connection.execute("SELECT nextval(\(name)::regclass)", logger: SchemaTesting.logger)
                    .first?.decode(Int64.self)
                #expect(next == expected, "nextval of \(sequence)")
            }
        }
    }

    /// What each sequence's next nextval returns, worked out from its state without calling it.
    private func nextValues(of tenant: String, on url: DatabaseURL) async throws -> [String: Int64] {
        try await url.withConnection(logger: SchemaTesting.logger) { connection in
            var next: [String: Int64] = [:]
            let sequences = try await connection.execute("""
                SELECT c.relname::text, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle
                FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
                WHERE c.relnamespace = \(tenant)::regnamespace
                """, logger: SchemaTesting.logger)
            for row in sequences {
                let (name, increment, minimum, maximum, cycle) = try row.decode((String, Int64, Int64, Int64, Bool).self)
                let state = try await connection.execute(
                    PostgresQuery(unsafeSQL: "SELECT last_value, is_called FROM \(SchemaTesting.identifier(tenant)).\(SchemaTesting.identifier(name))"),
                    logger: SchemaTesting.logger)
                let (last, isCalled) = try state[0].decode((Int64, Bool).self)
                guard isCalled else {
                    next[name] = last
                    continue
                }
                let (sum, overflow) = last.addingReportingOverflow(increment)
                if !overflow && sum >= minimum && sum <= maximum {
                    next[name] = sum
                } else if cycle {
                    next[name] = increment > 0 ? minimum : maximum
                }
            }
            #expect(next.count == 12)
            return next
        }
    }
}
