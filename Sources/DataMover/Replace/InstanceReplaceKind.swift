import ControlDatabase
import Executors
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO
import Synchronization

/// The `instance_replace` job kind: clones every tenant of a source instance (or the listed
/// ones) to a target instance under the same names, `tenant_width` tenants at a time, each
/// one a ``TenantCopy`` with the clone's speed, verification and per-table resume.
///
/// - Plan (at StartJob and RerunJob, before admission): only what holds for the whole job —
///   both instances registered (NOT_FOUND), the source not the target (INVALID_ARGUMENT, with
///   the other parameter checks), every listed tenant present on the source (NOT_FOUND), and
///   at least one tenant to copy (FAILED_PRECONDITION). What only concerns one tenant (objects
///   Ferry cannot copy, a target tenant that is not this lineage's, a source tenant that is
///   another lineage's unfinished target) is that tenant's failure at run time, never a
///   refusal of the job.
/// - Run: the tenants are listed again; those the lineage finished with SUCCEEDED are skipped,
///   the others copied (resuming, table by table, into the lineage's own partial targets).
///   Each tenant's start and outcome is a row of `instance_replace_results`; a failing tenant
///   does not stop the others, and the job fails at the end if any tenant failed. Each
///   tenant's fence on the target is given back once its copy is over.
public struct InstanceReplaceKind: JobRunner {
    public struct Params: Sendable {
        public var sourceInstance: String
        public var targetInstance: String
        /// The filter, as given (checked: tenant names, no duplicates); empty for every tenant.
        public var tenants: [String]
        public var tenantWidth: Int
        public var widths: CopyWidths
    }

    let settings: JobSettings
    /// The control database, read at run time for what the job context does not say: whether
    /// a source tenant is another lineage's unfinished target.
    let controlDatabase: PostgresClient
    let hooks: CloneHooks

    public init(settings: JobSettings, controlDatabase: PostgresClient, hooks: CloneHooks = CloneHooks()) {
        self.settings = settings
        self.controlDatabase = controlDatabase
        self.hooks = hooks
    }

    /// The most tenants one job copies at once.
    public static let maxTenantWidth = 64
    /// The longest one tenant's error message kept in the job's result and error.
    static let maxTenantMessage = 600
    /// How many failed tenants the job's error message describes with their error (it names
    /// the others; `result.tenants` has every one).
    static let maxDescribedFailures = 20

    public func params(from wire: JobParams) throws(PlanRefusal) -> Params {
        guard case .instanceReplace(let replace)? = wire.params else {
            throw .invalidArgument(field: "params", message: "must hold instanceReplace parameters for an INSTANCE_REPLACE job")
        }
        let source = try ParamCheck.instance(replace.sourceInstance, "instanceReplace.sourceInstance")
        let target = try ParamCheck.instance(replace.targetInstance, "instanceReplace.targetInstance")
        guard source != target else {
            throw .invalidArgument(field: "instanceReplace.targetInstance", message: "is the source instance (\(source)); a tenant cannot replace itself")
        }
        var seen = Set<String>()
        for (index, tenant) in replace.tenants.enumerated() {
            let name = try ParamCheck.tenant(tenant, "instanceReplace.tenants[\(index)]")
            guard seen.insert(name).inserted else {
                throw .invalidArgument(field: "instanceReplace.tenants", message: "names tenant \(name) more than once")
            }
        }
        guard replace.tenantWidth <= Self.maxTenantWidth else {
            throw .invalidArgument(field: "instanceReplace.tenantWidth", message: "is \(replace.tenantWidth); at most \(Self.maxTenantWidth)")
        }
        let widths = try CloneKind.widths(copy: replace.copyWidth, index: replace.indexWidth, split: replace.splitTableBytes,
                                          field: "instanceReplace", settings: settings)
        let tenantWidth = replace.tenantWidth == 0 ? settings.tenantWidth : Int(replace.tenantWidth)
        return Params(sourceInstance: source, targetInstance: target, tenants: replace.tenants,
                      tenantWidth: min(max(1, tenantWidth), Self.maxTenantWidth), widths: widths)
    }

