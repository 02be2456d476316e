import ControlDatabase
import Executors
import FerryProtocol
import Foundation
import JobStore
import LibPQ
import Logging
import PostgresNIO

/// Copies one tenant to a target tenant: the schema, then the data of every table through
/// libpq COPY (from the source's exported snapshot, or from an export's archive), indexes and
/// verification pipelined behind the copies, then foreign keys, sequence values, views and
/// comments. Resumes per table: a table the lineage verified before is not touched; any other
/// is dropped and copied again from zero.
///
/// The clone kind runs one of these; instance_replace runs one per tenant; import runs one
/// from an archive.
public struct TenantCopy: Sendable {
    /// Where the tenant comes from.
    public enum Source: Sendable {
        /// A live tenant, read in one exported snapshot.
        case tenant(instance: String, tenant: String)
        /// An export's archive, checked against its manifest before anything is written.
        case archive(ImportArchive)
    }
    public var source: Source
    public var targetInstance: String
    public var targetTenant: String
    public var widths: CopyWidths
    public var hooks: CloneHooks
    /// True when this copy is one of several tenants of one job copying at once
    /// (instance_replace): it then only adds its tables, rows and bytes to the job's
    /// progress, and leaves the phase and the items in flight to the job.
    public var sharesProgress: Bool

    public init(source: Source, targetInstance: String, targetTenant: String, widths: CopyWidths,
                hooks: CloneHooks = CloneHooks(), sharesProgress: Bool = false) {
        self.source = source
        self.targetInstance = targetInstance
        self.targetTenant = targetTenant
        self.widths = widths
        self.hooks = hooks
        self.sharesProgress = sharesProgress
    }

    public init(sourceInstance: String, sourceTenant: String, targetInstance: String, targetTenant: String, widths: CopyWidths,
                hooks: CloneHooks = CloneHooks(), sharesProgress: Bool = false) {
        self.init(source: .tenant(instance: sourceInstance, tenant: sourceTenant), targetInstance: targetInstance,
                  targetTenant: targetTenant, widths: widths, hooks: hooks, sharesProgress: sharesProgress)
    }

    /// The source, as error messages name it.
    var sourceDescription: String {
        switch source {
        case .tenant(let instance, let tenant): "tenant \(tenant) on instance \(instance)"
        case .archive(let archive): "artifact \(archive.record.id.uuidString.lowercased())"
        }
    }

    /// Runs the copy for this attempt and returns every table's verified result (the ones
    /// earlier attempts verified included), sorted by name.
    public func run(_ context: JobContext) async throws -> [TableResult] {
        let run = CopyRun(copy: self, context: context)
        do {
            return try await run.run()
        } catch {
            throw run.failure(error)
        }
    }
}

/// How wide a tenant copy runs.
public struct CopyWidths: Sendable, Hashable {
    /// Tables (or block ranges of split tables) copied at once.
    public var copy: Int
    /// Tables whose indexes build (and whose checksums compute) at once.
    public var index: Int
    /// A table larger than this many bytes is split into ranges of about this size.
    public var splitTableBytes: Int64

    public init(copy: Int, index: Int, splitTableBytes: Int64) {
        self.copy = copy
        self.index = index
        self.splitTableBytes = splitTableBytes
    }
}

/// Test hooks of a tenant copy; empty in production.
public struct CloneHooks: Sendable {
    /// A statement to run on the target after a table's data is in and before its checksum,
    /// given the target schema, the table and the attempt: tests alter a row here to prove
    /// verification catches it, or hold a table unverified.
    public var beforeVerify: (@Sendable (_ schema: String, _ table: String, _ attempt: Int32) -> String?)?
    /// Copies every table in text format, as between servers of different major versions
    /// (only one version is installed where the tests run).
    public var textFormat: Bool

    public init(beforeVerify: (@Sendable (String, String, Int32) -> String?)? = nil, textFormat: Bool = false) {
        self.beforeVerify = beforeVerify
        self.textFormat = textFormat
    }
}

