import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import PostgresNIO
import Synchronization
import SwiftProtobuf
import Testing

/// The job engine with three real `ferryd-test` replicas on one control database: admission
/// under the per-instance cap, the FIFO queue, idempotency, rescue of a killed replica's jobs,
/// cancel and watch across replicas. Serialized: each test runs several servers on two cores.
@Suite(.serialized) struct JobEngineTests {
    // MARK: Admission under load

    @Test func aThousandConcurrentStartsRespectTheCapDirect() async throws {
        try await admissionUnderLoad(throughPgBouncer: false)
    }

    @Test func aThousandConcurrentStartsRespectTheCapThroughPgBouncer() async throws {
        try await admissionUnderLoad(throughPgBouncer: true)
    }

    /// 1,000 StartJobs from 12 connections over 3 replicas, on 4 instances, half of them with
    /// `queue: true`, target tenants chosen to collide. Checked: every answer is RUNNING,
    /// QUEUED or RESOURCE_EXHAUSTED; the runs themselves, recorded at each instance by its own
    /// clock, never number more than 3 at once; the control database's startedAt/finishedAt
    /// intervals show no more than 3 RUNNING per instance and no two RUNNING writers of one
    /// tenant; queued jobs started in the order they were queued, per instance.
    private func admissionUnderLoad(throughPgBouncer: Bool) async throws {
        try await Replicas.with(count: 3, throughPgBouncer: throughPgBouncer, instances: 4, jobMs: 250, jobSteps: 5,
                                environments: Array(repeating: ["FERRY_TEST_RECORD_RUNS": "1"], count: 3)) { replicas in
            let instanceIDs = replicas.instances.keys.sorted()

            // The witness: each run records when it really ran, by the instance's clock, in the
            // instance itself, apart from the control database that enforces the cap.
            for url in replicas.instances.values {
                try await url.withConnection(logger: logger) {
                    try await $0.execute("CREATE TABLE public.ferry_test_runs (job uuid, attempt int, started_at timestamptz, finished_at timestamptz)", logger: logger)
                }
            }

            let clients: [FerryConnection] = try await withThrowingTaskGroup(of: FerryConnection.self) { group in
                for index in 0..<12 { group.addTask { try await replicas.client(index) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            defer { for client in clients { client.close() } }
            let outcomes = Shared<[String: Int]>([:])
            let admitted = Shared<[String]>([])
            try await withThrowingTaskGroup(of: Void.self) { group in
                for worker in 0..<clients.count {
                    group.addTask { [clients, instanceIDs] in
                        for k in stride(from: worker, to: 1000, by: clients.count) {
                            let request = cloneRequest(instance: instanceIDs[k % instanceIDs.count], target: "t\(k % 7)", queue: (k / instanceIDs.count) % 2 == 0)
                            do {
                                let job = try await clients[worker].startJob(request)
                                let status = job.status.name
                                outcomes.withLock { $0[status, default: 0] += 1 }
                                admitted.withLock { $0.append(job.id) }
                            } catch let error as RPCError {
                                outcomes.withLock { $0[error.code.rawValue, default: 0] += 1 }
                                if error.code == .resourceExhausted {
                                    // The details name the running jobs in the way.
                                    if case .array(let ids)? = error.details?["runningJobIds"], !ids.isEmpty {} else if error.details?["queuedAhead"] == nil {
                                        outcomes.withLock { $0["RESOURCE_EXHAUSTED without details", default: 0] += 1 }
                                    }
                                }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let counted = outcomes.withLock { $0 }
            print("admission load \(throughPgBouncer ? "through PgBouncer" : "direct"): answers \(counted.sorted { $0.key < $1.key })")
            #expect(Set(counted.keys).isSubset(of: ["RUNNING", "QUEUED", "RESOURCE_EXHAUSTED"]), "\(counted)")
            #expect(counted.values.reduce(0, +) == 1000, "\(counted)")
            #expect((counted["QUEUED"] ?? 0) > 0 && (counted["RESOURCE_EXHAUSTED"] ?? 0) > 0, "the load should hit the cap: \(counted)")

            // Everything admitted or queued finishes.
            let deadline = ContinuousClock.now + .seconds(240)
            while ContinuousClock.now < deadline {
                let open = try await replicas.query { try await $0.execute("SELECT count(*)::int FROM jobs WHERE status IN ('QUEUED', 'RUNNING')", logger: logger).first!.decode(Int.self) }
                if open == 0 { break }
                try await Task.sleep(for: .milliseconds(250))
            }
            // What really ran at once on each instance, from the runs' own records.
            for (instance, url) in replicas.instances {
                let runs = try await url.withConnection(logger: logger) { connection in
                    try await connection.execute("SELECT started_at, finished_at FROM public.ferry_test_runs", logger: logger)
                        .map { try $0.decode((Date, Date?).self) }
                }
                let peak = Self.peak(runs.map { ($0.0, $0.1 ?? .distantFuture) })
                #expect(runs.count > 50 && runs.allSatisfy { $0.1 != nil }, "instance \(instance): \(runs.count) runs recorded")
                #expect(peak <= 3, "instance \(instance): \(peak) runs at once by the instance's own record")
            }

            struct Row { var id: UUID; var instance: String; var tenant: String; var writes: Bool; var status: String; var queuedAt: Date; var started: Date?; var finished: Date?; var firstStatus: String }
            let rows: [Row] = try await replicas.query { connection in
                try await connection.execute("""
                    SELECT j.id, ji.instance_id, ji.tenant, ji.writes, j.status, j.queued_at, j.started_at, j.finished_at,
                           (SELECT e.payload->>'status' FROM job_events e WHERE e.job_id = j.id AND e.type = 'STATUS' ORDER BY e.seq LIMIT 1)
                      FROM jobs j JOIN job_instances ji ON ji.job_id = j.id
                    """, logger: logger).map { row in
                    let (id, instance, tenant, writes, status, queuedAt, started, finished, first) = try row.decode((UUID, String, String, Bool, String, Date, Date?, Date?, String).self)
                    return Row(id: id, instance: instance, tenant: tenant, writes: writes, status: status, queuedAt: queuedAt, started: started, finished: finished, firstStatus: first)
                }
            }
            let jobIDs = Set(rows.map(\.id))
            #expect(jobIDs.count == admitted.withLock { $0.count })
            #expect(rows.allSatisfy { $0.status == "SUCCEEDED" }, "\(Dictionary(grouping: rows, by: \.status).mapValues(\.count))")

            // No instant with more than 3 running per instance, from the recorded intervals.
            for instance in instanceIDs {
                let intervals = Dictionary(grouping: rows.filter { $0.instance == instance }, by: \.id).values.compactMap { $0.first }
                let peak = Self.peak(intervals.compactMap { row in row.started.flatMap { started in row.finished.map { (started, $0) } } })
                #expect(peak <= 3, "instance \(instance) had \(peak) jobs running at once")
                #expect(peak == 3, "instance \(instance) never reached the cap (peak \(peak)): the test did not load it")

                // No two writers of one tenant overlapped.
                for (tenant, writers) in Dictionary(grouping: rows.filter { $0.instance == instance && $0.writes }, by: \.tenant) {
                    let sorted = writers.compactMap { row in row.started.map { ($0, row.finished ?? .distantFuture) } }.sorted { $0.0 < $1.0 }
                    for (earlier, later) in zip(sorted, sorted.dropFirst()) {
                        #expect(earlier.1 <= later.0, "tenant \(tenant) on \(instance) was written by two jobs at once")
                    }
                }

                // FIFO: queued jobs started in the order they were queued.
                let queued = rows.filter { $0.instance == instance && $0.firstStatus == "QUEUED" && $0.writes }
                    .sorted { ($0.queuedAt, $0.id.uuidString) < ($1.queuedAt, $1.id.uuidString) }
                #expect(queued.count > 10, "instance \(instance): only \(queued.count) queued jobs")
                for (earlier, later) in zip(queued, queued.dropFirst()) {
                    if let a = earlier.started, let b = later.started, a > b {
                        Issue.record("instance \(instance): job queued at \(earlier.queuedAt) started after one queued later")
                        break
                    }
                }
            }
            let results = await replicas.stop()
            for result in results where result.status != 0 { Issue.record("replica exited \(result.status): \(result.output.components(separatedBy: "\n").filter { $0.contains("Fatal") || $0.contains("Crash") || $0.contains("error") || $0.contains(" at /work/main/Sources") }.prefix(30).joined(separator: "\n"))") }
        }
    }

    /// The most intervals that overlap at any instant; at equal instants an end comes before a
    /// start (the freed slot is what admitted the next job).
    static func peak(_ intervals: [(Date, Date)]) -> Int {
        var points: [(at: Date, delta: Int)] = []
        for (start, end) in intervals {
            points.append((start, 1))
            points.append((end, -1))
        }
        points.sort { a, b in a.at != b.at ? a.at < b.at : a.delta < b.delta }
        var current = 0
        var peak = 0
        for (_, delta) in points {
            current += delta
            peak = max(peak, current)
        }
        return peak
    }

    // MARK: Idempotency

    @Test func aRepeatedRequestIDReturnsTheSameJob() async throws {
        try await Replicas.with(count: 2, instances: 1, jobMs: 200) { replicas in
            let a = try await replicas.client(0)
            let b = try await replicas.client(1)
            defer { a.close(); b.close() }
            let request = cloneRequest(instance: "i0", target: "idem", queue: true, requestID: "req-1")
            let first = try await a.startJob(request)
            let again = try await b.startJob(request)
            #expect(first.id == again.id && !first.id.isEmpty)
            // The same key for a different request is refused, naming the first job.
            let other = cloneRequest(instance: "i0", target: "other", queue: true, requestID: "req-1")
            #expect(await statusCode { _ = try await a.startJob(other) } == .alreadyExists)
            // Concurrent repeats on both replicas still make one job.
            let ids = try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<20 {
                    group.addTask { try await (index % 2 == 0 ? a : b).startJob(cloneRequest(instance: "i0", target: "race", queue: true, requestID: "req-2")).id }
                }
                return try await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
            #expect(ids.count == 1)
            let stored = try await replicas.query { try await $0.execute("SELECT count(*)::int FROM jobs WHERE request_id = 'req-2'", logger: logger).first!.decode(Int.self) }
            #expect(stored == 1)
            _ = try await a.waitFor(first.id) { $0.status == .succeeded }
            // After the job finished, the key still names it (no second job is started).
            #expect(try await b.startJob(request).id == first.id)
        }
    }

    // MARK: A killed replica

    @Test(arguments: [false, true])
    func aKilledReplicasJobsAreRescuedAndARerunResumes(throughPgBouncer: Bool) async throws {
        try await Replicas.with(count: 3, throughPgBouncer: throughPgBouncer, instances: 1, jobMs: 8000, jobSteps: 16) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            let started = try await client.startJob(cloneRequest(instance: "i0", target: "victim"))
            let id = started.id
            #expect(started.status == .running)
            // Let it get a few steps in, then kill whichever replica runs it.
            _ = try await client.waitFor(id) { $0.progress.tablesDone >= 3 }
            let owner = try await replicas.query { try await $0.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: id)!)", logger: logger).first!.decode(String.self) }
            let victim = try #require(replicas.index(ofOwner: owner))
            replicas.servers[victim].process.child.signal(SIGKILL)
            let killedAt = ContinuousClock.now

            let survivor = try await replicas.client(victim + 1)
            defer { survivor.close() }
            let failed = try await survivor.waitFor(id, timeout: .seconds(20)) { $0.status == .failed }
            // Heartbeat timeout 2 s, leader lease 2 s (the leader may have been the victim).
            #expect(ContinuousClock.now - killedAt < .seconds(12))
            #expect(failed.error.code == "UNAVAILABLE" && failed.error.retryable, "\(failed.error)")
            #expect(failed.error.message.contains("stopped heartbeating"))
            // Each finished step is a checkpoint row of the lineage.
            let saved = try await replicas.query {
                try await $0.execute("SELECT count(*)::int FROM job_tables WHERE root_job_id = \(UUID(uuidString: id)!)", logger: logger).first!.decode(Int.self)
            }
            #expect(saved >= 3)

            let rerun = try await survivor.rerun(id)
            #expect(rerun.attempt == 2 && rerun.rerunOf == id && rerun.rootJobID == id)
            let done = try await survivor.waitFor(rerun.id, timeout: .seconds(30)) { $0.status == .succeeded }
            // The rerun continued from the lineage's checkpoints instead of starting over: it
            // ran exactly the steps the first attempt had not finished, and redid none.
            #expect(done.progress.rowsCopied == Int64(16 - saved), "\(done.progress)")
            #expect(done.progress.tablesDone == 16)
            let byAttempt = try await replicas.query {
                try await $0.execute("""
                    SELECT count(*) FILTER (WHERE job_id = \(UUID(uuidString: id)!))::int, count(*) FILTER (WHERE job_id = \(UUID(uuidString: rerun.id)!))::int
                      FROM job_tables WHERE root_job_id = \(UUID(uuidString: id)!)
                    """, logger: logger).first!.decode((Int, Int).self)
            }
            #expect(byAttempt.0 == saved && byAttempt.1 == 16 - saved, "\(byAttempt)")
        }
    }

    /// A replica that loses the control database stops its jobs itself, before the leader may
    /// fail them: its sessions on the target instance are gone before the job's recorded end
    /// (both read from the same PostgreSQL clock).
    @Test func aReplicaCutOffFromTheControlDatabaseStopsItsJobsItself() async throws {
        let control = try await TestPostgres.shared.freshDatabase("fence")
        let bouncer = try await PgBouncer.start(in: try await TestPostgres.shared.server(), poolMode: "transaction", poolSize: 10)
        let files = FileManager.default.temporaryDirectory.path + "/ferry-fence-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: files) }
        let (certificate, key) = try SelfSignedCertificate.generate().write(to: files)
        let token = TokenStore.generateToken()
        let environment = [
            "FERRY_TOKENS": TokenStore.line(token: token, principal: Principal(name: "tester", role: .admin)),
            "FERRY_TEST_JOB_MS": "20000", "FERRY_TEST_JOB_STEPS": "2", "FERRY_LOG_LEVEL": "notice",
        ]
        let arguments = ["--tls-cert", certificate, "--tls-key", key, "--heartbeat-interval", "0.3", "--heartbeat-timeout", "2", "--leader-lease", "2"]
        // B reaches the control database only through PgBouncer, and starts first to run the job.
        var environmentB = environment
        environmentB["FERRY_DATABASE_URL"] = try bouncer.url(database: control.database).secretURLString
        var environmentA = environment
        environmentA["FERRY_DATABASE_URL"] = control.secretURLString
        try await ServingFerryd.with(arguments + ["--listen-database-url", "none"], environment: environmentB, binary: FerryBinaries.ferrydTest) { b in
            let clientB = try await FerryConnection.connect(FerryClientConfiguration(host: b.host, port: b.port, trustRootsFile: certificate, token: token))
            defer { clientB.close() }
            let instance = try await TestPostgres.shared.freshDatabase("inst")
            try await instance.withConnection(logger: logger) { try await $0.execute("CREATE SCHEMA src", logger: logger) }
            _ = try await clientB.unary(FerryMethods.putInstance, .with { $0.id = "i0"; $0.dsn = instance.secretURLString })
            // Two steps of 10 s, each a statement on the target.
            let job = try await clientB.startJob(cloneRequest(instance: "i0", target: "write_fenced"))
            let id = job.id
            let sessions = { () async throws -> (Int, Date) in
                try await instance.withConnection(logger: logger) {
                    try await $0.execute("""
                        SELECT count(*)::int, clock_timestamp() FROM pg_stat_activity WHERE application_name = \("ferry \(id) 1")
                        """, logger: logger).first!.decode((Int, Date).self)
                }
            }
            var deadline = ContinuousClock.now + .seconds(20)
            while try await sessions().0 < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
            #expect(try await sessions().0 >= 2, "the job never wrote to its target")
            // A connects directly and will lead once B's lease lapses.
            try await ServingFerryd.with(arguments, environment: environmentA, binary: FerryBinaries.ferrydTest) { a in
                let clientA = try await FerryConnection.connect(FerryClientConfiguration(host: a.host, port: a.port, trustRootsFile: certificate, token: token))
                defer { clientA.close() }

                await bouncer.stop()
                // B's sessions on the target end (its own fence stopped the job, and the stop
                // reached the instance, which B can still reach)...
                var stoppedAt: Date?
                deadline = ContinuousClock.now + .seconds(20)
                while stoppedAt == nil, ContinuousClock.now < deadline {
                    let (count, at) = try await sessions()
                    if count == 0 { stoppedAt = at } else { try await Task.sleep(for: .milliseconds(20)) }
                }
                let failed = try await clientA.waitFor(id, timeout: .seconds(20)) { $0.status == .failed }
                #expect(failed.error.message.contains("stopped heartbeating"))
                // ...before the leader recorded the job's end.
                let finishedAt = try #require(failed.hasFinishedAt ? failed.finishedAt.date : nil)
                let stopped = try #require(stoppedAt, "B's sessions on the target outlived the rescue: \(b.process.output.suffix(2000))")
                #expect(stopped < finishedAt, "B stopped at \(stopped), after the rescue at \(finishedAt)")
                // B cannot reach its database to stop gracefully.
                b.process.child.signal(SIGKILL)
                _ = await b.process.finish()
                #expect(await a.stop().status == 0)
            }
        }
        await bouncer.stop()
    }

    // MARK: Cancel and watch across replicas

    @Test func cancelReachesTheReplicaRunningTheJob() async throws {
        try await cancelAcrossReplicas(arguments: [])
    }

    /// Without LISTEN the heartbeat carries the cancel request instead.
    @Test func cancelByPollingWithoutNotifications() async throws {
        try await cancelAcrossReplicas(arguments: ["--listen-database-url", "none"])
    }

    /// Through a transaction pooler (which also means no LISTEN).
    @Test func cancelThroughPgBouncer() async throws {
        try await cancelAcrossReplicas(arguments: [], throughPgBouncer: true)
    }

    private func cancelAcrossReplicas(arguments: [String], throughPgBouncer: Bool = false) async throws {
        try await Replicas.with(count: 2, throughPgBouncer: throughPgBouncer, instances: 1, jobMs: 20000, jobSteps: 40, arguments: arguments) { replicas in
            let first = try await replicas.client(0)
            defer { first.close() }
            let job = try await first.startJob(cloneRequest(instance: "i0", target: "cancelme"))
            let id = job.id
            _ = try await first.waitFor(id) { $0.progress.tablesDone >= 2 }
            let owner = try await replicas.query { try await $0.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: id)!)", logger: logger).first!.decode(String.self) }
            let runner = try #require(replicas.index(ofOwner: owner))
            // Ask the other replica.
            let other = try await replicas.client(runner + 1)
            defer { other.close() }
            let asked = ContinuousClock.now
            let answer = try await other.cancel(id)
            #expect(answer.status == .running || answer.status == .cancelled)
            let cancelled = try await other.waitFor(id, timeout: .seconds(10)) { $0.status == .cancelled }
            #expect(cancelled.status == .cancelled)
            #expect(ContinuousClock.now - asked < .seconds(5), "cancel took \(ContinuousClock.now - asked)")
            #expect(cancelled.hasFinishedAt && !cancelled.hasError)
            // Cancelled stays resumable.
            let rerun = try await other.rerun(id)
            // It starts from the lineage's checkpoints: steps done before it ran any.
            let resumed = try await other.waitFor(rerun.id) { $0.progress.tablesTotal > 0 }
            #expect(resumed.progress.tablesDone - resumed.progress.rowsCopied >= 2, "the rerun did not resume: \(resumed.progress)")
            _ = try await other.cancel(rerun.id)
            // A job that ended cannot be cancelled again: the answer is the job as it is.
            #expect(try await other.cancel(id).status == .cancelled)
        }
    }

    @Test(arguments: [false, true])
    func aWatcherOnAnotherReplicaReconnectsWithAfterSeqAndSeesEveryStatusOnce(throughPgBouncer: Bool) async throws {
        try await Replicas.with(count: 2, throughPgBouncer: throughPgBouncer, instances: 1, jobMs: 3000, jobSteps: 30) { replicas in
            let starter = try await replicas.client(0)
            defer { starter.close() }
            let job = try await starter.startJob(cloneRequest(instance: "i0", target: "watched"))
            let id = job.id
            _ = try await starter.waitFor(id) { !$0.progress.phase.isEmpty }
            let owner = try await replicas.query { try await $0.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: id)!)", logger: logger).first!.decode(String.self) }
            let watcherIndex = (try #require(replicas.index(ofOwner: owner))) + 1

            // First session: the SNAPSHOT and a few events, then the connection drops.
            var seen: [JobEvent] = []
            let firstSession = try await replicas.client(watcherIndex)
            for try await event in try firstSession.serverStream(FerryMethods.watchJob, .with { $0.jobID = id }) {
                seen.append(event)
                if seen.count == 5 { break }
            }
            firstSession.close()
            #expect(seen.first?.type == .snapshot && seen.first?.job.id == id)
            let lastSeq = try #require(seen.last?.seq)
            try await Task.sleep(for: .milliseconds(500))

            // Second session resumes after the last seq seen.
            let secondSession = try await replicas.client(watcherIndex)
            defer { secondSession.close() }
            var resumed: [JobEvent] = []
            for try await event in try secondSession.serverStream(FerryMethods.watchJob, .with { $0.jobID = id; $0.afterSeq = lastSeq }) {
                resumed.append(event)
            }
            #expect(resumed.first?.type == .snapshot && resumed.first?.seq == lastSeq)
            let history = seen.dropFirst() + resumed.dropFirst()
            let seqs = history.map(\.seq)
            #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count, "seqs not increasing: \(seqs)")
            let statuses = history.filter { $0.type == .status }
            #expect(statuses.map(\.status) == [.running, .succeeded], "\(statuses.map { ($0.seq, $0.status.name) })")
            let stored = try await replicas.query {
                try await $0.execute("SELECT seq FROM job_events WHERE job_id = \(UUID(uuidString: id)!) AND type = 'STATUS' ORDER BY seq", logger: logger).map { try $0.decode(Int64.self) }
            }
            #expect(statuses.map(\.seq) == stored)
            #expect(history.last?.status == .succeeded)

            // A finished job's watch ends at once: the snapshot, then what follows afterSeq.
            var finished: [JobEvent] = []
            for try await event in try secondSession.serverStream(FerryMethods.watchJob, .with { $0.jobID = id; $0.afterSeq = stored.last! }) {
                finished.append(event)
            }
            #expect(finished.map(\.type) == [.snapshot])
            #expect(finished.first?.job.status == .succeeded)
        }
    }

    // MARK: Refusals

    @Test func aJobRowTheServerCannotReadIsDataLossNotAnEmptyJob() async throws {
        try await Replicas.with(count: 1, instances: 1, jobMs: 200, jobSteps: 1) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            let job = try await client.startJob(cloneRequest(instance: "i0", target: "readable"))
            _ = try await client.waitFor(job.id) { $0.status == .succeeded }
            // Valid JSON, but not the JobParams message (a clone is an object, not a number).
            try await replicas.query { connection in
                try await connection.execute("UPDATE jobs SET params = '{\"clone\": 5}'::jsonb WHERE id = \(UUID(uuidString: job.id)!)", logger: logger)
            }
            var caught: RPCError?
            do { _ = try await client.job(job.id) } catch let error as RPCError { caught = error }
            #expect(caught?.code == .dataLoss, "\(String(describing: caught))")
            #expect(caught?.message.contains(job.id) == true, "\(String(describing: caught))")
        }
    }

    @Test func unknownJobsBadIdsAndRerunsOfTheWrongStatus() async throws {
        try await Replicas.with(count: 1, instances: 1, jobMs: 4000, jobSteps: 8) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            let unknown = UUID().uuidString.lowercased()
            let watchUnknown = await statusCode {
                for try await _ in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = unknown }) {}
            }
            #expect(watchUnknown == .notFound)
            let watchMalformed = await statusCode {
                for try await _ in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = "not-a-uuid" }) {}
            }
            #expect(watchMalformed == .invalidArgument)
            #expect(await statusCode { _ = try await client.job(unknown) } == .notFound)
            #expect(await statusCode { _ = try await client.job("1234") } == .invalidArgument)
            #expect(await statusCode { _ = try await client.rerun(unknown) } == .notFound)

            let running = try await client.startJob(cloneRequest(instance: "i0", target: "busy"))
            #expect(await statusCode { _ = try await client.rerun(running.id) } == .failedPrecondition)
            _ = try await client.cancel(running.id)
            _ = try await client.waitFor(running.id) { $0.status == .cancelled }

            let quick = try await client.startJob(cloneRequest(instance: "i0", target: "quick"))
            _ = try await client.cancel(quick.id)
            _ = try await client.waitFor(quick.id) { $0.status == .cancelled }
            let first = try await client.rerun(quick.id)
            // One rerun per job: the lineage stays a line.
            #expect(await statusCode { _ = try await client.rerun(quick.id) } == .failedPrecondition)
            let succeeded = try await client.waitFor(first.id, timeout: .seconds(30)) { $0.status == .succeeded }
            #expect(await statusCode { _ = try await client.rerun(succeeded.id) } == .failedPrecondition)

            // Bad parameters, unknown instances and kinds this build lacks.
            #expect(await statusCode { _ = try await client.startJob(StartJobRequest()) } == .invalidArgument)
            #expect(await statusCode { _ = try await client.startJob(cloneRequest(instance: "i0", target: "Bad-Name")) } == .invalidArgument)
            #expect(await statusCode { _ = try await client.startJob(cloneRequest(instance: "nowhere", target: "x")) } == .notFound)
            var importRequest = StartJobRequest()
            importRequest.import = .with { $0.artifactID = UUID().uuidString.lowercased(); $0.targetInstance = "i0"; $0.targetTenant = "imp" }
            #expect(await statusCode { _ = try await client.startJob(importRequest) } == .unimplemented)
        }
    }

    @Test func listJobsFiltersAndPages() async throws {
        try await Replicas.with(count: 1, instances: 2, jobMs: 50, jobSteps: 1) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            var ids: [String] = []
            for k in 0..<7 {
                let job = try await client.startJob(cloneRequest(instance: k < 5 ? "i0" : "i1", target: "l\(k)", queue: true))
                ids.append(job.id)
            }
            for id in ids { _ = try await client.waitFor(id) { $0.status == .succeeded } }
            var pages: [[String]] = []
            var token = ""
            repeat {
                var request = ListJobsRequest()
                request.pageSize = 3
                request.pageToken = token
                let page = try await client.unary(FerryMethods.listJobs, request)
                pages.append(page.jobs.map(\.id))
                token = page.nextPageToken
            } while !token.isEmpty
            #expect(pages.map(\.count) == [3, 3, 1])
            #expect(pages.flatMap { $0 } == ids.reversed(), "newest first, each job once")
            var filtered = ListJobsRequest()
            filtered.instance = "i1"
            filtered.status = .succeeded
            filtered.kind = .clone
            let onI1 = try await client.unary(FerryMethods.listJobs, filtered)
            #expect(onI1.jobs.map(\.id) == Array(ids.suffix(2).reversed()))
            var bad = ListJobsRequest()
            bad.pageToken = "garbage!"
            #expect(await statusCode { _ = try await client.unary(FerryMethods.listJobs, bad) } == .invalidArgument)
        }
    }

    @Test func instancesAreCheckedStoredWithoutPasswordsAndListTheirTenants() async throws {
        try await Replicas.with(count: 1, instances: 1) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            let url = try #require(replicas.instances["i0"])
            try await url.withConnection(logger: logger) { connection in
                for schema in ["acme", "globex", "_initech"] { try await connection.execute(PostgresQuery(unsafeSQL: "CREATE SCHEMA \(schema)"), logger: logger) }
            }
            let tenants = try await client.unary(FerryMethods.listTenants, .with { $0.instanceID = "i0" })
            #expect(tenants.tenants == ["_initech", "acme", "globex"])
            #expect(await statusCode { _ = try await client.unary(FerryMethods.listTenants, .with { $0.instanceID = "nope" }) } == .notFound)

            // key=value DSNs work too; the password never comes back.
            let keyValue = "host=\(url.host) port=\(url.port) user=\(url.user) password='\(url.password ?? "")' dbname=\(url.database) sslmode=disable"
            let put = try await client.unary(FerryMethods.putInstance, .with { $0.id = "kv"; $0.dsn = keyValue })
            #expect(put.instance.hasPassword_p && put.instance.dsn.isEmpty)
            let listed = try await client.unary(FerryMethods.listInstances, ListInstancesRequest())
            #expect(listed.instances.map(\.id) == ["i0", "kv"])
            #expect(listed.instances.allSatisfy { $0.dsn.isEmpty })

            // A DSN that does not connect is refused and not stored; nor is a malformed one.
            var wrong = url
            wrong.password = "wrong-password"
            let refused = await statusCode {
                _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = "bad"; $0.dsn = wrong.secretURLString })
            }
            #expect(refused == .failedPrecondition)
            #expect(await statusCode { _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = "bad"; $0.dsn = "host=" }) } == .invalidArgument)
            #expect(await statusCode { _ = try await client.unary(FerryMethods.putInstance, .with { $0.id = "Bad Id"; $0.dsn = url.secretURLString }) } == .invalidArgument)
            let stored = try await replicas.query { try await $0.execute("SELECT count(*)::int FROM instances WHERE id = 'bad'", logger: logger).first!.decode(Int.self) }
            #expect(stored == 0)
            let output = replicas.servers[0].process.output
            #expect(!output.contains(url.password ?? "#") && !output.contains("wrong-password"), "a password reached the log")
        }
    }
}

/// A value shared between test tasks, behind a lock.
final class Shared<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { mutex.withLock { body(&$0) } }
}
