import ControlDatabase
import EmbeddedPostgres
import FerryRuntime
import FerryTestSupport
import Foundation
import Testing

/// What `ferryd` does with a database it must not migrate and with bad configuration:
/// exit status 1 and exactly one line, `ferryd: error: …`, naming the problem and never
/// a password; nothing in the database changes.
@Suite struct StartupRefusalTests {
    private func expectOneLineError(_ result: ProcessResult, containing expected: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 1, "status \(result.status): \(result.output)", sourceLocation: sourceLocation)
        #expect(result.lines.count == 1, "expected one line, got: \(result.output)", sourceLocation: sourceLocation)
        #expect(result.lines.first?.hasPrefix("ferryd: error: ") == true, "\(result.output)", sourceLocation: sourceLocation)
        #expect(result.output.contains(expected), "\(result.output) does not mention \(expected)", sourceLocation: sourceLocation)
        #expect(!result.output.contains("Fatal error") && !result.output.contains("Stack dump"), sourceLocation: sourceLocation)
    }

    private func versionTable(_ url: DatabaseURL) async throws -> String {
        try await url.withConnection(logger: logger) { connection in
            let rows = try await connection.execute("SELECT string_agg(version || ':' || checksum || ':' || applied_at, ',' ORDER BY version) FROM ferry_schema_migrations", logger: logger)
            return try rows.first?.decode(String.self) ?? ""
        }
    }

    @Test func aChangedAppliedMigrationStopsStartUp() async throws {
        let url = try await TestPostgres.shared.freshDatabase("drift_process")
        let environment = ["FERRY_DATABASE_URL": url.secretURLString]
        #expect(try await RunningProcess.run([FerryBinaries.ferryd, "migrate"], environment: environment).status == 0)
        let before = try await versionTable(url)

        let original = try MigrationSet.builtIn().migrations[0]
        let directory = try migrationsDirectory(
            extra: ["0099_more.sql": "CREATE TABLE more_stuff (x int);"],
            replacing: [original.id + ".sql": original.sql + "\nCREATE TABLE an_edit_after_the_fact (x int);\n"])
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for command in [["migrate"], ["serve", "--ops-address", "127.0.0.1:0"]] {
            let result = try await RunningProcess.run(
                [FerryBinaries.ferryd] + command + ["--migrations-dir", directory], environment: environment)
            expectOneLineError(result, containing: "migration \(original.id) was changed after it was applied")
        }
        #expect(try await versionTable(url) == before)
        #expect(try await scalar(url, "SELECT (to_regclass('more_stuff') IS NULL)::int") == 1)
    }

    @Test func aDatabaseNewerThanTheBinaryStopsStartUp() async throws {
        let url = try await TestPostgres.shared.freshDatabase("newer_process")
        let environment = ["FERRY_DATABASE_URL": url.secretURLString]
        let newer = try migrationsDirectory(extra: ["9999_from_the_future.sql": "CREATE TABLE future (x int);"])
        defer { try? FileManager.default.removeItem(atPath: newer) }
        #expect(try await RunningProcess.run([FerryBinaries.ferryd, "migrate", "--migrations-dir", newer], environment: environment).status == 0)
        let before = try await versionTable(url)

        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate"], environment: environment)
        expectOneLineError(result, containing: "9999_from_the_future")
        #expect(result.output.contains("newer ferryd"))
        #expect(try await versionTable(url) == before)
    }

    @Test func aMalformedURLIsNamedWithoutItsPassword() async throws {
        let cases: [(String, String)] = [
            ("postgres://ferry:hunter2@localhost:99999/ferry", "invalid FERRY_DATABASE_URL: the database URL has port '99999'"),
            ("mysql://ferry:hunter2@localhost/ferry", "invalid FERRY_DATABASE_URL: the database URL has scheme 'mysql'"),
            ("hunter2", "invalid FERRY_DATABASE_URL: the database URL must start with postgres://"),
            ("postgres://ferry:hunter2@localhost/ferry?sslmode=sometimes", "invalid FERRY_DATABASE_URL: the database URL has sslmode 'sometimes'"),
        ]
        for (text, expected) in cases {
            for command in ["migrate", "serve"] {
                let result = try await RunningProcess.run([FerryBinaries.ferryd, command], environment: ["FERRY_DATABASE_URL": text])
                expectOneLineError(result, containing: expected)
                #expect(!result.output.contains("hunter2"))
            }
        }
        let flag = try await RunningProcess.run([FerryBinaries.ferryd, "migrate", "--migration-database-url", "postgres://x:hunter2@h:0/d"])
        expectOneLineError(flag, containing: "invalid --migration-database-url: the database URL has port '0'")
        #expect(!flag.output.contains("hunter2"))
    }

    @Test func anUnreachableDatabaseIsOneLine() async throws {
        let port = try SystemProcess.freeLoopbackPort()
        for command in ["migrate", "serve"] {
            let result = try await RunningProcess.run(
                [FerryBinaries.ferryd, command],
                environment: ["FERRY_DATABASE_URL": "postgres://ferry:hunter2@127.0.0.1:\(port)/ferry"])
            expectOneLineError(result, containing: "cannot reach the database at 127.0.0.1:\(port)")
            #expect(result.output.contains("connection refused"))
            #expect(!result.output.contains("hunter2"))
        }
    }

    @Test func aWrongPasswordIsOneLine() async throws {
        var url = try await TestPostgres.shared.freshDatabase("wrong_password")
        url.password = "not-the-password"
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate"], environment: ["FERRY_DATABASE_URL": url.secretURLString])
        expectOneLineError(result, containing: "rejected the password")
        #expect(result.output.contains("user \"ferry\""))
        #expect(!result.output.contains("not-the-password"))
    }

    @Test func anUnknownDatabaseIsOneLine() async throws {
        let url = try await TestPostgres.shared.freshDatabase("exists").with(database: "does_not_exist")
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate"], environment: ["FERRY_DATABASE_URL": url.secretURLString])
        expectOneLineError(result, containing: "has no database \"does_not_exist\"")
    }

    @Test func theMigrationURLIsUsedForMigrations() async throws {
        // The app URL points at a closed port; migrations go through the migration URL only.
        let url = try await TestPostgres.shared.freshDatabase("migration_url")
        let port = try SystemProcess.freeLoopbackPort()
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate"], environment: [
            "FERRY_DATABASE_URL": "postgres://ferry:x@127.0.0.1:\(port)/nowhere",
            "FERRY_MIGRATION_DATABASE_URL": url.secretURLString,
        ])
        #expect(result.status == 0, "\(result.output)")
        let expected = try MigrationSet.builtIn().migrations.count
        #expect(try await recordedVersions(url).count == expected)
    }
}
