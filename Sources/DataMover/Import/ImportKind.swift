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
        let store = try await ExportKind.store(settings)
        let archive = try await archive(params.artifactID, store: store, context.logger)
        try await context.requireTargetTenantAvailable(instance: params.targetInstance, tenant: params.targetTenant)
        let version: Int
        do {
            version = try await context.instances.withSession(params.targetInstance, logger: context.logger) { connection in
                try await connection.execute("SELECT current_setting('server_version_num')::int", logger: context.logger).first?.decode(Int.self) ?? 0
            }
        } catch let refusal as PlanRefusal {
            throw refusal
        } catch {
            throw PlanRefusal.unavailable("cannot reach instance \(params.targetInstance): \(error)")
        }
        if let problem = Self.versionProblem(archive, targetVersion: version, instance: params.targetInstance) {
            throw PlanRefusal.failedPrecondition([problem])
        }
        return [JobTouch(instance: params.targetInstance, tenant: params.targetTenant, writes: true)]
    }

    /// Why `archive` cannot be verified on a server of `targetVersion`, if it cannot: its
    /// checksums hash column values with `hash_record_extended`, which PostgreSQL has from 14.
    static func versionProblem(_ archive: ImportArchive, targetVersion: Int, instance: String) -> String? {
        guard archive.checksumMethod == .typeHashes, targetVersion < 140000 else { return nil }
        return """
            the archive's checksums hash column values with hash_record_extended, which instance \(instance) \
            (PostgreSQL \(targetVersion / 10000)) does not have: import it into PostgreSQL 14 or later
            """
    }

    /// The artifact's archive, opened: NOT_FOUND for an unknown (or deleted) artifact,
    /// FAILED_PRECONDITION for an expired one (by the control database's clock, the one
    /// retention and DeleteArtifact use), and ``ImportArchive/open(_:store:)``'s checks.
    func archive(_ id: UUID, store: ArtifactStore, _ logger: Logger) async throws -> ImportArchive {
        let found: (record: ArtifactRecord, now: Date)?
        do {
            found = try await controlDatabase.withConnection { connection in
                guard let record = try await ArtifactRecords.get(id, on: connection, logger: logger) else { return nil }
                let now = try await connection.execute("SELECT now()", logger: logger).first?.decode(Date.self) ?? Date()
                return (record, now)
            }
        } catch {
            throw PlanRefusal.unavailable("the control database is unavailable; retry")
        }
        let text = id.uuidString.lowercased()
        guard let (record, now) = found else { throw PlanRefusal.notFound("artifact \(text) does not exist (never written, or deleted)") }
        guard record.expiresAt > now else {
            throw PlanRefusal.failedPrecondition(["artifact \(text) expired at \(ISO8601DateFormatter().string(from: record.expiresAt)) and is about to be deleted"])
        }
        return try await runBlocking(cancelling: []) { try ImportArchive.open(record, store: store) }
    }

    public func run(_ params: Params, _ context: JobContext) async throws {
        let archive: ImportArchive
        do {
            // Checked again now that the job is RUNNING: an artifact expired or deleted since
            // the plan is refused here, before anything is written (and one that is still
            // there is kept from DeleteArtifact and retention by this job's status).
            let store = try await ExportKind.store(settings)
            archive = try await self.archive(params.artifactID, store: store, context.logger)
            let session = try await context.instances.open(params.targetInstance)
            let version = try await session.execute("SELECT current_setting('server_version_num')::int", logger: context.logger).first?.decode(Int.self) ?? 0
            await context.instances.close(session)
            if let problem = Self.versionProblem(archive, targetVersion: version, instance: params.targetInstance) {
                throw PlanRefusal.failedPrecondition([problem])
            }
            // Every file of the tables still to load, before anything is written; the ones
            // this lineage verified already are not read again.
            context.progress.setPhase("checking")
            context.progress.setCurrent("archive \(params.artifactID.uuidString.lowercased())")
            let verified = Set(try await context.checkpoints.tables()
                .filter { $0.tenant == params.targetTenant && $0.status == .verified }.map(\.table))
            let stop = ArchiveFile.StopFlag()
            try await runBlocking(cancelling: [], stop: stop) { try archive.verifyFiles(skipping: verified, stop: stop) }
        } catch let refusal as PlanRefusal {
            throw JobFailure(refusal.code, refusal.message, retryable: refusal.code == .unavailable)
        } catch let failure as ArchiveFile.Failure {
            throw JobFailure(.unavailable, "reading the archive: \(failure)", retryable: true)
        }
        let copy = TenantCopy(source: .archive(archive), targetInstance: params.targetInstance, targetTenant: params.targetTenant,
                              widths: params.widths, hooks: hooks)
        context.progress.setTotals(tenants: 1)
        let tables = try await copy.run(context)
        context.progress.addDone(tenants: 1)
        context.setResult(JobResult.with { $0.tables = tables })
    }
}
