import ControlDatabase
import FerryProtocol
import Foundation
import Logging
import PostgresNIO

extension JobStore {
    /// A job that admission decided to insert, RUNNING or QUEUED.
    public struct NewJob: Sendable {
        public var id: UUID
        public var params: JobParams
        /// Sorted and distinct (JobPlan).
        public var touches: [JobTouch]
        public var status: JobStatus
        public var requestID: String?
        public var createdBy: String?
        /// The FAILED or CANCELLED job this one reruns.
        public var rerunOf: JobRecord?

        public init(id: UUID, params: JobParams, touches: [JobTouch], status: JobStatus, requestID: String?, createdBy: String?, rerunOf: JobRecord?) {
            self.id = id
            self.params = params
            self.touches = touches
            self.status = status
            self.requestID = requestID
            self.createdBy = createdBy
            self.rerunOf = rerunOf
        }
    }

    /// Inserts jobs admitted together, with what they touch and their first STATUS event
    /// (seq 1, announced at commit), in one statement: a batch costs one round trip however
    /// many jobs it holds. Returns the records in the order given.
    ///
    /// Rows are inserted in the order given, each with its own `clock_timestamp()`. Times
    /// taken within one statement may be equal to the microsecond, so the queue order
    /// (`queued_at`, then `id`) of a batch rests on its ids: callers give ascending ids in
    /// arrival order.
    public static func insertAdmitted(_ jobs: [NewJob], on connection: PostgresConnection, logger: Logger) async throws -> [JobRecord] {
        guard !jobs.isEmpty else { return [] }
        var rows: [JSONValue] = []
        var touchJobs: [UUID] = [], instances: [String] = [], tenants: [String] = [], writes: [Bool] = []
        for (index, job) in jobs.enumerated() {
            let id = job.id.uuidString.lowercased()
            var row: [String: JSONValue] = [
                "n": .number(Double(index)),
                "id": .string(id),
                "kind": .string(job.params.kind?.databaseName ?? ""),
                "status": .string(job.status.name),
                "params": try job.params.jsonValue(),
                "attempt": .number(Double((job.rerunOf?.attempt ?? 0) + 1)),
                "root": .string((job.rerunOf?.rootJobID ?? job.id).uuidString.lowercased()),
                "notice": .string(EngineNotification.event(job: job.id, seq: 1).payload),
            ]
            if let requestID = job.requestID { row["request_id"] = .string(requestID) }
            if let createdBy = job.createdBy { row["created_by"] = .string(createdBy) }
            if let rerunOf = job.rerunOf { row["rerun_of"] = .string(rerunOf.id.uuidString.lowercased()) }
            rows.append(.object(row))
            for touch in job.touches {
                touchJobs.append(job.id)
                instances.append(touch.instance)
                tenants.append(touch.tenant)
                writes.append(touch.writes)
            }
        }
        // The sibling inserts' foreign keys are checked at the end of the statement, when the
        // job rows exist. A rerun inherits its predecessor's resume state: that is how it
        // resumes.
        let result = try await connection.execute("""
            WITH input AS (
                SELECT * FROM jsonb_to_recordset(\(JSONValue.array(rows).text)::jsonb)
                    AS t(n int, id uuid, kind text, status text, params jsonb, request_id text, attempt int,
                         rerun_of uuid, root uuid, created_by text, notice text)
            ), inserted AS (
                INSERT INTO jobs (id, kind, status, params, request_id, attempt, rerun_of, root_job_id, created_by,
                                  resume_state, last_seq, created_at, queued_at, started_at, updated_at)
                SELECT i.id, i.kind, i.status, i.params, i.request_id, i.attempt, i.rerun_of, i.root, i.created_by,
                       COALESCE((SELECT p.resume_state FROM jobs p WHERE p.id = i.rerun_of), '{}'::jsonb), 1,
                       clock_timestamp(), clock_timestamp(), CASE WHEN i.status = 'RUNNING' THEN clock_timestamp() END, clock_timestamp()
                  FROM input i ORDER BY i.n
                RETURNING \(unescaped: JobRecord.columns())
            ), touched AS (
                INSERT INTO job_instances (job_id, instance_id, tenant, writes)
                SELECT t.job_id, t.instance, t.tenant, bool_or(t.writes)
                  FROM unnest(\(touchJobs)::uuid[], \(instances)::text[], \(tenants)::text[], \(writes)::bool[]) AS t(job_id, instance, tenant, writes)
                 GROUP BY t.job_id, t.instance, t.tenant
            ), events AS (
                INSERT INTO job_events (job_id, seq, type, payload, created_at)
                SELECT i.id, 1, 'STATUS', jsonb_build_object('status', i.status), clock_timestamp() FROM input i ORDER BY i.n
            ), notified AS (
                SELECT count(pg_notify(\(EngineNotification.channel), i.notice)) FROM input i
            )
            SELECT inserted.* FROM inserted CROSS JOIN notified
            """, logger: logger)
        var records: [UUID: JobRecord] = [:]
        for row in result {
            let record = try JobRecord(row: row)
            records[record.id] = record
        }
        return try jobs.map { job in
            guard let record = records[job.id] else { throw RPCError(.internal, "the insert of job \(job.id.uuidString.lowercased()) returned nothing") }
            return record
        }
    }
}

extension JobRecord {
    /// A record built without a row, for code that reasons about jobs without a database
    /// (the admission rules' tests); the other fields are empty.
    public init(id: UUID, status: JobStatus, params: JobParams, attempt: Int32 = 1, rerunOf: UUID? = nil, rootJobID: UUID? = nil,
                requestID: String? = nil, createdAt: Date = Date()) {
        self.id = id
        self.kind = params.kind ?? .unspecified
        self.status = status
        self.params = params
        self.attempt = attempt
        self.rerunOf = rerunOf
        self.rootJobID = rootJobID ?? id
        self.progress = JobProgress()
        self.error = nil
        self.createdBy = nil
        self.createdAt = createdAt
        self.startedAt = nil
        self.finishedAt = nil
        self.lastSeq = 1
        self.requestID = requestID
        self.owner = nil
    }
}