    public func plan(_ params: Params, _ context: PlanContext) async throws -> [JobTouch] {
        // Both instances must be registered (NOT_FOUND) and answer (UNAVAILABLE).
        for instance in [params.sourceInstance, params.targetInstance] {
            _ = try await context.instances.url(instance, logger: context.logger)
        }
        let listed: [SourceTenant]
        do {
            listed = try await context.instances.withSession(params.sourceInstance, logger: context.logger) { connection in
                try await Self.tenants(on: connection, logger: context.logger)
            }
            try await context.instances.withSession(params.targetInstance, logger: context.logger) { connection in
                _ = try await connection.execute("SELECT 1", logger: context.logger)
            }
        } catch let refusal as PlanRefusal {
            throw refusal
        } catch {
            throw PlanRefusal.unavailable("cannot list the tenants of instance \(params.sourceInstance): \(DatabaseError(running: "listing the tenants", error: error).message)")
        }
        let names = Set(listed.map(\.name))
        if params.tenants.isEmpty {
            guard !names.isEmpty else {
                throw PlanRefusal.failedPrecondition([
                    "instance \(params.sourceInstance) holds no tenant (a schema with a tenant name, other than pg_*, information_schema and public): nothing to replace",
                ])
            }
        } else {
            let missing = params.tenants.filter { !names.contains($0) }
            guard missing.isEmpty else {
                throw PlanRefusal.notFound(missing.count == 1
                    ? "tenant \(missing[0]) does not exist on instance \(params.sourceInstance)"
                    : "tenants \(missing.joined(separator: ", ")) do not exist on instance \(params.sourceInstance)")
            }
        }
        // An empty tenant stands for the whole instance: admission refuses it beside any
        // other writer of the target instance's tenants.
        return [
            JobTouch(instance: params.sourceInstance, tenant: "", writes: false),
            JobTouch(instance: params.targetInstance, tenant: "", writes: true),
        ]
    }

    /// A tenant of the source instance and the size of its tables (heap and TOAST).
    struct SourceTenant: Sendable {
        var name: String
        var bytes: Int64
    }

    /// The tenants of the instance `connection` is on: schemas with a tenant name, other than
    /// the system ones, with their tables' size.
    static func tenants(on connection: PostgresConnection, logger: Logger) async throws -> [SourceTenant] {
        try await connection.execute("""
            SELECT n.nspname::text, COALESCE(sum(pg_table_size(c.oid)), 0)::bigint
              FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'r'
             WHERE n.nspname !~ '^pg_' AND n.nspname NOT IN ('information_schema', 'public')
             GROUP BY n.nspname ORDER BY 1
            """, logger: logger).map { row in
            let (name, bytes) = try row.decode((String, Int64).self)
            return SourceTenant(name: name, bytes: bytes)
        }.filter { JobPlan.isTenantName($0.name) }
    }

    public func run(_ params: Params, _ context: JobContext) async throws {
        let run = ReplaceRun(params: params, context: context, controlDatabase: controlDatabase, hooks: hooks)
        try await run.run()
    }
}

/// How one tenant of an attempt ended.
struct TenantEnd: Sendable {
    var failure: JobFailure?
}

/// One attempt of an instance_replace.
final class ReplaceRun: Sendable {
    let params: InstanceReplaceKind.Params
    let context: JobContext
    let controlDatabase: PostgresClient
    let hooks: CloneHooks
    /// What each tenant of this attempt ended with (those it finished; the failure kept with
    /// its code, which the results table does not hold).
    private let ends = Mutex<[String: TenantEnd]>([:])
    var logger: Logger { context.logger }

    init(params: InstanceReplaceKind.Params, context: JobContext, controlDatabase: PostgresClient, hooks: CloneHooks) {
        self.params = params
        self.context = context
        self.controlDatabase = controlDatabase
        self.hooks = hooks
    }

