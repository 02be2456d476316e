import ControlDatabase
import EmbeddedPostgres
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// The engine under faults of its control database: a restart of the database while jobs
/// run, and a shared pool loaded by a thousand watchers while heartbeats must keep flowing.
/// Serialized: each test runs several servers on two cores.
@Suite(.serialized) struct EngineFaultTests {
    // MARK: A control-database restart

    /// A restart of the control database shorter than the heartbeat timeout is a blip: the
    /// running jobs carry on and succeed with every step checkpointed once, by the attempt
    /// that ran it, and every connection of both replicas (heartbeats, leader, pool,
    /// coordinator) comes back by itself.
    @Test func aControlDatabaseRestartFailsNoJobAndTheReplicasReconnect() async throws {
        // A cluster of our own: the restart must not disturb the suites sharing the test cluster.
        var quiet = Logger(label: "ferry.test-control")
        quiet.logLevel = .warning
        let cluster = try await EmbeddedPostgres.start(database: "ferry", maxConnections: 100, logger: quiet)
        do {
            try await restartScenario(cluster)
        } catch {
            try? await cluster.stop()
            throw error
        }
        try await cluster.stop()
    }

    private func restartScenario(_ cluster: EmbeddedPostgres) async throws {
        let control = try DatabaseURL(parsing: cluster.url(database: "ferry"))
        let files = FileManager.default.temporaryDirectory.path + "/ferry-restart-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: files) }
        let (certificate, key) = try SelfSignedCertificate.generate().write(to: files)
        let token = TokenStore.generateToken()
        let environment = [
            "FERRY_DATABASE_URL": control.secretURLString,
            "FERRY_TOKENS": TokenStore.line(token: token, principal: Principal(name: "tester", role: .admin)),
            // Jobs started without a length in their name are short (the ones after the restart).
            "FERRY_TEST_JOB_MS": "600", "FERRY_TEST_JOB_STEPS": "3", "FERRY_LOG_LEVEL": "notice",
        ]
        // Timeout 10 s: the fence stops a job 9 s after its last confirmed heartbeat, so a
        // 3 s outage (plus recovery) must not reach it. Two executors per replica: three jobs
        // cannot all land on one replica, so both replicas' pools face the outage.
        let arguments = ["--tls-cert", certificate, "--tls-key", key, "--heartbeat-interval", "0.5", "--heartbeat-timeout", "10",
                         "--leader-lease", "2", "--executors", "2"]
        try await withServers(2, arguments, environment: environment) { servers in
            let clients = try await servers.asyncMap { server in
                try await FerryConnection.connect(FerryClientConfiguration(host: server.host, port: server.port, trustRootsFile: certificate, token: token))
            }
            defer { for client in clients { client.close() } }
            let instance = try await TestPostgres.shared.freshDatabase("inst")
            _ = try await clients[0].unary(FerryMethods.putInstance, .with { $0.id = "i0"; $0.dsn = instance.secretURLString })

            // Three jobs of 15 steps of a second each (`<word>_<ms>_<steps>` sets a job's length).
            let steps = 15
            var ids: [String] = []
            for (index, name) in ["ra", "rb", "rc"].enumerated() {
                let job = try await clients[index % 2].startJob(cloneRequest(instance: "i0", target: "\(name)_\(steps * 1000)_\(steps)"))
                #expect(job.status == .running)
                ids.append(job.id)
            }
            for id in ids { _ = try await clients[0].waitFor(id, timeout: .seconds(20)) { $0.progress.tablesDone >= 2 } }
            let owners = try await control.withConnection(logger: logger) { connection in
                try await connection.execute("SELECT DISTINCT owner FROM jobs WHERE status = 'RUNNING'", logger: logger).map { try $0.decode(String.self) }
            }
            #expect(owners.count == 2, "the jobs should run on both replicas: \(owners)")

            // The outage: sessions end as in a crash, nothing listens for 3 s, then the same
            // data is back on the same port.
            try await cluster.restart(downtime: .seconds(3))
            let restartedAt = try await retrying("read the clock after the restart") {
                try await control.withConnection(logger: logger) { try await $0.execute("SELECT clock_timestamp()", logger: logger).first!.decode(Date.self) }
            }
            let running = try await control.withConnection(logger: logger) { connection in
                try await connection.execute("SELECT count(*)::int FROM jobs WHERE status = 'RUNNING'", logger: logger).first!.decode(Int.self)
            }
            #expect(running == 3, "a job ended during the outage")

            // Heartbeats on their own connections resume: every job's heartbeat is renewed
            // after the restart while it still runs; the leader renews its lease.
            let reconnected = try await retrying("see heartbeats and the leader after the restart", for: .seconds(8)) {
                try await control.withConnection(logger: logger) { connection in
                    let (beating, renewed) = try await connection.execute("""
                        SELECT (SELECT count(*)::int FROM jobs WHERE id = ANY(\(ids.map { UUID(uuidString: $0)! })) AND heartbeat_at > \(restartedAt)),
                               (SELECT count(*)::int FROM leases WHERE name = 'leader' AND renewed_at > \(restartedAt))
                        """, logger: logger).first!.decode((Int, Int).self)
                    guard beating == 3, renewed == 1 else { throw Retry("heartbeats renewed: \(beating), leader lease renewed: \(renewed)") }
                    return true
                }
            }
            #expect(reconnected)

            // Every job succeeds; the GetJobs go through each replica's pool.
            for (index, id) in ids.enumerated() {
                let done = try await retrying("wait for job \(id)", for: .seconds(40)) {
                    let job = try await clients[index % 2].job(id)
                    guard ended(job.status) else { throw Retry("job \(id) is \(job.status)") }
                    return job
                }
                #expect(done.status == .succeeded, "job \(id) ended \(done.status): \(done.error)")
                // Each step ran once in this attempt and was counted once.
                #expect(done.progress.rowsCopied == Int64(steps) && done.progress.tablesDone == Int64(steps), "\(done.progress)")
            }
            // The checkpoints: one per step, each written by the job itself (no rerun, no
            // other attempt), the lineage a single job.
            for id in ids {
                let root = UUID(uuidString: id)!
                let (rows, own, lineage, latest) = try await control.withConnection(logger: logger) { connection in
                    try await connection.execute("""
                        SELECT (SELECT count(*)::int FROM job_tables WHERE root_job_id = \(root)),
                               (SELECT count(*)::int FROM job_tables WHERE root_job_id = \(root) AND job_id = \(root)),
                               (SELECT count(*)::int FROM jobs WHERE root_job_id = \(root)),
                               (SELECT count(*)::int FROM job_tables WHERE root_job_id = \(root) AND updated_at > \(restartedAt))
                        """, logger: logger).first!.decode((Int, Int, Int, Int).self)
                }
                #expect(rows == steps && own == steps, "job \(id): \(rows) checkpoints, \(own) of them its own")
                #expect(lineage == 1, "job \(id) was rerun")
                // The restart happened mid-job: the job went on checkpointing afterwards.
                #expect(latest > 0 && latest < steps, "job \(id): \(latest) of \(steps) checkpoints after the restart")
            }

            // Each replica's coordinator admits again, and its jobs run to the end.
            for (index, client) in clients.enumerated() {
                let job = try await retrying("start a job on replica \(index) after the restart") {
                    try await client.startJob(cloneRequest(instance: "i0", target: "after\(index)", requestID: "after-\(index)"))
                }
                #expect(job.status == .running, "replica \(index) answered \(job.status)")
                let done = try await client.waitFor(job.id, timeout: .seconds(20)) { ended($0.status) }
                #expect(done.status == .succeeded, "replica \(index): \(done.status) \(done.error)")
            }
            for (index, server) in servers.enumerated() {
                let output = server.process.output
                #expect(!output.contains("stopping a job whose ownership could not be confirmed"), "replica \(index) fenced a job: \(output.suffix(3000))")
                #expect(!output.contains("stopped heartbeating"), "replica \(index) rescued a job: \(output.suffix(3000))")
                #expect(!output.contains("no longer ours"), "replica \(index) lost a job: \(output.suffix(3000))")
            }
        }
    }

