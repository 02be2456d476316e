import ControlDatabase
import FerryCore
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO
import Synchronization

/// What a kind gets for one attempt of a job.
public struct JobContext: Sendable {
    /// The job as admitted (id, kind, params, attempt, lineage).
    public let job: Job
    public let jobID: UUID
    /// The root job of the lineage: checkpoints are the lineage's, shared by its attempts.
    public let rootJobID: UUID
    public let attempt: Int32
    /// What earlier attempts saved with ``saveResumeState(_:)`` (an empty object at first).
    public let resumeState: JSONValue
    public let logger: Logger
    /// This attempt's sessions on the instances, named for it and fenced where it writes.
    public let instances: InstanceSessions
    /// The lineage's per-item checkpoints.
    public let checkpoints: Checkpoints
    /// Counters the kind's workers add to; the executor turns them into progress events.
    public let progress: ProgressCounters
    let stopSignal: StopSignal
    let resultBox: ResultBox

    /// Records what the job produced (a clone's verified tables, an export's artifact, an
    /// instance_replace's tenant outcomes): it becomes the job's `result` when the job
    /// succeeds or fails, and is dropped when it is cancelled.
    public func setResult(_ result: JobResult) { resultBox.value.withLock { $0 = result } }

    /// Why the job is being stopped, once it is (nil while it may run on).
    public var stopReason: StopReason? { stopSignal.reason }

    /// Persists the lineage's small resume document now (for what has no row of its own).
    /// Throws `CancellationError` if the job is no longer this replica's.
    public func saveResumeState(_ state: JSONValue) async throws {
        try await checkpoints.guarded { try await JobLifecycle.saveResumeState(state, job: jobID, owner: checkpoints.owner, on: $0, logger: logger) }
    }
}

/// What a job produced, set by its kind, written with its SUCCEEDED status.
final class ResultBox: Sendable {
    let value = Mutex<JobResult?>(nil)
}

/// The reason a job stops, set once, and the action that stops it.
final class StopSignal: Sendable {
    private let state = Mutex<StopReason?>(nil)
    private let handler = Mutex<(@Sendable (StopReason) -> Void)?>(nil)

    init() {}

    /// What stopping does (set once, before the job can be stopped).
    func onStop(_ body: @escaping @Sendable (StopReason) -> Void) {
        handler.withLock { $0 = body }
    }

    var reason: StopReason? { state.withLock { $0 } }

    /// Records `why` if nothing was recorded yet and stops the job; later reasons are ignored.
    func stop(_ why: StopReason) {
        let first = state.withLock { reason -> Bool in
            guard reason == nil else { return false }
            reason = why
            return true
        }
        if first { handler.withLock { $0 }?(why) }
    }
}

/// The checkpoints of a job's lineage: one small row per item (a table, a tenant), written
/// only while the job is still this replica's, in one statement each, safe from many workers
/// at once. A rerun reads what every earlier attempt recorded.
public struct Checkpoints: Sendable {
    let client: PostgresClient
    let jobID: UUID
    public let rootJobID: UUID
    let owner: String
    let logger: Logger
    let onLost: @Sendable () -> Void

    /// Every table checkpoint of the lineage.
    public func tables() async throws -> [TableCheckpoint] {
        try await client.withConnection { try await JobLifecycle.tables(root: rootJobID, on: $0, logger: logger) }
    }

    /// Records one table's state. Throws `CancellationError` when the job is no longer ours.
    public func save(_ table: TableCheckpoint) async throws {
        try await guarded { try await JobLifecycle.saveTable(table, job: jobID, owner: owner, on: $0, logger: logger) }
    }

    /// Every tenant outcome of the lineage (instance_replace).
    public func tenantResults() async throws -> [TenantResult] {
        try await client.withConnection { try await JobLifecycle.tenantResults(root: rootJobID, on: $0, logger: logger) }
    }

    /// Records one tenant's outcome. Throws `CancellationError` when the job is no longer ours.
    public func save(_ result: TenantResult) async throws {
        try await guarded { try await JobLifecycle.saveTenantResult(result, job: jobID, owner: owner, on: $0, logger: logger) }
    }

    /// Claims `tenant` on `instance` for this lineage before creating it, and says whether
    /// the claim is new (then the kind must create the tenant and refuse one that exists:
    /// it appeared after the plan step and is not Ferry's) or the lineage's own from an
    /// earlier attempt (resume into it). Fails the job (ALREADY_EXISTS, not retryable) when
    /// another lineage claimed it first.
    @discardableResult
    public func claimTenant(instance: String, tenant: String) async throws -> JobLifecycle.ClaimOutcome {
        let outcome = try await client.withConnection {
            try await JobLifecycle.claimTenant(instance: instance, tenant: tenant, job: jobID, owner: owner, on: $0, logger: logger)
        }
        switch outcome {
        case .new, .ours:
            return outcome
        case .lost:
            onLost()
            throw CancellationError()
        case .taken(let holder):
            throw JobFailure(.alreadyExists, "tenant \(tenant) on instance \(instance) was claimed by job lineage \(holder.uuidString.lowercased())", retryable: false)
        }
    }

