import Crypto
import FerryTestSupport
import Foundation
import PostgresNIO
import Testing
@testable import ControlDatabase

/// A migration's checksum covers what it does (its statements, and whether it runs in a
/// transaction), not its comments or layout; a database whose recorded checksums an earlier
/// build wrote (SHA-256 of the whole file) is still accepted.
@Suite struct MigrationChecksumTests {
    let logger = testLogger()

    private func checksum(_ sql: String, _ name: String = "0001_a.sql") throws -> String {
        try Migration(fileName: name, sql: sql).checksum
    }

    private func sha256(_ text: String) -> String {
        SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    @Test func commentsAndLayoutDoNotChangeTheChecksumStatementsDo() throws {
        let base = try checksum("CREATE TABLE a (x int, note text DEFAULT 'a  -- b');\nCREATE INDEX a_x ON a (x);\n")
        // Comments (line and nested block), blank lines, indentation, line breaks: the same.
        #expect(try checksum("""
            -- a header that points somewhere
            CREATE TABLE a (   -- the table
                x int, /* a /* nested */ note */ note text DEFAULT 'a  -- b'
            );

            -- and its index
            CREATE INDEX a_x ON a (x);
            """) == base)
        // What runs differs: a different checksum.
        #expect(try checksum("CREATE TABLE a (x bigint, note text DEFAULT 'a  -- b');\nCREATE INDEX a_x ON a (x);\n") != base)
        // Inside a string, spaces and comment markers are data.
        #expect(try checksum("CREATE TABLE a (x int, note text DEFAULT 'a -- b');\nCREATE INDEX a_x ON a (x);\n") != base)
        #expect(try checksum("CREATE TABLE a (x int, note text DEFAULT 'a  -- b');\n") != base)
        // The transaction marker is a comment, but it changes how the statements run.
        #expect(try checksum("-- ferry:no-transaction\nCREATE TABLE a (x int, note text DEFAULT 'a  -- b');\nCREATE INDEX a_x ON a (x);\n") != base)
        // A file that cannot be split is refused when it is loaded.
        #expect(throws: Migration.DefinitionError.self) { try Migration(fileName: "0001_a.sql", sql: "SELECT 'unterminated;") }
    }

    @Test func theEarlierEditionOfTheInitialMigrationIsRecognised() throws {
        // 0001_initial's first comment line pointed at a file outside the repository; only that
        // line changed. The checksum earlier builds recorded for it must be accepted.
        let current = try #require(try MigrationSet.builtIn().migrations.first { $0.id == "0001_initial" })
        var lines = current.sql.split(separator: "\n", omittingEmptySubsequences: false)
        lines[0] = "-- Ferry control database, initial schema (see DES" + "IGN.md sections 1-3)."
        let earlier = lines.joined(separator: "\n")
        let earlierFileChecksum = sha256(earlier)
        #expect(current.acceptedChecksums.contains(earlierFileChecksum))
        // It is the same migration: same statements, same checksum.
        #expect(try Migration(fileName: "0001_initial.sql", sql: earlier).checksum == current.checksum)
        // The current file's own bytes are accepted too (an earlier build with this text).
        #expect(current.acceptedChecksums.contains(sha256(current.sql)))
    }

    @Test func aDatabaseMigratedByAnEarlierBuildIsAcceptedAChangedOneIsNot() async throws {
        let url = try await TestPostgres.shared.freshDatabase("checksum_compat")
        let set = try MigrationSet.builtIn()
        try await Migrator(url: url, migrations: set, logger: logger).run()
        #expect(try await recordedChecksum(url, version: 1) == set.migrations[0].checksum)

        // What an earlier build recorded: the SHA-256 of the whole file, for 0001_initial of
        // its earlier edition, for the others of the files as they are.
        var lines = set.migrations[0].sql.split(separator: "\n", omittingEmptySubsequences: false)
        lines[0] = "-- Ferry control database, initial schema (see DES" + "IGN.md sections 1-3)."
        try await setChecksum(url, version: 1, sha256(lines.joined(separator: "\n")))
        for migration in set.migrations.dropFirst() {
            try await setChecksum(url, version: migration.version, sha256(migration.sql))
        }
        let report = try await Migrator(url: url, migrations: set, logger: logger).run()
        #expect(report.applied.isEmpty)
        #expect(report.alreadyApplied == set.migrations.map(\.id))

        // A recorded checksum that matches no edition is still a changed migration.
        try await setChecksum(url, version: 1, sha256("something else"))
        let error = await #expect(throws: MigrationError.self) {
            try await Migrator(url: url, migrations: set, logger: logger).run()
        }
        #expect(error?.code == .checksumMismatch)
    }

    @Test func aCommentEditOfAnAppliedMigrationIsAccepted() async throws {
        let url = try await TestPostgres.shared.freshDatabase("checksum_comment")
        let original = try MigrationSet([try Migration(fileName: "0001_a.sql", sql: "-- first words\nCREATE TABLE a (x int);\n")])
        try await Migrator(url: url, migrations: original, logger: logger).run()
        let edited = try MigrationSet([
            try Migration(fileName: "0001_a.sql", sql: "-- better words\nCREATE TABLE a (\n    x int  -- the only column\n);\n"),
            try Migration(fileName: "0002_b.sql", sql: "CREATE TABLE b (x int);"),
        ])
        let report = try await Migrator(url: url, migrations: edited, logger: logger).run()
        #expect(report.alreadyApplied == ["0001_a"])
        #expect(report.applied == ["0002_b"])
    }

    @Test func workerNamesFitPostgresAndTellHoldersApart() {
        let short = Migrator.workerApplicationName(owner: "host:42:abcd1234")
        #expect(short == "ferry-migrate-worker:host:42:abcd1234")
        let long = String(repeating: "h", count: 60)
        let a = Migrator.workerApplicationName(owner: long + ":1:aaaaaaaa")
        let b = Migrator.workerApplicationName(owner: long + ":1:bbbbbbbb")
        #expect(a.utf8.count <= 63 && b.utf8.count <= 63)
        #expect(a.hasPrefix("ferry-migrate-worker:") && a != b)
    }

    private func recordedChecksum(_ url: DatabaseURL, version: Int) async throws -> String {
        try await url.withConnection(logger: logger) { connection in
            let rows = try await connection.execute("SELECT checksum FROM ferry_schema_migrations WHERE version = \(version)", logger: logger)
            return try rows.first?.decode(String.self) ?? ""
        }
    }

    private func setChecksum(_ url: DatabaseURL, version: Int, _ checksum: String) async throws {
        try await url.withConnection(logger: logger) { connection in
            try await connection.execute("UPDATE ferry_schema_migrations SET checksum = \(checksum) WHERE version = \(version)", logger: logger)
        }
    }
}
