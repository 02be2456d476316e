import ControlDatabase
import Coordinator
import Executors
import FerryProtocol
import FerryRPC
import Foundation
import JobStore
import Logging
import PostgresNIO
import ServiceLifecycle
import SwiftProtobuf
import Watch

/// The handlers of `ferry.v1.Jobs`: plain async functions over the coordinator, the control
/// database and the watch hub.
struct JobsService: Sendable {
    let client: PostgresClient
    let coordinator: Coordinator
    let runners: JobRunners
    let executors: ExecutorPool
    let watchHub: WatchHub
    let logger: Logger

    /// ListJobs page size when the request leaves it 0, and the most it may ask for.
    static let defaultPageSize = 50
    static let maxPageSize = 500

    func register(into router: inout MethodRouter) {
        router.register(FerryMethods.startJob) { request, context in try await startJob(request, context) }
        router.register(FerryMethods.rerunJob) { request, context in try await rerunJob(request, context) }
        router.register(FerryMethods.getJob) { request, _ in try await getJob(request) }
        router.register(FerryMethods.listJobs) { request, _ in try await listJobs(request) }
        router.register(FerryMethods.cancelJob) { request, _ in try await cancelJob(request) }
        router.register(FerryMethods.watchJob) { request, _, writer in try await watchJob(request, writer) }
    }

    func startJob(_ request: StartJobRequest, _ context: RPCContext) async throws -> Job {
        let params = try JobPlan.params(of: request)
        let touches = try JobPlan.touches(params)
        try requireRunner(params.kind ?? .unspecified)
        let requestID = try Self.requestID(request.requestID)
        let record = try await coordinator.admit(.init(
            params: params, touches: touches, queue: request.queue, requestID: requestID, createdBy: context.principal?.name))
        return record.job
    }

    func rerunJob(_ request: RerunJobRequest, _ context: RPCContext) async throws -> Job {
        let id = try parseJobID(request.jobID)
        let requestID = try Self.requestID(request.requestID)
        guard let job = try await database({ try await JobStore.fetch(id, on: $0, logger: logger) }) else {
            throw RPCError(.notFound, "job \(id.uuidString.lowercased()) not found")
        }
        // A repeat of a rerun that already happened returns its job, whatever state the
        // predecessor is in now.
        var repeated = false
        if let requestID {
            repeated = try await database({ try await JobStore.fetch(requestID: requestID, on: $0, logger: logger) }) != nil
        }
        if !repeated { try Coordinator.checkRerunnable(job) }
        try requireRunner(job.kind)
        let record = try await coordinator.admit(.init(
            params: job.params, touches: try JobPlan.touches(job.params), queue: request.queue, requestID: requestID, createdBy: context.principal?.name, rerunOf: id))
        return record.job
    }

    func getJob(_ request: GetJobRequest) async throws -> Job {
        let id = try parseJobID(request.jobID)
        guard let job = try await database({ try await JobStore.fetch(id, on: $0, logger: logger) }) else {
            throw RPCError(.notFound, "job \(id.uuidString.lowercased()) not found")
        }
        return job.job
    }

    func listJobs(_ request: ListJobsRequest) async throws -> ListJobsResponse {
        let requested = Int(request.pageSize)
        guard requested >= 0 else { throw RPCError(.invalidArgument, "pageSize must not be negative") }
        let pageSize = min(requested == 0 ? Self.defaultPageSize : requested, Self.maxPageSize)
        let after = request.pageToken.isEmpty ? nil : try Self.decodePageToken(request.pageToken)
        let instance = request.instance
        if !instance.isEmpty, !JobPlan.isInstanceID(instance) {
            throw RPCError(.invalidArgument, "instance \"\(instance.prefix(80))\" is not an instance id")
        }
        let status = request.status == .unspecified ? nil : request.status
        let kind = request.kind == .unspecified ? nil : request.kind
        let records = try await database { connection in
            try await JobStore.list(
                status: status, kind: kind, instance: instance.isEmpty ? nil : instance,
                after: after, limit: pageSize + 1, on: connection, logger: logger)
        }
        let page = records.prefix(pageSize)
        var response = ListJobsResponse()
        response.jobs = page.map(\.job)
        if records.count > pageSize, let last = page.last {
            response.nextPageToken = Self.encodePageToken(last.createdAt, last.id)
        } else {
            response.nextPageToken = ""
        }
        return response
    }

