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

/// Faults of what the replicas depend on, while real work runs: a target instance that goes
/// away in the middle of a clone, the PgBouncer in front of the control database restarted
/// under load, and the control database restarted in the middle of a clone. Serialized: each
/// test runs replicas and clusters of its own on two cores.
@Suite(.serialized) struct InstanceFaultTests: TenantJobTest {
    // MARK: A target instance that goes away

    /// **Fault:** the target instance (a cluster of its own) is shut down (fast: every session
    /// is terminated at once, then nothing listens) while a real clone has verified three of
    /// its four tables and holds the fourth, `slow`, in a statement on the target just before
    /// its checksum (attempt 1 only).
    ///
    /// **Expected:** the job ends FAILED, `UNAVAILABLE` and retryable, with a message naming
    /// what it was doing on the target and the lost connection, without waiting for the leader
    /// (the replica keeps heartbeating: its executor records the failure); the job's sessions
    /// leave the source. With the target back (same data, same port), the rerun succeeds, the
    /// target equals the source, and the three verified tables were not written again: same
    /// relation, same file, same row transaction ids, and the server's statistics count each
    /// row inserted once.
    @Test func aTargetThatGoesAwayMidCopyFailsRetryablyAndTheRerunSkipsVerifiedTables() async throws {
        let cluster = try await Self.ownCluster(database: "target")
        do {
            try await targetGoesAway(cluster)
        } catch {
            try? await cluster.stop()
            throw error
        }
        try await cluster.stop()
    }

    private func targetGoesAway(_ cluster: EmbeddedPostgres) async throws {
        let hold = Self.kinds.merging(["FERRY_TEST_CLONE_BEFORE_VERIFY": "slow@1:SELECT pg_sleep(60)"]) { $1 }
        let target = try DatabaseURL(parsing: cluster.url(database: "target"))
        try await Self.withReplicas(count: 1, instances: 1, environments: [hold], secrets: [cluster.password]) { replicas in
            let source = replicas.instances["i0"]!
            let client = try await replicas.client(0)
            defer { client.close() }
            _ = try await client.putInstance(id: "far", dsn: target.secretURLString)
            try await run(source, HeldTenant.script)

            let job = try await client.startJob(Self.clone(("i0", "app"), ("far", "app")))
            try await waitUntilHeld(job, replicas, target: target)
            let before = try await fingerprints(target)

            try await cluster.stopServer(.fast)
            let struck = ContinuousClock.now
            let failed = try await client.waitFor(job.id, timeout: .seconds(60)) { $0.status.isTerminal }
            let took = ContinuousClock.now - struck
            #expect(failed.status == .failed, "\(failed)")
            #expect(failed.error.code == "UNAVAILABLE" && failed.error.retryable, "\(failed.error)")
            let message = failed.error.message
            // What it was doing, where, and that the connection went: libpq's own words when
            // the server's goodbye (57P01) did not reach it first.
            #expect(message.contains("table slow on the target"), "\(message)")
            #expect(message.contains("server closed the connection unexpectedly") || message.contains("terminating connection due to administrator command"), "\(message)")
            #expect(!message.contains("stopped heartbeating"), "the leader, not the replica, failed the job: \(message)")
            // The executor fails the job itself, at once; a kind that does not return is
            // recorded 10 s after being stopped. Far under the 60 s the hold would last.
            #expect(took < .seconds(30), "the job ended \(took) after the target went away")
            try await expectNoSessions(of: job, on: [source])

            try await cluster.startServer()
            let rerun = try await client.rerun(job.id)
            let done = try await client.waitFor(rerun.id, timeout: .seconds(120)) { $0.status.isTerminal }
            #expect(done.status == .succeeded, "\(done.error)")
            try await expectSameTenant(source, target)
            try await expectUntouched(before, target)
            #expect(done.result.tables.map(\.table) == ["a", "b", "c", "slow"])
            // What the checkpoints say too: attempt 1 verified a, b, c; the rerun did slow.
            let writers = try await replicas.query { connection in
                try await connection.execute("""
                    SELECT string_agg(table_name || '=' || CASE WHEN job_id = root_job_id THEN '1' ELSE '2' END, ',' ORDER BY table_name)
                      FROM job_tables WHERE root_job_id = \(UUID(uuidString: job.id)!)
                    """, logger: logger).first!.decode(String.self)
            }
            #expect(writers == "a=1,b=1,c=1,slow=2")
            try await expectNoSessions(of: job, on: [source, target])
        }
    }

