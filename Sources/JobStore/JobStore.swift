import ControlDatabase
import FerryProtocol
import Foundation
import Logging
import PostgresNIO
import SwiftProtobuf

/// The SQL of jobs and their events, in one place. Every function runs on the connection it
/// is given, so callers choose the transaction. Times come from the database clock
/// (`clock_timestamp()`, not the transaction's start) so that intervals from different
/// replicas compare.
public enum JobStore {
    public static func fetch(_ id: UUID, on connection: PostgresConnection, logger: Logger) async throws -> JobRecord? {
        let rows = try await connection.execute("SELECT \(unescaped: JobRecord.columns()) FROM jobs WHERE id = \(id)", logger: logger)
        return try rows.first.map(JobRecord.init(row:))
    }

    public static func fetch(requestID: String, on connection: PostgresConnection, logger: Logger) async throws -> JobRecord? {
        let rows = try await connection.execute("SELECT \(unescaped: JobRecord.columns()) FROM jobs WHERE request_id = \(requestID)", logger: logger)
        return try rows.first.map(JobRecord.init(row:))
    }

    /// Inserts a job and what it touches, with its first STATUS event (seq 1).
    public static func insert(
        id: UUID, params: JobParams, touches: [JobTouch], status: JobStatus, requestID: String?,
        createdBy: String?, rerunOf: JobRecord?, on connection: PostgresConnection, logger: Logger
    ) async throws -> JobRecord {
        let kind = params.kind?.databaseName ?? ""
        let paramsText = try params.jsonValue().text
        let attempt = (rerunOf?.attempt ?? 0) + 1
        let root = rerunOf?.rootJobID ?? id
        let running = status == .running
        // A rerun inherits its predecessor's resume state: that is how it resumes.
        let rows = try await connection.execute("""
            INSERT INTO jobs (id, kind, status, params, request_id, attempt, rerun_of, root_job_id, created_by,
                              resume_state, created_at, queued_at, started_at, updated_at)
            VALUES (\(id), \(kind), \(status.name), \(paramsText)::jsonb, \(requestID), \(Int32(attempt)), \(rerunOf?.id), \(root), \(createdBy),
                    COALESCE((SELECT resume_state FROM jobs WHERE id = \(rerunOf?.id)), '{}'::jsonb),
                    clock_timestamp(), clock_timestamp(), CASE WHEN \(running) THEN clock_timestamp() END, clock_timestamp())
            RETURNING \(unescaped: JobRecord.columns())
            """, logger: logger)
        // One statement for all touches (touches are distinct: JobPlan sorts and checks them).
        try await connection.execute("""
            INSERT INTO job_instances (job_id, instance_id, tenant, writes)
            SELECT \(id), t.instance, t.tenant, bool_or(t.writes)
              FROM unnest(\(touches.map(\.instance))::text[], \(touches.map(\.tenant))::text[], \(touches.map(\.writes))::bool[]) AS t(instance, tenant, writes)
             GROUP BY t.instance, t.tenant
            """, logger: logger)
        guard let row = rows.first else { throw RPCError(.internal, "the job insert returned nothing") }
        var record = try JobRecord(row: row)
        let event = try await appendStatus(record.id, status: status, error: nil, on: connection, logger: logger)
        record.lastSeq = event.seq
        return record
    }

    // MARK: Events

    /// Appends an event with the job's next seq and notifies watchers (at commit).
    @discardableResult
    public static func appendEvent(_ jobID: UUID, type: JobEventType, payload: JSONValue, on connection: PostgresConnection, logger: Logger) async throws -> JobEvent {
        // EngineNotification.event's text, completed with the seq the statement hands out.
        let eventPayloadPrefix = EngineNotification.event(job: jobID, seq: 0).payload.dropLast(1)
        let rows = try await connection.execute("""
            WITH next AS (
                UPDATE jobs SET last_seq = last_seq + 1, updated_at = clock_timestamp() WHERE id = \(jobID) RETURNING last_seq
            ), event AS (
                INSERT INTO job_events (job_id, seq, type, payload, created_at)
                SELECT \(jobID), last_seq, \(type.name), \(payload.text)::jsonb, clock_timestamp() FROM next
                RETURNING seq, created_at
            )
            SELECT e.seq, e.created_at FROM event e
             CROSS JOIN LATERAL (SELECT pg_notify(\(EngineNotification.channel), \(String(eventPayloadPrefix)) || e.seq)) AS notified
            """, logger: logger)
        guard let row = rows.first else { throw RPCError(.notFound, "job \(jobID.uuidString.lowercased()) not found") }
        let (seq, at) = try row.decode((Int64, Date).self)
        return try event(jobID: jobID, seq: seq, type: type, payload: payload, at: at)
    }

    public static func appendStatus(_ jobID: UUID, status: JobStatus, error: JobError?, on connection: PostgresConnection, logger: Logger) async throws -> JobEvent {
        var payload: [String: JSONValue] = ["status": .string(status.name)]
        if let error { payload["error"] = try error.jsonValue() }
        return try await appendEvent(jobID, type: .status, payload: .object(payload), on: connection, logger: logger)
    }

