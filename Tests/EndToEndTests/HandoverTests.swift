import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// Rolling restarts: SIGTERM of the replica running a job hands the job over — the same job,
/// same attempt, is continued by another replica (or by the restarted one) from its
/// checkpoints — and a job that cannot stop within the hand-over timeout ends FAILED,
/// retryable, as before. Every check is made from outside the executor: the target's rows
/// and their `xmin`, the steps a stepping job wrote on its target with the writing backend's
/// pid, the job's STATUS events in the control database and what watchers received.
@Suite(.serialized) struct HandoverTests: TenantJobTest {
    /// A real clone on replica A, with one table held before its verification (A only) and
    /// three tables verified. A is stopped with SIGTERM while a watcher follows the job
    /// through A. Expected: a client connected to A is told goaway; replica B claims the
    /// same job (attempt 1, no rerun), copies only the held table again (the verified tables
    /// keep their rows' `xmin`, so none was copied twice) and succeeds with the source's
    /// data; the job's STATUS events are RUNNING then SUCCEEDED only, and the watcher, moved
    /// to B, saw no FAILED status.
    @Test func sigtermOfTheReplicaRunningACloneHandsTheSameJobToAnotherReplica() async throws {
        try await Replicas.with(count: 1, instances: 2, environments: [HeldTenant.hold]) { replicas in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, HeldTenant.script)
            // Replica B runs the same clone without the hold; it starts only once A owns the job.
            let a = replicas.servers[0]
            let starter = try await replicas.client(0)
            var request = StartJobRequest()
            request.clone = .clone(from: "i0", "app", to: "i1", "app")
            request.clone.copyWidth = 2
            let job = try await starter.startJob(request)
            starter.close()
            try await HeldTenant.waitForVerifiedFirst(replicas)
            let verified = HeldTenant.verifiedFirst
            let xmins = "SELECT string_agg(DISTINCT xmin::text, ',') FROM app."
            var firstLoad: [String: String] = [:]
            for table in verified { firstLoad[table] = try await scalar(target, xmins + table) as String }

            let launch = replicas.launches[0]
            let b = try await ServingFerryd.start(launch.arguments, environment: launch.environment.merging(CloneTests.kinds) { $1 }
                .filter { $0.key != "FERRY_TEST_CLONE_BEFORE_VERIFY" }, binary: FerryBinaries.ferrydTest)
            do {
                // A watcher that reaches A first, and B when A goes away.
                var configuration = ClientLibraryTests.configuration(replicas, [a, b])
                configuration.reconnectTimeout = .seconds(60)
                let watcher = FerryClient(configuration)
                let events = Mutex<[JobEvent]>([])
                let watch = Task {
                    defer { watcher.close() }
                    for try await event in watcher.watchJob(job.id) { events.withLock { $0.append(event) } }
                }
                try await waitUntil("the watcher shows the snapshot") { events.withLock { !$0.isEmpty } }
                let connectedToA = try await FerryConnection.connect(FerryClientConfiguration(host: a.host, port: a.port, trustRootsFile: replicas.caFile, token: replicas.token))
                defer { connectedToA.close() }
                #expect(await watcher.connectedAddress == FerryAddress(host: a.host, port: a.port))

                a.process.child.signal(SIGTERM)
                try await waitUntil("A's client is told goaway", timeout: .seconds(10)) { connectedToA.isGoingAway }
                let refused = await caught { _ = try await connectedToA.getJob(job.id) }
                #expect(refused?.code == .unavailable, "\(String(describing: refused))")
                if case .object(let details)? = refused?.details {
                    #expect(details["notProcessed"] == .bool(true), "a call refused after goaway: \(details)")
                } else {
                    Issue.record("a call after goaway was not refused as never processed: \(String(describing: refused))")
                }
                let stopped = await a.stop()
                #expect(stopped.output.contains("job handed over"), "\(stopped.output.suffix(3000))")
                #expect(!stopped.output.contains("the replica running the job shut down"))
                #expect(leakedSecrets(in: stopped.output, secrets: [replicas.token, replicas.control.password ?? ""]).isEmpty)

                let client = try await FerryConnection.connect(FerryClientConfiguration(host: b.host, port: b.port, trustRootsFile: replicas.caFile, token: replicas.token))
                defer { client.close() }
                let done = try await client.waitFor(job.id, timeout: .seconds(90)) { $0.status.isTerminal }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await watch.value }
                    group.addTask {
                        try await Task.sleep(for: .seconds(30))
                        throw RPCError(.deadlineExceeded, "the watch did not end within 30 s of the job")
                    }
                    defer { group.cancelAll() }
                    try await group.next()
                }

