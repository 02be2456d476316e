import ControlDatabase
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO

/// Admission: the one place where jobs become RUNNING or QUEUED.
///
/// One coordinator per replica, with a dedicated connection of its own. Every admission is
/// one transaction that first takes transaction-scoped advisory locks on every instance the
/// job touches (sorted, so two transactions never wait on each other in a cycle), then
/// counts the RUNNING jobs on those instances, checks that no RUNNING job writes the same
/// (instance, tenant), checks that nobody is queued ahead, and inserts. Transaction-scoped
/// locks end with their transaction, so a transaction-pooling PgBouncer cannot break them,
/// and the count and the insert of every replica are serialized per instance: no race can
/// put more than `maxRunningPerInstance` RUNNING jobs on an instance.
public actor Coordinator {
    public struct Configuration: Sendable {
        /// RUNNING jobs allowed per instance (default 3, docs/jobs.md).
        public var maxRunningPerInstance: Int = 3
        public init() {}
    }

    /// `pg_advisory_xact_lock(namespace, hashtext(instance))`: the first key keeps Ferry's
    /// locks apart from anyone else's in the same database ("FRRY").
    static let lockNamespace: Int32 = 0x4652_5259

    private let url: DatabaseURL
    private let configuration: Configuration
    private let logger: Logger
    private var connection: PostgresConnection?
    /// The connection runs one transaction at a time, but an actor is re-entered at every
    /// `await`: callers queue here, first come first served.
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []
    /// Set by `close()`: no connection is opened after it (a PostgresConnection must be
    /// closed before it goes away).
    private var closed = false

    public init(url: DatabaseURL, configuration: Configuration, logger: Logger) {
        self.url = url
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "coordinator"
        self.logger = logger
    }

    /// A request to admit a new job (StartJob) or a rerun (RerunJob).
    public struct Request: Sendable {
        public var params: JobParams
        /// What the job touches, as its kind's plan step worked it out (sorted, distinct).
        public var touches: [JobTouch]
        public var queue: Bool
        public var requestID: String?
        public var createdBy: String?
        /// The FAILED or CANCELLED job this one reruns.
        public var rerunOf: UUID?

        public init(params: JobParams, touches: [JobTouch], queue: Bool, requestID: String?, createdBy: String?, rerunOf: UUID? = nil) {
            self.params = params
            self.touches = touches.sorted()
            self.queue = queue
            self.requestID = requestID
            self.createdBy = createdBy
            self.rerunOf = rerunOf
        }
    }

    /// Admits `request`: RUNNING, QUEUED (when `queue`), or RESOURCE_EXHAUSTED with the
    /// running job ids in the details. A repeated `requestID` returns the first job.
    public func admit(_ request: Request) async throws -> JobRecord {
        try await withConnection { connection in
            if let requestID = request.requestID, let existing = try await JobStore.fetch(requestID: requestID, on: connection, logger: logger) {
                return try Self.sameRequest(existing, request)
            }
            do {
                return try await connection.transaction(logger: logger) { connection in
                    try await admit(request, on: connection)
                }
            } catch let error as PSQLError where error.sqlState == "23505" {
                // A unique index decided a race that the locks do not cover (same requestId
                // for jobs on different instances, or two reruns of one job).
                if let requestID = request.requestID, let existing = try await JobStore.fetch(requestID: requestID, on: connection, logger: logger) {
                    return try Self.sameRequest(existing, request)
                }
                if let rerunOf = request.rerunOf { throw try await alreadyRerun(rerunOf, on: connection) }
                throw error
            }
        }
    }

    private func admit(_ request: Request, on connection: PostgresConnection) async throws -> JobRecord {
        let touches = request.touches
        let instances = JobPlan.instances(touches)
        try await lock(instances, on: connection)
        if let requestID = request.requestID, let existing = try await JobStore.fetch(requestID: requestID, on: connection, logger: logger) {
            return try Self.sameRequest(existing, request)
        }
        let known = try await connection.execute("SELECT id FROM instances WHERE id = ANY(\(instances))", logger: logger)
            .map { try $0.decode(String.self) }
        if let missing = instances.first(where: { !known.contains($0) }) {
            throw RPCError(.notFound, "instance \(missing) is not registered (Instances/PutInstance)")
        }
        var predecessor: JobRecord?
        if let rerunOf = request.rerunOf {
            // Re-checked under the locks: the job cannot have changed since the caller looked.
            guard let job = try await JobStore.fetch(rerunOf, on: connection, logger: logger) else {
                throw RPCError(.notFound, "job \(rerunOf.uuidString.lowercased()) not found")
            }
            try Self.checkRerunnable(job)
            if !(try await connection.execute("SELECT 1 FROM jobs WHERE rerun_of = \(rerunOf)", logger: logger)).isEmpty {
                throw try await alreadyRerun(rerunOf, on: connection)
            }
            predecessor = job
        }

        let verdict = try await capacity(for: touches, before: nil, on: connection)
        let id = UUID()
        if verdict.admissible {
            let record = try await JobStore.insert(
                id: id, params: request.params, touches: touches, status: .running, requestID: request.requestID,
                createdBy: request.createdBy, rerunOf: predecessor, on: connection, logger: logger)
            try await EngineNotification.admitted.send(on: connection, logger: logger)
            logger.info("job admitted", metadata: ["job_id": "\(id.uuidString.lowercased())", "instances": "\(instances.joined(separator: ","))"])
            return record
        }
        guard request.queue else { throw verdict.refusal(cap: configuration.maxRunningPerInstance) }
        let record = try await JobStore.insert(
            id: id, params: request.params, touches: touches, status: .queued, requestID: request.requestID,
            createdBy: request.createdBy, rerunOf: predecessor, on: connection, logger: logger)
        logger.info("job queued", metadata: ["job_id": "\(id.uuidString.lowercased())", "reason": "\(verdict.reason)"])
        return record
    }

    /// Admits queued jobs, first in first out, while capacity allows. Any replica may call
    /// it at any time; the instance locks make concurrent calls safe. A queued job that
    /// cannot go yet blocks later queued jobs on its instances (strict FIFO per instance).
    @discardableResult
    public func promoteQueued() async throws -> Int {
        let queued = try await withConnection { connection in
            try await connection.execute("""
                SELECT j.id, array_agg(DISTINCT ji.instance_id ORDER BY ji.instance_id)
                  FROM jobs j JOIN job_instances ji ON ji.job_id = j.id
                 WHERE j.status = 'QUEUED'
                 GROUP BY j.id, j.queued_at ORDER BY j.queued_at, j.id LIMIT 500
                """, logger: logger).map { try $0.decode((UUID, [String]).self) }
        }
        var blocked = Set<String>()
        var admitted = 0
        for (id, instances) in queued {
            if !blocked.isDisjoint(with: instances) {
                blocked.formUnion(instances)
                continue
            }
            // One transaction per candidate, so admissions of new jobs interleave.
            let outcome = try await withConnection { connection in
                try await connection.transaction(logger: logger) { connection -> Promotion in
                    try await lock(instances, on: connection)
                    let current = try await connection.execute("SELECT status FROM jobs WHERE id = \(id) FOR UPDATE", logger: logger)
                    // Cancelled or admitted by another replica meanwhile: it blocks nobody.
                    guard try current.first?.decode(String.self) == JobStatus.queued.name else { return .gone }
                    let touches = try await connection.execute(
                        "SELECT instance_id, tenant, writes FROM job_instances WHERE job_id = \(id)", logger: logger
                    ).map { row in
                        let (instance, tenant, writes) = try row.decode((String, String, Bool).self)
                        return JobTouch(instance: instance, tenant: tenant, writes: writes)
                    }
                    guard try await capacity(for: touches, before: id, on: connection).admissible else { return .blocked }
                    try await connection.execute("""
                        UPDATE jobs SET status = 'RUNNING', started_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = \(id)
                        """, logger: logger)
                    _ = try await JobStore.appendStatus(id, status: .running, error: nil, on: connection, logger: logger)
                    try await EngineNotification.admitted.send(on: connection, logger: logger)
                    return .admitted
                }
            }
            switch outcome {
            case .admitted:
                admitted += 1
                logger.info("queued job admitted", metadata: ["job_id": "\(id.uuidString.lowercased())"])
            case .blocked:
                blocked.formUnion(instances)
            case .gone:
                break
            }
        }
        return admitted
    }

    /// What became of one queued candidate.
    enum Promotion: Sendable {
        case admitted
        /// Still waiting: it blocks later queued jobs on its instances.
        case blocked
        /// No longer queued (cancelled, or admitted elsewhere).
        case gone
    }

    // MARK: Rules

    /// What admission found for a job's touches.
    struct Verdict {
        var overCap: [String: [UUID]] = [:]
        var conflicts: [UUID] = []
        var queuedAhead = 0

        var admissible: Bool { overCap.isEmpty && conflicts.isEmpty && queuedAhead == 0 }

        var reason: String {
            if let (instance, running) = overCap.sorted(by: { $0.key < $1.key }).first {
                return "instance \(instance) already runs \(running.count) jobs"
            }
            if !conflicts.isEmpty { return "a running job writes the same tenant" }
            return "\(queuedAhead) queued job(s) ahead"
        }

        func refusal(cap: Int) -> RPCError {
            let running = Set(overCap.values.joined()).union(conflicts).map { $0.uuidString.lowercased() }.sorted()
            var details: [String: JSONValue] = [
                "runningJobIds": .array(running.map(JSONValue.string)),
                "maxRunningPerInstance": .number(Double(cap)),
            ]
            if !conflicts.isEmpty { details["tenantConflictJobIds"] = .array(conflicts.map { .string($0.uuidString.lowercased()) }) }
            if queuedAhead > 0 { details["queuedAhead"] = .number(Double(queuedAhead)) }
            let message: String
            if let (instance, jobs) = overCap.sorted(by: { $0.key < $1.key }).first {
                message = "instance \(instance) is at its cap of \(cap) running jobs; set queue: true to wait (running: \(jobs.map { $0.uuidString.lowercased() }.joined(separator: ", ")))"
            } else if !conflicts.isEmpty {
                message = "a running job writes the same tenant (\(conflicts.map { $0.uuidString.lowercased() }.joined(separator: ", "))); set queue: true to wait"
            } else {
                message = "\(queuedAhead) queued job(s) wait ahead on the same instances; set queue: true to wait in line"
            }
            return RPCError(.resourceExhausted, message, details: .object(details))
        }
    }

    /// Counts, under the caller's instance locks, what stands in the way of `touches`. `before`
    /// is the queue position of a queued job being promoted (only jobs ahead of it count).
    private func capacity(for touches: [JobTouch], before queuedJob: UUID?, on connection: PostgresConnection) async throws -> Verdict {
        let instances = JobPlan.instances(touches)
        // One round trip: the RUNNING jobs' touches on these instances, and (as a row with a
        // NULL id) how many queued jobs wait ahead.
        let rows = try await connection.execute("""
            SELECT j.id, ji.instance_id, ji.tenant, ji.writes, 0 FROM job_instances ji JOIN jobs j ON j.id = ji.job_id
             WHERE j.status = 'RUNNING' AND ji.instance_id = ANY(\(instances))
            UNION ALL
            SELECT NULL::uuid, NULL::text, NULL::text, NULL::bool, count(DISTINCT j.id)::int FROM jobs j JOIN job_instances ji ON ji.job_id = j.id
             WHERE j.status = 'QUEUED' AND ji.instance_id = ANY(\(instances))
               AND (\(queuedJob)::uuid IS NULL
                    OR (j.queued_at, j.id) < (SELECT q.queued_at, q.id FROM jobs q WHERE q.id = \(queuedJob)))
            """, logger: logger)
        var running: [(UUID, JobTouch)] = []
        var queuedAhead = 0
        for row in rows {
            let (id, instance, tenant, writes, ahead) = try row.decode((UUID?, String?, String?, Bool?, Int).self)
            if let id, let instance, let tenant, let writes {
                running.append((id, JobTouch(instance: instance, tenant: tenant, writes: writes)))
            } else {
                queuedAhead = ahead
            }
        }
        var verdict = Verdict()
        var perInstance: [String: Set<UUID>] = [:]
        for (id, touch) in running { perInstance[touch.instance, default: []].insert(id) }
        for (instance, jobs) in perInstance where jobs.count >= configuration.maxRunningPerInstance {
            verdict.overCap[instance] = jobs.sorted { $0.uuidString < $1.uuidString }
        }
        verdict.conflicts = Array(Set(running.filter { _, theirs in touches.contains { $0.collides(with: theirs) } }.map(\.0))).sorted { $0.uuidString < $1.uuidString }
        verdict.queuedAhead = queuedAhead
        return verdict
    }

    private func lock(_ instances: [String], on connection: PostgresConnection) async throws {
        for instance in instances.sorted() {
            try await connection.execute("SELECT pg_advisory_xact_lock(\(Self.lockNamespace), hashtext(\(instance)))", logger: logger)
        }
    }

    /// RerunJob works from FAILED or CANCELLED only.
    public static func checkRerunnable(_ job: JobRecord) throws {
        guard job.status == .failed || job.status == .cancelled else {
            throw RPCError(.failedPrecondition, "job \(job.id.uuidString.lowercased()) is \(job.status.name); only FAILED or CANCELLED jobs can be rerun")
        }
    }

    private func alreadyRerun(_ id: UUID, on connection: PostgresConnection) async throws -> RPCError {
        let rows = try await connection.execute("SELECT id FROM jobs WHERE rerun_of = \(id)", logger: logger)
        let successor = try rows.first?.decode(UUID.self).uuidString.lowercased() ?? "?"
        return RPCError(.failedPrecondition, "job \(id.uuidString.lowercased()) was already rerun as \(successor); rerun that one instead",
                        details: .object(["rerunJobId": .string(successor)]))
    }

    /// A repeated requestId must name the same request; it then returns the first job.
    static func sameRequest(_ existing: JobRecord, _ request: Request) throws -> JobRecord {
        guard existing.params == request.params, existing.rerunOf == request.rerunOf else {
            throw RPCError(.alreadyExists, "requestId \"\(request.requestID ?? "")\" was already used for a different request (job \(existing.id.uuidString.lowercased()))",
                           details: .object(["jobId": .string(existing.id.uuidString.lowercased())]))
        }
        return existing
    }

    // MARK: Connection

    /// Runs `body` on the coordinator's dedicated connection, opening it when needed. A
    /// connection that failed is dropped, so the next call starts afresh.
    private func withConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        if busy {
            await withCheckedContinuation { waiting.append($0) }
        } else {
            busy = true
        }
        defer {
            if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
        }
        guard !closed else { throw RPCError(.unavailable, "ferryd is shutting down") }
        let connection: PostgresConnection
        if let open = self.connection, !open.isClosed {
            connection = open
        } else {
            do {
                connection = try await url.connect(logger: logger, id: 1)
            } catch {
                throw RPCError(.unavailable, "the control database is unreachable: \(error.message)")
            }
            // close() may have run while we connected.
            guard !closed else {
                try? await connection.close()
                throw RPCError(.unavailable, "ferryd is shutting down")
            }
            self.connection = connection
        }
        do {
            return try await body(connection)
        } catch let error as RPCError {
            throw error
        } catch {
            if connection.isClosed || !(error is PSQLError && (error as! PSQLError).sqlState != nil) {
                try? await connection.close()
                self.connection = nil
            }
            logger.warning("admission failed", metadata: ["error": "\(String(reflecting: error))"])
            throw RPCError(.unavailable, "the control database failed during admission; retry")
        }
    }

    /// Closes the dedicated connection for good (at shutdown).
    public func close() async {
        closed = true
        try? await connection?.close()
        connection = nil
    }
}
