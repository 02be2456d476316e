import FerryProtocol
import Foundation
import PostgresNIO
import SwiftProtobuf

/// A job row of the control database, with what the engine needs beside the proto `Job`.
public struct JobRecord: Sendable {
    public var id: UUID
    public var kind: JobKind
    public var status: JobStatus
    public var params: JobParams
    public var attempt: Int32
    public var rerunOf: UUID?
    public var rootJobID: UUID
    public var progress: JobProgress
    public var error: JobError?
    public var createdBy: String?
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    public var lastSeq: Int64
    public var requestID: String?
    public var owner: String?
    /// What the job produced; set only for a SUCCEEDED job whose kind records one.
    public var result: JobResult?

    /// The columns `init(row:)` reads, in order; `prefix` qualifies them (e.g. `"j."`).
    public static func columns(_ prefix: String = "") -> String {
        [
            "id", "kind", "status", "params::text", "attempt", "rerun_of", "root_job_id", "progress::text",
            "error_code", "error_message", "error_retryable", "created_by", "created_at", "started_at",
            "finished_at", "last_seq", "request_id", "owner", "result::text",
        ].map { prefix + $0 }.joined(separator: ", ")
    }

    public init(row: PostgresRow) throws {
        let (id, kind, status, params, attempt, rerunOf, root, progress, errorCode, errorMessage, errorRetryable,
             createdBy, createdAt, startedAt, finishedAt, lastSeq, requestID, owner, result) = try row.decode(
            (UUID, String, String, String, Int32, UUID?, UUID, String, String?, String?, Bool?, String?, Date, Date?, Date?, Int64, String?, String?, String?).self)
        self.id = id
        self.kind = JobKind(databaseName: kind) ?? .unspecified
        self.status = JobStatus(name: status) ?? .unspecified
        // A row the server cannot read is an error, never an empty value a job would run with.
        do {
            self.params = try JobParams(jsonValue: JSONValue.parse(params))
            self.progress = try JobProgress(jsonValue: JSONValue.parse(progress))
            self.result = try result.map { try JobResult(jsonValue: JSONValue.parse($0)) }
        } catch {
            throw RPCError(.dataLoss, "job \(id.uuidString.lowercased()) holds params, progress or a result this server cannot read: \(error)")
        }
        self.attempt = attempt
        self.rerunOf = rerunOf
        self.rootJobID = root
        if let errorCode {
            self.error = JobError(code: errorCode, message: errorMessage ?? "", retryable: errorRetryable ?? false)
        }
        self.createdBy = createdBy
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.lastSeq = lastSeq
        self.requestID = requestID
        self.owner = owner
    }

    /// The proto message.
    public var job: Job {
        var job = Job()
        job.id = id.uuidString.lowercased()
        job.kind = kind
        job.status = status
        job.params = params
        job.attempt = attempt
        job.rerunOf = rerunOf.map { $0.uuidString.lowercased() } ?? ""
        job.rootJobID = rootJobID.uuidString.lowercased()
        job.progress = progress
        if let error { job.error = error }
        job.createdAt = Google_Protobuf_Timestamp(date: createdAt)
        if let startedAt { job.startedAt = Google_Protobuf_Timestamp(date: startedAt) }
        if let finishedAt { job.finishedAt = Google_Protobuf_Timestamp(date: finishedAt) }
        job.createdBy = createdBy ?? ""
        if let result { job.result = result }
        return job
    }

    public var isTerminal: Bool { status.isTerminal }
}

extension JobKind {
    /// The control database's name of the kind (`jobs.kind`).
    public var databaseName: String? {
        switch self {
        case .clone: "clone"
        case .export: "export"
        case .import: "import"
        case .instanceReplace: "instance_replace"
        case .unspecified, .UNRECOGNIZED: nil
        }
    }

    public init?(databaseName: String) {
        guard let kind = JobKind.allCases.first(where: { $0.databaseName == databaseName }) else { return nil }
        self = kind
    }
}

extension JobParams {
    /// The kind chosen by the member that is set, or nil when none is.
    public var kind: JobKind? {
        switch params {
        case .clone?: .clone
        case .export?: .export
        case .import?: .import
        case .instanceReplace?: .instanceReplace
        case nil: nil
        }
    }
}

extension JobError {
    public init(code: String, message: String, retryable: Bool) {
        self.init()
        self.code = code
        self.message = message
        self.retryable = retryable
    }
}

extension JSONValue {
    /// Parses JSON text (as stored in a jsonb column read as text); a corrupt value is an
    /// error, never an empty one.
    public static func parse(_ text: String) throws -> JSONValue {
        guard let value = JSONValue(parsing: text) else {
            throw RPCError(.dataLoss, "the control database holds JSON that does not parse")
        }
        return value
    }

    /// Compact JSON text with sorted keys.
    public var text: String { jsonText }
}

/// Parses a job id: canonical UUID text, else INVALID_ARGUMENT.
public func parseJobID(_ text: String?, field: String = "jobId") throws -> UUID {
    guard let text, !text.isEmpty else { throw RPCError(.invalidArgument, "\(field) is required") }
    guard text.count == 36, let id = UUID(uuidString: text) else {
        throw RPCError(.invalidArgument, "\(field) \"\(text.prefix(80))\" is not a UUID in canonical form")
    }
    return id
}
