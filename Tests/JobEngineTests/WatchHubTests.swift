import ControlDatabase
import FerryProtocol
import FerryTestSupport
import Foundation
import JobStore
import Logging
import PostgresNIO
import Synchronization
import SwiftProtobuf
import Testing
import Watch

/// The watch hub against a real control database: a slow watcher gets every STATUS event and
/// coalesced PROGRESS (the latest never lost), while a fast watcher of the same job and the
/// job's own writes go on at full speed.
@Suite struct WatchHubTests {
    let logger = testLogger()

    /// A migrated control database with one instance and one RUNNING job.
    private func setUp() async throws -> (DatabaseURL, UUID) {
        let url = try await TestPostgres.shared.freshDatabase("watchhub")
        try await Migrator(url: url, migrations: try MigrationSet.builtIn(), leaseDuration: .seconds(30), logger: logger).run()
        let id = UUID()
        try await url.withConnection(logger: logger) { connection in
            try await connection.execute("INSERT INTO instances (id, dsn) VALUES ('i0', 'postgres://x@127.0.0.1/x')", logger: logger)
            let params = JobParams.with { $0.clone = .clone(from: "i0", "a", to: "i0", "b") }
            _ = try await JobStore.insert(
                id: id, params: params, touches: try JobPlan.touches(params), status: .running, requestID: nil,
                createdBy: "test", rerunOf: nil, on: connection, logger: logger)
        }
        return (url, id)
    }

    @Test func aSlowWatcherGetsEveryStatusAndTheLatestProgressWithoutSlowingAnyone() async throws {
        let (url, id) = try await setUp()
        let client = PostgresClient(configuration: url.clientConfiguration(), backgroundLogger: logger)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await client.run() }
            // No LISTEN here: the hub polls every 20 ms.
            let hub = WatchHub(client: client, notifier: Notifier(url: nil, logger: logger), logger: logger, pollingPoll: .milliseconds(20))
            let slow = Mutex<[JobEvent]>([])
            let fast = Mutex<[JobEvent]>([])
            let slowWatch = Task {
                try await hub.watch(id, after: 0) { event in
                    slow.withLock { $0.append(event.event) }
                    try await Task.sleep(for: .milliseconds(150))
                }
            }
            let fastWatch = Task {
                try await hub.watch(id, after: 0) { event in fast.withLock { $0.append(event.event) } }
            }

            // The job: 60 progress events over ~1.2 s, a status change in the middle, then the end.
            let writing = ContinuousClock.now
            try await url.withConnection(logger: logger) { connection in
                for step in 1...60 {
                    var progress = JobProgress()
                    progress.rowsCopied = Int64(step)
                    try await JobStore.appendEvent(id, type: .progress, payload: try progress.jsonValue(), on: connection, logger: logger)
                    if step == 30 {
                        _ = try await JobStore.appendStatus(id, status: .running, error: nil, on: connection, logger: logger)
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await connection.execute("UPDATE jobs SET status = 'SUCCEEDED', finished_at = clock_timestamp() WHERE id = \(id)", logger: logger)
                _ = try await JobStore.appendStatus(id, status: .succeeded, error: nil, on: connection, logger: logger)
            }
            let writeTime = ContinuousClock.now - writing
            let slowWhenWritingEnded = slow.withLock { $0.count }
            try await fastWatch.value
            let fastDone = ContinuousClock.now - writing
            try await slowWatch.value

            let fastEvents = fast.withLock { $0 }
            let slowEvents = slow.withLock { $0 }
            // The writer was never held up by the slow watcher: when it had written all 63
            // events the slow watcher was far behind (at 150 ms an event, it can have sent
            // at most one event per 150 ms of writing).
            #expect(slowWhenWritingEnded < 63 && Double(slowWhenWritingEnded) <= writeTime / .milliseconds(150) + 2,
                    "the slow watcher had \(slowWhenWritingEnded) events after \(writeTime) of writing")
            // The fast watcher saw everything, in order, and finished with the job.
            #expect(fastEvents.map(\.seq) == Array(1...63))
            #expect(fastDone < writeTime + .seconds(3), "the fast watcher lagged: \(fastDone) vs \(writeTime)")
            // The slow one: every STATUS in order, PROGRESS coalesced, the latest kept.
            let statuses = slowEvents.filter { $0.type == .status }.map(\.status)
            #expect(statuses == [.running, .running, .succeeded])
            let progress = slowEvents.filter { $0.type == .progress }
            #expect(progress.count < 60, "no coalescing: \(progress.count) progress events")
            #expect(progress.last?.progress.rowsCopied == 60, "the latest progress was lost")
            let seqs = slowEvents.map(\.seq)
            #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
            // The last PROGRESS before the mid-run STATUS was kept too.
            let beforeStatus = slowEvents.prefix { !($0.type == .status && $0.seq != 1) }.last { $0.type == .progress }
            #expect(beforeStatus?.progress.rowsCopied == 30)
            group.cancelAll()
        }
    }
}
