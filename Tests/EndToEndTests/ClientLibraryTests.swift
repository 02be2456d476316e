import FerryClient
import FerryProtocol
import FerryRuntime
import FerryTestSupport
import Foundation
import PostgresNIO
import Synchronization
import Testing

/// The Swift client library driven as a service drives it: real replicas, a replica restarted
/// under a watch, cancel and rerun, idempotent starts, errors with their codes.
@Suite(.serialized) struct ClientLibraryTests {
    /// A service's client of every replica, as it would be configured.
    static func configuration(_ replicas: Replicas, _ servers: [ServingFerryd]) -> FerryClientConfiguration {
        var configuration = FerryClientConfiguration(addresses: servers.map { FerryAddress(host: $0.host, port: $0.port) },
                                                     trustRootsFile: replicas.caFile, token: replicas.token)
        configuration.reconnectTimeout = .seconds(60)
        return configuration
    }

    @Test func aServiceStartsWatchesAcrossAReplicaRestartCancelsAndReruns() async throws {
        try await Replicas.with(count: 2, instances: 1, jobMs: 12000, jobSteps: 24) { replicas in
            let client = try await FerryClient.connect(Self.configuration(replicas, replicas.servers))
            defer { client.close() }
            let request = StartJobRequest.clone(from: "i0", "src", to: "i0", "dst", requestID: "service-start-1")
            let job = try await client.startJob(request, timeout: .seconds(30))
            // The same request id is the same job, however often the service repeats itself.
            #expect(try await client.startJob(request).id == job.id)

            let recorder = Recorder()
            let outcome = try await watchAcrossARestart(job, replicas) { address in
                // A watcher that knows only the replica about to restart.
                var configuration = Self.configuration(replicas, replicas.servers)
                configuration.host = address.host
                configuration.port = address.port
                configuration.fallbackAddresses = []
                let watcher = FerryClient(configuration)
                let task = Task {
                    defer { watcher.close() }
                    for try await event in watcher.watchJob(job.id, onReconnect: { address, _ in recorder.reconnects.withLock { $0.append(address) } }) {
                        recorder.events.withLock { $0.append(event) }
                    }
                }
                return WatchHandle(seen: { recorder.events.withLock { $0.count } }, end: {
                    try await task.value
                    return 0
                })
            }
            defer { Task { [restarted = outcome.restarted] in _ = await restarted.stop() } }

            let seen = recorder.events.withLock { $0 }
            #expect(recorder.reconnects.withLock { $0 }.first == outcome.restartedAddress, "the watch reconnected to its one address once it was back")
            // Every STATUS event of the job's history, each once, in order — the CANCELLED one
            // happened while the watcher's replica was down.
            let statuses = seen.filter { $0.type == .status }.map { "\($0.seq):\($0.status.name)" }
            #expect(statuses == outcome.statusEvents, "\(seen.map { "\($0.seq) \($0.type.name)" })")
            #expect(statuses.last?.hasSuffix("CANCELLED") == true)
            // Seqs only grow; a reconnection starts with a fresh SNAPSHOT at the seq it resumed from.
            let history = seen.filter { $0.type != .snapshot }.map(\.seq)
            #expect(history == history.sorted() && Set(history).count == history.count, "\(history)")
            let snapshots = seen.filter { $0.type == .snapshot }
            #expect(snapshots.count == 2 && snapshots.first?.seq == 0, "\(snapshots.map(\.seq))")

            // Rerun through the library: idempotent with a request id, resumed, watched to the end.
            let rerun = try await client.rerunJob(job.id, requestID: "service-rerun-1")
            #expect(try await client.rerunJob(job.id, requestID: "service-rerun-1").id == rerun.id)
            #expect(rerun.attempt == 2 && rerun.rerunOf == job.id && rerun.rootJobID == job.id)
            var last: JobEvent?
            for try await event in client.watchJob(rerun.id) { last = event }
            #expect(last?.type == .status && last?.status == .succeeded, "\(String(describing: last))")
            #expect(try await client.getJob(rerun.id).status == .succeeded)

            // Errors carry their code: an unknown job, a malformed id, a second rerun.
            let unknown = UUID().uuidString.lowercased()
            await #expect(throws: RPCError.self) { _ = try await client.getJob(unknown) }
            #expect(await statusCode { _ = try await client.getJob(unknown) } == .notFound)
            #expect(await statusCode { for try await _ in client.watchJob(unknown) {} } == .notFound)
            #expect(await statusCode { _ = try await client.getJob("not-a-uuid") } == .invalidArgument)
            let twice = await caught { _ = try await client.rerunJob(job.id) }
            #expect(twice?.code == .failedPrecondition)
            if case .object(let details)? = twice?.details {
                #expect(details["rerunJobId"] == .string(rerun.id), "\(details)")
            } else {
                Issue.record("FAILED_PRECONDITION without details: \(String(describing: twice))")
            }
        }
    }