    /// A queued job, or an admitted one no executor has picked up yet, is cancelled at once.
    /// A running one gets a cancel request: its replica hears it by NOTIFY (or at its next
    /// heartbeat) and stops it, and it ends CANCELLED, resumable by RerunJob.
    func cancelJob(_ request: CancelJobRequest) async throws -> Job {
        let id = try parseJobID(request.jobID)
        let (record, freed) = try await database { connection in
            try await connection.transaction(logger: logger) { connection -> (JobRecord?, Bool) in
                let rows = try await connection.execute("SELECT status, owner FROM jobs WHERE id = \(id) FOR UPDATE", logger: logger)
                guard let row = rows.first else { return (nil, false) }
                let (status, owner) = try row.decode((String, String?).self)
                var freed = false
                if status == JobStatus.queued.name || (status == JobStatus.running.name && owner == nil) {
                    try await connection.execute("""
                        UPDATE jobs SET status = 'CANCELLED', finished_at = clock_timestamp(), updated_at = clock_timestamp(),
                               cancel_requested_at = clock_timestamp() WHERE id = \(id)
                        """, logger: logger)
                    _ = try await JobStore.appendStatus(id, status: .cancelled, error: nil, on: connection, logger: logger)
                    try await EngineNotification.freed.send(on: connection, logger: logger)
                    freed = true
                } else if status == JobStatus.running.name {
                    try await connection.execute("""
                        UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, clock_timestamp()) WHERE id = \(id)
                        """, logger: logger)
                    try await EngineNotification.cancel(id).send(on: connection, logger: logger)
                }
                return (try await JobStore.fetch(id, on: connection, logger: logger), freed)
            }
        }
        guard let record else { throw RPCError(.notFound, "job \(id.uuidString.lowercased()) not found") }
        executors.cancel(id)
        if freed { _ = try? await coordinator.promoteQueued() }
        return record.job
    }

    func watchJob(_ request: WatchJobRequest, _ writer: ResponseWriter<JobEvent>) async throws {
        let id = try parseJobID(request.jobID)
        let after = request.afterSeq
        guard after >= 0 else { throw RPCError(.invalidArgument, "afterSeq must not be negative") }
        guard let record = try await database({ try await JobStore.fetch(id, on: $0, logger: logger) }) else {
            throw RPCError(.notFound, "job \(id.uuidString.lowercased()) not found")
        }
        // The SNAPSHOT is not part of the job's history: it carries afterSeq, the position
        // the stream continues from, so resuming from it loses no event.
        var snapshot = JobEvent()
        snapshot.seq = after
        snapshot.type = .snapshot
        snapshot.job = record.job
        snapshot.jobID = record.job.id
        snapshot.at = Google_Protobuf_Timestamp(date: Date())
        try await writer.write(snapshot)
        // A finished job whose history the client has seen: nothing follows the snapshot.
        if record.isTerminal && after >= record.lastSeq { return }
        do {
            // A replica shutting down ends its watches (the client resumes elsewhere with
            // afterSeq) rather than holding the drain open until the jobs end.
            try await cancelWhenGracefulShutdown {
                try await watchHub.watch(id, after: after) { event in try await writer.write(encoded: event.encoded) }
            }
        } catch is CancellationError where Task.isShuttingDownGracefully {
            throw RPCError(.unavailable, "ferryd is shutting down; watch again with afterSeq (another replica serves it)")
        }
    }

    // MARK: Helpers

    private func requireRunner(_ kind: JobKind) throws {
        guard runners.runner(for: kind) != nil else {
            throw RPCError(.unimplemented, "job kind \(kind.name) is not available in this build of ferryd")
        }
    }

    static func requestID(_ text: String?) throws -> String? {
        guard let text, !text.isEmpty else { return nil }
        guard text.utf8.count <= 200 else { throw RPCError(.invalidArgument, "requestId is longer than 200 bytes") }
        return text
    }

    /// Page tokens are opaque to clients: base64url of "<created_at µs>:<id>".
    static func encodePageToken(_ createdAt: Date, _ id: UUID) -> String {
        let micros = Int64((createdAt.timeIntervalSince1970 * 1_000_000).rounded())
        return Data("\(micros):\(id.uuidString.lowercased())".utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static func decodePageToken(_ token: String) throws -> (micros: Int64, id: UUID) {
        var base64 = token.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard let data = Data(base64Encoded: base64), let text = String(data: data, encoding: .utf8) else {
            throw RPCError(.invalidArgument, "pageToken is not a token this server issued")
        }
        let parts = text.split(separator: ":")
        guard parts.count == 2, let micros = Int64(parts[0]), let id = UUID(uuidString: String(parts[1])) else {
            throw RPCError(.invalidArgument, "pageToken is not a token this server issued")
        }
        return (micros, id)
    }

    func database<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await client.controlDatabaseCall(logger: logger, body)
    }
}

extension PostgresClient {
    /// Runs a handler's statements on a pooled connection. RPC errors pass through; anything
    /// else (an unreachable database, a broken connection) is logged and answered
    /// UNAVAILABLE, so a client retries instead of seeing internals.
    func controlDatabaseCall<T: Sendable>(logger: Logger, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        do {
            return try await withConnection(body)
        } catch let error as RPCError {
            throw error
        } catch {
            logger.warning("control database call failed", metadata: ["error": "\(String(reflecting: error))"])
            throw RPCError(.unavailable, "the control database is unavailable; retry")
        }
    }
}
