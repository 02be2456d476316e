import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import Logging
import PostgresNIO
import Testing


/// The job-kind interface against real replicas and a real target instance: the plan step,
/// the fence at the target, stops that reach the database, and which kinds a replica claims.
@Suite(.serialized) struct JobKindTests {
    /// Runs `sql` on instance `i0` of `replicas`.
    private func onInstance<T: Sendable>(_ replicas: Replicas, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await replicas.instances["i0"]!.withConnection(logger: logger, body)
    }

    private func createSchema(_ replicas: Replicas, _ name: String) async throws {
        try await onInstance(replicas) { try await $0.execute("CREATE SCHEMA \(unescaped: name)", logger: logger) }
    }

    /// Sessions on the instance named for attempt `attempt` of the lineage rooted at `root`.
    private func sessions(_ replicas: Replicas, root: String, attempt: Int) async throws -> Int {
        try await onInstance(replicas) {
            try await $0.execute("SELECT count(*)::int FROM pg_stat_activity WHERE application_name = \("ferry \(root) \(attempt)")", logger: logger)
                .first!.decode(Int.self)
        }
    }

    // MARK: The plan step

    @Test func thePlanStepRefusesWhatItCanKnowBeforeAnythingIsAdmitted() async throws {
        try await Replicas.with(count: 1, instances: 1) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            let countJobs = { try await replicas.query { try await $0.execute("SELECT count(*)::int FROM jobs", logger: logger).first!.decode(Int.self) } }

            // The source tenant does not exist: NOT_FOUND, nothing admitted.
            var error = await statusCode { _ = try await client.startJob(cloneRequest(instance: "i0", source: "nowhere", target: "write_a")) }
            #expect(error == .notFound)
            // An unregistered instance: NOT_FOUND from the plan as well.
            var request = cloneRequest(instance: "i0", source: "src", target: "write_a")
            request.clone.sourceInstance = "i9"
            error = await statusCode { _ = try await client.startJob(request) }
            #expect(error == .notFound)
            // A bad field: INVALID_ARGUMENT naming it.
            do {
                _ = try await client.startJob(cloneRequest(instance: "i0", source: "Bad-Name", target: "write_a"))
                Issue.record("a bad tenant name was accepted")
            } catch let error as RPCError {
                #expect(error.code == .invalidArgument && error.message.contains("clone.sourceTenant"), "\(error)")
            }

            // A target tenant that exists and is not Ferry's: ALREADY_EXISTS.
            try await createSchema(replicas, "src")
            try await createSchema(replicas, "write_taken")
            error = await statusCode { _ = try await client.startJob(cloneRequest(instance: "i0", source: "src", target: "write_taken")) }
            #expect(error == .alreadyExists)
            #expect(try await countJobs() == 0, "a refused plan admitted a job")

            // A job creates its target; a new job for the same target is refused, while a rerun
            // of its lineage resumes into it.
            let first = try await client.startJob(cloneRequest(instance: "i0", source: "src", target: "write_mine"))
            let done = try await client.waitFor(first.id) { $0.status.isTerminal }
            #expect(done.status == .succeeded)
            error = await statusCode { _ = try await client.startJob(cloneRequest(instance: "i0", source: "src", target: "write_mine")) }
            #expect(error == .alreadyExists)
            let claim = try await replicas.query {
                try await $0.execute("SELECT root_job_id FROM tenant_claims WHERE instance_id = 'i0' AND tenant = 'write_mine'", logger: logger).first?.decode(UUID.self)
            }
            #expect(claim == UUID(uuidString: first.id))
            #expect(try await countJobs() == 1)
        }
    }

    // MARK: The fence at the target

    /// A replica frozen while its job writes the target is failed by the leader and the job is
    /// rerun elsewhere; when it thaws, the target proves it wrote nothing after the rerun's
    /// first write, and its sessions there are gone.
    @Test func aFrozenAttemptWritesNothingAfterTheRerunsFirstWrite() async throws {
        try await Replicas.with(count: 2, instances: 1, arguments: ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "3"]) { replicas in
            try await createSchema(replicas, "src")
            let client = try await replicas.client(0)
            defer { client.close() }
            // 400 steps of 50 ms, each a pg_sleep and an INSERT on the target.
            let job = try await client.startJob(cloneRequest(instance: "i0", source: "src", target: "write_20000_400"))
            _ = try await client.waitFor(job.id) { $0.progress.tablesDone >= 5 }
            let owner = try await replicas.query {
                try await $0.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: job.id)!)", logger: logger).first!.decode(String.self)
            }
            let frozen = try #require(replicas.index(ofOwner: owner))
            let other = try await replicas.client(frozen + 1)
            defer { other.close() }
            replicas.servers[frozen].process.child.signal(SIGSTOP)
            var thawed = false
            defer { if !thawed { replicas.servers[frozen].process.child.signal(SIGCONT) } }

            let failed = try await other.waitFor(job.id, timeout: .seconds(30)) { $0.status.isTerminal }
            #expect(failed.status == .failed && failed.error.retryable, "\(failed)")
            let rerun = try await other.rerun(job.id)
            // Wait for the rerun's first write at the target, then thaw the frozen replica and
            // give it time to do whatever it would.
            let firstWrite: Date = try await {
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline {
                    let at = try await onInstance(replicas) {
                        try await $0.execute("SELECT min(written_at) FROM write_20000_400.steps WHERE attempt = 2", logger: logger).first!.decode(Date?.self)
                    }
                    if let at { return at }
                    try await Task.sleep(for: .milliseconds(100))
                }
                throw RPCError(.deadlineExceeded, "the rerun never wrote")
            }()
            replicas.servers[frozen].process.child.signal(SIGCONT)
            thawed = true
            try await Task.sleep(for: .seconds(4))

            let (late, attempt1Rows) = try await onInstance(replicas) { connection in
                try await connection.execute("""
                    SELECT count(*) FILTER (WHERE attempt = 1 AND written_at >= \(firstWrite))::int, count(*) FILTER (WHERE attempt = 1)::int
                      FROM write_20000_400.steps
                    """, logger: logger).first!.decode((Int, Int).self)
            }
            #expect(attempt1Rows >= 5, "the first attempt wrote before it was frozen")
            #expect(late == 0, "the frozen attempt wrote \(late) rows after the rerun's first write")
            #expect(try await sessions(replicas, root: job.id, attempt: 1) == 0, "the frozen attempt still has sessions on the target")
            #expect(try await sessions(replicas, root: job.id, attempt: 2) >= 1, "the rerun is writing")
            // The rerun resumes where the lineage stopped and is not disturbed by the thawed replica.
            let cancelled = try await other.cancel(rerun.id)
            #expect(cancelled.status == .running || cancelled.status == .cancelled)
            let ended = try await other.waitFor(rerun.id) { $0.status.isTerminal }
            #expect(ended.status == .cancelled, "\(ended)")
        }
    }

    // MARK: Stopping reaches the database

    /// A cancelled job's statement on the instance ends there within seconds, not when it
    /// would have finished.
    @Test func cancelEndsTheJobsStatementsOnTheInstance() async throws {
        try await Replicas.with(count: 1, instances: 1) { replicas in
            try await createSchema(replicas, "src")
            let client = try await replicas.client(0)
            defer { client.close() }
            // 2 steps of 60 s, each one pg_sleep on the target.
            let job = try await client.startJob(cloneRequest(instance: "i0", source: "src", target: "write_120000_2"))
            let deadline = ContinuousClock.now + .seconds(30)
            while try await sessions(replicas, root: job.id, attempt: 1) < 2, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            let sleeping = try await onInstance(replicas) {
                try await $0.execute("SELECT count(*)::int FROM pg_stat_activity WHERE application_name = \("ferry \(job.id) 1") AND query LIKE 'SELECT pg_sleep%' AND state = 'active'", logger: logger).first!.decode(Int.self)
            }
            #expect(sleeping == 1, "the job is not inside its long statement")
            let cancelledAt = ContinuousClock.now
            _ = try await client.cancel(job.id)
            let ended = try await client.waitFor(job.id, timeout: .seconds(20)) { $0.status.isTerminal }
            #expect(ended.status == .cancelled)
            while try await sessions(replicas, root: job.id, attempt: 1) > 0, ContinuousClock.now - cancelledAt < .seconds(30) {
                try await Task.sleep(for: .milliseconds(100))
            }
            let remaining = try await sessions(replicas, root: job.id, attempt: 1)
            #expect(remaining == 0, "the job's sessions outlived its cancel")
            #expect(ContinuousClock.now - cancelledAt < .seconds(20), "the statement ran on after the cancel")
        }
    }

    // MARK: Cancel of a job whose replica died

    /// CancelJob of a job whose replica was killed ends CANCELLED within a few heartbeat
    /// intervals, long before the heartbeat timeout would fail it.
    @Test func cancelOfAJobWhoseReplicaDiedEndsCancelled() async throws {
        try await Replicas.with(count: 2, instances: 1, jobMs: 60000, jobSteps: 60,
                                arguments: ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "60"]) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            let job = try await client.startJob(cloneRequest(instance: "i0", target: "doomed"))
            _ = try await client.waitFor(job.id) { $0.progress.tablesDone >= 1 }
            let owner = try await replicas.query {
                try await $0.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: job.id)!)", logger: logger).first!.decode(String.self)
            }
            let victim = try #require(replicas.index(ofOwner: owner))
            replicas.servers[victim].process.child.signal(SIGKILL)
            let survivor = try await replicas.client(victim + 1)
            defer { survivor.close() }
            let asked = ContinuousClock.now
            _ = try await survivor.cancel(job.id)
            let ended = try await survivor.waitFor(job.id, timeout: .seconds(30)) { $0.status.isTerminal }
            #expect(ended.status == .cancelled, "\(ended)")
            #expect(ContinuousClock.now - asked < .seconds(15), "the cancel waited for the heartbeat timeout")
            // Resumable like any cancelled job.
            let rerun = try await survivor.rerun(job.id)
            #expect(rerun.attempt == 2)
            _ = try await survivor.cancel(rerun.id)
        }
    }

    // MARK: Rolling deploys

    /// A replica claims only kinds it runs: during a rolling deploy, a replica without a kind
    /// leaves its jobs to the replicas that have it, instead of claiming and failing them.
    @Test func aReplicaClaimsOnlyKindsItRuns() async throws {
        try await Replicas.with(count: 2, instances: 1, jobMs: 2000, jobSteps: 4,
                                arguments: ["--executors", "1"],
                                environments: [["FERRY_TEST_KINDS": "clone,export"], ["FERRY_TEST_KINDS": "none"]]) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            // Replica 0 has one executor: the clone occupies it and the export waits for it,
            // while replica 1 (no kinds) sits idle beside them.
            let clone = try await client.startJob(cloneRequest(instance: "i0", target: "busy"))
            var request = StartJobRequest()
            request.export = .with { $0.sourceInstance = "i0"; $0.sourceTenant = "src" }
            request.queue = true
            let export = try await client.startJob(request)
            for id in [clone.id, export.id] {
                let done = try await client.waitFor(id, timeout: .seconds(30)) { $0.status.isTerminal }
                #expect(done.status == .succeeded, "\(done)")
                let owner = try await replicas.query {
                    try await $0.execute("SELECT owner FROM jobs WHERE id = \(UUID(uuidString: id)!)", logger: logger).first!.decode(String.self)
                }
                #expect(replicas.index(ofOwner: owner) == 0, "job \(id) ran on \(owner)")
            }
        }
    }
}
