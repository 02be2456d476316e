import ControlDatabase
import FerryClient
import FerryProtocol
import FerryRPC
import FerryTestSupport
import Foundation
import PostgresNIO
import Synchronization
import Testing

/// Admission when other work is in the way: a long queue on a busy instance, and a replica
/// frozen while it holds an instance lock.
@Suite(.serialized) struct AdmissionFaultTests {
    /// 600 jobs queued behind a full instance X must not hide the queue of instance Z: a job
    /// queued on Z goes as soon as Z has room, whatever waits on X.
    @Test func aLongQueueOnOneInstanceDoesNotStarveAnother() async throws {
        try await Replicas.with(count: 1, instances: 2, jobMs: 120_000, arguments: ["--executors", "8"]) { replicas in
            let client = try await replicas.client(0)
            defer { client.close() }
            // X (i0) full with long jobs.
            for index in 0..<3 {
                let job = try await client.startJob(cloneRequest(instance: "i0", target: "long\(index)"))
                #expect(job.status == .running)
            }
            // 600 queued on X, as real QUEUED rows with what they touch, queued before
            // anything on Z.
            let params = try JobParams.with { $0.clone = .clone(from: "i0", "src", to: "i0", "queued") }.jsonValue().text
            try await replicas.query { connection in
                try await connection.execute("""
                    WITH made AS (
                        INSERT INTO jobs (id, kind, status, params, root_job_id, last_seq, created_at, queued_at, updated_at)
                        SELECT id, 'clone', 'QUEUED', \(params)::jsonb, id, 0, clock_timestamp(), clock_timestamp(), clock_timestamp()
                          FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, 600)) g
                        RETURNING id
                    )
                    INSERT INTO job_instances (job_id, instance_id, tenant, writes)
                    SELECT id, 'i0', 'src', false FROM made UNION ALL SELECT id, 'i0', 'queued', true FROM made
                    """, logger: logger)
            }
            // Z (i1) full for a moment with short jobs (`<word>_<ms>_<steps>` sets a job's
            // length), so the next job on Z has to wait in the queue.
            for index in 0..<3 {
                let job = try await client.startJob(cloneRequest(instance: "i1", target: "short\(index)_1500_3"))
                #expect(job.status == .running)
            }
            let waiting = try await client.startJob(cloneRequest(instance: "i1", target: "waiting", queue: true))
            #expect(waiting.status == .queued)
            // The short jobs end after 1.5 s; the queue loop polls every second.
            let started = ContinuousClock.now
            let job = try await client.waitFor(waiting.id, timeout: .seconds(10)) { $0.status != .queued }
            #expect(job.status == .running || job.status == .succeeded)
            #expect(ContinuousClock.now - started < .seconds(10))
            let stillQueued = try await replicas.query { connection in
                try await connection.execute("SELECT count(*)::int FROM jobs WHERE status = 'QUEUED'", logger: logger).first?.decode(Int32.self)
            }
            #expect(stillQueued == 600)
        }
    }