/// Where one tenant copy reports progress: alone (clone, import) it owns the job's figures;
/// as one of several tenants copying at once (instance_replace) it only adds to the counts,
/// and the job shows its tenants in flight instead of their tables and phases.
struct CopyProgress: Sendable {
    let counters: ProgressCounters
    let shared: Bool

    func setPhase(_ phase: String) { if !shared { counters.setPhase(phase) } }
    func setCurrent(_ text: String) { if !shared { counters.setCurrent(text) } }
    func add(rows: Int64 = 0, bytes: Int64 = 0) { counters.add(rows: rows, bytes: bytes) }
    func started(_ item: String) { if !shared { counters.started(item) } }

    func finished(_ item: String, done: Bool = true) {
        if !shared {
            counters.finished(item, done: done)
        } else if done {
            counters.addDone(tables: 1)
        }
    }

    /// The tenant's table count, and how many of them earlier attempts finished.
    func tables(total: Int64, alreadyDone: Int64) {
        if shared { counters.addTotals(tables: total) } else { counters.setTotals(tables: total) }
        counters.addDone(tables: alreadyDone)
    }
}

/// One attempt of a tenant copy.
final class CopyRun: Sendable {
    let copy: TenantCopy
    let context: JobContext
    let progress: CopyProgress
    var logger: Logger { context.logger }

    init(copy: TenantCopy, context: JobContext) {
        self.copy = copy
        self.context = context
        self.progress = CopyProgress(counters: context.progress, shared: copy.sharesProgress)
    }