    /// Gives up the claim ``claimTenant(instance:tenant:)`` just made (`.new`) when the kind
    /// then finds the tenant already exists and is not Ferry's: the tenant stays someone
    /// else's, and no rerun of this lineage may resume into it.
    public func releaseTenant(instance: String, tenant: String) async throws {
        try await guarded { try await JobLifecycle.releaseClaim(instance: instance, tenant: tenant, job: jobID, owner: owner, on: $0, logger: logger) }
    }

    /// Runs `write` (given the job's id and this replica's name) as a write that must only
    /// happen while the job is still this replica's: the statement checks that itself and
    /// returns whether it wrote. Throws `CancellationError` (and stops the job) when not.
    public func write(_ write: @escaping @Sendable (PostgresConnection, _ job: UUID, _ owner: String) async throws -> Bool) async throws {
        try await guarded { try await write($0, jobID, owner) }
    }

    /// Runs an ownership-guarded write. A control database that cannot be reached is retried
    /// (a restart or a pooler blip must not fail a running job) for up to `patience`; by then
    /// the executor's own fence has stopped a job whose ownership it cannot confirm.
    func guarded(patience: Duration = .seconds(15), _ write: (PostgresConnection) async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + patience
        var delay = Duration.milliseconds(100)
        while true {
            do {
                let written = try await client.withConnection(write)
                if !written {
                    onLost()
                    throw CancellationError()
                }
                return
            } catch let error as PSQLError where error.sqlState == nil && ContinuousClock.now < deadline {
                // No SQLSTATE: the connection failed, not the statement.
                logger.warning("checkpoint not written yet, retrying", metadata: ["error": "\(error)"])
                try await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(2))
            }
        }
    }
}

/// Progress from parallel workers: counters they add to, and the items in flight. The
/// executor reads a snapshot when something changed, at most a few times a second, and
/// writes it to the job and as a PROGRESS event; adding is a lock and a few integers, so a
/// worker may add per buffer.
public final class ProgressCounters: Sendable {
    private struct State {
        var progress = JobProgress()
        var inFlight: [String: Int] = [:]
        var version: UInt64 = 0
    }
    private let state = Mutex(State())
    private let changed: @Sendable () -> Void

    init(changed: @escaping @Sendable () -> Void) {
        self.changed = changed
    }

    private func update(_ body: (inout JobProgress, inout [String: Int]) -> Void) {
        state.withLock { state in
            body(&state.progress, &state.inFlight)
            state.version &+= 1
        }
        changed()
    }

    /// Adds rows and bytes copied.
    public func add(rows: Int64 = 0, bytes: Int64 = 0) {
        update { progress, _ in
            progress.rowsCopied += rows
            progress.bytesCopied += bytes
        }
    }

    public func setPhase(_ phase: String) { update { progress, _ in progress.phase = phase } }

    public func setTotals(tables: Int64? = nil, tenants: Int64? = nil) {
        update { progress, _ in
            if let tables { progress.tablesTotal = tables }
            if let tenants { progress.tenantsTotal = tenants }
        }
    }

    /// Adds to the totals (several tenants of one job, each adding its tables).
    public func addTotals(tables: Int64 = 0) { update { progress, _ in progress.tablesTotal += tables } }

    /// Counts items already done by earlier attempts (resumed work).
    public func addDone(tables: Int64 = 0, tenants: Int64 = 0) {
        update { progress, _ in
            progress.tablesDone += tables
            progress.tenantsDone += tenants
        }
    }

    /// An item (a table, a tenant) a worker starts; shown in flight until it finishes.
    public func started(_ item: String) { update { _, inFlight in inFlight[item, default: 0] += 1 } }

    /// An item a worker finished (or abandoned, `done: false`).
    public func finished(_ item: String, done: Bool = true, tenant: Bool = false) {
        update { progress, inFlight in
            if let count = inFlight[item] { inFlight[item] = count > 1 ? count - 1 : nil }
            if done {
                if tenant { progress.tenantsDone += 1 } else { progress.tablesDone += 1 }
            }
        }
    }

    /// The progress now, with the items in flight (sorted) in `inFlight` and, for readers
    /// of `current` alone, the first of them.
    public func snapshot() -> (progress: JobProgress, version: UInt64) {
        state.withLock { state in
            var progress = state.progress
            let items = state.inFlight.keys.sorted()
            progress.inFlight = items
            if !items.isEmpty { progress.current = items.count == 1 ? items[0] : "\(items[0]) and \(items.count - 1) more" }
            return (progress, state.version)
        }
    }

    /// Sets `current` when no item is in flight (e.g. a phase-wide note).
    public func setCurrent(_ text: String) { update { progress, _ in progress.current = text } }
}