                #expect(done.status == .succeeded, "\(done.error)")
                #expect(done.attempt == 1 && done.rerunOf.isEmpty, "the same job continued, not a rerun")
                let (lineage, owner) = try await replicas.query { connection in
                    let count = try await connection.execute("SELECT count(*)::int FROM jobs WHERE root_job_id = \(UUID(uuidString: job.id)!)", logger: logger).first!.decode(Int.self)
                    let owner = try await connection.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: job.id)!)", logger: logger).first!.decode(String.self)
                    return (count, owner)
                }
                #expect(lineage == 1)
                #expect(owner.contains(":\(b.process.child.pid):"), "B finished the job: \(owner)")
                let statuses = try await statusEvents(job, replicas)
                #expect(statuses == ["RUNNING", "SUCCEEDED"], "\(statuses)")
                let seen = events.withLock { $0 }.filter { $0.type == .status }.map(\.status)
                #expect(!seen.contains(.failed) && seen.last == .succeeded, "\(seen)")
                // Rows copied go on from where A stopped: never back, across the hand-over.
                let rows = events.withLock { $0 }.filter { $0.type == .progress }.map(\.progress.rowsCopied)
                #expect(!rows.isEmpty && rows == rows.sorted(), "\(rows)")
                for table in verified {
                    #expect(try await scalar(target, xmins + table) as String == firstLoad[table], "table \(table) was copied again after the hand-over")
                }
                #expect(try await TenantInspection.data(target, schema: "app") == TenantInspection.data(source, schema: "app"))
                #expect(done.result.tables.map(\.table) == ["a", "b", "c", "slow"])
                // Every session of the job ends with it (closed connections' backends exit within moments).
                try await waitUntil("no session of the job left on the target", timeout: .seconds(10)) {
                    try await scalar(target, "SELECT count(*)::int FROM pg_stat_activity WHERE application_name LIKE 'ferry \(job.id) %'") as Int == 0
                }
                _ = await b.stop()
            } catch {
                _ = await b.stop()
                throw error
            }
        }
    }

    /// Two jobs on replica A: one writing its target step by step (each step a row with the
    /// writing backend's pid), one whose code ignores being stopped. A is stopped with
    /// SIGTERM and a hand-over timeout of 1 s. Expected: the writing job is handed over and
    /// continued by B — every step written exactly once, all of A's rows before all of B's,
    /// no FAILED status — while the stuck one ends FAILED, UNAVAILABLE and retryable, naming
    /// the hand-over timeout, and its rerun succeeds on B.
    @Test func aJobThatCannotStopInTimeIsFailedRetryablyAndTheOthersAreHandedOver() async throws {
        try await Replicas.with(count: 2, instances: 1, arguments: ["--handover-timeout", "1", "--executors", "2"]) { replicas in
            try await run(replicas.instances["i0"]!, "CREATE SCHEMA src")
            let client = try await replicas.client(1)
            defer { client.close() }
            // Only A claims until both jobs run there: B is frozen meanwhile.
            let b = replicas.servers[1]
            b.process.child.signal(SIGSTOP)
            let writing: Job
            let stuck: Job
            do {
                let starter = try await replicas.client(0)
                defer { starter.close() }
                writing = try await starter.startJob(cloneRequest(instance: "i0", target: "write_6000_12"))
                stuck = try await starter.startJob(cloneRequest(instance: "i0", target: "stuck_20000_10"))
                _ = try await starter.waitFor(writing.id) { $0.progress.tablesDone >= 3 }
                _ = try await starter.waitFor(stuck.id) { $0.progress.tablesDone >= 1 }
                b.process.child.signal(SIGCONT)
            } catch {
                b.process.child.signal(SIGCONT)
                throw error
            }
            let owners = [try await ownerIndex(writing, replicas), try await ownerIndex(stuck, replicas)]
            #expect(owners == [0, 0], "both jobs run on A")
            let stopped = await replicas.servers[0].stop()
            #expect(stopped.output.contains("job handed over"), "\(stopped.output.suffix(3000))")
            #expect(leakedSecrets(in: stopped.output, secrets: [replicas.token, replicas.control.password ?? ""]).isEmpty)

            let handed = try await client.waitFor(writing.id, timeout: .seconds(60)) { $0.status.isTerminal }
            #expect(handed.status == .succeeded && handed.attempt == 1, "\(handed.status) \(handed.error)")
            #expect(try await statusEvents(handed, replicas) == ["RUNNING", "SUCCEEDED"])
            try await expectContinued(replicas.instances["i0"]!, tenant: "write_6000_12", steps: 12)

            let failed = try await client.waitFor(stuck.id, timeout: .seconds(60)) { $0.status.isTerminal }
            #expect(failed.status == .failed && failed.error.code == StatusCode.unavailable.rawValue && failed.error.retryable, "\(failed.status) \(failed.error)")
            #expect(failed.error.message.contains("hand-over timeout"), "\(failed.error.message)")
            let rerun = try await client.rerun(stuck.id)
            #expect(try await client.waitFor(rerun.id, timeout: .seconds(60)) { $0.status.isTerminal }.status == .succeeded)
        }
    }

    /// The only replica is stopped with SIGTERM while it runs a job: the job waits, RUNNING
    /// with no owner, keeping its place under the cap, and the restarted replica continues
    /// it from its checkpoints (each step written once).
    @Test func aJobReleasedByTheLastReplicaWaitsForTheRestartedOne() async throws {
        try await Replicas.with(count: 1, instances: 1) { replicas in
            try await run(replicas.instances["i0"]!, "CREATE SCHEMA src")
            let starter = try await replicas.client(0)
            let job = try await starter.startJob(cloneRequest(instance: "i0", target: "write_4000_8"))
            _ = try await starter.waitFor(job.id) { $0.progress.tablesDone >= 2 }
            starter.close()
            let address = "\(replicas.servers[0].host):\(replicas.servers[0].port)"
            let stopped = await replicas.servers[0].stop()
            #expect(stopped.output.contains("job handed over"), "\(stopped.output.suffix(3000))")
            let (status, owner) = try await replicas.query { connection in
                try await connection.execute("SELECT status, owner FROM jobs WHERE id = \(UUID(uuidString: job.id)!)", logger: logger).first!.decode((String, String?).self)
            }
            #expect(status == "RUNNING" && owner == nil, "released, not failed: \(status) \(owner ?? "-")")

            let restarted = try await replicas.startReplica(like: 0, extra: ["--listen", address])
            do {
                let client = try await FerryConnection.connect(FerryClientConfiguration(
                    host: restarted.host, port: restarted.port, trustRootsFile: replicas.caFile, token: replicas.token))
                defer { client.close() }
                let done = try await client.waitFor(job.id, timeout: .seconds(60)) { $0.status.isTerminal }
                #expect(done.status == .succeeded && done.attempt == 1, "\(done.status) \(done.error)")
                try await expectContinued(replicas.instances["i0"]!, tenant: "write_4000_8", steps: 8)
                #expect(try await statusEvents(job, replicas) == ["RUNNING", "SUCCEEDED"])
            } catch {
                _ = await restarted.stop()
                throw error
            }
            _ = await restarted.stop()
        }
    }

    /// Rolling restarts meet clients reconnecting: connections arrive on both listeners, from
    /// threads of their own, while a replica's SIGTERM closes them. Each replica must exit 0
    /// and say nothing of a crash. (A connection accepted just as its listener closes is never
    /// handed to the serving loop; NIO trapped on it — "Deinited NIOAsyncWriter without
    /// calling finish()" — once in a soak, and the servers now wrap connections so that such
    /// a one is closed. The window is narrow: these rounds did not hit it before the change.)
    @Test func connectionsArrivingAsTheListenersCloseNeverCrashAReplica() async throws {
        try await Replicas.with(count: 1, instances: 0) { replicas in
            for round in 0..<8 {
                let replica = round == 0 ? replicas.servers[0] : try await replicas.startReplica(like: 0)
                let opsPort = Int(replica.ready["opsURL"]?.split(separator: ":").last ?? "") ?? 0
                // Threads of their own: blocking connects on the cooperative pool (two threads
                // here) would starve the test's own awaits.
                let flood = Flood(ports: [replica.port, opsPort, replica.port, opsPort])
                try await Task.sleep(for: .milliseconds(200 + 50 * round))
                let stopped = await replica.stop()
                let opened = flood.stop()
                #expect(opened > 0, "round \(round): no connection reached the replica")
                #expect(stopped.status == 0 && !stopped.output.contains("crashed"), "round \(round): \(stopped.output.suffix(3000))")
            }
        }
    }

    /// A stepping job's steps on its target, written by the first owner's backend and then by
    /// the next one's, never interleaved: every step written, and none of those the first
    /// owner finished written again. Only the step in flight at the hand-over (written, maybe,
    /// but not checkpointed) may be written by both.
    private func expectContinued(_ instance: DatabaseURL, tenant: String, steps count: Int, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let steps: [(step: Int, pid: Int)] = try await instance.withConnection(logger: logger) { connection in
            try await connection.execute(PostgresQuery(unsafeSQL: "SELECT step, pid FROM \(tenant).steps ORDER BY written_at"), logger: logger)
                .map { row in let (step, pid) = try row.decode((Int32, Int32).self); return (Int(step), Int(pid)) }
        }
        #expect(Set(steps.map(\.step)) == Set(1...count), "every step written: \(steps)", sourceLocation: sourceLocation)
        var writers: [Int] = []
        for step in steps where writers.last != step.pid { writers.append(step.pid) }
        #expect(writers.count == 2, "the first owner's writer, then the next one's, never interleaved: \(steps)", sourceLocation: sourceLocation)
        let first = steps.filter { $0.pid == writers.first }.map(\.step)
        let redone = Set(first).intersection(steps.filter { $0.pid != writers.first }.map(\.step))
        #expect(redone.isSubset(of: [first.max() ?? 0]), "steps written again after the hand-over: \(redone.sorted())", sourceLocation: sourceLocation)
    }

    /// The job's STATUS events in the control database, in order.
    private func statusEvents(_ job: Job, _ replicas: Replicas) async throws -> [String] {
        try await replicas.query { connection in
            try await connection.execute("""
                SELECT payload->>'status' FROM job_events WHERE job_id = \(UUID(uuidString: job.id)!) AND type = 'STATUS' ORDER BY seq
                """, logger: logger).map { try $0.decode(String.self) }
        }
    }
}

/// Threads that open and close loopback connections to `ports` as fast as they can, until
/// stopped; `stop()` joins them and returns how many connections were opened.
private final class Flood: Sendable {
    private let running = Atomic<Bool>(true)
    private let opened = Atomic<Int>(0)
    private let done = DispatchGroup()

    init(ports: [Int]) {
        for port in ports {
            done.enter()
            Thread { [self] in
                while running.load(ordering: .relaxed) {
                    if let socket = try? RawSocket(port: port) {
                        socket.close()
                        opened.add(1, ordering: .relaxed)
                    }
                }
                done.leave()
            }.start()
        }
    }

    func stop() -> Int {
        running.store(false, ordering: .relaxed)
        done.wait()
        return opened.load(ordering: .relaxed)
    }
}