    /// Events with seq > `after`, in order, at most `limit`.
    public static func events(_ jobID: UUID, after: Int64, limit: Int, on connection: PostgresConnection, logger: Logger) async throws -> [JobEvent] {
        let rows = try await connection.execute("""
            SELECT seq, type, payload::text, created_at FROM job_events
             WHERE job_id = \(jobID) AND seq > \(after) ORDER BY seq LIMIT \(limit)
            """, logger: logger)
        return try rows.map { row in
            let (seq, type, payload, at) = try row.decode((Int64, String, String, Date).self)
            return try event(jobID: jobID, seq: seq, type: JobEventType(name: type) ?? .unspecified, payload: JSONValue.parse(payload), at: at)
        }
    }

    /// A `job_events` row as the event WatchJob sends.
    public static func event(jobID: UUID, seq: Int64, type: JobEventType, payload: JSONValue, at: Date) throws -> JobEvent {
        var event = JobEvent()
        event.seq = seq
        event.type = type
        event.jobID = jobID.uuidString.lowercased()
        event.at = Google_Protobuf_Timestamp(date: at)
        switch type {
        case .progress:
            event.progress = try JobProgress(jsonValue: payload)
        case .status:
            guard case .string(let name)? = payload["status"], let status = JobStatus(name: name) else {
                throw RPCError(.dataLoss, "STATUS event \(seq) of job \(event.jobID) holds no status")
            }
            event.status = status
            if let error = payload["error"] { event.error = try JobError(jsonValue: error) }
        case .snapshot, .unspecified, .UNRECOGNIZED:
            break
        }
        return event
    }

    // MARK: Transitions

    /// Ends a RUNNING job owned by `owner` (or unowned when `owner` is nil) with a terminal
    /// status; nil when the job was not in that state (someone else ended it first).
    public static func finish(
        _ jobID: UUID, owner: String?, status: JobStatus, error: JobError?, result: JobResult? = nil, on connection: PostgresConnection, logger: Logger
    ) async throws -> JobRecord? {
        precondition(status.isTerminal)
        let resultText = try result.map { try $0.jsonValue().text }
        return try await connection.transaction(logger: logger) { connection in
            let rows = try await connection.execute("""
                UPDATE jobs SET status = \(status.name), finished_at = clock_timestamp(), updated_at = clock_timestamp(),
                       error_code = \(error?.code), error_message = \(error?.message), error_retryable = \(error?.retryable),
                       result = \(resultText)::jsonb
                 WHERE id = \(jobID) AND status = 'RUNNING' AND owner IS NOT DISTINCT FROM \(owner)
                RETURNING \(unescaped: JobRecord.columns())
                """, logger: logger)
            guard let row = rows.first else { return nil }
            var record = try JobRecord(row: row)
            let event = try await appendStatus(jobID, status: status, error: error, on: connection, logger: logger)
            record.lastSeq = event.seq
            try await EngineNotification.freed.send(on: connection, logger: logger)
            return record
        }
    }

    /// Records new progress on the job row and as a PROGRESS event.
    public static func recordProgress(_ jobID: UUID, owner: String, progress: JobProgress, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        try await connection.transaction(logger: logger) { connection in
            let payload = try progress.jsonValue()
            let rows = try await connection.execute("""
                UPDATE jobs SET progress = \(payload.text)::jsonb WHERE id = \(jobID) AND owner = \(owner) AND status = 'RUNNING' RETURNING id
                """, logger: logger)
            guard !rows.isEmpty else { return false }
            try await appendEvent(jobID, type: .progress, payload: payload, on: connection, logger: logger)
            return true
        }
    }

    public static func resumeState(_ jobID: UUID, on connection: PostgresConnection, logger: Logger) async throws -> JSONValue {
        let rows = try await connection.execute("SELECT resume_state::text FROM jobs WHERE id = \(jobID)", logger: logger)
        guard let text = try rows.first?.decode(String.self) else { return .object([:]) }
        return try JSONValue.parse(text)
    }

    // MARK: Listing

    /// A page of jobs, newest first, after `after`: the creation time in microseconds since
    /// the Unix epoch (integer arithmetic in SQL, so no rounding) and the id of the last job
    /// of the previous page.
    public static func list(
        status: JobStatus?, kind: JobKind?, instance: String?, after: (micros: Int64, id: UUID)?, limit: Int,
        on connection: PostgresConnection, logger: Logger
    ) async throws -> [JobRecord] {
        let rows = try await connection.execute("""
            SELECT \(unescaped: JobRecord.columns()) FROM jobs j
             WHERE (\(status?.name)::text IS NULL OR j.status = \(status?.name))
               AND (\(kind?.databaseName)::text IS NULL OR j.kind = \(kind?.databaseName))
               AND (\(instance)::text IS NULL OR EXISTS (SELECT 1 FROM job_instances ji WHERE ji.job_id = j.id AND ji.instance_id = \(instance)))
               AND (\(after?.micros)::bigint IS NULL
                    OR (j.created_at, j.id) < (timestamptz 'epoch' + \(after?.micros) * interval '1 microsecond', \(after?.id)))
             ORDER BY j.created_at DESC, j.id DESC
             LIMIT \(limit)
            """, logger: logger)
        return try rows.map(JobRecord.init(row:))
    }
}
