import ControlDatabase
import FerryProtocol
import Foundation
import Logging
import PostgresNIO

/// The transitions of a job after admission, in one place: claim, heartbeat, rescue, cancel,
/// and the per-item checkpoints a running job writes. Admission itself (QUEUED/RUNNING on
/// insert, and the promotion of queued jobs) is the coordinator's, under its instance locks;
/// the terminal transition of a running job is ``JobStore/finish(_:owner:status:error:on:logger:)``.
///
/// Every write a running job makes is guarded by ownership in the same statement: it lands
/// only while the job is RUNNING and owned by the writing replica, and the job row is locked
/// (`FOR SHARE`) for the statement, so a rescue or a cancel either happens before the write
/// (which then does nothing) or waits for it. A write of an attempt that lost its job can
/// therefore never be read by the next attempt of the lineage as if it were current.
public enum JobLifecycle {
    // MARK: Claim and heartbeat

    /// Claims the oldest admitted job nobody runs, of one of `kinds` (a replica claims only
    /// kinds it can run: during a rolling deploy an older replica leaves a new kind's jobs
    /// to the replicas that have it).
    public static func claim(replica: String, kinds: [JobKind], on connection: PostgresConnection, logger: Logger) async throws -> JobRecord? {
        let names = kinds.compactMap(\.databaseName)
        guard !names.isEmpty else { return nil }
        let rows = try await connection.execute("""
            UPDATE jobs SET owner = \(replica), heartbeat_at = clock_timestamp(), updated_at = clock_timestamp()
             WHERE id = (SELECT id FROM jobs WHERE status = 'RUNNING' AND owner IS NULL AND kind = ANY(\(names))
                          ORDER BY started_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
               AND status = 'RUNNING' AND owner IS NULL
            RETURNING \(unescaped: JobRecord.columns())
            """, logger: logger)
        return try rows.first.map(JobRecord.init(row:))
    }

    /// What one heartbeat learnt about a job this replica runs.
    public struct Beat: Sendable, Equatable {
        public var id: UUID
        public var cancelRequested: Bool
    }

    /// Renews the heartbeat of every job in `ids` that is still RUNNING and owned by
    /// `replica`; a job missing from the answer is no longer ours.
    public static func heartbeat(_ ids: [UUID], replica: String, on connection: PostgresConnection, logger: Logger) async throws -> [Beat] {
        try await connection.execute("""
            UPDATE jobs SET heartbeat_at = clock_timestamp()
             WHERE id = ANY(\(ids)) AND owner = \(replica) AND status = 'RUNNING'
            RETURNING id, cancel_requested_at IS NOT NULL
            """, logger: logger).map { row in
            let (id, cancelRequested) = try row.decode((UUID, Bool).self)
            return Beat(id: id, cancelRequested: cancelRequested)
        }
    }

    // MARK: Hand-over

    /// What ``release(_:owner:on:logger:)`` did.
    public enum ReleaseOutcome: Sendable, Equatable {
        /// The job is RUNNING with no owner again: any replica may claim it.
        case released
        /// A cancel was requested meanwhile: the caller ends the job CANCELLED instead.
        case cancelRequested
        /// The job is no longer RUNNING and `owner`'s: nothing changed.
        case notOwned
    }

    /// Gives a running job back for another replica to claim (a rolling restart): it stays
    /// RUNNING — so it keeps its place under the per-instance cap and its watchers see no
    /// status change — with no owner, and an `admitted` notification wakes the executors
    /// everywhere. The next claim runs the same job, same attempt, from its checkpoints.
    /// The caller must have ended every session of the attempt first: the next owner's fence
    /// does not terminate sessions of its own attempt.
    public static func release(_ id: UUID, owner: String, on connection: PostgresConnection, logger: Logger) async throws -> ReleaseOutcome {
        try await connection.transaction(logger: logger) { connection -> ReleaseOutcome in
            let rows = try await connection.execute("""
                SELECT cancel_requested_at IS NOT NULL FROM jobs
                 WHERE id = \(id) AND status = 'RUNNING' AND owner = \(owner) FOR UPDATE
                """, logger: logger)
            guard let cancelRequested = try rows.first?.decode(Bool.self) else { return .notOwned }
            if cancelRequested { return .cancelRequested }
            try await connection.execute("""
                UPDATE jobs SET owner = NULL, updated_at = clock_timestamp() WHERE id = \(id)
                """, logger: logger)
            try await EngineNotification.admitted.send(on: connection, logger: logger)
            return .released
        }
    }