    func run() async throws -> [TableResult] {
        let progress = self.progress
        progress.setPhase("schema")
        progress.setCurrent(copy.targetTenant)
        let claim = try await context.checkpoints.claimTenant(instance: copy.targetInstance, tenant: copy.targetTenant)
        let earlier = try await context.checkpoints.tables().filter { $0.tenant == copy.targetTenant }
        var verified = Dictionary(earlier.filter { $0.status == .verified }.map { ($0.table, $0) }, uniquingKeysWith: { a, _ in a })

        // Where the data comes from: the live source's snapshot (held until the last read),
        // or the checked archive.
        let data: CopyPipeline.DataSource
        let schema: TenantSchema
        let sourceVersion: Int
        var snapshot: SourceSnapshot?
        switch copy.source {
        case .tenant(let instance, let tenant):
            let taken = try await SourceSnapshot.take(instance: instance, tenant: tenant, context)
            snapshot = taken
            schema = taken.schema
            sourceVersion = taken.serverVersion
            data = .snapshot(taken, url: try await context.instances.sessionURL(instance))
        case .archive(let archive):
            schema = archive.schema
            sourceVersion = archive.manifest.source.serverVersion
            data = .archive(archive)
        }
        defer {
            if let session = snapshot?.session { Task { [instances = context.instances] in await instances.close(session) } }
        }
        let statements = schema.statements(into: copy.targetTenant)
        let access = try await context.instances.writerAccess(copy.targetInstance, tenant: copy.targetTenant)

        // The target schema, created whole in one transaction, or (resuming into this
        // lineage's own target) every table that was not verified dropped and created again.
        // Only tables of the schema as read now count; a verified table the source no longer
        // has is left as it is.
        verified = verified.filter { entry in schema.tables.contains { $0.name == entry.key } }
        let verifiedNames = Set(verified.keys)
        let todo = schema.tables.filter { verified[$0.name] == nil }
        let foreign = JobFailure(.alreadyExists, "tenant \(copy.targetTenant) appeared on instance \(copy.targetInstance) after the plan and is not Ferry's", retryable: false)
        let targetVersion: Int
        do {
            targetVersion = try await onWriter(access, "creating the target schema") { writer in
                let version = Int((try writer.execute("SELECT current_setting('server_version_num')").first?.first ?? nil) ?? "") ?? 0
                let exists = !(try writer.execute("SELECT 1 FROM pg_namespace WHERE nspname = \(quoteLiteral(self.copy.targetTenant))")).isEmpty
                if claim == .new && exists { throw foreign }
                guard exists || verifiedNames.isEmpty else {
                    throw JobFailure(.failedPrecondition, """
                        tenant \(self.copy.targetTenant) on instance \(self.copy.targetInstance), which earlier attempts of this job \
                        created and partly verified, no longer exists; drop nothing and start a new clone instead of a rerun
                        """, retryable: false)
                }
                var script = ["BEGIN", "SET LOCAL search_path = \(quoteIdent(self.copy.targetTenant))"]
                if !exists {
                    script += statements.prelude
                    for table in schema.tables { script += statements.createTable[table.name] ?? [] }
                } else {
                    for table in todo {
                        script.append("DROP TABLE IF EXISTS \(quoteQualified(self.copy.targetTenant, table.name)) CASCADE")
                        script += statements.createTable[table.name] ?? []
                    }
                }
                script.append("COMMIT")
                try Self.runScript(script, on: writer)
                return version
            }
        } catch let failure as JobFailure where failure.code == .alreadyExists && claim == .new {
            // The claim made a moment ago names a tenant that is not ours: give it back, or a
            // rerun would resume into (drop and recreate tables of) someone else's schema.
            try await context.checkpoints.releaseTenant(instance: copy.targetInstance, tenant: copy.targetTenant)
            throw failure
        }

        progress.tables(total: Int64(schema.tables.count), alreadyDone: Int64(schema.tables.count - todo.count))
        if !todo.isEmpty { progress.setPhase("data") }
        // Binary COPY is only guaranteed between servers of one major version; an archive's
        // files are in the format its manifest names.
        let sameMajor = sourceVersion / 10000 == targetVersion / 10000 && !copy.hooks.textFormat
        let typeHashes: Bool
        switch data {
        case .snapshot: typeHashes = sameMajor && sourceVersion >= 140000
        case .archive(let archive):
            // The import checked the target's version before claiming anything; a server
            // swapped since is caught here.
            typeHashes = archive.checksumMethod == .typeHashes
            if let problem = ImportKind.versionProblem(archive, targetVersion: targetVersion, instance: copy.targetInstance) {
                throw JobFailure(.failedPrecondition, problem, retryable: false)
            }
        }
        let pipeline = CopyPipeline(run: self, statements: statements, tables: todo, data: data, access: access,
                                    binaryAllowed: sameMajor, typeHashes: typeHashes)
        let copied = try await pipeline.run()
        try await snapshot?.end()

        progress.setPhase("constraints")
        try await onWriter(access, "adding foreign keys, sequence values, views and comments") { writer in
            // One transaction, and safe to run again: a rerun after a failure here (or in
            // the validations) starts this step over.
            var script = ["BEGIN", "SET LOCAL search_path = \(quoteIdent(self.copy.targetTenant))"]
            let target = quoteLiteral(self.copy.targetTenant)
            for row in try writer.execute("""
                SELECT format('ALTER TABLE %I.%I DROP CONSTRAINT %I', n.nspname, t.relname, c.conname)
                  FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
                 WHERE n.nspname = \(target) AND c.contype = 'f'
                UNION ALL
                SELECT format('DROP VIEW IF EXISTS %I.%I CASCADE', n.nspname, v.relname)
                  FROM pg_class v JOIN pg_namespace n ON n.oid = v.relnamespace
                 WHERE n.nspname = \(target) AND v.relkind = 'v'
                """) {
                if let statement = row.first ?? nil { script.append(statement) }
            }
            script += statements.foreignKeys
            script += statements.postData
            script.append("COMMIT")
            try Self.runScript(script, on: writer)
        }
        // Each validation scans its table; they run side by side, `index` at once (two on one
        // table take turns on its lock).
        let lanes = max(1, min(copy.widths.index, statements.validations.count))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for lane in 0..<lanes {
                let mine = statements.validations.enumerated().filter { $0.offset % lanes == lane }.map(\.element)
                group.addTask {
                    try await self.onWriter(access, "validating foreign keys") { writer in
                        try Self.runScript(["SET search_path = \(quoteIdent(self.copy.targetTenant))"] + mine, on: writer)
                    }
                }
            }
            try await group.waitForAll()
        }
        progress.setPhase("done")
        progress.setCurrent("")

