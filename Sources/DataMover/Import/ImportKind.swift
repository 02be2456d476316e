import Artifacts
import Executors
import FerryProtocol
import Foundation
import JobStore
import LibPQ
import Logging
import PostgresNIO

/// The `import` job kind: creates a tenant from an export's archive (named by its artifact
/// id, never by a path), with the clone's schema build, parallel load, index pipeline,
/// per-table verification (against the manifest's counts and checksums), per-table resume
/// and collision rules.
///
/// - Plan: the server has an artifact store, the artifact exists and has not expired, its
///   manifest matches the artifact's checksum and is one this server reads, and the target
///   tenant is free or this lineage's own.
/// - Run: every data file's size and SHA-256 are checked before anything is written; then
///   ``TenantCopy`` from the archive.
public struct ImportKind: JobRunner {
    public struct Params: Sendable {
        public var artifactID: UUID
        public var targetInstance: String
        public var targetTenant: String
        public var widths: CopyWidths
    }

    let settings: JobSettings
    let controlDatabase: PostgresClient
    let hooks: CloneHooks

    public init(settings: JobSettings, controlDatabase: PostgresClient, hooks: CloneHooks = CloneHooks()) {
        self.settings = settings
        self.controlDatabase = controlDatabase
        self.hooks = hooks
    }

    public func params(from wire: JobParams) throws(PlanRefusal) -> Params {
        guard case .import(let params)? = wire.params else {
            throw .invalidArgument(field: "params", message: "must hold import parameters for an IMPORT job")
        }
        guard !params.artifactID.isEmpty else { throw .invalidArgument(field: "import.artifactId", message: "is required") }
        guard let id = UUID(uuidString: params.artifactID), id.uuidString.lowercased() == params.artifactID.lowercased() else {
            throw .invalidArgument(field: "import.artifactId", message: "\"\(params.artifactID.prefix(80))\" is not an artifact id (a UUID)")
        }
        return Params(
            artifactID: id,
            targetInstance: try ParamCheck.instance(params.targetInstance, "import.targetInstance"),
            targetTenant: try ParamCheck.tenant(params.targetTenant, "import.targetTenant"),
            widths: try CloneKind.widths(copy: params.copyWidth, index: params.indexWidth, split: 0, field: "import", settings: settings))
    }

    public func plan(_ params: Params, _ context: PlanContext) async throws -> [JobTouch] {
        let store = try ExportKind.store(settings)
        _ = try await archive(params.artifactID, store: store, context.logger)
        try await context.requireTargetTenantAvailable(instance: params.targetInstance, tenant: params.targetTenant)
        return [JobTouch(instance: params.targetInstance, tenant: params.targetTenant, writes: true)]
    }

    /// The artifact's archive, opened: NOT_FOUND for an unknown (or deleted) artifact,
    /// FAILED_PRECONDITION for an expired one, and ``ImportArchive/open(_:store:)``'s checks.
    func archive(_ id: UUID, store: ArtifactStore, _ logger: Logger) async throws -> ImportArchive {
        let record: ArtifactRecord?
        do {
            record = try await controlDatabase.withConnection { try await ArtifactRecords.get(id, on: $0, logger: logger) }
        } catch {
            throw PlanRefusal.unavailable("the control database is unavailable; retry")
        }
        let text = id.uuidString.lowercased()
        guard let record else { throw PlanRefusal.notFound("artifact \(text) does not exist (never written, or deleted)") }
        guard record.expiresAt > Date() else {
            throw PlanRefusal.failedPrecondition(["artifact \(text) expired at \(ISO8601DateFormatter().string(from: record.expiresAt)) and is about to be deleted"])
        }
        return try ImportArchive.open(record, store: store)
    }

    public func run(_ params: Params, _ context: JobContext) async throws {
        let archive: ImportArchive
        do {
            let store = try ExportKind.store(settings)
            archive = try await self.archive(params.artifactID, store: store, context.logger)
            context.progress.setPhase("checking")
            context.progress.setCurrent("archive \(params.artifactID.uuidString.lowercased())")
            try await runBlocking(cancelling: []) { try archive.verifyFiles() }
        } catch let refusal as PlanRefusal {
            throw JobFailure(refusal.code, refusal.message, retryable: refusal.code == .unavailable)
        }
        let copy = TenantCopy(source: .archive(archive), targetInstance: params.targetInstance, targetTenant: params.targetTenant,
                              widths: params.widths, hooks: hooks)
        context.progress.setTotals(tenants: 1)
        let tables = try await copy.run(context)
        context.progress.addDone(tenants: 1)
        context.setResult(JobResult.with { $0.tables = tables })
    }
}