    // MARK: The control database restarted mid-clone

    /// **Fault:** the control database (a cluster of its own) is restarted — every session
    /// terminated, nothing listening for 3 s, then the same data on the same port — while a
    /// real clone runs on one of two replicas, with three tables verified and the fourth held
    /// for 6 s before its checksum (in every attempt).
    ///
    /// **Expected:** the outage is shorter than the heartbeat timeout (10 s), so the job goes
    /// on and succeeds; should it fail, it must be retryable and its rerun must succeed. Either
    /// way the target equals the source, and no table verified before the restart was written
    /// again (same relation, file and row transaction ids; each row inserted once).
    @Test func aControlDatabaseRestartMidCloneLosesNoVerifiedTable() async throws {
        let cluster = try await Self.ownCluster(database: "ferry", maxConnections: 100)
        do {
            try await controlRestart(cluster)
        } catch {
            try? await cluster.stop()
            throw error
        }
        try await cluster.stop()
    }

    private func controlRestart(_ cluster: EmbeddedPostgres) async throws {
        let hold = Self.kinds.merging(["FERRY_TEST_CLONE_BEFORE_VERIFY": "slow:SELECT pg_sleep(6)"]) { $1 }
        let control = try DatabaseURL(parsing: cluster.url(database: "ferry"))
        // Timeout 10 s: the executor stops a job 9 s after its last confirmed heartbeat, so a
        // 3 s outage plus the reconnection must not reach it.
        let arguments = ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "10", "--leader-lease", "2"]
        try await Self.withReplicas(count: 2, instances: 2, control: control, arguments: arguments, environments: [hold, hold],
                                    secrets: [cluster.password]) { replicas in
            let source = replicas.instances["i0"]!
            let target = replicas.instances["i1"]!
            try await run(source, HeldTenant.script)
            let client = try await replicas.client(0)
            defer { client.close() }
            let job = try await client.startJob(Self.clone(("i0", "app"), ("i1", "app")))
            try await waitUntilHeld(job, replicas, target: target)
            let before = try await fingerprints(target)

            try await cluster.restart(downtime: .seconds(3))
            // GetJob answers UNAVAILABLE until the replica's pool has reconnected.
            let deadline = ContinuousClock.now + .seconds(90)
            var ended: Job?
            while ended == nil, ContinuousClock.now < deadline {
                if let now = try? await client.job(job.id), now.status.isTerminal { ended = now } else { try await Task.sleep(for: .milliseconds(200)) }
            }
            let first = try #require(ended, "the job did not end within 90 s of the restart")
            var finished = first
            if first.status != .succeeded {
                #expect(first.status == .failed && first.error.retryable, "\(first)")
                let rerun = try await client.rerun(job.id)
                finished = try await client.waitFor(rerun.id, timeout: .seconds(120)) { $0.status.isTerminal }
            }
            print("control restart mid-clone: the job ended \(first.status) \(first.error.code) \(first.error.message)")
            #expect(finished.status == .succeeded, "\(finished.error)")
            try await expectSameTenant(source, target)
            try await expectUntouched(before, target)
            try await expectNoSessions(of: job, on: [source, target])
        }
    }

    // MARK: PgBouncer restarted under load

    /// **Fault:** two replicas reach their control database through a transaction-pooling
    /// PgBouncer (polling, no LISTEN); under load — four clients looping StartJob (queued
    /// stepping jobs of 3 s) and following their job with GetJob and ListJobs, two more
    /// watching jobs with WatchJob — PgBouncer is stopped (every client and server connection
    /// closed at once), nothing listens for 2 s, and it starts again on the same port.
    ///
    /// **Expected:**
    /// - every call that failed failed `UNAVAILABLE`: the replica could not reach its
    ///   database, which a caller may retry. Not INTERNAL or UNKNOWN (a fault of the server),
    ///   and not DEADLINE_EXCEEDED: the calls carry a 30 s deadline, and a server that cannot
    ///   answer within it is hanging instead of answering;
    /// - the replicas recover by themselves: within 20 s of PgBouncer's return no call fails
    ///   any more, Health/Check answers SERVING and `/healthz` 200 on both;
    /// - every job ends; a job that failed is retryable and its rerun succeeds;
    /// - nothing is lost: every StartJob answered OK has its job in the control database,
    ///   and a watch resumed with `afterSeq` after each error saw exactly the job's STATUS
    ///   events in the events table, in order;
    /// - `--max-running-per-instance` (2) held throughout, by the recorded RUNNING intervals.
    @Test func aPgBouncerRestartUnderLoadLosesNothingAndTheReplicasRecover() async throws {
        let cap = 2
        try await Self.withReplicas(count: 2, throughPgBouncer: true, instances: 2, jobMs: 3000, jobSteps: 6,
                                    arguments: ["--max-running-per-instance", "\(cap)"]) { replicas in
            let bouncer = try #require(replicas.bouncer)
            let clients = [try await replicas.client(0), try await replicas.client(1)]
            defer { for client in clients { client.close() } }
            let calls = CallLog()
            let started = Shared<[String]>([])
            let stop = Shared(false)

            let starters = (0..<4).map { index in
                Task {
                    let client = clients[index % 2]
                    let instance = "i\(index / 2)"
                    var round = 0
                    while !stop.withLock({ $0 }) {
                        round += 1
                        let request = cloneRequest(instance: instance, target: "l\(index)_\(round)", queue: true, requestID: UUID().uuidString)
                        guard let job = await calls.record("StartJob", { try await client.startJob(request, timeout: .seconds(30)) }) else {
                            try? await Task.sleep(for: .milliseconds(200))
                            continue
                        }
                        started.withLock { $0.append(job.id) }
                        // Follow it until it ends (or the load stops).
                        while !stop.withLock({ $0 }) {
                            let now = await calls.record("GetJob") { try await client.getJob(job.id, timeout: .seconds(30)) }
                            _ = await calls.record("ListJobs") { try await client.listJobs(.with { $0.pageSize = 20 }, timeout: .seconds(30)) }
                            if now?.status.isTerminal == true { break }
                            try? await Task.sleep(for: .milliseconds(250))
                        }
                    }
                }
            }
            let watched = Shared<[String: [StatusEvent]]>([:])
            let watchers = (0..<2).map { index in
                Task {
                    let client = clients[index % 2]
                    while !stop.withLock({ $0 }) {
                        // The newest job nobody watches yet.
                        let next = started.withLock { ids in ids.last { id in watched.withLock { $0[id] == nil } } }
                        guard let id = next else {
                            try? await Task.sleep(for: .milliseconds(100))
                            continue
                        }
                        watched.withLock { $0[id] = [] }
                        let events = await watch(id, client, calls)
                        watched.withLock { $0[id] = events }
                    }
                }
            }

            // Load before the fault: jobs running on both instances.
            let loadStarted = ContinuousClock.now
            while try await replicas.query({ try await $0.execute("SELECT count(*)::int FROM jobs WHERE status = 'RUNNING'", logger: logger).first!.decode(Int.self) }) < 2 * cap,
                  ContinuousClock.now < loadStarted + .seconds(30) {
                try await Task.sleep(for: .milliseconds(200))
            }
            try await Task.sleep(for: .seconds(2))
            let down = ContinuousClock.now
            try await bouncer.restart(downtime: .seconds(2))
            let back = ContinuousClock.now
            try await Task.sleep(for: .seconds(25))
            stop.withLock { $0 = true }
            for task in starters { await task.value }
            for task in watchers { await task.value }

            // Every call failed at worst UNAVAILABLE, and none after the recovery.
            let log = calls.entries
            let failures = log.filter { $0.code != .ok }
            let codes = Dictionary(grouping: log, by: { "\($0.method) \($0.code)" }).mapValues(\.count)
            // The load met the fault: calls failed, or waited through the outage.
            let across = log.filter { $0.code != .ok || ($0.began < down && $0.at > back) }
            let slowest = log.map { $0.at - $0.began }.max() ?? .zero
            print("PgBouncer restart under load: \(log.count) calls, \(codes.sorted { $0.key < $1.key }), \(across.count) failed or spanned the outage, the slowest took \(slowest)")
            #expect(!across.isEmpty, "no call met the outage")
            #expect(failures.allSatisfy { $0.code == .unavailable }, "\(failures.filter { $0.code != .unavailable }.prefix(5))")
            let lastFailure = failures.map(\.at).max()
            if let lastFailure {
                #expect(lastFailure < back + .seconds(20), "calls still failed \(lastFailure - back) after PgBouncer was back: \(failures.suffix(3))")
            }
            let afterRecovery = log.filter { $0.at > max(lastFailure ?? back, back) }
            #expect(afterRecovery.count >= 20 && Set(afterRecovery.map(\.method)).isSuperset(of: ["StartJob", "GetJob", "ListJobs"]),
                    "too few calls after the recovery to show it: \(afterRecovery.count)")
            for (index, client) in clients.enumerated() {
                #expect(try await client.check().status == .serving, "replica \(index)")
                let port = try #require(replicas.servers[index].ready["opsURL"].flatMap { $0.split(separator: ":").last }.flatMap { Int($0) })
                let health = try RawSocket.get(port: port, path: "/healthz")
                #expect(health.hasPrefix("HTTP/1.1 200") && health.hasSuffix("SERVING\n"), "replica \(index): \(health)")
            }

            // Every job ends; the failed ones are retryable, and their reruns succeed.
            let deadline = ContinuousClock.now + .seconds(60)
            var open = -1
            while open != 0, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(300))
                open = try await replicas.query { try await $0.execute("SELECT count(*)::int FROM jobs WHERE status IN ('QUEUED', 'RUNNING')", logger: logger).first!.decode(Int.self) }
            }
            #expect(open == 0, "\(open) jobs did not end within 60 s of the load")
            let outcomes = try await replicas.query { connection in
                try await connection.execute("SELECT id, status, coalesce(error_code, ''), coalesce(error_retryable, false) FROM jobs", logger: logger)
                    .map { try $0.decode((UUID, String, String, Bool).self) }
            }
            let failed = outcomes.filter { $0.1 == "FAILED" }
            print("PgBouncer restart under load: \(outcomes.count) jobs, \(Dictionary(grouping: outcomes, by: { "\($0.1) \($0.2)" }).mapValues(\.count))")
            #expect(outcomes.allSatisfy { $0.1 == "SUCCEEDED" || $0.1 == "FAILED" }, "\(outcomes.filter { $0.1 != "SUCCEEDED" && $0.1 != "FAILED" })")
            #expect(failed.allSatisfy { $0.3 }, "a job failed without being retryable: \(failed.filter { !$0.3 })")
            for (id, _, _, _) in failed where failed.count <= 20 {
                let rerun = try await clients[0].rerun(id.uuidString.lowercased())
                let done = try await clients[0].waitFor(rerun.id, timeout: .seconds(60)) { $0.status.isTerminal }
                #expect(done.status == .succeeded, "the rerun of \(id): \(done.error)")
            }

            // Nothing lost.
            let known = Set(outcomes.map { $0.0.uuidString.lowercased() })
            let answered = started.withLock { $0 }
            #expect(answered.count >= 8, "too few jobs started: \(answered.count)")
            #expect(answered.filter { !known.contains($0) }.isEmpty, "StartJob answered OK for jobs the database does not hold")
            let watches = watched.withLock { $0 }
            #expect(watches.count >= 2)
            for (id, seen) in watches {
                let recorded = try await replicas.query { connection in
                    try await connection.execute("""
                        SELECT seq, payload->>'status' FROM job_events WHERE job_id = \(UUID(uuidString: id)!) AND type = 'STATUS' ORDER BY seq
                        """, logger: logger).map { try $0.decode((Int64, String).self) }
                }
                #expect(seen.map(\.seq) == recorded.map(\.0) && seen.map(\.status) == recorded.map(\.1), "job \(id): watched \(seen), recorded \(recorded)")
            }

            // The cap held, by the intervals the control database recorded.
            let intervals = try await replicas.query { connection in
                try await connection.execute("""
                    SELECT DISTINCT ji.instance_id, j.id, j.started_at, j.finished_at
                      FROM jobs j JOIN job_instances ji ON ji.job_id = j.id WHERE j.started_at IS NOT NULL
                    """, logger: logger).map { try $0.decode((String, UUID, Date, Date?).self) }
            }
            for instance in Set(intervals.map(\.0)) {
                // Ends sort before starts at the same instant: a slot freed and taken at once.
                var edges: [(at: Date, change: Int)] = []
                for (owner, _, start, end) in intervals where owner == instance {
                    edges.append((start, 1))
                    edges.append((end ?? .distantFuture, -1))
                }
                edges.sort { $0.at < $1.at || ($0.at == $1.at && $0.change < $1.change) }
                var running = 0
                var most = 0
                for edge in edges {
                    running += edge.change
                    most = max(most, running)
                }
                #expect(most <= cap, "instance \(instance) had \(most) jobs running at once")
            }
        }
    }

    // MARK: Helpers

    static let kinds = CloneTests.kinds


    static func clone(_ source: (String, String), _ target: (String, String)) -> StartJobRequest {
        var request = StartJobRequest()
        request.clone = .clone(from: source.0, source.1, to: target.0, target.1)
        request.clone.copyWidth = 2
        request.clone.indexWidth = 2
        return request
    }

    /// A throwaway cluster of the test's own: the fault must not disturb the suites sharing
    /// the test cluster.
    static func ownCluster(database: String, maxConnections: Int = 300) async throws -> EmbeddedPostgres {
        var quiet = Logger(label: "ferry.test-own-cluster")
        quiet.logLevel = .warning
        return try await EmbeddedPostgres.start(database: database, maxConnections: maxConnections, logger: quiet)
    }

    /// Replicas as ``Replicas/with`` starts them, stopped whatever happens; then each must
    /// have exited cleanly, and no replica may have logged a secret the test gave it: the
    /// admin token, the control database's and instances' passwords (PgBouncer's is the
    /// control cluster's), and `secrets`.
    static func withReplicas(
        count: Int, throughPgBouncer: Bool = false, instances: Int, control: DatabaseURL? = nil, jobMs: Int = 300, jobSteps: Int = 5,
        arguments: [String] = [], environments: [[String: String]] = [], secrets: [String] = [],
        _ body: (Replicas) async throws -> Void
    ) async throws {
        let replicas = try await Replicas.start(count: count, throughPgBouncer: throughPgBouncer, instances: instances, control: control,
                                                jobMs: jobMs, jobSteps: jobSteps, arguments: arguments, environments: environments)
        let given = [replicas.token, replicas.control.password ?? ""] + replicas.instances.values.map { $0.password ?? "" } + secrets
        do {
            try await body(replicas)
        } catch {
            _ = await replicas.stop()
            throw error
        }
        let results = await replicas.stop()
        for (index, result) in results.enumerated() {
            #expect(result.status == 0, "replica \(index) exited \(result.status): \(result.output.suffix(3000))")
            let leaked = leakedSecrets(in: result.output, secrets: given)
            #expect(leaked.isEmpty, "replica \(index) logged a secret: \(leaked.prefix(3))")
        }
    }

    /// Waits until the job has verified a, b and c and holds `slow` in the hook's statement on
    /// the target, before its checksum.
    func waitUntilHeld(_ job: Job, _ replicas: Replicas, target: DatabaseURL) async throws {
        let root = UUID(uuidString: job.rootJobID)!
        let deadline = ContinuousClock.now + .seconds(60)
        var states = ""
        var sleeping = 0
        let wanted = "a=VERIFIED,b=VERIFIED,c=VERIFIED,slow=COPIED"
        while states != wanted || sleeping == 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            states = try await replicas.query { connection in
                try await connection.execute("""
                    SELECT coalesce(string_agg(table_name || '=' || status, ',' ORDER BY table_name), '') FROM job_tables WHERE root_job_id = \(root)
                    """, logger: logger).first!.decode(String.self)
            }
            sleeping = try await scalar(target, """
                SELECT count(*)::int FROM pg_stat_activity WHERE application_name LIKE 'ferry \(job.rootJobID) %' AND query LIKE '%pg_sleep%'
                """)
        }
        let now = try await replicas.client(0).job(job.id)
        #expect(states == wanted && sleeping == 1 && now.status == .running, "the job is not where the test strikes: \(states), \(sleeping) holding, \(now.status)")
    }

    /// Per verified table: its relation, its file and its rows' transaction ids (any reload,
    /// truncate or re-create changes one of them).
    func fingerprints(_ target: DatabaseURL) async throws -> [String: String] {
        var result: [String: String] = [:]
        for table in HeldTenant.verifiedFirst {
            result[table] = try await scalar(target, """
                SELECT 'app.\(table)'::regclass::oid::text || ' ' || pg_relation_filenode('app.\(table)')::text || ' '
                       || (SELECT string_agg(DISTINCT xmin::text, ',') FROM app.\(table))
                """)
        }
        return result
    }

    /// The tables verified before the fault are as they were (``fingerprints(_:)``), and the
    /// server counted each of their rows inserted once: a second load into the same relation
    /// would count them twice.
    func expectUntouched(_ before: [String: String], _ target: DatabaseURL) async throws {
        #expect(try await fingerprints(target) == before, "a table verified before the fault was written again")
        for table in HeldTenant.verifiedFirst {
            let (inserted, rows) = try await target.withConnection(logger: logger) { connection in
                try await connection.execute("""
                    SELECT s.n_tup_ins, (SELECT count(*) FROM app.\(unescaped: table)) FROM pg_stat_user_tables s WHERE s.relid = \("app.\(table)")::regclass
                    """, logger: logger).first!.decode((Int64, Int64).self)
            }
            #expect(inserted == rows, "table \(table): \(inserted) rows inserted for \(rows)")
        }
    }

    /// The target holds the source's tenant: schema and rows.
    func expectSameTenant(_ source: DatabaseURL, _ target: DatabaseURL) async throws {
        let sourceSchema = try await TenantInspection.schemaDump(source, schema: "app")
        let targetSchema = try await TenantInspection.schemaDump(target, schema: "app")
        #expect(sourceSchema == targetSchema, "pg_dump differs: \(TenantInspection.difference(sourceSchema, targetSchema))")
        #expect(try await TenantInspection.data(target, schema: "app") == TenantInspection.data(source, schema: "app"))
    }

    /// No session of the job's lineage (`ferry <root> <attempt>`) is left on `instances`,
    /// within 10 s (a terminated session takes a moment to go).
    func expectNoSessions(of job: Job, on instances: [DatabaseURL], sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let query = "SELECT count(*)::int FROM pg_stat_activity WHERE application_name LIKE 'ferry \(job.rootJobID) %'"
        let deadline = ContinuousClock.now + .seconds(10)
        var left: [Int] = []
        repeat {
            if !left.isEmpty { try await Task.sleep(for: .milliseconds(200)) }
            left = []
            for url in instances { left.append(try await scalar(url, query)) }
        } while left.contains { $0 > 0 } && ContinuousClock.now < deadline
        #expect(left.allSatisfy { $0 == 0 }, "sessions of job \(job.id) left: \(left)", sourceLocation: sourceLocation)
    }
}