    // MARK: Rescue

    /// A RUNNING job whose owner stopped heartbeating.
    public struct Stale: Sendable {
        public var id: UUID
        public var rootJobID: UUID
        public var attempt: Int32
        public var owner: String
        /// A cancel was requested and the owner has not heartbeated since: the job ends
        /// CANCELLED, as its caller asked, not FAILED.
        public var cancelRequested: Bool
    }

    /// RUNNING jobs whose heartbeat is older than `timeout`, and cancel-requested ones whose
    /// owner has not heartbeated since the request for `cancelGrace` (a live owner hears a
    /// cancel at its next heartbeat, so it is dead or cut off).
    public static func stale(timeout: Duration, cancelGrace: Duration, on connection: PostgresConnection, logger: Logger) async throws -> [Stale] {
        try await connection.execute("""
            SELECT id, root_job_id, attempt, owner, cancel_requested_at IS NOT NULL FROM jobs
             WHERE status = 'RUNNING' AND owner IS NOT NULL
               AND (\(unescaped: staleCondition(timeout: timeout, cancelGrace: cancelGrace)))
            """, logger: logger).map { row in
            let (id, root, attempt, owner, cancelRequested) = try row.decode((UUID, UUID, Int32, String, Bool).self)
            return Stale(id: id, rootJobID: root, attempt: attempt, owner: owner, cancelRequested: cancelRequested)
        }
    }

    /// Integers only, so it is spliced into statements as text.
    private static func staleCondition(timeout: Duration, cancelGrace: Duration) -> String {
        """
        heartbeat_at < clock_timestamp() - \(Int(timeout.wholeMilliseconds)) * interval '1 millisecond'
        OR (cancel_requested_at IS NOT NULL AND heartbeat_at < cancel_requested_at
            AND cancel_requested_at < clock_timestamp() - \(Int(cancelGrace.wholeMilliseconds)) * interval '1 millisecond')
        """
    }

    /// Ends a stale job: CANCELLED when a cancel was requested, else FAILED with UNAVAILABLE
    /// (retryable). The staleness is re-checked in the update, so a late heartbeat wins.
    /// Returns whether this call ended it.
    public static func rescue(_ job: Stale, timeout: Duration, cancelGrace: Duration, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        try await connection.transaction(logger: logger) { connection -> Bool in
            let rows = try await connection.execute("""
                SELECT cancel_requested_at IS NOT NULL FROM jobs
                 WHERE id = \(job.id) AND status = 'RUNNING' AND owner = \(job.owner)
                   AND (\(unescaped: staleCondition(timeout: timeout, cancelGrace: cancelGrace)))
                 FOR UPDATE
                """, logger: logger)
            guard let cancelRequested = try rows.first?.decode(Bool.self) else { return false }
            let status: JobStatus = cancelRequested ? .cancelled : .failed
            let error = cancelRequested ? nil : JobError(
                code: StatusCode.unavailable.rawValue,
                message: "replica \(job.owner) stopped heartbeating while running the job; rerun to resume",
                retryable: true)
            try await connection.execute("""
                UPDATE jobs SET status = \(status.name), finished_at = clock_timestamp(), updated_at = clock_timestamp(),
                       error_code = \(error?.code), error_message = \(error?.message), error_retryable = \(error?.retryable)
                 WHERE id = \(job.id)
                """, logger: logger)
            _ = try await JobStore.appendStatus(job.id, status: status, error: error, on: connection, logger: logger)
            try await EngineNotification.freed.send(on: connection, logger: logger)
            return true
        }
    }

