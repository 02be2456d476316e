import FerryCore
import FerryTestSupport
import Testing

@Suite struct CLITests {
    @Test func bothExecutablesReportTheirVersion() async throws {
        let ferry = try await RunningProcess.run([FerryBinaries.ferry, "--version"])
        #expect(ferry.status == 0)
        #expect(ferry.lines == [FerryVersion.current])
        let ferryd = try await RunningProcess.run([FerryBinaries.ferryd, "--version"])
        #expect(ferryd.status == 0)
        #expect(ferryd.lines == [FerryVersion.current])
    }

    @Test func ferrydRejectsUnknownFlagsWithUsage() async throws {
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate", "--no-such-flag"])
        #expect(result.status == 64)
        #expect(result.output.contains("Unknown option '--no-such-flag'"))
    }

    @Test func serveRefusesAMigrationURLWithoutADatabaseURL() async throws {
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "serve"], environment: ["FERRY_MIGRATION_DATABASE_URL": "postgres://u:pw@127.0.0.1:1/d"])
        #expect(result.status == 1)
        #expect(result.lines == ["ferryd: error: a migration database URL is set but no database URL: the embedded default migrates its own cluster, so set FERRY_DATABASE_URL too, or neither"])
    }

    @Test func migrateWithoutADatabaseSaysWhatToSet() async throws {
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate"])
        #expect(result.status == 1)
        #expect(result.lines == ["ferryd: error: migrate needs a database: set FERRY_DATABASE_URL or FERRY_MIGRATION_DATABASE_URL (or --database-url)"])
    }
}
