import ControlDatabase
import Executors
import FerryProtocol
import Foundation
import JobStore
import LibPQ
import Logging
import PostgresNIO

/// Copies one tenant to a target tenant: the schema, then the data of every table through
/// libpq COPY pipes, indexes and verification pipelined behind the copies, then foreign keys,
/// sequence values, views and comments. Resumes per table: a table the lineage verified
/// before is not touched; any other is dropped and copied again from zero.
///
/// The clone kind runs one of these; instance_replace runs one per tenant.
public struct TenantCopy: Sendable {
    public var sourceInstance: String
    public var sourceTenant: String
    public var targetInstance: String
    public var targetTenant: String
    public var widths: CopyWidths
    public var hooks: CloneHooks
    /// True when this copy is one of several tenants of one job copying at once
    /// (instance_replace): it then only adds its tables, rows and bytes to the job's
    /// progress, and leaves the phase and the items in flight to the job.
    public var sharesProgress: Bool

    public init(sourceInstance: String, sourceTenant: String, targetInstance: String, targetTenant: String, widths: CopyWidths,
                hooks: CloneHooks = CloneHooks(), sharesProgress: Bool = false) {
        self.sharesProgress = sharesProgress
        self.sourceInstance = sourceInstance
        self.sourceTenant = sourceTenant
        self.targetInstance = targetInstance
        self.targetTenant = targetTenant
        self.widths = widths
        self.hooks = hooks
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

        // The snapshot every source read uses, and the schema as of that instant. The tables
        // are locked (ACCESS SHARE, as pg_dump does) *before* the snapshot is taken, so no
        // table rewritten or truncated between the two is copied as it was before; the locks
        // keep DDL off them until the last source read is done. The exporting transaction
        // stays open that long, with nothing set to end it while it idles.
        let snapshotSession = try await context.instances.open(copy.sourceInstance)
        defer { Task { [instances = context.instances] in await instances.close(snapshotSession) } }
        for setting in ["SET idle_in_transaction_session_timeout = 0", "SET statement_timeout = 0",
                        "SELECT set_config('idle_session_timeout', '0', false) WHERE current_setting('server_version_num')::int >= 140000"] {
            try await snapshotSession.execute(PostgresQuery(unsafeSQL: setting), logger: logger)
        }
        let listed = try await snapshotSession.execute("""
            SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = \(copy.sourceTenant) AND c.relkind = 'r'
            """, logger: logger).map { try $0.decode(String.self) }
        let lockList = listed.sorted().map { quoteQualified(copy.sourceTenant, $0) }.joined(separator: ", ")
        try await snapshotSession.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: logger)
        if !listed.isEmpty {
            try await snapshotSession.execute("SET LOCAL lock_timeout = '10s'", logger: logger)
            try await snapshotSession.execute(PostgresQuery(unsafeSQL: "LOCK TABLE \(lockList) IN ACCESS SHARE MODE"), logger: logger)
        }
        let snapshot = try await snapshotSession.execute("SELECT pg_export_snapshot()", logger: logger).first?.decode(String.self) ?? ""
        let exists = try await snapshotSession.execute("SELECT 1 FROM pg_namespace WHERE nspname = \(copy.sourceTenant)", logger: logger)
        guard !exists.isEmpty else {
            throw JobFailure(.notFound, "tenant \(copy.sourceTenant) no longer exists on instance \(copy.sourceInstance)", retryable: false)
        }
        let schema = try await SchemaReader.read(tenant: copy.sourceTenant, on: snapshotSession, logger: logger)
        guard schema.unsupported.isEmpty else {
            throw JobFailure(.failedPrecondition, "tenant \(copy.sourceTenant) holds objects Ferry cannot copy: " + schema.unsupported.joined(separator: "; "), retryable: false)
        }
        guard Set(schema.tables.map(\.name)) == Set(listed) else {
            throw JobFailure(.unavailable, "the tables of tenant \(copy.sourceTenant) changed while the clone started; rerun", retryable: true)
        }
        let sourceVersion = try await snapshotSession.execute("SELECT current_setting('server_version_num')::int", logger: logger).first?.decode(Int.self) ?? 0
        let statements = schema.statements(into: copy.targetTenant)
        let sourceURL = try await context.instances.sessionURL(copy.sourceInstance)
        let access = try await context.instances.writerAccess(copy.targetInstance, tenant: copy.targetTenant)