    func run() async throws {
        let progress = context.progress
        progress.setPhase("tenants")
        let earlier = try await context.checkpoints.tenantResults()
        let succeeded = Set(earlier.filter { $0.status == .succeeded }.map(\.tenant))

        // The tenants now. Without a filter: every tenant of the source, and every tenant an
        // earlier attempt of the lineage started (one dropped from the source since is that
        // tenant's failure, not silently forgotten with its partial target).
        let source = try await listSource()
        let present = Dictionary(source.map { ($0.name, $0.bytes) }, uniquingKeysWith: { a, _ in a })
        let tenants: [String]
        if params.tenants.isEmpty {
            tenants = Array(Set(present.keys).union(earlier.map(\.tenant))).sorted()
        } else {
            tenants = params.tenants.sorted()
        }
        let skipped = tenants.filter { succeeded.contains($0) }
        // Largest first: the biggest tenants start first, so none is left to run alone at the end.
        let todo = tenants.filter { !succeeded.contains($0) }
            .sorted { (present[$0] ?? 0, $1) > (present[$1] ?? 0, $0) }
        // Tables of the lineage's target tenants: resumed tables count as done, and a target
        // tenant that exists with no table checkpoint of the lineage is not this lineage's.
        let checkpoints = try await context.checkpoints.tables()
        let started = Set(checkpoints.map(\.tenant))
        let skippedTables = Int64(checkpoints.filter { succeeded.contains($0.tenant) && $0.status == .verified }.count)
        progress.setTotals(tenants: Int64(tenants.count))
        progress.addDone(tenants: Int64(skipped.count))
        progress.addTotals(tables: skippedTables)
        progress.addDone(tables: skippedTables)
        logger.info("instance_replace: tenants", metadata: [
            "tenants": "\(tenants.count)", "skipped": "\(skipped.count)", "width": "\(params.tenantWidth)",
        ])

        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                var queue = todo.makeIterator()
                for _ in 0..<min(params.tenantWidth, todo.count) {
                    guard let tenant = queue.next() else { break }
                    group.addTask { try await self.replace(tenant, onSource: present[tenant] != nil, lineageStarted: started.contains(tenant)) }
                }
                while try await group.next() != nil {
                    guard let tenant = queue.next() else { continue }
                    group.addTask { try await self.replace(tenant, onSource: present[tenant] != nil, lineageStarted: started.contains(tenant)) }
                }
            }
        } catch {
            // Stopped (cancelled, lost, shutting down): not a tenant's failure. What is known
            // goes with the job (a cancelled job's result is dropped).
            context.setResult(await result(tenants, earlier: earlier, readBack: false))
            throw error
        }

        progress.setPhase("done")
        progress.setCurrent("")
        let outcome = await result(tenants, earlier: earlier, readBack: true)
        context.setResult(outcome)
        let failed = ends.withLock { ends in
            tenants.compactMap { tenant in ends[tenant]?.failure.map { (tenant, $0) } }
        }
        guard !failed.isEmpty else { return }
        throw Self.jobFailure(failed, of: tenants.count)
    }

    /// The source's tenants now, on a read-only session of this attempt.
    private func listSource() async throws -> [InstanceReplaceKind.SourceTenant] {
        let session = try await context.instances.open(params.sourceInstance)
        do {
            let tenants = try await InstanceReplaceKind.tenants(on: session, logger: logger)
            await context.instances.close(session)
            return tenants
        } catch {
            await context.instances.close(session)
            if context.stopReason != nil || error is CancellationError { throw CancellationError() }
            throw JobFailure(.unavailable, "cannot list the tenants of instance \(params.sourceInstance): \(DatabaseError(running: "listing the tenants", error: error).message)", retryable: true)
        }
    }

    /// Copies one tenant and records how it ended. Throws only when the job is being stopped.
    private func replace(_ tenant: String, onSource: Bool, lineageStarted: Bool) async throws {
        try Task.checkCancellation()
        if context.stopReason != nil { throw CancellationError() }
        let progress = context.progress
        progress.started(tenant)
        var done = false
        defer { progress.finished(tenant, done: done, tenant: true) }
        try await context.checkpoints.save(TenantResult(tenant: tenant, status: .running))
        do {
            guard onSource else {
                throw JobFailure(.notFound, "tenant \(tenant) does not exist on instance \(params.sourceInstance) (any more)", retryable: false)
            }
            try await refuseUnfinishedSource(tenant)
            if !lineageStarted { try await refuseForeignTarget(tenant) }
            let copy = TenantCopy(sourceInstance: params.sourceInstance, sourceTenant: tenant,
                                  targetInstance: params.targetInstance, targetTenant: tenant,
                                  widths: params.widths, hooks: hooks, sharesProgress: true)
            _ = try await copy.run(context)
        } catch {
            await context.instances.releaseGate(params.targetInstance, tenant: tenant)
            if context.stopReason != nil || error is CancellationError { throw CancellationError() }
            let failure = error as? JobFailure ?? JobFailure(.unknown, "\(error)", retryable: true)
            logger.warning("instance_replace: tenant failed", metadata: ["tenant": "\(tenant)", "code": "\(failure.code.rawValue)", "error": "\(failure.message)"])
            ends.withLock { $0[tenant] = TenantEnd(failure: failure) }
            try await context.checkpoints.save(TenantResult(tenant: tenant, status: .failed, error: Self.describe(failure)))
            return
        }
        // Its copy is over: the tenant's fence on the target goes, with its session.
        await context.instances.releaseGate(params.targetInstance, tenant: tenant)
        try await context.checkpoints.save(TenantResult(tenant: tenant, status: .succeeded))
        ends.withLock { $0[tenant] = TenantEnd(failure: nil) }
        done = true
        logger.info("instance_replace: tenant copied", metadata: ["tenant": "\(tenant)"])
    }

    /// A source tenant that is another job lineage's partial target (a clone or import not
    /// finished) would be passed on as whole: that tenant fails (as a clone of it is refused).
    private func refuseUnfinishedSource(_ tenant: String) async throws {
        let creator: UUID?
        do {
            creator = try await controlDatabase.withConnection { [params, logger] in
                try await JobLifecycle.unfinishedCreator(instance: params.sourceInstance, tenant: tenant, on: $0, logger: logger)
            }
        } catch {
            throw JobFailure(.unavailable, "cannot read the control database to check tenant \(tenant): \(DatabaseError(running: "reading the tenant's claim", error: error).message)", retryable: true)
        }
        if let creator {
            throw JobFailure(.failedPrecondition, """
                tenant \(tenant) on instance \(params.sourceInstance) is the unfinished target of job lineage \(creator.uuidString.lowercased()): \
                rerun that job to finish it (or drop the tenant) before copying it
                """, retryable: false)
        }
    }

    /// A target tenant this lineage never wrote to must not exist yet. The tenant copy checks
    /// this too, but only after claiming the name for the lineage; a later attempt would then
    /// take the foreign schema for its own partial target and resume into it. Checked here
    /// first, nothing is claimed for a foreign schema.
    ///
    /// A tenant this lineage claimed (it created the schema, then stopped before any table
    /// checkpoint: a hand-over or a stop between the two) is its own, and resumed into.
    private func refuseForeignTarget(_ tenant: String) async throws {
        let claim: JobLifecycle.Claim
        do {
            claim = try await controlDatabase.withConnection { [params, logger] in
                try await JobLifecycle.claim(instance: params.targetInstance, tenant: tenant, on: $0, logger: logger)
            }
        } catch {
            throw JobFailure(.unavailable, "cannot read the control database to check tenant \(tenant): \(DatabaseError(running: "reading the tenant's claim", error: error).message)", retryable: true)
        }
        if claim == .lineage(context.rootJobID) { return }
        let session = try await context.instances.open(params.targetInstance)
        let exists: Bool
        do {
            exists = !(try await session.execute("SELECT 1 FROM pg_namespace WHERE nspname = \(tenant)", logger: logger)).isEmpty
            await context.instances.close(session)
        } catch {
            await context.instances.close(session)
            throw JobFailure(.unavailable, "cannot read the schemas of instance \(params.targetInstance): \(DatabaseError(running: "reading the target", error: error).message)", retryable: true)
        }
        guard !exists else {
            throw JobFailure(.alreadyExists, """
                tenant \(tenant) already exists on instance \(params.targetInstance) and was not created by this job; \
                drop it (or leave it out of the job's tenants) and rerun
                """, retryable: false)
        }
    }

    /// Every tenant of the attempt with the outcome its lineage reached: read back from the
    /// lineage's results (control database times, the recording attempt), with each failure's
    /// code from this attempt; tenants this attempt did not finish are NOT_FINISHED.
    private func result(_ tenants: [String], earlier: [TenantResult], readBack: Bool) async -> JobResult {
        var recorded = Dictionary(earlier.map { ($0.tenant, $0) }, uniquingKeysWith: { a, _ in a })
        if readBack, let now = try? await context.checkpoints.tenantResults() {
            recorded = Dictionary(now.map { ($0.tenant, $0) }, uniquingKeysWith: { a, _ in a })
        }
        let ends = self.ends.withLock { $0 }
        return JobResult.with { result in
            result.tenants = tenants.map { tenant in
                TenantOutcome.with { outcome in
                    outcome.tenant = tenant
                    let row = recorded[tenant]
                    if let end = ends[tenant] {
                        outcome.status = end.failure == nil ? .tenantSucceeded : .tenantFailed
                        if let failure = end.failure {
                            outcome.error = JobError(code: failure.code.rawValue, message: Self.describe(failure), retryable: failure.retryable)
                        }
                    } else if row?.status == .succeeded {
                        outcome.status = .tenantSucceeded
                    } else {
                        outcome.status = .tenantNotFinished
                    }
                    // Times and job of the row that recorded this outcome (for one not
                    // finished: of its last start, if any).
                    if let row, outcome.status != .tenantNotFinished || row.status == .running {
                        if let started = row.startedAt { outcome.startedAt = .init(date: started) }
                        if let finished = row.finishedAt, outcome.status != .tenantNotFinished { outcome.finishedAt = .init(date: finished) }
                        if let job = row.jobID { outcome.jobID = job.uuidString.lowercased() }
                    }
                }
            }
        }
    }

    /// A tenant's failure message, clipped for the job's error and result.
    static func describe(_ failure: JobFailure) -> String {
        let message = failure.message
        guard message.count > InstanceReplaceKind.maxTenantMessage else { return message }
        return String(message.prefix(InstanceReplaceKind.maxTenantMessage)) + "…"
    }

    /// The job's failure when tenants failed: it names every failed tenant (and describes the
    /// first ones with their error). Its code is the failed tenants' code when they share one,
    /// else ABORTED; it is retryable only if every tenant's failure was.
    static func jobFailure(_ failed: [(tenant: String, failure: JobFailure)], of total: Int) -> JobFailure {
        let codes = Set(failed.map(\.failure.code))
        let code = codes.count == 1 ? codes.first! : .aborted
        let retryable = failed.allSatisfy(\.failure.retryable)
        let described = failed.prefix(InstanceReplaceKind.maxDescribedFailures).map { "\($0.tenant) (\($0.failure.code.rawValue): \(describe($0.failure)))" }
        var message = "\(failed.count) of \(total) tenants failed: " + described.joined(separator: "; ")
        if failed.count > described.count {
            message += "; and \(failed.count - described.count) more: " + failed.dropFirst(described.count).map(\.tenant).joined(separator: ", ")
        }
        message += retryable ? "; rerun to copy them (the others are kept)" : "; fix them, then rerun to copy them (the others are kept)"
        return JobFailure(code, message, retryable: retryable)
    }
}
