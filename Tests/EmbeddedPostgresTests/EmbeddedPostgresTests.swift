import ControlDatabase
import EmbeddedPostgres
import FerryRuntime
import FerryTestSupport
import Foundation
import PostgresNIO
import Testing

@Suite struct EmbeddedPostgresTests {
    let logger = testLogger()

    @Test func startsAPasswordProtectedClusterAndRemovesIt() async throws {
        let cluster = try await EmbeddedPostgres.start(database: "made_here", logger: logger)
        let directory = cluster.baseDirectory
        #expect(FileManager.default.fileExists(atPath: cluster.dataDirectory + "/PG_VERSION"))

        let url = try DatabaseURL(parsing: cluster.url(database: "made_here"))
        let user = try await url.withConnection(logger: logger) { connection in
            let rows = try await connection.execute("SELECT current_user || '@' || current_database()", logger: logger)
            return try rows.first?.decode(String.self) ?? ""
        }
        #expect(user == "ferry@made_here")

        // TCP logins need the generated password.
        var wrong = url
        wrong.password = "guess"
        let refused = await #expect(throws: DatabaseError.self) {
            _ = try await wrong.connect(logger: logger)
        }
        #expect(refused?.code == .authentication)

        try await cluster.stop()
        #expect(!FileManager.default.fileExists(atPath: directory))
        let unreachable = await #expect(throws: DatabaseError.self) {
            _ = try await url.connect(logger: logger)
        }
        #expect(unreachable?.code == .unreachable)
    }

    @Test func binariesAreFoundOrTheErrorSaysHowToFixIt() throws {
        let found = try PostgresBinaries.locate()
        #expect(FileManager.default.isExecutableFile(atPath: found.pgCtl))
        let error = #expect(throws: SystemProcess.Failure.self) {
            try PostgresBinaries.locate(environment: ["FERRY_PG_BIN": "/nonexistent"])
        }
        #expect(error?.message == "FERRY_PG_BIN=/nonexistent has no initdb")
    }

    @Test func childProcessesReportExitStatusAndSignals() async throws {
        let log = FileManager.default.temporaryDirectory.path + "/ferry-child-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: log) }
        #expect(try await SystemProcess.launch(["/bin/sh", "-c", "echo hi; exit 3"], logFile: log).wait() == 3)
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "hi\n")
        let sleeper = try SystemProcess.launch(["/bin/sleep", "30"])
        #expect(sleeper.isRunning)
        sleeper.signal(SIGTERM)
        #expect(await sleeper.wait() == 128 + SIGTERM)
        #expect(!sleeper.isRunning)
        // Concurrent waiters all get the one real status.
        let twice = try SystemProcess.launch(["/bin/sh", "-c", "sleep 0.2; exit 7"])
        async let first = twice.wait()
        async let second = twice.wait()
        #expect(await [first, second] == [7, 7])
        #expect(await twice.wait() == 7)
        let failure = await #expect(throws: SystemProcess.Failure.self) {
            try await SystemProcess.run(["/bin/sh", "-c", "echo broken >&2; exit 2"], logFile: log)
        }
        #expect(failure?.message.contains("exited with status 2") == true)
        #expect(failure?.message.contains("broken") == true)
    }
}
