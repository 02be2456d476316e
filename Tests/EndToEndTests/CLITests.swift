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

    @Test func migrateWithoutADatabaseSaysWhatToSet() async throws {
        let result = try await RunningProcess.run([FerryBinaries.ferryd, "migrate"])
        #expect(result.status == 1)
        #expect(result.lines == ["ferryd: error: migrate needs a database: set FERRY_DATABASE_URL or FERRY_MIGRATION_DATABASE_URL (or --database-url)"])
    }
}