/// A STATUS event a watch delivered.
struct StatusEvent: Sendable, CustomStringConvertible {
    var seq: Int64
    var status: String
    var description: String { "\(seq):\(status)" }
}

/// Follows job `id` until its terminal STATUS, opening a new WatchJob after each error with
/// `afterSeq` = the last event seen, for at most 90 s. Each error is logged in `calls`.
private func watch(_ id: String, _ client: FerryConnection, _ calls: CallLog) async -> [StatusEvent] {
    var after: Int64 = 0
    var seen: [StatusEvent] = []
    let deadline = ContinuousClock.now + .seconds(90)
    while ContinuousClock.now < deadline {
        let finished: Bool? = await calls.record("WatchJob") {
            for try await event in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = id; $0.afterSeq = after }) where event.type != .snapshot {
                after = max(after, event.seq)
                guard event.type == .status else { continue }
                seen.append(StatusEvent(seq: event.seq, status: event.status.name))
                if event.status.isTerminal { return true }
            }
            return false
        }
        if finished != nil { break }
        try? await Task.sleep(for: .milliseconds(200))
    }
    return seen
}

/// Every call the load made: its method, how it ended and when.
final class CallLog: Sendable {
    struct Entry: Sendable, CustomStringConvertible {
        var method: String
        var code: StatusCode
        var message: String
        /// When the call began and when it ended.
        var began: ContinuousClock.Instant
        var at: ContinuousClock.Instant
        var description: String { "\(method) \(code) \(message)" }
    }

    private let log = Mutex<[Entry]>([])
    var entries: [Entry] { log.withLock { $0 } }

    /// Runs `call`, logs how it ended, and returns its result (nil when it failed).
    func record<T>(_ method: String, _ call: () async throws -> T) async -> T? {
        let began = ContinuousClock.now
        do {
            let result = try await call()
            log.withLock { $0.append(Entry(method: method, code: .ok, message: "", began: began, at: .now)) }
            return result
        } catch {
            let (code, message) = (error as? RPCError).map { ($0.code, $0.message) } ?? (.unknown, "\(error)")
            log.withLock { $0.append(Entry(method: method, code: code, message: message, began: began, at: .now)) }
            return nil
        }
    }
}

extension JobStatus {
    /// The name the control database stores (`RUNNING`, …).
    var name: String {
        switch self {
        case .queued: "QUEUED"
        case .running: "RUNNING"
        case .succeeded: "SUCCEEDED"
        case .failed: "FAILED"
        case .cancelled: "CANCELLED"
        default: "\(self)"
        }
    }
}