    // MARK: Cancel

    /// What CancelJob did.
    public enum CancelOutcome: Sendable {
        /// No such job.
        case notFound
        /// QUEUED, or admitted and not yet claimed: CANCELLED now (capacity freed).
        case cancelled(JobRecord)
        /// Running: a cancel request was recorded and its owner notified.
        case requested(JobRecord)
        /// Already finished: nothing changed.
        case finished(JobRecord)
    }

    public static func cancel(_ id: UUID, on connection: PostgresConnection, logger: Logger) async throws -> CancelOutcome {
        try await connection.transaction(logger: logger) { connection -> CancelOutcome in
            let rows = try await connection.execute("SELECT status, owner FROM jobs WHERE id = \(id) FOR UPDATE", logger: logger)
            guard let row = rows.first else { return .notFound }
            let (status, owner) = try row.decode((String, String?).self)
            let outcome: (JobRecord) -> CancelOutcome
            if status == JobStatus.queued.name || (status == JobStatus.running.name && owner == nil) {
                try await connection.execute("""
                    UPDATE jobs SET status = 'CANCELLED', finished_at = clock_timestamp(), updated_at = clock_timestamp(),
                           cancel_requested_at = clock_timestamp() WHERE id = \(id)
                    """, logger: logger)
                _ = try await JobStore.appendStatus(id, status: .cancelled, error: nil, on: connection, logger: logger)
                try await EngineNotification.freed.send(on: connection, logger: logger)
                outcome = CancelOutcome.cancelled
            } else if status == JobStatus.running.name {
                try await connection.execute("""
                    UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, clock_timestamp()) WHERE id = \(id)
                    """, logger: logger)
                try await EngineNotification.cancel(id).send(on: connection, logger: logger)
                outcome = CancelOutcome.requested
            } else {
                outcome = CancelOutcome.finished
            }
            guard let record = try await JobStore.fetch(id, on: connection, logger: logger) else { return .notFound }
            return outcome(record)
        }
    }

    // MARK: Checkpoints

    // Each checkpoint write is one statement whose first CTE locks the job row (`FOR SHARE`,
    // so workers of one job do not wait on each other) while it is RUNNING and owned by the
    // writer: a rescue or cancel is ordered before the write (which then writes nothing) or
    // after it. One statement, not a transaction of several: a writer frozen between two
    // statements of a transaction would hold the row lock and stall every rescue and cancel.

    /// Upserts one table's checkpoint of the job's lineage; false when the job is no longer
    /// `owner`'s (nothing written).
    public static func saveTable(
        _ checkpoint: TableCheckpoint, job: UUID, owner: String, on connection: PostgresConnection, logger: Logger
    ) async throws -> Bool {
        !(try await connection.execute("""
            WITH owned AS (SELECT id, root_job_id FROM jobs WHERE id = \(job) AND owner = \(owner) AND status = 'RUNNING' FOR SHARE)
            INSERT INTO job_tables (root_job_id, tenant, table_name, status, row_count, checksum, job_id, updated_at)
            SELECT root_job_id, \(checkpoint.tenant), \(checkpoint.table), \(checkpoint.status.rawValue), \(checkpoint.rowCount),
                   \(checkpoint.checksum), id, clock_timestamp() FROM owned
            ON CONFLICT (root_job_id, tenant, table_name) DO UPDATE
               SET status = EXCLUDED.status, row_count = EXCLUDED.row_count, checksum = EXCLUDED.checksum,
                   job_id = EXCLUDED.job_id, updated_at = EXCLUDED.updated_at
            RETURNING 1
            """, logger: logger)).isEmpty
    }

