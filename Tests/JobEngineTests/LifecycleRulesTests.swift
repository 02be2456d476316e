import Foundation
import Synchronization
import Testing

@testable import Executors
import FerryProtocol
import JobStore

/// The engine's pure rules, without a database: notification texts, session names, how a
/// stopped or failed run becomes a job outcome, page tokens, and the progress counters.
@Suite struct LifecycleRulesTests {
    @Test func notificationsRoundTripAndUnknownOnesAreIgnored() throws {
        let id = UUID()
        let all: [EngineNotification] = [.admitted, .freed, .cancel(id), .event(job: id, seq: 42)]
        for notification in all {
            #expect(EngineNotification(payload: notification.payload) == notification, "\(notification.payload)")
        }
        #expect(EngineNotification.cancel(id).payload == "cancel:\(id.uuidString.lowercased())")
        #expect(EngineNotification.event(job: id, seq: 7).payload == "job:\(id.uuidString.lowercased()):7")
        // resync is local: never parsed from the wire. Garbage and future payloads are ignored.
        for payload in ["resync", "", "cancel:", "cancel:nope", "job:\(id.uuidString):x", "job:\(id.uuidString)", "drained:\(id.uuidString)"] {
            #expect(EngineNotification(payload: payload) == nil, "\(payload)")
        }
    }

    @Test func sessionNamesIdentifyTheAttemptAndFitPostgresLimit() {
        let tag = SessionTag(root: UUID(), attempt: 123_456)
        #expect(tag.applicationName.utf8.count <= 63, "application_name is cut at 63 bytes")
        #expect(SessionTag(applicationName: tag.applicationName) == tag)
        for other in ["ferryd", "ferry plan", "ferry stop", "ferry \(UUID().uuidString) x", "ferry-migrate-worker:abc", ""] {
            #expect(SessionTag(applicationName: other) == nil, "\(other)")
        }
    }

    @Test func aRunsEndBecomesTheJobsOutcome() {
        struct Boom: Error {}
        let failure = JobFailure(.failedPrecondition, "no", retryable: false)
        #expect(ExecutorPool.outcome(.success(()), reason: nil).status == .succeeded)
        // Finishing its work wins over a stop that came too late to matter.
        #expect(ExecutorPool.outcome(.success(()), reason: .cancelled).status == .succeeded)
        let failed = ExecutorPool.outcome(.failure(failure), reason: nil)
        #expect(failed.status == .failed && failed.error?.code == "FAILED_PRECONDITION" && failed.error?.retryable == false)
        #expect(ExecutorPool.outcome(.failure(CancellationError()), reason: .cancelled).status == .cancelled)
        let shutdown = ExecutorPool.outcome(.failure(CancellationError()), reason: .shuttingDown)
        #expect(shutdown.status == .failed && shutdown.error?.code == "UNAVAILABLE" && shutdown.error?.retryable == true)
        let unknown = ExecutorPool.outcome(.failure(Boom()), reason: nil)
        #expect(unknown.status == .failed && unknown.error?.code == "UNKNOWN" && unknown.error?.retryable == true)
    }

    @Test func pageTokensRoundTripAndForeignOnesAreRefused() throws {
        let id = UUID()
        let at = Date(timeIntervalSince1970: 1_790_000_000.123456)
        let token = JobPageToken.encode(at, id)
        #expect(!token.contains("=") && !token.contains("+") && !token.contains("/"), "base64url without padding")
        let decoded = try JobPageToken.decode(token)
        #expect(decoded.id == id && decoded.micros == 1_790_000_000_123_456)
        for bad in ["", "!!!", Data("12:not-a-uuid".utf8).base64EncodedString(), Data("x:\(id.uuidString)".utf8).base64EncodedString()] {
            #expect(throws: RPCError.self, "\(bad)") { try JobPageToken.decode(bad) }
        }
    }

    @Test func progressCountersAddUpFromManyWorkers() async {
        let changes = Counter()
        let counters = ProgressCounters { changes.add() }
        counters.setTotals(tables: 100)
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<10 {
                group.addTask {
                    for table in 0..<10 {
                        let name = "t\(worker)_\(table)"
                        counters.started(name)
                        counters.add(rows: 3, bytes: 100)
                        counters.finished(name)
                    }
                }
            }
        }
        counters.started("last")
        let (progress, version) = counters.snapshot()
        #expect(progress.tablesDone == 100 && progress.rowsCopied == 300 && progress.bytesCopied == 10_000)
        #expect(progress.inFlight == ["last"] && progress.current == "last")
        #expect(version == UInt64(changes.value), "every change rings the flusher")
        counters.finished("last", done: false)
        #expect(counters.snapshot().progress.inFlight.isEmpty && counters.snapshot().progress.tablesDone == 100)
    }
}

private final class Counter: Sendable {
    private let count = Mutex(0)
    func add() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