    /// A replica frozen (SIGSTOP) under a watch says nothing, and its socket stays open: only
    /// the keepalive ping notices. The watch gives the connection up, moves to the other
    /// replica and delivers the CANCELLED status that happened meanwhile.
    @Test func aWatchThroughAFrozenReplicaMovesToAnother() async throws {
        try await Replicas.with(count: 2, instances: 1, jobMs: 12000, jobSteps: 24) { replicas in
            let direct = try await replicas.client(0)
            defer { direct.close() }
            let job = try await direct.startJob(.clone(from: "i0", "src", to: "i0", "dst"))
            _ = try await direct.waitFor(job.id) { $0.status == .running && $0.progress.phase != "" }
            let owner = try await ownerIndex(job, replicas)
            let frozen = replicas.servers[1 - owner]
            var configuration = Self.configuration(replicas, [frozen, replicas.servers[owner]])
            configuration.keepaliveInterval = .seconds(1)
            configuration.keepaliveTimeout = .seconds(2)
            let watcher = FerryClient(configuration)
            defer { watcher.close() }
            let recorder = Recorder()
            let watch = Task {
                for try await event in watcher.watchJob(job.id, onReconnect: { address, _ in recorder.reconnects.withLock { $0.append(address) } }) {
                    recorder.events.withLock { $0.append(event) }
                }
            }
            try await waitUntil("the watch shows the snapshot and some progress") { recorder.events.withLock { $0.count } >= 3 }
            #expect(await watcher.connectedAddress == FerryAddress(host: frozen.host, port: frozen.port))
            frozen.process.child.signal(SIGSTOP)
            defer { frozen.process.child.signal(SIGCONT) }
            let ownerClient = try await replicas.client(owner)
            defer { ownerClient.close() }
            _ = try await ownerClient.cancelJob(job.id)
            let ended = ContinuousClock.now
            try await waitUntil("the watch ends after the frozen replica is given up", timeout: .seconds(45)) {
                recorder.events.withLock { $0.last?.type == .status && $0.last?.status == .cancelled }
            }
            try await watch.value
            #expect(ContinuousClock.now - ended < .seconds(30))
            #expect(recorder.reconnects.withLock { $0 } == [FerryAddress(host: replicas.servers[owner].host, port: replicas.servers[owner].port)])
            let statuses = recorder.events.withLock { $0 }.filter { $0.type == .status }.map(\.status)
            #expect(statuses == [.running, .cancelled], "\(statuses)")
        }
    }

    /// Deadlines and cancellation reach the server; an address nobody serves fails at once
    /// with UNAVAILABLE naming it; a list of addresses skips the dead one.
    @Test func deadlinesCancellationAndDeadAddresses() async throws {
        try await Replicas.with(count: 1, instances: 1, jobMs: 60000, jobSteps: 2) { replicas in
            let dead = FerryAddress(host: "127.0.0.1", port: try SystemProcess.freeLoopbackPort())
            var alone = Self.configuration(replicas, replicas.servers)
            alone.host = dead.host
            alone.port = dead.port
            alone.fallbackAddresses = []
            let started = ContinuousClock.now
            let refused = await caught { _ = try await FerryClient.connect(alone) }
            #expect(refused?.code == .unavailable && refused?.message.contains("cannot reach ferryd") == true
                    && refused?.message.contains("\(dead)") == true, "\(String(describing: refused))")
            #expect(ContinuousClock.now - started < .seconds(10), "a first connection is not retried for reconnectTimeout")

            // The dead address first, then the live one.
            var both = Self.configuration(replicas, replicas.servers)
            both.host = dead.host
            both.port = dead.port
            both.fallbackAddresses = replicas.servers.map { FerryAddress(host: $0.host, port: $0.port) }
            let client = try await FerryClient.connect(both)
            defer { client.close() }
            #expect(await client.connectedAddress == both.fallbackAddresses[0])
            #expect(try await client.listInstances().map(\.id) == ["i0"])

            // A watch of a job that runs a minute, stopped by cancelling its task: it ends at once.
            let job = try await client.startJob(.clone(from: "i0", "src", to: "i0", "dst"))
            let watch = Task { () -> Int in
                var count = 0
                for try await _ in client.watchJob(job.id) { count += 1 }
                return count
            }
            try await Task.sleep(for: .milliseconds(500))
            let cancelledAt = ContinuousClock.now
            watch.cancel()
            _ = try? await watch.value
            #expect(ContinuousClock.now - cancelledAt < .seconds(5), "a cancelled watch stops at once, not when the job ends")
            #expect(try await client.getJob(job.id).status == .running)
            let server = replicas.servers[0]
            try await waitUntil("the server ends the cancelled watch's stream") { try openStreams(server) == 0 }
            // Leaving the loop early stops the watch on the server too (no stream left streaming
            // into a buffer nobody reads).
            for try await event in client.watchJob(job.id) {
                #expect(event.type == .snapshot)
                #expect(try openStreams(server) == 1)
                break
            }
            try await waitUntil("the server ends the abandoned watch's stream") { try openStreams(server) == 0 }
            // A cancelled unary call throws CancellationError, not a made-up server error.
            let cancelledCall = Task { try await client.listJobs() }
            cancelledCall.cancel()
            if case .failure(let error) = await cancelledCall.result {
                #expect(error is CancellationError || (error as? RPCError)?.code == .cancelled, "\(error)")
            }
            // A deadline shorter than the call can take is DEADLINE_EXCEEDED; the connection stays usable.
            let slow = await caught {
                for try await _ in try await connectionOf(client).serverStream(FerryMethods.watchJob, .with { $0.jobID = job.id }, timeout: .milliseconds(300)) {}
            }
            #expect(slow?.code == .deadlineExceeded, "\(String(describing: slow))")
            #expect(try await client.cancelJob(job.id).id == job.id)
        }
    }
}

