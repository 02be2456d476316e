import Artifacts
import FerryProtocol
import FerryRPC
import Foundation
import JobStore
import Logging
import PostgresNIO

/// The handlers of `ferry.v1.Artifacts`: the archives export jobs wrote, as recorded in
/// `job_artifacts`. DeleteArtifact goes through the same deletion path as the retention
/// worker (``ArtifactRemoval``): files first, then the row.
struct ArtifactsService: Sendable {
    let client: PostgresClient
    /// This replica's store; nil without `--artifact-dir` (List and Get still work).
    let store: ArtifactStore?
    let hooks: RetentionHooks
    let logger: Logger

    /// ListArtifacts page size when the request leaves it 0, and the most it may ask for.
    static let defaultPageSize = 50
    static let maxPageSize = 500

    func register(into router: inout MethodRouter) {
        router.register(FerryMethods.listArtifacts) { request, _ in try await listArtifacts(request) }
        router.register(FerryMethods.getArtifact) { request, _ in try await getArtifact(request) }
        router.register(FerryMethods.deleteArtifact) { request, context in try await deleteArtifact(request, context) }
    }

    func listArtifacts(_ request: ListArtifactsRequest) async throws -> ListArtifactsResponse {
        let requested = Int(request.pageSize)
        guard requested >= 0 else { throw RPCError(.invalidArgument, "pageSize must not be negative (0 takes the default, \(Self.defaultPageSize))") }
        let pageSize = min(requested == 0 ? Self.defaultPageSize : requested, Self.maxPageSize)
        let after = request.pageToken.isEmpty ? nil : try JobPageToken.decode(request.pageToken)
        let instance = request.sourceInstance
        if !instance.isEmpty, !JobPlan.isInstanceID(instance) {
            throw RPCError(.invalidArgument, "sourceInstance \"\(instance.prefix(80))\" is not an instance id")
        }
        let tenant = request.sourceTenant
        if !tenant.isEmpty, !JobPlan.isTenantName(tenant) {
            throw RPCError(.invalidArgument, "sourceTenant \"\(tenant.prefix(80))\" is not a tenant name")
        }
        let page = try await database { connection in
            try await ArtifactRecords.list(
                sourceInstance: instance.isEmpty ? nil : instance, sourceTenant: tenant.isEmpty ? nil : tenant,
                includeExpired: request.includeExpired, after: after, limit: pageSize + 1, on: connection, logger: logger)
        }
        let shown = page.prefix(pageSize)
        var response = ListArtifactsResponse()
        response.artifacts = shown.map(\.record.proto)
        if page.count > pageSize, let last = shown.last {
            response.nextPageToken = JobPageToken.encode(Date(timeIntervalSince1970: Double(last.createdMicros) / 1_000_000), last.record.id)
        }
        return response
    }

    func getArtifact(_ request: GetArtifactRequest) async throws -> Artifact {
        let id = try Self.artifactID(request.artifactID)
        guard let record = try await database({ try await ArtifactRecords.get(id, on: $0, logger: logger) }) else {
            throw Self.notFound(id)
        }
        return record.proto
    }

    /// Deletes now, whatever the expiry: refused while a QUEUED or RUNNING import reads it,
    /// and on a replica that does not see the artifact's store.
    func deleteArtifact(_ request: DeleteArtifactRequest, _ context: RPCContext) async throws -> Artifact {
        let id = try Self.artifactID(request.artifactID)
        let (store, hooks, logger) = (store, hooks, logger)
        let deleted = try await database { connection in
            do {
                return try await ArtifactRemoval.delete(id, store: store, hooks: hooks, on: connection, logger: logger)
            } catch let refusal as ArtifactRemoval.Refusal {
                throw Self.rpcError(refusal, id: id, store: store)
            } catch let error as ArtifactStoreError {
                logger.warning("cannot delete an artifact's files", metadata: ["artifact_id": "\(id.uuidString.lowercased())", "error": "\(error.message)"])
                throw RPCError(.internal, "cannot delete the files of artifact \(id.uuidString.lowercased()): \(error.message)")
            }
        }
        guard let record = deleted else { throw Self.notFound(id) }
        logger.notice("artifact deleted on request", metadata: [
            "artifact_id": "\(id.uuidString.lowercased())", "principal": "\(context.principal?.name ?? "-")",
        ])
        return record.proto
    }

    static func rpcError(_ refusal: ArtifactRemoval.Refusal, id: UUID, store: ArtifactStore?) -> RPCError {
        let name = id.uuidString.lowercased()
        switch refusal {
        case .inUse(let jobs):
            let ids = jobs.map { $0.uuidString.lowercased() }
            return RPCError(.failedPrecondition, "artifact \(name) is read by \(ids.count == 1 ? "import job" : "import jobs") \(ids.joined(separator: ", ")) (QUEUED or RUNNING); cancel \(ids.count == 1 ? "it" : "them") or wait until \(ids.count == 1 ? "it ends" : "they end")",
                            details: .object(["importJobIds": .array(ids.map(JSONValue.string))]))
        case .otherStore(let recorded, let ours?):
            return RPCError(.failedPrecondition, "artifact \(name) is in artifact store \(recorded.isEmpty ? "(none recorded)" : recorded), but this replica's --artifact-dir \(store?.directory ?? "") is store \(ours): every replica must share one artifact directory",
                            details: .object(["storeId": .string(recorded), "replicaStoreId": .string(ours)]))
        case .otherStore(let recorded, nil):
            return RPCError(.failedPrecondition, "this replica has no artifact store (--artifact-dir is not set), so it cannot delete the files of artifact \(name)",
                            details: .object(["storeId": .string(recorded)]))
        case .badPath(let path):
            return RPCError(.failedPrecondition, "artifact \(name) names the path \"\(path.prefix(100))\", which is not a folder of the artifact store; it is not deleted")
        }
    }

    static func artifactID(_ text: String) throws -> UUID {
        guard !text.isEmpty else { throw RPCError(.invalidArgument, "artifactId is required") }
        guard let id = UUID(uuidString: text) else {
            throw RPCError(.invalidArgument, "artifactId \"\(text.prefix(80))\" is not a UUID")
        }
        return id
    }

    static func notFound(_ id: UUID) -> RPCError {
        RPCError(.notFound, "artifact \(id.uuidString.lowercased()) not found (never written, or deleted)")
    }

    func database<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await client.controlDatabaseCall(logger: logger, body)
    }
}
