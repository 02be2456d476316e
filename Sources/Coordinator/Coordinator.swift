import ControlDatabase
import FerryProtocol
import Foundation
import JobStore
import Logging
import Metrics
import PostgresNIO

/// Admission: the one place where jobs become RUNNING or QUEUED.
///
/// One coordinator per replica. Requests wait in arrival order and are admitted in batches
/// (group commit): one transaction takes transaction-scoped advisory locks on every instance
/// of the batch (in key order, so two transactions never wait on each other in a cycle),
/// reads the RUNNING jobs, the queue and the request ids on those instances once, decides
/// each request in arrival order exactly as if it were alone (`AdmissionRules.decide`),
/// inserts all the new jobs in one statement and commits once. Transaction-scoped locks end
/// with their transaction, so a transaction-pooling PgBouncer cannot break them, and the
/// count and the insert of every replica are serialized per instance: no race can put more
/// than `maxRunningPerInstance` RUNNING jobs on an instance.
///
/// Several connections admit at once, never two on the same instance: a batch whose lock is
/// slow to come (another replica stalled in the middle of an admission) holds up only the
/// requests on its instances, and gives up after `lockTimeout` with UNAVAILABLE naming the
/// instance. Every transaction also bounds its statements and its idle time, so a replica
/// frozen while holding a lock loses its session (and the lock) within
/// `idleInTransactionTimeout`.
public actor Coordinator {
    public struct Configuration: Sendable {
        /// RUNNING jobs allowed per instance (default 3, docs/jobs.md).
        public var maxRunningPerInstance: Int = 3
        /// Connections admitting at the same time, each on instances the others do not hold.
        public var admissionConnections: Int = 4
        /// The most requests one admission transaction decides.
        public var maxBatch: Int = 256
        /// How long an admission waits for an instance lock before answering UNAVAILABLE.
        public var lockTimeout: Duration = .seconds(5)
        /// A session of this coordinator that sits idle inside a transaction this long (its
        /// replica froze while holding locks) is ended by the server, which frees the locks.
        public var idleInTransactionTimeout: Duration = .seconds(10)
        /// The longest any statement of an admission or a promotion may run.
        public var statementTimeout: Duration = .seconds(15)
        /// A transaction still unanswered after this long has its connection closed: the
        /// server is gone in a way TCP does not report (a dead host, a cut network), and the
        /// server-side timeouts above cannot fire on our side.
        public var transactionDeadline: Duration = .seconds(30)
        /// Test hook, nil in production: awaited inside every admission transaction once its
        /// instance locks are held, with those instances (sorted).
        public var afterLocking: (@Sendable ([String]) async -> Void)?

        public init() {}
    }

    /// `pg_advisory_xact_lock(namespace, hashtext(instance))`: the first key keeps Ferry's
    /// locks apart from anyone else's in the same database ("FRRY").
    static let lockNamespace: Int32 = 0x4652_5259

    private let url: DatabaseURL
    private let configuration: Configuration
    private let logger: Logger

    /// A request waiting for a connection, with its place in arrival order.
    private struct Pending {
        var seq: Int
        var request: Request
        var instances: [String]
        var continuation: CheckedContinuation<JobRecord, any Error>
    }

    private var pending: [Pending] = []
    private var nextSeq = 0
    /// Admission connections (opened when first needed), and which of them are free.
    private var lanes: [PostgresConnection?]
    private var freeLanes: [Int]
    /// Instances some lane's batch holds right now.
    private var busyInstances = Set<String>()
    /// The queue's connection, one promotion at a time (callers queue here in order).
    private var promotionConnection: PostgresConnection?
    private var promoting = false
    private var promotionWaiters: [CheckedContinuation<Void, Never>] = []
    /// Set by `close()`: no connection is opened after it (a PostgresConnection must be
    /// closed before it goes away).
    private var closed = false

    public init(url: DatabaseURL, configuration: Configuration, logger: Logger) {
        self.url = url
        var configuration = configuration
        configuration.admissionConnections = max(1, configuration.admissionConnections)
        configuration.maxBatch = max(1, configuration.maxBatch)
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "coordinator"
        self.logger = logger
        lanes = Array(repeating: nil, count: configuration.admissionConnections)
        freeLanes = Array((0..<configuration.admissionConnections).reversed())
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

    // MARK: Admission

    /// Admits `request`: RUNNING, QUEUED (when `queue`), or RESOURCE_EXHAUSTED with the
    /// running job ids in the details. A repeated `requestID` returns the first job.
    public func admit(_ request: Request) async throws -> JobRecord {
        guard !closed else { throw Self.shuttingDown }
        return try await withCheckedThrowingContinuation { continuation in
            pending.append(Pending(seq: nextSeq, request: request, instances: JobPlan.instances(request.touches), continuation: continuation))
            nextSeq += 1
            dispatch()
        }
    }

    /// Hands waiting requests to free connections, as many batches as can go at once.
    private func dispatch() {
        while !pending.isEmpty, !closed, let lane = freeLanes.last {
            let chosen = AdmissionRules.nextBatch(pending.map(\.instances), busy: busyInstances, limit: configuration.maxBatch)
            guard !chosen.isEmpty else { return }
            freeLanes.removeLast()
            let batch = chosen.map { pending[$0] }
            let taken = Set(chosen)
            pending = pending.enumerated().filter { !taken.contains($0.offset) }.map(\.element)
            let instances = Set(batch.flatMap(\.instances))
            busyInstances.formUnion(instances)
            Task { await self.run(batch, lane: lane, instances: instances) }
        }
    }

    private func run(_ batch: [Pending], lane: Int, instances: Set<String>) async {
        var answers: [Result<JobRecord, any Error>]
        var retry: [Pending] = []
        do {
            let connection = try await laneConnection(lane)
            let outcome = try await Self.withDeadline(configuration.transactionDeadline, closing: connection) { [configuration, logger] in
                try await Self.admitBatch(batch.map(\.request), on: connection, configuration: configuration, logger: logger)
            }
            answers = outcome.map { result in result.mapError { $0 as any Error } }
        } catch let timeout as LockTimeout {
            // Only the requests on that instance wait for it; the others go again at once.
            answers = []
            for entry in batch {
                if entry.instances.contains(timeout.instance) {
                    answers.append(.failure(AdmissionRules.lockTimeout(timeout.instance, after: configuration.lockTimeout)))
                } else {
                    answers.append(.failure(LockTimeout(instance: "")))
                    retry.append(entry)
                }
            }
            logger.warning("admission lock timed out", metadata: ["instance": "\(timeout.instance)"])
        } catch {
            let failure = await failed(error, lane: lane)
            answers = batch.map { _ in .failure(failure) }
        }
        busyInstances.subtract(instances)
        freeLanes.append(lane)
        if closed, let connection = lanes[lane] {
            lanes[lane] = nil
            try? await connection.close()
        }
        let retried = Set(retry.map(\.seq))
        for (entry, answer) in zip(batch, answers) where !retried.contains(entry.seq) {
            Self.count(answer)
            entry.continuation.resume(with: answer)
        }
        if closed {
            for entry in retry { entry.continuation.resume(throwing: Self.shuttingDown) }
        } else if !retry.isEmpty {
            pending = (retry + pending).sorted { $0.seq < $1.seq }
        }
        dispatch()
    }

    /// Counts an answer in `ferry_admission_decisions_total`, by what the caller sees: the job
    /// RUNNING (admitted), QUEUED, another status (a repeated request id), or refused with a code.
    static func count(_ answer: Result<JobRecord, any Error>) {
        let dimensions: [(String, String)]
        switch answer {
        case .success(let record):
            let outcome = record.status == .running ? "admitted" : record.status == .queued ? "queued" : "existing"
            dimensions = [("outcome", outcome), ("code", "OK")]
        case .failure(let error):
            dimensions = [("outcome", "refused"), ("code", (error as? RPCError)?.code.rawValue ?? StatusCode.unknown.rawValue)]
        }
        Counter(label: "ferry_admission_decisions_total", dimensions: dimensions).increment()
    }

    /// One admission transaction for `requests`, in arrival order: every answer, or a
    /// `LockTimeout`. Runs off the actor, on a connection no one else uses meanwhile.
    static func admitBatch(
        _ requests: [Request], on connection: PostgresConnection, configuration: Configuration, logger: Logger
    ) async throws -> [Result<JobRecord, RPCError>] {
        // Ascending ids in arrival order: the queue order (queued_at, id) of jobs queued
        // within one statement, whose clock may not tell them apart.
        let ids = (0..<requests.count).map { _ in UUID() }.sorted { $0.uuidString < $1.uuidString }
        let instances = JobPlan.instances(requests.flatMap(\.touches))
        // A unique index may settle a race the locks do not cover (one request id used by two
        // replicas for jobs on different instances, two reruns of one job): the transaction
        // then goes again and finds what the other one made.
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await connection.transaction(logger: logger) { connection in
                    try await Self.beginSession(locking: instances, on: connection, configuration: configuration, logger: logger)
                    if let hook = configuration.afterLocking { await hook(instances) }
                    let snapshot = try await Self.snapshot(of: requests, instances: instances, on: connection, logger: logger)
                    let decisions = AdmissionRules.decide(requests, ids: ids, snapshot: snapshot, cap: configuration.maxRunningPerInstance)
                    var newJobs: [JobStore.NewJob] = []
                    for (request, decision) in zip(requests, decisions) {
                        guard case .insert(let id, let status, let predecessor) = decision else { continue }
                        newJobs.append(JobStore.NewJob(id: id, params: request.params, touches: request.touches, status: status,
                                                       requestID: request.requestID, createdBy: request.createdBy, rerunOf: predecessor))
                    }
                    let records = try await JobStore.insertAdmitted(newJobs, on: connection, logger: logger)
                    if newJobs.contains(where: { $0.status == .running }) {
                        try await EngineNotification.admitted.send(on: connection, logger: logger)
                    }
                    let inserted = Dictionary(uniqueKeysWithValues: records.map { ($0.id, $0) })
                    return try decisions.map { decision -> Result<JobRecord, RPCError> in
                        switch decision {
                        case .insert(let id, _, _): return .success(try inserted[id].unwrap(id))
                        case .sameAs(let index): return .success(try inserted[ids[index]].unwrap(ids[index]))
                        case .existing(let record): return .success(record)
                        case .refused(let error): return .failure(error)
                        }
                    }
                }
            } catch let error as PSQLError where error.sqlState == "23505" && attempt < 3 {
                logger.debug("admission lost a unique-index race; deciding again", metadata: ["error": "\(String(reflecting: error))"])
                continue
            }
        }
    }

    /// Reads, under the batch's locks, everything the rules need.
    static func snapshot(of requests: [Request], instances: [String], on connection: PostgresConnection, logger: Logger) async throws -> AdmissionRules.Snapshot {
        var snapshot = AdmissionRules.Snapshot()
        // The instance sets of the batch, numbered, for one count of queued jobs per set.
        let sets = Array(Set(requests.map { JobPlan.instances($0.touches) }))
        var setNumbers: [Int32] = [], setInstances: [String] = []
        for (number, set) in sets.enumerated() {
            for instance in set {
                setNumbers.append(Int32(number))
                setInstances.append(instance)
            }
        }
        // One round trip: registered instances ('i'), RUNNING touches ('r'), and the number
        // of distinct QUEUED jobs on each instance set ('q').
        let rows = try await connection.execute("""
            SELECT 'i', NULL::uuid, id, NULL::text, NULL::bool, 0, 0 FROM instances WHERE id = ANY(\(instances))
            UNION ALL
            SELECT 'r', j.id, ji.instance_id, ji.tenant, ji.writes, 0, 0 FROM job_instances ji JOIN jobs j ON j.id = ji.job_id
             WHERE j.status = 'RUNNING' AND ji.instance_id = ANY(\(instances))
            UNION ALL
            SELECT 'q', NULL, NULL, NULL, NULL, s.n, count(DISTINCT j.id)::int
              FROM unnest(\(setNumbers)::int[], \(setInstances)::text[]) AS s(n, instance)
              JOIN job_instances ji ON ji.instance_id = s.instance JOIN jobs j ON j.id = ji.job_id AND j.status = 'QUEUED'
             GROUP BY s.n
            """, logger: logger)
        for row in rows {
            let (tag, id, instance, tenant, writes, number, count) = try row.decode((String, UUID?, String?, String?, Bool?, Int32, Int32).self)
            switch tag {
            case "i": if let instance { snapshot.registered.insert(instance) }
            case "r":
                if let id, let instance, let tenant, let writes {
                    snapshot.running.append(.init(id: id, touch: JobTouch(instance: instance, tenant: tenant, writes: writes)))
                }
            default: snapshot.queued[sets[Int(number)]] = Int(count)
            }
        }
        let requestIDs = Array(Set(requests.compactMap(\.requestID)))
        if !requestIDs.isEmpty {
            let rows = try await connection.execute(
                "SELECT \(unescaped: JobRecord.columns()) FROM jobs WHERE request_id = ANY(\(requestIDs))", logger: logger)
            for row in rows {
                let record = try JobRecord(row: row)
                if let requestID = record.requestID { snapshot.byRequestID[requestID] = record }
            }
        }
        let reruns = Array(Set(requests.compactMap(\.rerunOf)))
        if !reruns.isEmpty {
            for row in try await connection.execute("SELECT \(unescaped: JobRecord.columns()) FROM jobs WHERE id = ANY(\(reruns))", logger: logger) {
                let record = try JobRecord(row: row)
                snapshot.predecessors[record.id] = record
            }
            for row in try await connection.execute("SELECT rerun_of, id FROM jobs WHERE rerun_of = ANY(\(reruns))", logger: logger) {
                let (predecessor, successor) = try row.decode((UUID, UUID).self)
                snapshot.reruns[predecessor] = successor
            }
        }
        return snapshot
    }

    // MARK: The queue

    /// Admits queued jobs, first in first out per instance, while capacity allows. Any
    /// replica may call it at any time; the instance locks make concurrent calls safe. A
    /// queued job that cannot go yet blocks later queued jobs on its instances (strict FIFO
    /// per instance).
    @discardableResult
    public func promoteQueued() async throws -> Int {
        try await withPromotionConnection { connection in
            // Only the head of each instance's queue can go (FIFO per instance, at most `cap`
            // RUNNING): reading the first few queued jobs of every instance, rather than the
            // first ones overall, keeps a long queue on a busy instance from hiding the queue
            // of an idle one.
            let queued = try await connection.execute("""
                WITH heads AS (
                    SELECT DISTINCT w.id, w.queued_at FROM (
                        SELECT q.id, q.queued_at, row_number() OVER (PARTITION BY q.instance_id ORDER BY q.queued_at, q.id) AS place
                          FROM (SELECT DISTINCT j.id, j.queued_at, ji.instance_id FROM jobs j JOIN job_instances ji ON ji.job_id = j.id
                                 WHERE j.status = 'QUEUED') q
                    ) w WHERE w.place <= \(Int32(configuration.maxRunningPerInstance))
                )
                SELECT h.id, j.attempt, array_agg(DISTINCT ji.instance_id ORDER BY ji.instance_id)
                  FROM heads h JOIN jobs j ON j.id = h.id JOIN job_instances ji ON ji.job_id = h.id
                 GROUP BY h.id, h.queued_at, j.attempt ORDER BY h.queued_at, h.id
                """, logger: logger).map { try $0.decode((UUID, Int32, [String]).self) }
            var blocked = Set<String>()
            var admitted = 0
            for (id, attempt, instances) in queued {
                if !blocked.isDisjoint(with: instances) {
                    blocked.formUnion(instances)
                    continue
                }
                // One transaction per candidate, so admissions of new jobs interleave.
                let outcome: Promotion
                do {
                    outcome = try await Self.withDeadline(configuration.transactionDeadline, closing: connection) { [configuration, logger] in
                        try await Self.promote(id, instances: instances, on: connection, configuration: configuration, logger: logger)
                    }
                } catch let timeout as LockTimeout {
                    logger.warning("queued job waits: its instance lock timed out", metadata: [
                        "job_id": "\(id.uuidString.lowercased())", "attempt": "\(attempt)", "instance": "\(timeout.instance)"])
                    outcome = .blocked
                }
                switch outcome {
                case .admitted:
                    admitted += 1
                    logger.info("queued job admitted", metadata: ["job_id": "\(id.uuidString.lowercased())", "attempt": "\(attempt)"])
                case .blocked:
                    blocked.formUnion(instances)
                case .gone:
                    break
                }
            }
            return admitted
        }
    }

    static func promote(_ id: UUID, instances: [String], on connection: PostgresConnection, configuration: Configuration, logger: Logger) async throws -> Promotion {
        try await connection.transaction(logger: logger) { connection -> Promotion in
            try await beginSession(locking: instances, on: connection, configuration: configuration, logger: logger)
            let current = try await connection.execute("SELECT status FROM jobs WHERE id = \(id) FOR UPDATE", logger: logger)
            // Cancelled or admitted by another replica meanwhile: it blocks nobody.
            guard try current.first?.decode(String.self) == JobStatus.queued.name else { return .gone }
            let rows = try await connection.execute("""
                SELECT 't', ji.job_id, ji.instance_id, ji.tenant, ji.writes, 0 FROM job_instances ji WHERE ji.job_id = \(id)
                UNION ALL
                SELECT 'r', j.id, ji.instance_id, ji.tenant, ji.writes, 0 FROM job_instances ji JOIN jobs j ON j.id = ji.job_id
                 WHERE j.status = 'RUNNING' AND ji.instance_id = ANY(\(instances))
                UNION ALL
                SELECT 'q', NULL, NULL, NULL, NULL, count(DISTINCT j.id)::int FROM jobs j JOIN job_instances ji ON ji.job_id = j.id
                 WHERE j.status = 'QUEUED' AND ji.instance_id = ANY(\(instances))
                   AND (j.queued_at, j.id) < (SELECT q.queued_at, q.id FROM jobs q WHERE q.id = \(id))
                """, logger: logger)
            var touches: [JobTouch] = []
            var running: [AdmissionRules.RunningTouch] = []
            var ahead = 0
            for row in rows {
                let (tag, job, instance, tenant, writes, count) = try row.decode((String, UUID?, String?, String?, Bool?, Int32).self)
                switch tag {
                case "t": if let instance, let tenant, let writes { touches.append(JobTouch(instance: instance, tenant: tenant, writes: writes)) }
                case "r":
                    if let job, let instance, let tenant, let writes {
                        running.append(.init(id: job, touch: JobTouch(instance: instance, tenant: tenant, writes: writes)))
                    }
                default: ahead = Int(count)
                }
            }
            let verdict = AdmissionRules.verdict(for: touches, running: running, queuedAhead: ahead, cap: configuration.maxRunningPerInstance)
            guard verdict.admissible else { return .blocked }
            try await connection.execute("""
                UPDATE jobs SET status = 'RUNNING', started_at = clock_timestamp(), updated_at = clock_timestamp() WHERE id = \(id)
                """, logger: logger)
            _ = try await JobStore.appendStatus(id, status: .running, error: nil, on: connection, logger: logger)
            try await EngineNotification.admitted.send(on: connection, logger: logger)
            return .admitted
        }
    }

    /// What became of one queued candidate.
    enum Promotion: Sendable {
        case admitted
        /// Still waiting: it blocks later queued jobs on its instances.
        case blocked
        /// No longer queued (cancelled, or admitted elsewhere).
        case gone
    }

    // MARK: Sessions and locks

    /// An instance lock that did not come within the lock timeout.
    struct LockTimeout: Error {
        var instance: String
    }

    /// Starts an admission or promotion transaction: bounds its lock waits, statements and
    /// idle time (SET LOCAL, so the bounds end with the transaction and never stay on a
    /// pooled server connection), then locks `instances` in key order. Throws `LockTimeout`
    /// naming the instance whose lock did not come.
    static func beginSession(locking instances: [String], on connection: PostgresConnection, configuration: Configuration, logger: Logger) async throws {
        let rows = try await connection.execute("""
            SELECT set_config('lock_timeout', \(milliseconds(configuration.lockTimeout)), true),
                   set_config('statement_timeout', \(milliseconds(configuration.statementTimeout)), true),
                   set_config('idle_in_transaction_session_timeout', \(milliseconds(configuration.idleInTransactionTimeout)), true),
                   array(SELECT hashtext(i) FROM unnest(\(instances)::text[]) WITH ORDINALITY AS t(i, n) ORDER BY n)
            """, logger: logger)
        guard let row = rows.first else { throw RPCError(.internal, "the admission session could not be set up") }
        let (_, _, _, keys) = try row.decode((String, String, String, [Int32]).self)
        guard keys.count == instances.count else {
            throw RPCError(.internal, "the lock keys of \(instances.joined(separator: ", ")) could not be read")
        }
        for (instance, key) in AdmissionRules.lockOrder(instances.indices.map { (name: instances[$0], key: keys[$0]) }) {
            do {
                try await connection.execute("SELECT pg_advisory_xact_lock(\(lockNamespace), \(key))", logger: logger)
            } catch let error as PSQLError where error.sqlState == "55P03" {
                throw LockTimeout(instance: instance)
            }
        }
    }

    static func milliseconds(_ duration: Duration) -> String {
        String(max(1, duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000))
    }

    /// Runs `body`, closing `connection` if it has not answered after `deadline` (the query
    /// in flight then fails and the connection is dropped).
    static func withDeadline<T: Sendable>(_ deadline: Duration, closing connection: PostgresConnection, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try? await Task.sleep(for: deadline)
                if !Task.isCancelled { try? await connection.close() }
                return nil
            }
            defer { group.cancelAll() }
            while let next = try await group.next() {
                if let result = next { return result }
            }
            throw RPCError(.unavailable, "the control database did not answer within \(deadline.formattedSeconds); retry")
        }
    }

    // MARK: Rules kept for callers

    /// A repeated requestId must name the same request; it then returns the first job.
    static func sameRequest(_ existing: JobRecord, _ request: Request) throws -> JobRecord {
        guard let same = AdmissionRules.sameRequest(existing, request) else {
            throw AdmissionRules.differentRequest(request.requestID ?? existing.requestID ?? "", job: existing.id)
        }
        return same
    }

    /// RerunJob works from FAILED or CANCELLED only.
    public static func checkRerunnable(_ job: JobRecord) throws {
        if let refusal = AdmissionRules.rerunRefusal(job) { throw refusal }
    }

    // MARK: Connections

    static let shuttingDown = RPCError(.unavailable, "ferryd is shutting down")

    private func open(id: Int) async throws -> PostgresConnection {
        guard !closed else { throw Self.shuttingDown }
        let connection: PostgresConnection
        do {
            connection = try await url.connect(logger: logger, id: id)
        } catch {
            throw RPCError(.unavailable, "the control database is unreachable: \(error.message)")
        }
        // close() may have run while we connected.
        guard !closed else {
            try? await connection.close()
            throw Self.shuttingDown
        }
        return connection
    }

    private func laneConnection(_ lane: Int) async throws -> PostgresConnection {
        if let open = lanes[lane], !open.isClosed { return open }
        let connection = try await open(id: 1 + lane)
        lanes[lane] = connection
        return connection
    }

    /// The error callers get when a batch failed as a whole; a connection that broke is
    /// dropped, so the next batch starts afresh.
    private func failed(_ error: any Error, lane: Int) async -> RPCError {
        if let error = error as? RPCError { return error }
        if let connection = lanes[lane], connection.isClosed || !((error as? PSQLError)?.sqlState != nil) {
            try? await connection.close()
            lanes[lane] = nil
        }
        logger.warning("admission failed", metadata: ["error": "\(String(reflecting: error))"])
        return RPCError(.unavailable, "the control database failed during admission; retry")
    }

    /// Runs `body` on the queue's connection, one call at a time in arrival order, opening
    /// it when needed. A connection that failed is dropped, so the next call starts afresh.
    private func withPromotionConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        if promoting {
            await withCheckedContinuation { promotionWaiters.append($0) }
        } else {
            promoting = true
        }
        defer {
            if promotionWaiters.isEmpty { promoting = false } else { promotionWaiters.removeFirst().resume() }
        }
        let connection: PostgresConnection
        if let open = promotionConnection, !open.isClosed {
            connection = open
        } else {
            connection = try await open(id: 1 + configuration.admissionConnections)
            promotionConnection = connection
        }
        do {
            return try await body(connection)
        } catch let error as RPCError {
            throw error
        } catch {
            if connection.isClosed || !((error as? PSQLError)?.sqlState != nil) {
                try? await connection.close()
                promotionConnection = nil
            }
            logger.warning("promotion failed", metadata: ["error": "\(String(reflecting: error))"])
            throw RPCError(.unavailable, "the control database failed while admitting queued jobs; retry")
        }
    }

    /// Closes the connections for good (at shutdown); requests still waiting are answered
    /// UNAVAILABLE.
    public func close() async {
        closed = true
        let waiting = pending
        pending = []
        for entry in waiting { entry.continuation.resume(throwing: Self.shuttingDown) }
        for (lane, connection) in lanes.enumerated() {
            lanes[lane] = nil
            try? await connection?.close()
        }
        try? await promotionConnection?.close()
        promotionConnection = nil
    }
}

extension Optional where Wrapped == JobRecord {
    fileprivate func unwrap(_ id: UUID) throws -> JobRecord {
        guard let self else { throw RPCError(.internal, "the insert of job \(id.uuidString.lowercased()) returned nothing") }
        return self
    }
}