    // MARK: Heartbeats under a thousand watchers

    /// Heartbeats and the leader have connections of their own: a thousand watchers polling
    /// through the shared pool (no LISTEN), and then a pool drained dry for 7 s, cannot delay
    /// them into a fence or a rescue. The heartbeat timeout is 5 s, so a heartbeat more than
    /// 4 s late (timeout minus two intervals) stops the job on its replica, and one 5 s late
    /// has it failed by the leader: a heartbeat that needed the pool would be 7 s late. (A
    /// tighter timeout measures this 2-core machine's scheduling under a debug build more
    /// than the engine.)
    @Test func heartbeatsKeepUpWhileAThousandWatchersPoll() async throws {
        let watched = 1000
        let began = ContinuousClock.now
        try await Replicas.with(count: 2, instances: 2, arguments: ["--listen-database-url", "none", "--max-running-per-instance", "1",
                                                                                "--heartbeat-interval", "0.5", "--heartbeat-timeout", "5"]) { replicas in
            let streamsPerConnection = 100
            let connectionCount = (watched + streamsPerConnection - 1) / streamsPerConnection
            let clients: [FerryConnection] = try await withThrowingTaskGroup(of: FerryConnection.self) { group in
                for index in 0..<connectionCount { group.addTask { try await replicas.client(index) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            defer { for client in clients { client.close() } }

            // i0 is held by one long job, so everything queued on it stays QUEUED.
            let hold = try await clients[0].startJob(cloneRequest(instance: "i0", target: "hold_120000_120"))
            #expect(hold.status == .running)
            let setupStarted = ContinuousClock.now
            // The queue as real QUEUED rows with what they touch, written in one statement:
            // a thousand StartJobs take from 5 to 40 s on a busy two-core machine.
            let params = try JobParams.with { $0.clone = .clone(from: "i0", "src", to: "i0", "queued") }.jsonValue().text
            let queuedIDs: [String] = try await replicas.query { connection in
                try await connection.execute("""
                    WITH made AS (
                        INSERT INTO jobs (id, kind, status, params, root_job_id, last_seq, created_at, queued_at, updated_at)
                        SELECT id, 'clone', 'QUEUED', \(params)::jsonb, id, 0, clock_timestamp(), clock_timestamp(), clock_timestamp()
                          FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, \(watched))) g
                        RETURNING id
                    ), touched AS (
                        INSERT INTO job_instances (job_id, instance_id, tenant, writes)
                        SELECT id, 'i0', 'src', false FROM made UNION ALL SELECT id, 'i0', 'queued', true FROM made
                    )
                    SELECT id FROM made
                    """, logger: logger).map { try $0.decode(UUID.self).uuidString.lowercased() }
            }
            #expect(queuedIDs.count == watched)
            let queuedIn = ContinuousClock.now - setupStarted

            // One WatchJob per queued job, spread over both replicas; each stream runs until
            // its job ends or the test closes the connections.
            let snapshots = Shared(0)
            let watchErrors = Shared<[String]>([])
            let watchers = Task {
                await withTaskGroup(of: Void.self) { group in
                    for (index, id) in queuedIDs.enumerated() {
                        let client = clients[index / streamsPerConnection]
                        group.addTask {
                            do {
                                for try await event in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = id }) where event.type == .snapshot {
                                    snapshots.withLock { $0 += 1 }
                                }
                            } catch let error as RPCError where error.code == .unavailable || error.code == .cancelled {
                                // The test closed the connection.
                            } catch {
                                watchErrors.withLock { $0.append("\(error)") }
                            }
                        }
                    }
                }
            }
            defer { watchers.cancel() }
            let watchDeadline = ContinuousClock.now + .seconds(30)
            while snapshots.withLock({ $0 }) < watched, ContinuousClock.now < watchDeadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(snapshots.withLock { $0 } == watched, "only \(snapshots.withLock { $0 }) of \(watched) watches started: \(watchErrors.withLock { $0.prefix(3) })")
            let watchingIn = ContinuousClock.now - setupStarted

            // With every watcher attached, a ten-second job on i1. Meanwhile a poller records
            // how stale the heartbeats of the RUNNING jobs get, by the database's clock.
            let job = try await clients[1].startJob(cloneRequest(instance: "i1", target: "run_10000_20"))
            #expect(job.status == .running)
            let staleness = Shared(0.0)
            let stopPolling = Shared(false)
            let poller = Task {
                try await replicas.query { connection in
                    while !stopPolling.withLock({ $0 }) {
                        let worst = try await connection.execute("""
                            SELECT COALESCE(max(extract(epoch FROM clock_timestamp() - heartbeat_at)), 0)::float8
                              FROM jobs WHERE status = 'RUNNING' AND heartbeat_at IS NOT NULL
                            """, logger: logger).first!.decode(Double.self)
                        staleness.withLock { $0 = max($0, worst) }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
            }
            defer { stopPolling.withLock { $0 = true } }
            _ = try await clients[1].waitFor(job.id, timeout: .seconds(20)) { $0.progress.tablesDone >= 2 }

            // Now the shared pools run dry, for longer than the heartbeat timeout. However cheap a
            // replica makes its watchers, the test must not depend on how much load they put
            // on the pool: a lock on job_instances (which ListJobs reads, and heartbeats and
            // the leader do not) holds every ListJobs in the database, and 30 of them per
            // replica take all 20 of its pool's connections. Heartbeats that needed the pool
            // would now wait for the lock too.
            let locker = try await replicas.control.connect(logger: logger)
            let starved: (probes: [Duration], releasedAfterProbes: Bool)
            do {
                try await locker.execute("BEGIN", logger: logger)
                try await locker.execute("LOCK TABLE job_instances IN ACCESS EXCLUSIVE MODE", logger: logger)
                let lockedAt = ContinuousClock.now
                let listings = Task {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for index in 0..<60 {
                            group.addTask { _ = try await clients[index % clients.count].unary(FerryMethods.listJobs, ListJobsRequest()) }
                        }
                        try await group.waitForAll()
                    }
                }
                try await Task.sleep(for: .milliseconds(500))
                // A probe that needs only a pool connection (ListInstances reads `instances`):
                // it can answer only once the lock is gone, which shows the pool was dry.
                let probes = Task {
                    try await withThrowingTaskGroup(of: ContinuousClock.Instant.self) { group in
                        for index in 0..<2 {
                            group.addTask {
                                _ = try await clients[index].unary(FerryMethods.listInstances, ListInstancesRequest())
                                return ContinuousClock.now
                            }
                        }
                        return try await group.reduce(into: []) { $0.append($1) }
                    }
                }
                try await Task.sleep(until: lockedAt + .seconds(7))
                let releasedAt = ContinuousClock.now
                try await locker.execute("COMMIT", logger: logger)
                try await listings.value
                let answered = try await probes.value
                starved = (answered.map { $0 - lockedAt }, answered.allSatisfy { $0 >= releasedAt })
                try await locker.close()
            } catch {
                try? await locker.close()
                throw error
            }
            #expect(starved.releasedAfterProbes, "a pool answered while the lock was held: the pools were not dry (\(starved.probes))")

            let done = try await clients[1].waitFor(job.id, timeout: .seconds(40)) { ended($0.status) }
            stopPolling.withLock { $0 = true }
            try await poller.value
            #expect(done.status == .succeeded, "the job ended \(done.status): \(done.error)")
            let checkpoints = try await replicas.query {
                try await $0.execute("SELECT count(*)::int FROM job_tables WHERE root_job_id = \(UUID(uuidString: job.id)!) AND job_id = \(UUID(uuidString: job.id)!)", logger: logger)
                    .first!.decode(Int.self)
            }
            #expect(checkpoints == 20)
            // The job holding i0 ran all along, under the same load, and still runs.
            let held = try await clients[0].job(hold.id)
            #expect(held.status == .running, "the job holding i0 is \(held.status): \(held.error)")
            // Every watcher was still attached: no queued job went anywhere.
            let stillQueued = try await replicas.query {
                try await $0.execute("SELECT count(*)::int FROM jobs WHERE status = 'QUEUED'", logger: logger).first!.decode(Int.self)
            }
            #expect(stillQueued == watched)
            #expect(watchErrors.withLock { $0 }.isEmpty, "\(watchErrors.withLock { $0.prefix(3) })")
            let worst = staleness.withLock { $0 }
            // Heartbeats every 0.5 s: one 4 s old stops its job on its replica.
            #expect(worst < 4, "a heartbeat was \(worst) s old")
            let failed = try await replicas.query {
                try await $0.execute("SELECT count(*)::int FROM jobs WHERE status = 'FAILED'", logger: logger).first!.decode(Int.self)
            }
            #expect(failed == 0)
            for (index, server) in replicas.servers.enumerated() {
                let output = server.process.output
                #expect(!output.contains("stopping a job whose ownership could not be confirmed"), "replica \(index) fenced a job: \(output.suffix(3000))")
                #expect(!output.contains("stopped heartbeating"), "replica \(index) rescued a job: \(output.suffix(3000))")
            }
            print("heartbeats under \(watched) watchers: \(watched) jobs queued in \(queuedIn), all watched after \(watchingIn), stalest heartbeat \(String(format: "%.2f", worst)) s; pool probes answered \(starved.probes) after the lock")

            // Close the watches before the replicas stop, then let the held job go.
            for client in clients { client.close() }
            await watchers.value
        }
        print("heartbeats under \(watched) watchers: the test took \(ContinuousClock.now - began)")
    }

    // MARK: Helpers

    /// Starts `count` ferryd-test replicas one after another, runs `body`, and stops them
    /// all whatever happens.
    private func withServers<T: Sendable>(
        _ count: Int, _ arguments: [String], environment: [String: String], _ body: ([ServingFerryd]) async throws -> T
    ) async throws -> T {
        var servers: [ServingFerryd] = []
        do {
            for _ in 0..<count {
                servers.append(try await ServingFerryd.start(arguments, environment: environment, binary: FerryBinaries.ferrydTest))
            }
            let result = try await body(servers)
            try await stopAll(servers, expectClean: true)
            return result
        } catch {
            try? await stopAll(servers, expectClean: false)
            throw error
        }
    }

    private func stopAll(_ servers: [ServingFerryd], expectClean: Bool) async throws {
        for (index, server) in servers.enumerated() {
            let result = await server.stop()
            if ProcessInfo.processInfo.environment["FERRY_TEST_REPLICA_OUTPUT"] == "1" { print("--- replica \(index)\n\(result.output)") }
            if expectClean && result.status != 0 { Issue.record("replica \(index) exited \(result.status): \(result.output.suffix(3000))") }
        }
    }

    /// Calls `body` until it returns, for up to `limit`: clients and the test's own
    /// connections see the outage as errors, which are retried.
    private func retrying<T>(_ what: String, for limit: Duration = .seconds(20), _ body: () async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + limit
        while true {
            do {
                return try await body()
            } catch {
                guard ContinuousClock.now < deadline else {
                    Issue.record("could not \(what) within \(limit): \(error)")
                    throw error
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
    }
}

/// Whether a job with `status` has ended.
private func ended(_ status: JobStatus) -> Bool {
    status == .succeeded || status == .failed || status == .cancelled
}

/// A condition not met yet, for ``EngineFaultTests/retrying``.
private struct Retry: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension Array {
    fileprivate func asyncMap<T>(_ transform: (Element) async throws -> T) async throws -> [T] {
        var result: [T] = []
        for element in self { result.append(try await transform(element)) }
        return result
    }
}