    /// Every table checkpoint of the lineage rooted at `root`.
    public static func tables(root: UUID, on connection: PostgresConnection, logger: Logger) async throws -> [TableCheckpoint] {
        try await connection.execute("""
            SELECT tenant, table_name, status, row_count, checksum FROM job_tables WHERE root_job_id = \(root) ORDER BY tenant, table_name
            """, logger: logger).map { row in
            let (tenant, table, status, rows, checksum) = try row.decode((String, String, String, Int64?, String?).self)
            guard let status = TableCheckpoint.Status(rawValue: status) else {
                throw RPCError(.dataLoss, "table checkpoint \(tenant).\(table) of lineage \(root.uuidString.lowercased()) has status \(status)")
            }
            return TableCheckpoint(tenant: tenant, table: table, status: status, rowCount: rows, checksum: checksum)
        }
    }

    /// Records one tenant's state in an instance_replace lineage: RUNNING when its copy starts,
    /// then SUCCEEDED or FAILED (with the error) when it ends. False when the job is no longer
    /// `owner`'s (nothing written).
    ///
    /// One statement, so one transaction, guarded like every checkpoint: the job row is locked
    /// for share while it is RUNNING and owned by `owner`, and the row lands only then. Times
    /// not given are the control database's clock (`clock_timestamp()`), as the job's own
    /// times are: `started_at` when the tenant starts (a finishing row keeps the start its
    /// attempt recorded), `finished_at` when it ends (none while RUNNING). A tenant the lineage
    /// finished with SUCCEEDED is never written again — reruns skip it, and a stray write must
    /// not make them copy it again — while the write still reports the ownership it found.
    public static func saveTenantResult(
        _ result: TenantResult, job: UUID, owner: String, on connection: PostgresConnection, logger: Logger
    ) async throws -> Bool {
        let finished = result.status != .running
        let rows = try await connection.execute("""
            WITH owned AS (SELECT id, root_job_id FROM jobs WHERE id = \(job) AND owner = \(owner) AND status = 'RUNNING' FOR SHARE),
            written AS (
                INSERT INTO instance_replace_results AS r (root_job_id, tenant, status, job_id, error_message, started_at, finished_at)
                SELECT root_job_id, \(result.tenant), \(result.status.rawValue), id, \(result.error),
                       COALESCE(\(result.startedAt)::timestamptz, clock_timestamp()),
                       CASE WHEN \(finished) THEN COALESCE(\(result.finishedAt)::timestamptz, clock_timestamp()) END
                  FROM owned
                ON CONFLICT (root_job_id, tenant) DO UPDATE
                   SET status = EXCLUDED.status, job_id = EXCLUDED.job_id, error_message = EXCLUDED.error_message,
                       started_at = CASE WHEN \(result.startedAt)::timestamptz IS NULL AND \(finished) AND r.job_id = EXCLUDED.job_id
                                              AND r.started_at IS NOT NULL THEN r.started_at ELSE EXCLUDED.started_at END,
                       finished_at = EXCLUDED.finished_at
                 WHERE r.status <> 'SUCCEEDED'
                RETURNING 1
            )
            SELECT EXISTS (SELECT 1 FROM owned), (SELECT count(*) FROM written)
            """, logger: logger)
        guard let (owned, _) = try rows.first?.decode((Bool, Int64).self) else { return false }
        return owned
    }

    /// Every tenant outcome of the instance_replace lineage rooted at `root`, by tenant.
    public static func tenantResults(root: UUID, on connection: PostgresConnection, logger: Logger) async throws -> [TenantResult] {
        try await connection.execute("""
            SELECT tenant, status, error_message, started_at, finished_at, job_id FROM instance_replace_results
             WHERE root_job_id = \(root) ORDER BY tenant
            """, logger: logger).map { row in
            let (tenant, status, error, started, finished, job) = try row.decode((String, String, String?, Date?, Date?, UUID).self)
            guard let status = TenantResult.Status(rawValue: status) else {
                throw RPCError(.dataLoss, "tenant result \(tenant) of lineage \(root.uuidString.lowercased()) has status \(status)")
            }
            return TenantResult(tenant: tenant, status: status, error: error, startedAt: started, finishedAt: finished, jobID: job)
        }
    }