        var results = verified.values.map { checkpoint in
            TableResult.with {
                $0.tenant = checkpoint.tenant
                $0.table = checkpoint.table
                $0.rows = checkpoint.rowCount ?? 0
                $0.checksum = checkpoint.checksum ?? ""
            }
        }
        results += copied
        return results.sorted { $0.table < $1.table }
    }

    /// Runs `body` on a fresh fenced writer session of the target, on a thread of its own.
    @discardableResult
    func onWriter<T: Sendable>(_ access: (url: DatabaseURL, fenceCheck: String), _ what: String, _ body: @escaping @Sendable (PQConnection) throws -> T) async throws -> T {
        let writer = try await openWriter(access)
        defer { writer.close() }
        return try await runBlocking(cancelling: [writer]) { try body(writer) }
    }

    func openWriter(_ access: (url: DatabaseURL, fenceCheck: String)) async throws -> PQConnection {
        let opened = try await runBlocking(cancelling: []) { try DataSessions.writer(access.url, fenceCheck: access.fenceCheck) }
        guard let opened else {
            await context.instances.fenceLost(instance: copy.targetInstance, tenant: copy.targetTenant)
            throw CancellationError()
        }
        return opened
    }

    static func runScript(_ statements: [String], on connection: PQConnection) throws {
        for statement in statements { try connection.execute(statement) }
    }

    /// The job failure an error of this attempt stands for.
    func failure(_ error: any Error) -> any Error {
        if context.stopReason != nil || error is CancellationError { return CancellationError() }
        if let error = error as? ArchiveFile.Failure {
            // A failing filesystem may recover; a file that is gone or differs will not.
            return error.transient ? JobFailure(.unavailable, "reading \(copy.sourceDescription): \(error)", retryable: true)
                : JobFailure(.dataLoss, "reading \(copy.sourceDescription): \(error)", retryable: false)
        }
        return JobFailure.dataPath(error, reading: copy.sourceDescription)
    }
}

extension JobFailure {
    /// The failure an error of the data path stands for: a ``JobFailure`` as it is, a
    /// ``PlanRefusal`` with its own code, a database error (libpq, or PostgresNIO reading
    /// `source`) by its SQLSTATE.
    static func dataPath(_ error: any Error, reading source: String) -> JobFailure {
        if let failure = error as? JobFailure { return failure }
        if let refusal = error as? PlanRefusal {
            return JobFailure(refusal.code, refusal.message, retryable: refusal.code == .unavailable)
        }
        let (state, lost, message): (String?, Bool, String) = {
            if let error = error as? StepError { return (error.underlying.sqlState, error.underlying.connectionLost, "\(error.step): \(error.underlying.message)") }
            if let error = error as? PQError { return (error.sqlState, error.connectionLost, error.message) }
            if let error = error as? PSQLError {
                let described = DatabaseError(running: "reading \(source)", error: error)
                return (described.sqlState, described.code == .connectionLost || described.code == .unreachable, described.message)
            }
            return (nil, false, "\(error)")
        }()
        return classify(state: state, connectionLost: lost, message: message)
    }

    /// The failure a database error of the data path stands for, by its SQLSTATE class:
    /// what a rerun may get past is retryable (UNAVAILABLE), anything else is not (INTERNAL).
    static func classify(state: String?, connectionLost: Bool, message: String) -> JobFailure {
        if connectionLost { return JobFailure(.unavailable, message, retryable: true) }
        switch state.map({ String($0.prefix(2)) }) {
        case "08", "57", "53", "40", "55":
            // Lost connections, terminated or cancelled sessions, a server short of
            // resources, serialization failures, locks not available: a rerun resumes.
            return JobFailure(.unavailable, message, retryable: true)
        case "22" where state == "22023" && message.contains("snapshot"):
            // The exported snapshot is gone with the session that held it.
            return JobFailure(.unavailable, message, retryable: true)
        default:
            return JobFailure(.internal, message, retryable: false)
        }
    }
}

/// A libpq error with what the copy was doing when it happened.
struct StepError: Error, CustomStringConvertible {
    var step: String
    var underlying: PQError
    var description: String { "\(step): \(underlying)" }
}