    /// Replica A takes the lock of instance hold-x in an admission and is frozen (SIGSTOP)
    /// while it holds it. Replica B must go on admitting on other instances at once, answer
    /// admissions on hold-x with a retryable UNAVAILABLE naming it while the lock is held, and
    /// admit on hold-x once the server has ended A's idle transaction.
    @Test func aFrozenLockHolderStallsOnlyItsInstance() async throws {
        // Only replica A holds (the test server's admission hold, AdmissionHold.swift).
        try await Replicas.with(count: 2, instances: 2, jobMs: 60_000, environments: [["FERRY_TEST_ADMISSION_HOLD_SECONDS": "60"]]) { replicas in
            let a = try await replicas.client(0)
            let b = try await replicas.client(1)
            defer {
                a.close()
                b.close()
            }
            for (id, source) in [("hold-x", "i0"), ("z", "i1")] {
                _ = try await b.unary(FerryMethods.putInstance, .with { $0.id = id; $0.dsn = replicas.instances[source]!.secretURLString })
            }
            let frozen = replicas.servers[0].process.child
            defer {
                // Whatever happens, A does not stay frozen (stop() then reaps it).
                frozen.signal(SIGKILL)
            }

            // A starts an admission on hold-x and holds the lock.
            let held = Task { try? await a.startJob(cloneRequest(instance: "hold-x", target: "held", queue: true)) }
            defer { held.cancel() }
            try await waitForAdvisoryLock(replicas)
            frozen.signal(SIGSTOP)

            // B: an admission on hold-x waits for the lock...
            let clock = ContinuousClock()
            let firstHoldStart = clock.now
            let firstHold = Task { await outcome { try await b.startJob(cloneRequest(instance: "hold-x", target: "b0", queue: true)) } }
            try await Task.sleep(for: .milliseconds(300))
            // ...while admissions on z go at once.
            for index in 0..<3 {
                let begin = clock.now
                let answer = await outcome(timeout: .seconds(3)) { try await b.startJob(cloneRequest(instance: "z", target: "z\(index)")) }
                #expect(answer.status == .running, "admission \(index) on z: \(answer)")
                #expect(clock.now - begin < .seconds(3))
            }
            // The first hold-x admission: a retryable UNAVAILABLE naming the instance after
            // the lock timeout (or admitted, if A's session was already ended).
            let first = await firstHold.value
            if first.status == nil {
                #expect(first.code == .unavailable, "\(first)")
                #expect(first.message.contains("hold-x"), "\(first)")
            }
            #expect(clock.now - firstHoldStart < .seconds(15))

            // Then hold-x admits again once the server has ended A's idle transaction.
            var admitted: Outcome?
            while admitted == nil, clock.now - firstHoldStart < .seconds(45) {
                let answer = await outcome(timeout: .seconds(20)) { try await b.startJob(cloneRequest(instance: "hold-x", target: "b1", queue: true)) }
                if answer.status != nil {
                    admitted = answer
                } else {
                    #expect(answer.code == .unavailable && answer.message.contains("hold-x"), "\(answer)")
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
            #expect(admitted?.status == .running, "hold-x was not admitted on B within 45 s of A freezing")
            #expect(clock.now - firstHoldStart < .seconds(30))
            // Nothing of A's frozen admission was written.
            let heldJobs = try await replicas.query { connection in
                try await connection.execute("""
                    SELECT count(*)::int FROM jobs WHERE params->'clone'->>'targetTenant' = 'held'
                    """, logger: logger).first?.decode(Int32.self)
            }
            #expect(heldJobs == 0)
        }
    }

    /// Waits until some session of the test's control database holds an advisory lock of
    /// two keys (the coordinator's instance lock).
    private func waitForAdvisoryLock(_ replicas: Replicas) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            let held = try await replicas.query { connection in
                try await connection.execute("""
                    SELECT count(*)::int FROM pg_locks
                     WHERE locktype = 'advisory' AND granted AND objsubid = 2
                       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                    """, logger: logger).first?.decode(Int32.self)
            }
            if (held ?? 0) > 0 { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("replica A never held an instance lock")
    }

    struct Outcome: Sendable, CustomStringConvertible {
        var status: JobStatus?
        var code: StatusCode?
        var message = ""
        var description: String { status.map { "job \($0.name)" } ?? "\(code?.rawValue ?? "?"): \(message)" }
    }

    /// The job's status, or the error's code and message; a call that has not answered
    /// within `timeout` is an error of its own (and is left running: a call stuck behind a
    /// lock may not end before the lock does).
    private func outcome(timeout: Duration = .seconds(60), _ call: @escaping @Sendable () async throws -> Job) async -> Outcome {
        let answered = Mutex(false)
        return await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
            let finish: @Sendable (Outcome) -> Void = { outcome in
                if answered.withLock({ done in defer { done = true }; return !done }) { continuation.resume(returning: outcome) }
            }
            Task {
                do {
                    finish(Outcome(status: try await call().status))
                } catch let error as RPCError {
                    finish(Outcome(code: error.code, message: error.message))
                } catch {
                    finish(Outcome(code: .unknown, message: "\(error)"))
                }
            }
            Task {
                try? await Task.sleep(for: timeout)
                finish(Outcome(code: .deadlineExceeded, message: "no answer within \(timeout)"))
            }
        }
    }
}