/// What a watch delivered, and where it reconnected.
private final class Recorder: Sendable {
    let events = Mutex<[JobEvent]>([])
    let reconnects = Mutex<[FerryAddress]>([])
}

/// A FerryClient's current connection, for the calls only a connection offers.
private func connectionOf(_ client: FerryClient) async throws -> FerryConnection {
    try await FerryConnection.connect(client.configuration, to: #require(await client.connectedAddress))
}

/// The server's `ferry_rpc_open_streams` gauge, read from its ops endpoint.
func openStreams(_ server: ServingFerryd) throws -> Double {
    try #require(MetricsTests.value(try MetricsTests.scrape(server), "ferry_rpc_open_streams"))
}

/// The RPC error a call threw, if it threw one.
func caught(_ body: () async throws -> Void) async -> RPCError? {
    do {
        try await body()
        return nil
    } catch let error as RPCError {
        return error
    } catch {
        return RPCError(.unknown, "\(error)")
    }
}

/// A watcher under test: how many events it has shown, and how it ends (its exit status).
struct WatchHandle: Sendable {
    var seen: @Sendable () -> Int
    var end: @Sendable () async throws -> Int32
}

struct RestartOutcome {
    /// The job's STATUS events in the control database, as "seq:STATUS".
    var statusEvents: [String]
    var restartedAddress: FerryAddress
    var restarted: ServingFerryd
    var watcherStatus: Int32
}

/// The fault every watcher must survive: the replica it watches through stops while the job
/// runs elsewhere, the job is cancelled during the outage (a STATUS event the watcher's
/// replica never saw), and the replica comes back on the same port. `watcher` starts a
/// watch through the given address and is waited on to its end.
func watchAcrossARestart(_ job: Job, _ replicas: Replicas, _ watcher: (FerryAddress) throws -> WatchHandle) async throws -> RestartOutcome {
    let direct = try await replicas.client(0)
    defer { direct.close() }
    _ = try await direct.waitFor(job.id) { $0.status == .running && $0.progress.phase != "" }
    let owner = try await ownerIndex(job, replicas)
    let other = 1 - owner
    let address = FerryAddress(host: replicas.servers[other].host, port: replicas.servers[other].port)
    let handle = try watcher(address)
    try await waitUntil("the watcher shows the snapshot and some progress") { handle.seen() >= 3 }

    _ = await replicas.servers[other].stop()
    let ownerClient = try await replicas.client(owner)
    defer { ownerClient.close() }
    _ = try await ownerClient.cancelJob(job.id)
    _ = try await ownerClient.waitFor(job.id) { $0.status == .cancelled }
    let restarted = try await replicas.startReplica(like: other, extra: ["--listen", "\(address)"])
    let status: Int32
    do {
        status = try await withThrowingTaskGroup(of: Int32.self) { group in
            group.addTask { try await handle.end() }
            group.addTask {
                try await Task.sleep(for: .seconds(90))
                throw RPCError(.deadlineExceeded, "the watcher did not end within 90 s of the restart")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    } catch {
        _ = await restarted.stop()
        throw error
    }
    let events = try await replicas.query { connection in
        try await connection.execute("SELECT seq, payload->>'status' FROM job_events WHERE job_id = \(UUID(uuidString: job.id)!) AND type = 'STATUS' ORDER BY seq", logger: logger)
            .map { row -> String in
                let (seq, status) = try row.decode((Int64, String).self)
                return "\(seq):\(status)"
            }
    }
    return RestartOutcome(statusEvents: events, restartedAddress: address, restarted: restarted, watcherStatus: status)
}

/// The index of the replica that owns (runs) `job`.
func ownerIndex(_ job: Job, _ replicas: Replicas) async throws -> Int {
    let owner = try await replicas.query {
        try await $0.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: job.id)!)", logger: logger).first!.decode(String.self)
    }
    return try #require(replicas.index(ofOwner: owner))
}

/// Polls `condition` every 50 ms for up to `timeout`.
func waitUntil(_ what: String, timeout: Duration = .seconds(60), _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw RPCError(.deadlineExceeded, "waited \(timeout) for: \(what)") }
        try await Task.sleep(for: .milliseconds(50))
    }
}