    /// Stores the job's resume state (a small document for what has no row of its own).
    public static func saveResumeState(_ state: JSONValue, job: UUID, owner: String, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        // One UPDATE guarded in its own WHERE: the row lock it takes orders it with a rescue.
        let rows = try await connection.execute("""
            UPDATE jobs SET resume_state = \(state.text)::jsonb, updated_at = clock_timestamp()
             WHERE id = \(job) AND owner = \(owner) AND status = 'RUNNING' RETURNING id
            """, logger: logger)
        return !rows.isEmpty
    }

    // MARK: Tenant claims

    /// Who created a tenant of an instance.
    public enum Claim: Sendable, Equatable {
        /// Nobody Ferry knows of (the tenant may still exist, created outside Ferry).
        case none
        case lineage(UUID)
    }

    public static func claim(instance: String, tenant: String, on connection: PostgresConnection, logger: Logger) async throws -> Claim {
        let rows = try await connection.execute("""
            SELECT root_job_id FROM tenant_claims WHERE instance_id = \(instance) AND tenant = \(tenant)
            """, logger: logger)
        return try rows.first.map { .lineage(try $0.decode(UUID.self)) } ?? Claim.none
    }

    /// The lineage that created `tenant` on `instance` when it has not finished it yet: no job
    /// of the lineage SUCCEEDED and, for an instance_replace, the tenant's own outcome is not
    /// SUCCEEDED. Such a tenant is a partial copy; nil for any other tenant.
    public static func unfinishedCreator(instance: String, tenant: String, on connection: PostgresConnection, logger: Logger) async throws -> UUID? {
        try await connection.execute("""
            SELECT c.root_job_id FROM tenant_claims c
             WHERE c.instance_id = \(instance) AND c.tenant = \(tenant)
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.root_job_id = c.root_job_id AND j.status = 'SUCCEEDED')
               AND NOT EXISTS (SELECT 1 FROM instance_replace_results r
                                WHERE r.root_job_id = c.root_job_id AND r.tenant = c.tenant AND r.status = 'SUCCEEDED')
            """, logger: logger).first?.decode(UUID.self)
    }

    /// What claiming a tenant found.
    public enum ClaimOutcome: Sendable, Equatable {
        /// This call recorded the claim: the lineage is about to create the tenant, which must
        /// not exist yet (a tenant that appeared meanwhile is not Ferry's).
        case new
        /// The lineage claimed it before (a rerun resumes into its own partial target).
        case ours
        /// Another lineage holds it.
        case taken(by: UUID)
        /// The job is no longer the writer's.
        case lost
    }

    /// Records that the job's lineage creates `tenant` on `instance`, before it creates it,
    /// in one statement guarded by ownership like the checkpoints.
    public static func claimTenant(
        instance: String, tenant: String, job: UUID, owner: String, on connection: PostgresConnection, logger: Logger
    ) async throws -> ClaimOutcome {
        for _ in 0..<3 {
            let row = try await connection.execute("""
                WITH owned AS (SELECT root_job_id FROM jobs WHERE id = \(job) AND owner = \(owner) AND status = 'RUNNING' FOR SHARE),
                inserted AS (
                    INSERT INTO tenant_claims (instance_id, tenant, root_job_id, created_at)
                    SELECT \(instance), \(tenant), root_job_id, clock_timestamp() FROM owned
                    ON CONFLICT (instance_id, tenant) DO NOTHING
                    RETURNING root_job_id
                )
                SELECT (SELECT root_job_id FROM owned), (SELECT root_job_id FROM inserted),
                       (SELECT root_job_id FROM tenant_claims WHERE instance_id = \(instance) AND tenant = \(tenant))
                """, logger: logger).first
            guard let (root, inserted, existing) = try row?.decode((UUID?, UUID?, UUID?).self) else { return .lost }
            guard let root else { return .lost }
            if inserted != nil { return .new }
            if let existing { return existing == root ? .ours : .taken(by: existing) }
            // A claim committed after this statement's snapshot stopped the insert but is not
            // visible to it yet: look again.
        }
        throw RPCError(.unavailable, "the claim of tenant \(tenant) on instance \(instance) could not be read; retry")
    }

