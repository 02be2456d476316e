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
@testable import Watch

/// The watch hub against a real control database: a slow watcher gets every STATUS event and
/// coalesced PROGRESS (the latest never lost), while a fast watcher of the same job and the
/// job's own writes go on without it; the replica's reads of the control database do not grow
/// with the number of jobs watched.
///
/// No check here depends on how fast the machine is: slowness is a gate a watcher is held
/// at, and "without waiting for it" means "while it was still held".
@Suite(.timeLimit(.minutes(2))) struct WatchHubTests {
    let logger = testLogger()

    /// A migrated control database with `jobs` jobs of `status`, each with its first STATUS
    /// event (seq 1). The hub reads only `jobs` and `job_events`, so the rows are written
    /// directly rather than through admission.
    private func setUp(jobs: Int = 1, status: JobStatus = .running) async throws -> (DatabaseURL, [UUID]) {
        let url = try await TestPostgres.shared.freshDatabase("watchhub")
        try await Migrator(url: url, migrations: try MigrationSet.builtIn(), leaseDuration: .seconds(30), logger: logger).run()
        let ids = (0..<jobs).map { _ in UUID() }
        try await url.withConnection(logger: logger) { connection in
            for id in ids {
                try await connection.execute("""
                    INSERT INTO jobs (id, kind, status, params, root_job_id, queued_at, started_at)
                    VALUES (\(id), 'clone', \(status.name), '{}', \(id), clock_timestamp(),
                            CASE WHEN \(status == .running) THEN clock_timestamp() END)
                    """, logger: logger)
                _ = try await JobStore.appendStatus(id, status: status, error: nil, on: connection, logger: logger)
            }
        }
        return (url, ids)
    }

    /// Runs `body` with a hub that polls every `poll` (no LISTEN) through `reader`'s counts.
    private func withHub(
        _ url: DatabaseURL, poll: Duration = .milliseconds(20),
        _ body: (WatchHub, CountingReader) async throws -> Void
    ) async throws {
        let client = PostgresClient(configuration: url.clientConfiguration(), backgroundLogger: logger)
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { await client.run() }
            let reader = CountingReader(DatabaseWatchEventReader(client: client, logger: logger))
            let hub = WatchHub(reader: reader, notifier: Notifier(url: nil, logger: logger), logger: logger, pollingPoll: poll)
            try await body(hub, reader)
            group.cancelAll()
        }
    }

    private func progress(_ rows: Int) throws -> JSONValue {
        var progress = JobProgress()
        progress.rowsCopied = Int64(rows)
        return try progress.jsonValue()
    }

    @Test func aSlowWatcherGetsEveryStatusAndTheLatestProgressWithoutSlowingAnyone() async throws {
        let (url, ids) = try await setUp()
        let id = ids[0]
        try await withHub(url) { hub, _ in
            let slow = Mutex<[JobEvent]>([])
            let fast = Mutex<[JobEvent]>([])
            // The slow watcher is held in its first send (the job's first event) until the gate
            // opens; the job goes on once it is held there.
            let gate = Gate()
            let held = Gate()
            let slowWatch = Task {
                try await hub.watch(id, after: 0) { event in
                    slow.withLock { $0.append(event.event) }
                    held.open()
                    await gate.wait()
                }
            }
            let fastWatch = Task {
                try await hub.watch(id, after: 0) { event in fast.withLock { $0.append(event.event) } }
            }
            await held.wait()

            // The job (its insert wrote STATUS seq 1): 60 PROGRESS events with a STATUS after
            // the 30th (seq 2…31, 32, 33…62), then SUCCEEDED (seq 63).
            try await url.withConnection(logger: logger) { connection in
                for step in 1...60 {
                    try await JobStore.appendEvent(id, type: .progress, payload: try progress(step), on: connection, logger: logger)
                    if step == 30 {
                        _ = try await JobStore.appendStatus(id, status: .running, error: nil, on: connection, logger: logger)
                    }
                }
                // One transaction, as every terminal transition of the engine is: a reader never
                // sees the job ended without its terminal event.
                try await connection.transaction(logger: logger) { connection in
                    try await connection.execute("UPDATE jobs SET status = 'SUCCEEDED', finished_at = clock_timestamp() WHERE id = \(id)", logger: logger)
                    _ = try await JobStore.appendStatus(id, status: .succeeded, error: nil, on: connection, logger: logger)
                }
            }
            // The job wrote all its events, and the fast watcher got to the end while the slow
            // watcher was still held in its first send: every STATUS, in order, and the latest
            // PROGRESS before each. (On a loaded machine the poller may read several PROGRESS
            // events in one batch, which every watcher then gets as the batch's latest.)
            try await fastWatch.value
            let fastEvents = fast.withLock { $0 }
            #expect(fastEvents.filter { $0.type == .status }.map(\.seq) == [1, 32, 63])
            #expect(fastEvents.map(\.seq) == fastEvents.map(\.seq).sorted() && Set(fastEvents.map(\.seq)).count == fastEvents.count)
            #expect(fastEvents.map(\.seq).contains(31) && fastEvents.map(\.seq).contains(62), "the latest PROGRESS before a STATUS was dropped")
            #expect(slow.withLock { $0 }.map(\.seq) == [1], "the slow watcher was not held at its first event")

            gate.open()
            try await slowWatch.value
            // Released 62 events behind: every STATUS in order, and of each run of PROGRESS
            // only its last (so the last before the mid-run STATUS and the latest are kept).
            let slowEvents = slow.withLock { $0 }
            #expect(slowEvents.map(\.seq) == [1, 31, 32, 62, 63])
            #expect(slowEvents.filter { $0.type == .status }.map(\.status) == [.running, .running, .succeeded])
            #expect(slowEvents.filter { $0.type == .progress }.map(\.progress.rowsCopied) == [30, 60])
        }
    }

    @Test func aWatcherBehindTheFeedsMemoryReadsItsGapFromTheDatabase() async throws {
        let (url, ids) = try await setUp()
        let id = ids[0]
        let total = Feed.capacity + 300
        // STATUS events every 100 seqs among PROGRESS; the last one SUCCEEDED.
        func isStatus(_ seq: Int) -> Bool { seq == 1 || seq % 100 == 0 || seq == total }
        try await withHub(url) { hub, reader in
            // The first watcher keeps the job's feed alive; it is held before the end until the
            // second watcher, far behind the feed's memory, has caught up.
            let gate = Gate()
            let firstAtTheEnd = Gate()
            let first = Task {
                try await hub.watch(id, after: 1) { event in
                    if event.seq == Int64(total) {
                        firstAtTheEnd.open()
                        await gate.wait()
                    }
                }
            }
            try await url.withConnection(logger: logger) { connection in
                try await connection.execute("""
                    WITH written AS (
                        INSERT INTO job_events (job_id, seq, type, payload, created_at)
                        SELECT \(id), s, CASE WHEN s % 100 = 0 OR s = \(total) THEN 'STATUS' ELSE 'PROGRESS' END,
                               CASE WHEN s = \(total) THEN '{"status":"SUCCEEDED"}'::jsonb
                                    WHEN s % 100 = 0 THEN '{"status":"RUNNING"}'::jsonb
                                    ELSE jsonb_build_object('rowsCopied', s::text) END, clock_timestamp()
                          FROM generate_series(2, \(total)) AS s
                        RETURNING seq)
                    UPDATE jobs SET last_seq = (SELECT max(seq) FROM written), status = 'SUCCEEDED', finished_at = clock_timestamp() WHERE id = \(id)
                    """, logger: logger)
            }
            // The feed has read to the end (the first watcher got it): its memory starts well
            // after seq 1.
            await firstAtTheEnd.wait()
            let gapReadsBefore = reader.gapReads.load(ordering: .relaxed)

            let events = Mutex<[JobEvent]>([])
            try await hub.watch(id, after: 1) { event in events.withLock { $0.append(event.event) } }
            gate.open()
            try await first.value

            let got = events.withLock { $0 }
            #expect(reader.gapReads.load(ordering: .relaxed) > gapReadsBefore, "the far-behind watcher did not read from the database")
            let seqs = got.map { Int($0.seq) }
            #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
            // Every STATUS exactly once, in order, ending with the terminal one; PROGRESS
            // coalesced (fewer than written), the last before each STATUS kept.
            #expect(got.filter { $0.type == .status }.map { Int($0.seq) } == (2...total).filter(isStatus))
            #expect(got.last?.status == .succeeded)
            let progressCount = got.filter { $0.type == .progress }.count
            #expect(progressCount < total - 20, "no coalescing: \(progressCount) progress events")
            for status in got.indices.dropFirst() where got[status].type == .status && got[status].seq > 2 && !isStatus(Int(got[status].seq) - 1) {
                #expect(got[status - 1].seq == got[status].seq - 1, "the PROGRESS just before STATUS \(got[status].seq) was lost")
            }
        }
    }

    /// The watch feeds' load on the control database per replica: one read per polling
    /// interval covering every watched job, however many there are (not one per job).
    @Test func theReplicaReadsEveryWatchedJobInOneQueryPerInterval() async throws {
        let watched = 200
        let (url, ids) = try await setUp(jobs: watched, status: .queued)
        let interval = Duration.milliseconds(20)
        try await withHub(url, poll: interval) { hub, reader in
            let watches = ids.map { id in Task { try await hub.watch(id, after: 1) { _ in } } }
            defer { for watch in watches { watch.cancel() } }
            while hub.watchedJobs < watched { try await Task.sleep(for: .milliseconds(5)) }
            // Then a read covering them all (or, were reads per job, plenty of reads).
            reader.reset()
            while reader.lastRead < watched && reader.reads.count < 50 { try await Task.sleep(for: .milliseconds(5)) }

            // A window of polling rounds with every job watched and nothing happening.
            reader.reset()
            let started = ContinuousClock.now
            try await Task.sleep(for: interval * 15)
            let reads = reader.reads
            let elapsed = ContinuousClock.now - started
            let rounds = Int(elapsed / interval)
            #expect(!reads.isEmpty, "no read in \(elapsed)")
            // At most one read per interval (a per-job poller would make about `watched` times
            // as many), each covering every watched job.
            #expect(reads.count <= rounds + 2, "\(reads.count) reads in \(elapsed) (\(rounds) intervals) for \(watched) jobs")
            #expect(reads.allSatisfy { $0 == watched }, "reads covered \(Set(reads).sorted()) jobs each, not all \(watched)")
            #expect(reader.gapReads.load(ordering: .relaxed) == 0)
        }
    }

    @Test func aWatcherStartedBeyondTheJobsHistoryStillSeesItsEnd() async throws {
        let (url, ids) = try await setUp()
        let id = ids[0]
        try await withHub(url) { hub, reader in
            let sent = Mutex<[Int64]>([])
            let watch = Task { try await hub.watch(id, after: 5) { event in sent.withLock { $0.append(event.seq) } } }
            while reader.reads.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
            try await url.withConnection(logger: logger) { connection in
                try await connection.execute("UPDATE jobs SET status = 'FAILED', finished_at = clock_timestamp() WHERE id = \(id)", logger: logger)
                _ = try await JobStore.appendStatus(id, status: .failed, error: nil, on: connection, logger: logger)
            }
            // The terminal STATUS (seq 2) is before the watcher's cursor: the watch ends, silent.
            try await watch.value
            #expect(sent.withLock { $0 }.isEmpty)
        }
    }
}

/// Counts the hub's reads (jobs per batched read, and gap reads) on their way to the database.
final class CountingReader: WatchEventReader {
    private let inner: any WatchEventReader
    private let state = Mutex<[Int]>([])
    let gapReads = Atomic<Int>(0)

    init(_ inner: any WatchEventReader) { self.inner = inner }

    var reads: [Int] { state.withLock { $0 } }
    var lastRead: Int { state.withLock { $0.last ?? 0 } }
    func reset() { state.withLock { $0 = [] } }

    func read(_ cursors: [WatchCursor], limit: Int) async throws -> [UUID: WatchRead] {
        state.withLock { $0.append(cursors.count) }
        return try await inner.read(cursors, limit: limit)
    }

    func events(of job: UUID, after: Int64, limit: Int) async throws -> [JobEvent] {
        gapReads.add(1, ordering: .relaxed)
        return try await inner.events(of: job, after: after, limit: limit)
    }

    func job(_ id: UUID) async throws -> JobRecord? { try await inner.job(id) }
}

/// Holds whoever waits until it is opened.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let open = state.withLock { state -> Bool in
                if !state.open { state.waiters.append(continuation) }
                return state.open
            }
            if open { continuation.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}
