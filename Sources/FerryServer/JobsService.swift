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
    let kinds: RegisteredKinds
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
        let runner = try runner(params.kind ?? .unspecified)
        let requestID = try Self.requestID(request.requestID)
        // A repeated request returns its job without planning again (the plan may now say
        // the target exists: it is this very job's).
        if let requestID, let existing = try await database({ try await JobStore.fetch(requestID: requestID, on: $0, logger: logger) }) {
            return try Coordinator.sameRequest(existing, params: params, rerunOf: nil).job
        }
        let touches = try await plan(runner, params, lineage: nil)
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
        if let requestID, let existing = try await database({ try await JobStore.fetch(requestID: requestID, on: $0, logger: logger) }) {
            return try Coordinator.sameRequest(existing, params: job.params, rerunOf: id).job
        }
        try Coordinator.checkRerunnable(job)
        let runner = try runner(job.kind)
        let touches = try await plan(runner, job.params, lineage: job.rootJobID)
        let record = try await coordinator.admit(.init(
            params: job.params, touches: touches, queue: request.queue, requestID: requestID, createdBy: context.principal?.name, rerunOf: id))
        return record.job
    }

    /// The kind's plan step, before anything is admitted; its refusals become status codes.
    private func plan(_ runner: AnyJobRunner, _ params: JobParams, lineage: UUID?) async throws -> [JobTouch] {
        let resources = kinds.resources
        let context = PlanContext(instances: resources.instances, controlDatabase: client, lineage: lineage, logger: logger)
        do {
            return try await runner.plan(params, context)
        } catch let refusal as PlanRefusal {
            throw refusal.rpcError
        } catch let error as RPCError {
            throw error
        } catch {
            // A database error while planning: nothing was admitted; the caller may retry.
            logger.warning("plan step failed", metadata: ["error": "\(String(reflecting: error))"])
            throw RPCError(.unavailable, "the plan step could not reach a database; retry")
        }
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
        let after = request.pageToken.isEmpty ? nil : try JobPageToken.decode(request.pageToken)
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
            response.nextPageToken = JobPageToken.encode(last.createdAt, last.id)
        } else {
            response.nextPageToken = ""
        }
        return response
    }

    /// A queued job, or an admitted one no executor has picked up yet, is cancelled at once.
    /// A running one gets a cancel request: its replica hears it by NOTIFY (or at its next
    /// heartbeat) and stops it, and it ends CANCELLED, resumable by RerunJob; if its replica
    /// is dead, the leader ends it CANCELLED within a few heartbeat intervals.
    func cancelJob(_ request: CancelJobRequest) async throws -> Job {
        let id = try parseJobID(request.jobID)
        let outcome = try await database { try await JobLifecycle.cancel(id, on: $0, logger: logger) }
        switch outcome {
        case .notFound:
            throw RPCError(.notFound, "job \(id.uuidString.lowercased()) not found")
        case .cancelled(let record):
            _ = try? await coordinator.promoteQueued()
            return record.job
        case .requested(let record):
            executors.cancel(id)
            return record.job
        case .finished(let record):
            return record.job
        }
    }

    func watchJob(_ request: WatchJobRequest, _ writer: ResponseWriter<JobEvent>) async throws {
        let id = try parseJobID(request.jobID)
        let after = request.afterSeq
        guard after >= 0 else { throw RPCError(.invalidArgument, "afterSeq must not be negative") }
        // One read shared by the calls watching this job at the same moment, rather than one
        // pool waiter per watcher when a thousand subscribe at once.
        let found: JobRecord?
        do {
            found = try await watchHub.job(id)
        } catch let error as RPCError {
            throw error
        } catch {
            logger.warning("control database call failed", metadata: ["error": "\(String(reflecting: error))"])
            throw RPCError(.unavailable, "the control database is unavailable; retry")
        }
        guard let record = found else {
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
            // afterSeq) rather than holding the drain open until the jobs end: the hub does it,
            // without a task group (two more tasks) per watch.
            try await watchHub.watch(id, after: after) { event in try await writer.write(encoded: event.encoded) }
        } catch is CancellationError where Task.isShuttingDownGracefully {
            throw RPCError(.unavailable, "ferryd is shutting down; watch again with afterSeq (another replica serves it)")
        }
    }

    // MARK: Helpers

    private func runner(_ kind: JobKind) throws -> AnyJobRunner {
        guard let runner = kinds.runner(for: kind) else {
            throw RPCError(.unimplemented, "job kind \(kind.name) is not available in this build of ferryd")
        }
        return runner
    }

    static func requestID(_ text: String?) throws -> String? {
        guard let text, !text.isEmpty else { return nil }
        guard text.utf8.count <= 200 else { throw RPCError(.invalidArgument, "requestId is longer than 200 bytes") }
        return text
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
            return try await withMeasuredConnection(body)
        } catch let error as RPCError {
            throw error
        } catch {
            logger.warning("control database call failed", metadata: ["error": "\(String(reflecting: error))"])
            throw RPCError(.unavailable, "the control database is unavailable; retry")
        }
    }
}

extension PlanRefusal {
    /// The ferry/1 status a refusal is answered with.
    var rpcError: RPCError {
        switch self {
        case .invalidArgument: RPCError(.invalidArgument, message)
        case .notFound: RPCError(.notFound, message)
        case .alreadyExists: RPCError(.alreadyExists, message)
        case .failedPrecondition(let problems):
            RPCError(.failedPrecondition, message, details: .object(["problems": .array(problems.map(JSONValue.string))]))
        case .unavailable: RPCError(.unavailable, message)
        case .dataLoss: RPCError(.dataLoss, message)
        }
    }
}