    /// Gives up a claim this lineage just made on a tenant it found already there (not
    /// Ferry's): left behind, the claim would make a rerun take the foreign tenant for its own
    /// partial result and resume into it. Only `job`'s lineage's claim is removed, and only
    /// while the job is still `owner`'s.
    public static func releaseClaim(
        instance: String, tenant: String, job: UUID, owner: String, on connection: PostgresConnection, logger: Logger
    ) async throws -> Bool {
        !(try await connection.execute("""
            DELETE FROM tenant_claims c USING jobs j
             WHERE j.id = \(job) AND j.owner = \(owner) AND j.status = 'RUNNING'
               AND c.instance_id = \(instance) AND c.tenant = \(tenant) AND c.root_job_id = j.root_job_id
            RETURNING 1
            """, logger: logger)).isEmpty
    }

    /// Whether `job` is RUNNING, owned by `owner`, and the latest attempt of its lineage.
    public static func isCurrentAttempt(job: UUID, owner: String, root: UUID, attempt: Int32, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        try await connection.execute("""
            SELECT EXISTS (SELECT 1 FROM jobs WHERE id = \(job) AND owner = \(owner) AND status = 'RUNNING')
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE root_job_id = \(root) AND attempt > \(attempt))
            """, logger: logger).first?.decode(Bool.self) ?? false
    }

    /// The status of the attempt `attempt` of the lineage rooted at `root`, if it exists.
    public static func status(root: UUID, attempt: Int32, on connection: PostgresConnection, logger: Logger) async throws -> JobStatus? {
        let rows = try await connection.execute("""
            SELECT status FROM jobs WHERE root_job_id = \(root) AND attempt = \(attempt)
            """, logger: logger)
        return try rows.first.flatMap { JobStatus(name: try $0.decode(String.self)) }
    }
}

/// One table's resume state in a clone or import lineage.
public struct TableCheckpoint: Sendable, Hashable {
    public enum Status: String, Sendable {
        case copying = "COPYING"
        case copied = "COPIED"
        case verified = "VERIFIED"
    }

    public var tenant: String
    public var table: String
    public var status: Status
    public var rowCount: Int64?
    public var checksum: String?

    public init(tenant: String, table: String, status: Status, rowCount: Int64? = nil, checksum: String? = nil) {
        self.tenant = tenant
        self.table = table
        self.status = status
        self.rowCount = rowCount
        self.checksum = checksum
    }
}

/// One tenant's outcome in an instance_replace lineage.
public struct TenantResult: Sendable, Hashable {
    public enum Status: String, Sendable {
        case running = "RUNNING"
        case succeeded = "SUCCEEDED"
        case failed = "FAILED"
    }

    public var tenant: String
    public var status: Status
    public var error: String?
    /// When the tenant's copy started and ended; nil when saving means "now, by the control
    /// database's clock".
    public var startedAt: Date?
    public var finishedAt: Date?
    /// The attempt that recorded the outcome (read back; ignored when saving: it is the
    /// saving job).
    public var jobID: UUID?

    public init(tenant: String, status: Status, error: String? = nil, startedAt: Date? = nil, finishedAt: Date? = nil, jobID: UUID? = nil) {
        self.tenant = tenant
        self.status = status
        self.error = error
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.jobID = jobID
    }
}