        // The target schema, created whole in one transaction, or (resuming into this
        // lineage's own target) every table that was not verified dropped and created again.
        // Only tables of the schema as read now count; a verified table the source no longer
        // has is left as it is.
        verified = verified.filter { entry in schema.tables.contains { $0.name == entry.key } }
        let verifiedNames = Set(verified.keys)
        let todo = schema.tables.filter { verified[$0.name] == nil }
        let targetVersion = try await onWriter(access, "creating the target schema") { writer in
            let version = Int((try writer.execute("SELECT current_setting('server_version_num')").first?.first ?? nil) ?? "") ?? 0
            let exists = !(try writer.execute("SELECT 1 FROM pg_namespace WHERE nspname = \(quoteLiteral(self.copy.targetTenant))")).isEmpty
            if claim == .new && exists {
                throw JobFailure(.alreadyExists, "tenant \(self.copy.targetTenant) appeared on instance \(self.copy.targetInstance) after the plan and is not Ferry's", retryable: false)
            }
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

        progress.tables(total: Int64(schema.tables.count), alreadyDone: Int64(schema.tables.count - todo.count))
        if !todo.isEmpty { progress.setPhase("data") }
        // Binary COPY is only guaranteed between servers of one major version.
        let sameMajor = sourceVersion / 10000 == targetVersion / 10000 && !copy.hooks.textFormat
        let pipeline = CopyPipeline(run: self, statements: statements, tables: todo, sourceURL: sourceURL, snapshot: snapshot,
                                    lockList: lockList, access: access, binaryAllowed: sameMajor,
                                    typeHashes: sameMajor && sourceVersion >= 140000)
        let copied = try await pipeline.run()
        try await snapshotSession.execute("COMMIT", logger: logger)

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
        return try await cancellable([writer]) { try body(writer) }
    }

    func openWriter(_ access: (url: DatabaseURL, fenceCheck: String)) async throws -> PQConnection {
        let opened = try await cancellable([]) { try DataSessions.writer(access.url, fenceCheck: access.fenceCheck) }
        guard let opened else {
            await context.instances.fenceLost(instance: copy.targetInstance, tenant: copy.targetTenant)
            throw CancellationError()
        }
        return opened
    }

    static func runScript(_ statements: [String], on connection: PQConnection) throws {
        for statement in statements { try connection.execute(statement) }
    }

    /// Runs blocking libpq work on its own thread; cancelling the task cancels the
    /// statements of `connections` on their servers.
    func cancellable<T: Sendable>(_ connections: [PQConnection], _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try Task.checkCancellation()
        return try await withTaskCancellationHandler {
            try await PQThread.run(body)
        } onCancel: {
            for connection in connections { connection.cancel() }
        }
    }

    /// The job failure an error of this attempt stands for.
    func failure(_ error: any Error) -> any Error {
        if context.stopReason != nil || error is CancellationError { return CancellationError() }
        if error is JobFailure { return error }
        if let refusal = error as? PlanRefusal {
            switch refusal {
            case .notFound(let message): return JobFailure(.notFound, message, retryable: false)
            case .unavailable(let message): return JobFailure(.unavailable, message, retryable: true)
            default: return JobFailure(.failedPrecondition, refusal.message, retryable: false)
            }
        }
        let (state, lost, message): (String?, Bool, String) = {
            if let error = error as? StepError { return (error.underlying.sqlState, error.underlying.connectionLost, "\(error.step): \(error.underlying.message)") }
            if let error = error as? PQError { return (error.sqlState, error.connectionLost, error.message) }
            if let error = error as? PSQLError {
                let described = DatabaseError(running: "reading instance \(copy.sourceInstance)", error: error)
                return (described.sqlState, described.code == .connectionLost || described.code == .unreachable, described.message)
            }
            return (nil, false, "\(error)")
        }()
        if lost { return JobFailure(.unavailable, message, retryable: true) }
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

