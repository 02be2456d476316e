import ControlDatabase
import Executors
import FerryProtocol
import FerryTestSupport
import Foundation
import JobStore
import Logging
import PostgresNIO
import Testing

/// An attempt gives a tenant's fence back when it is done with the tenant
/// (`InstanceSessions.releaseGate`): the gate session and its lock go at once, the attempt's
/// other fences stay, and a later writer of the tenant takes the fence anew.
@Suite struct GateReleaseTests {
    let logger = testLogger()

    @Test func aReleasedGateIsGoneAndTheNextWriterTakesTheFenceAgain() async throws {
        let control = try await TestPostgres.shared.freshDatabase("gates")
        try await Migrator(url: control, migrations: try MigrationSet.builtIn(), leaseDuration: .seconds(30), logger: logger).run()
        let instance = try await TestPostgres.shared.freshDatabase("gateinst")
        let job = UUID()
        try await control.withConnection(logger: logger) { connection in
            try await connection.execute("INSERT INTO instances (id, dsn) VALUES ('i0', \(instance.secretURLString))", logger: logger)
            try await connection.execute("""
                INSERT INTO jobs (id, kind, status, params, root_job_id, queued_at, started_at, owner, heartbeat_at)
                VALUES (\(job), 'instance_replace', 'RUNNING', '{}', \(job), now(), now(), 'r1', now())
                """, logger: logger)
        }
        let client = PostgresClient(configuration: control.clientConfiguration(), backgroundLogger: logger)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            let tag = SessionTag(root: job, attempt: 1)
            let sessions = InstanceSessions(
                tag: tag, jobID: job, owner: "r1", directory: InstanceDirectory(controlDatabase: client, settings: JobSettings()),
                controlDatabase: client, settings: JobSettings(), logger: logger, onLost: { Issue.record("the attempt was told it lost its job") })

            // Who holds each tenant's fence on the instance, and whether a check passes.
            func holder(_ tenant: String) async throws -> Int32? {
                try await instance.withConnection(logger: logger) { connection in
                    try await connection.execute("""
                        SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid::bigint = \(Int64(0x4652_5246))
                           AND l.objid::text = (hashtext(\(tenant))::bigint & 4294967295)::text AND a.application_name = \(tag.applicationName)
                        """, logger: logger).first?.decode(Int32.self)
                }
            }
            func passes(_ check: String) async throws -> Bool {
                try await instance.withConnection(logger: logger) { connection in
                    try await connection.execute(PostgresQuery(unsafeSQL: check), logger: logger).first?.decode(Bool.self) ?? false
                }
            }
            func attemptSessions() async throws -> Int {
                try await instance.withConnection(logger: logger) { connection in
                    try await connection.execute("SELECT count(*)::int FROM pg_stat_activity WHERE application_name = \(tag.applicationName)", logger: logger)
                        .first!.decode(Int.self)
                }
            }
            func eventually(_ what: String, _ condition: () async throws -> Bool) async throws {
                let deadline = ContinuousClock.now + .seconds(10)
                while try await !condition() {
                    guard ContinuousClock.now < deadline else { Issue.record("not within 10 s: \(what)"); return }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }

            let (_, checkA) = try await sessions.writerAccess("i0", tenant: "a")
            let (_, checkB) = try await sessions.writerAccess("i0", tenant: "b")
            let firstA = try #require(try await holder("a"))
            #expect(try await holder("b") != nil)
            let (passA, passB) = (try await passes(checkA), try await passes(checkB))
            #expect(passA && passB)
            #expect(try await attemptSessions() == 2)

            await sessions.releaseGate("i0", tenant: "a")
            let (holdsA, holdsB) = (await sessions.holdsGate("i0", tenant: "a"), await sessions.holdsGate("i0", tenant: "b"))
            #expect(!holdsA && holdsB)
            try await eventually("a's fence and gate session gone") {
                let (held, open) = (try await holder("a"), try await attemptSessions())
                return held == nil && open == 1
            }
            #expect(try await !passes(checkA), "a writer checking the released gate still passes")
            #expect(try await passes(checkB), "b's fence went with a's")
            // Releasing what is not held does nothing.
            await sessions.releaseGate("i0", tenant: "a")
            await sessions.releaseGate("i0", tenant: "never")

            // The next writer of a takes the fence again, on a new gate.
            let (_, againA) = try await sessions.writerAccess("i0", tenant: "a")
            let secondA = try #require(try await holder("a"))
            #expect(secondA != firstA)
            let (passAgain, passOld) = (try await passes(againA), try await passes(checkA))
            #expect(passAgain && !passOld)

            await sessions.closeAll()
            try await eventually("every fence gone at the attempt's end") {
                let (a, b, open) = (try await holder("a"), try await holder("b"), try await attemptSessions())
                return a == nil && b == nil && open == 0
            }
        }
    }
}
