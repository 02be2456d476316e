import Crypto
import FerryCore
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// Why migrations stopped. Every case reads as one line and names the migration.
public struct MigrationError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        public var description: String { name }
        /// An applied migration's file changed since it was applied.
        public static let checksumMismatch = Code("checksumMismatch")
        /// The database has versions this binary does not know.
        public static let databaseNewer = Code("databaseNewer")
        /// The migration lease could not be renewed, so work under it stopped.
        public static let leaseLost = Code("leaseLost")
        /// A statement failed, or the database went away.
        public static let failed = Code("failed")
    }

    public var code: Code
    public var message: String
    public var description: String { message }
}

/// Brings a control database up to the schema of a ``MigrationSet``, safely from any number
/// of processes at once, directly or through a transaction-pooling PgBouncer.
///
/// - A transactional migration runs in its own transaction, which first takes a
///   transaction-scoped advisory lock and then re-checks whether the migration is applied.
///   Transaction-scoped locks end with the transaction, so a pooler that hands the next
///   transaction to another server connection cannot strand or split them.
/// - A migration marked `-- ferry:no-transaction` runs under a lease row
///   (``LeaseLock``), heartbeated from a second connection; if the lease cannot be renewed
///   the work is stopped by closing its connection.
/// - Before writing anything the runner compares the database's recorded versions with its
///   own: a changed checksum or an unknown (newer) version stops it with ``MigrationError``.
public struct Migrator: Sendable {
    /// The table recording applied migrations, one row per version.
    public static let versionTable = "ferry_schema_migrations"
    /// The lease row table for non-transactional migrations.
    public static let leaseTable = "ferry_migration_lease"
    /// Advisory lock keys (two int4 form): "FERY" and the migrations slot.
    static let advisoryNamespace: Int32 = 0x4645_5259
    static let advisoryMigrations: Int32 = 1

    public struct Report: Sendable, Equatable {
        /// Migrations this process applied.
        public var applied: [String] = []
        /// Migrations found already applied (by this or another process).
        public var alreadyApplied: [String] = []
    }

    public let url: DatabaseURL
    public let migrations: MigrationSet
    /// Names this process in the lease and the version table.
    public let owner: String
    public let leaseDuration: Duration
    public let logger: Logger

    public init(
        url: DatabaseURL,
        migrations: MigrationSet,
        owner: String = Migrator.defaultOwner(),
        leaseDuration: Duration = .seconds(30),
        logger: Logger
    ) {
        self.url = url
        self.migrations = migrations
        self.owner = owner
        self.leaseDuration = leaseDuration
        self.logger = logger
    }

    /// `host:pid:random`, unique per process run.
    public static func defaultOwner() -> String {
        "\(ProcessInfo.processInfo.hostName):\(getpid()):\(UUID().uuidString.prefix(8).lowercased())"
    }

    /// Applies what is missing. Throws ``DatabaseError`` when the database cannot be reached
    /// and ``MigrationError`` when the schema must not or could not be changed.
    @discardableResult
    public func run() async throws -> Report {
        try await url.withConnection(logger: logger) { connection in
            try await run(on: connection)
        }
    }

    private func run(on connection: PostgresConnection) async throws -> Report {
        // Refuse a drifted or newer database before touching anything.
        if try await !versionTableExists(connection) {
            try await createBookkeepingTables(connection)
        }
        try verify(applied: try await appliedVersions(connection))

        var report = Report()
        for migration in migrations.migrations {
            if let checksum = try await appliedChecksum(of: migration, connection) {
                try verify(migration, appliedChecksum: checksum)
                report.alreadyApplied.append(migration.id)
                continue
            }
            let appliedHere = migration.isTransactional
                ? try await applyInTransaction(migration, connection)
                : try await applyUnderLease(migration, connection)
            if appliedHere {
                report.applied.append(migration.id)
            } else {
                report.alreadyApplied.append(migration.id)
            }
        }
        return report
    }

    // MARK: Bookkeeping

    private func versionTableExists(_ connection: PostgresConnection) async throws -> Bool {
        let rows = try await query(connection, "checking for \(Self.versionTable)",
            "SELECT to_regclass('\(Self.versionTable)') IS NOT NULL")
        if let row = rows.first { return try row.decode(Bool.self) }
        return false
    }

    /// Creates the version and lease tables. Two processes running `CREATE TABLE IF NOT
    /// EXISTS` at once can both miss the other's uncommitted table and collide on the
    /// catalog's unique index (SQLSTATE 23505); the advisory lock serializes them, and a
    /// collision that slips through anyway is retried, by which time the table is visible.
    private func createBookkeepingTables(_ connection: PostgresConnection) async throws {
        var attempt = 0
        while true {
            attempt += 1
            do {
                try await connection.withTransaction(logger: logger) { transaction in
                    try await transaction.execute("SELECT pg_advisory_xact_lock(\(Self.advisoryNamespace), \(Self.advisoryMigrations))", logger: logger)
                    try await transaction.execute(PostgresQuery(unsafeSQL: """
                        CREATE TABLE IF NOT EXISTS \(Self.versionTable) (
                            version      integer PRIMARY KEY,
                            name         text NOT NULL,
                            checksum     text NOT NULL,
                            applied_at   timestamptz NOT NULL DEFAULT now(),
                            applied_by   text NOT NULL,
                            duration_ms  integer NOT NULL
                        )
                        """), logger: logger)
                    try await transaction.execute(PostgresQuery(unsafeSQL: """
                        CREATE TABLE IF NOT EXISTS \(Self.leaseTable) (
                            name         text PRIMARY KEY,
                            owner        text NOT NULL,
                            acquired_at  timestamptz NOT NULL DEFAULT now(),
                            renewed_at   timestamptz NOT NULL DEFAULT now(),
                            expires_at   timestamptz NOT NULL
                        )
                        """), logger: logger)
                }
                return
            } catch {
                let state = DatabaseError.sqlState(of: error)
                let raced = state == "23505" || state == "42P07" || state == "42710"
                if raced, attempt < 5 {
                    logger.debug("concurrent creation of the version table, retrying", metadata: ["sqlstate": "\(state ?? "")"])
                    continue
                }
                throw MigrationError(code: .failed, message: DatabaseError(running: "creating \(Self.versionTable)", error: Self.innermost(error)).message)
            }
        }
    }

    private func appliedVersions(_ connection: PostgresConnection) async throws -> [(version: Int, name: String, checksum: String)] {
        let rows = try await query(connection, "reading \(Self.versionTable)",
            "SELECT version, name, checksum FROM \(Self.versionTable) ORDER BY version")
        var result: [(Int, String, String)] = []
        for row in rows { result.append(try row.decode((Int, String, String).self)) }
        return result
    }

    private func appliedChecksum(of migration: Migration, _ connection: PostgresConnection) async throws -> String? {
        let rows = try await query(connection, "reading \(Self.versionTable)",
            "SELECT checksum FROM \(Self.versionTable) WHERE version = \(migration.version)")
        if let row = rows.first { return try row.decode(String.self) }
        return nil
    }

    private func verify(applied: [(version: Int, name: String, checksum: String)]) throws {
        let known = Dictionary(uniqueKeysWithValues: migrations.migrations.map { ($0.version, $0) })
        let unknown = applied.filter { known[$0.version] == nil }
        if !unknown.isEmpty {
            let names = unknown.map { String(format: "%04d_%@", $0.version, $0.name) }.joined(separator: ", ")
            throw MigrationError(code: .databaseNewer, message:
                "the control database has migrations this ferryd does not know (\(names)); it was migrated by a newer ferryd (this one knows up to version \(migrations.latestVersion)): upgrade ferryd, nothing was changed")
        }
        for row in applied {
            if let migration = known[row.version] { try verify(migration, appliedChecksum: row.checksum) }
        }
    }

    private func verify(_ migration: Migration, appliedChecksum: String) throws {
        guard migration.acceptedChecksums.contains(appliedChecksum) else {
            throw MigrationError(code: .checksumMismatch, message:
                "migration \(migration.id) was changed after it was applied (applied checksum \(appliedChecksum.prefix(12)), file checksum \(migration.checksum.prefix(12))); restore the original file and add a new migration instead, nothing was changed")
        }
    }

    // MARK: Applying

    /// Returns `false` when another process applied it while we waited for the lock.
    private func applyInTransaction(_ migration: Migration, _ connection: PostgresConnection) async throws -> Bool {
        let statements = try statements(of: migration)
        let started = ContinuousClock.now
        do {
            return try await connection.withTransaction(logger: logger) { transaction in
                try await transaction.execute("SELECT pg_advisory_xact_lock(\(Self.advisoryNamespace), \(Self.advisoryMigrations))", logger: logger)
                if let checksum = try await appliedChecksum(of: migration, transaction) {
                    try verify(migration, appliedChecksum: checksum)
                    return false
                }
                for statement in statements {
                    try await transaction.execute(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await record(migration, started: started, transaction)
                logger.info("applied migration", metadata: ["migration": "\(migration.id)", "mode": "transaction"])
                return true
            }
        } catch {
            throw Self.failure(of: migration, error: error)
        }
    }

    /// Runs a non-transactional migration under the lease; `false` when someone else did it.
    ///
    /// Behind a transaction pooler, the server connection the pooler hands our worker may be
    /// one that another holder just terminated (it still carried an earlier worker's name):
    /// the worker's statement then fails (57P01, or PgBouncer's 08P01) while the lease is
    /// still ours. That run is tried again, a few times; a non-transactional migration is
    /// written to be rerun after an interruption (each index is dropped before it is built).
    private func applyUnderLease(_ migration: Migration, _ connection: PostgresConnection) async throws -> Bool {
        var attempt = 1
        while true {
            do {
                return try await applyUnderLeaseOnce(migration, connection)
            } catch let error as TerminatedWhileHolding {
                guard attempt < 4 else { throw Self.failure(of: migration, error: error.underlying) }
                attempt += 1
                logger.warning("a worker session was terminated while this process held the migration lease; running the migration again",
                               metadata: ["migration": "\(migration.id)", "error": "\(String(reflecting: error.underlying))"])
            }
        }
    }

    private struct TerminatedWhileHolding: Error {
        var underlying: any Error
    }

    private func applyUnderLeaseOnce(_ migration: Migration, _ connection: PostgresConnection) async throws -> Bool {
        let statements = try statements(of: migration)
        let lease = LeaseLock(table: Self.leaseTable, name: "migrations", owner: owner, duration: leaseDuration)
        try await acquire(lease, for: migration, connection)
        // Workers exist only while their owner holds the lease. Any other holder's worker
        // still connected now belongs to a holder whose lease expired: it died, or it is
        // paused (SIGSTOP, a VM pause) or cut off and may resume. Idle ones too: a paused
        // holder sits idle between two statements and would send the next one when it
        // resumes. End them all and wait until they are gone, so that such a holder finds
        // its session dead and no statement of it runs after ours begin.
        try? await terminateOtherWorkers(on: connection)

        // Set by the heartbeat before it closes the worker, so that the worker's resulting
        // connection error is reported as what it is: a lost lease.
        let leaseLost = LeaseLossFlag()
        do {
            let applied = try await workerURL.withConnection(logger: logger) { worker in
                try await withThrowingTaskGroup(of: Bool?.self) { group in
                    group.addTask {
                        try await heartbeat(lease, stopping: worker, lost: leaseLost)
                        return nil
                    }
                    group.addTask {
                      try await Self.untilClosed(worker) { [self] in
                        try await checkStillHeld(lease, worker)
                        if let checksum = try await appliedChecksum(of: migration, worker) {
                            try verify(migration, appliedChecksum: checksum)
                            return false
                        }
                        let started = ContinuousClock.now
                        for statement in statements {
                            // Our own heartbeat may not have noticed yet that the lease is gone
                            // (we were paused, say); the lease row has the last word.
                            try await checkStillHeld(lease, worker)
                            try await worker.execute(PostgresQuery(unsafeSQL: statement), logger: logger)
                        }
                        try await recordUnderLease(migration, lease, started: started, worker)
                        logger.info("applied migration", metadata: ["migration": "\(migration.id)", "mode": "lease"])
                        return true
                      }
                    }
                    // The first child to finish decides: the work's result, or the heartbeat's error.
                    let first = try await group.next()!
                    group.cancelAll()
                    return first ?? false
                }
            }
            try? await lease.release(on: connection, logger: logger)
            return applied
        } catch {
            // A worker whose session a successor terminated fails with a connection error:
            // report that as the lost lease it is.
            var lost = leaseLost.isSet
            if !lost { lost = (try? await lease.isHeld(on: connection, logger: logger)) == false }
            try? await lease.release(on: connection, logger: logger)
            if lost { throw leaseLostError }
            // Our worker's session ended under us (terminated, or its pooled server connection
            // broke: PgBouncer then answers 08P01) while the lease is still ours: run again.
            if let state = (error as? PSQLError)?.sqlState, state == "57P01" || state.hasPrefix("08") {
                throw TerminatedWhileHolding(underlying: error)
            }
            throw Self.failure(of: migration, error: error)
        }
    }

    /// Runs `body` (the worker's queries) but returns, with an error, as soon as the worker's
    /// connection closes. A query sent on a connection that has just closed (its session was
    /// terminated by a successor while we were paused, say) is never answered by PostgresNIO:
    /// its write fails with nobody to tell, and the query would wait forever. Such a stuck
    /// `body` is left behind; it cannot run anything on a closed connection.
    static func untilClosed<T: Sendable>(_ connection: PostgresConnection, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let outcome = OnceContinuation<T>()
        let work = Task {
            do { outcome.resume(with: .success(try await body())) } catch { outcome.resume(with: .failure(error)) }
        }
        connection.closeFuture.whenComplete { _ in
            outcome.resume(with: .failure(MigrationError(code: .failed, message: "the migration worker's connection closed")))
        }
        return try await withTaskCancellationHandler {
            try await outcome.value()
        } onCancel: {
            work.cancel()
        }
    }

    private func checkStillHeld(_ lease: LeaseLock, _ worker: PostgresConnection) async throws {
        guard try await lease.isHeld(on: worker, logger: logger) else { throw leaseLostError }
    }

    private var leaseLostError: MigrationError {
        MigrationError(code: .leaseLost, message:
            "lost the migration lease (could not renew it within \(leaseDuration)); stopped the non-transactional migration, which will be rerun from the top")
    }

    private func acquire(_ lease: LeaseLock, for migration: Migration, _ connection: PostgresConnection) async throws {
        var announced = false
        let poll = min(Duration.seconds(1), leaseDuration / 4)
        while true {
            let attempt: LeaseLock.Attempt
            do {
                attempt = try await lease.tryAcquire(on: connection, logger: logger)
            } catch {
                throw Self.failure(of: migration, error: error)
            }
            switch attempt {
            case .acquired:
                return
            case .heldBy(let holder, let expiresIn):
                if !announced, !holder.isEmpty {
                    logger.info("waiting for the migration lease", metadata: [
                        "migration": "\(migration.id)", "holder": "\(holder)",
                        "expires_in_s": "\(String(format: "%.1f", max(0, expiresIn)))",
                    ])
                    announced = true
                }
                try await Task.sleep(for: poll)
            }
        }
    }

    /// The prefix of the application_name of non-transactional workers, so that a lease's
    /// loser and its successor can find them in pg_stat_activity (PgBouncer passes it on to
    /// the server). Earlier builds named every worker exactly this.
    static let workerApplicationNamePrefix = "ferry-migrate-worker"

    /// This holder's workers: the prefix and the owner (or, when that would not fit in the
    /// 63 bytes PostgreSQL keeps, a digest of it), so that one holder's workers can be told
    /// from another's.
    static func workerApplicationName(owner: String) -> String {
        let named = workerApplicationNamePrefix + ":" + owner
        if named.utf8.count <= 63, named.unicodeScalars.allSatisfy({ (0x20...0x7e).contains($0.value) }) { return named }
        return workerApplicationNamePrefix + ":" + SHA256.hash(data: Data(owner.utf8)).prefix(12).map { String(format: "%02x", $0) }.joined()
    }

    var workerApplicationName: String { Self.workerApplicationName(owner: owner) }

    private var workerURL: DatabaseURL {
        var url = url
        url.applicationName = workerApplicationName
        return url
    }

    /// How long a terminated worker's backend may take to exit before we go on anyway.
    static let terminationWait = 5_000

    /// Ends every worker session of other holders, whatever its state, and waits for each to
    /// exit (`pg_terminate_backend` with a timeout). Behind PgBouncer an idle pooled server
    /// connection may still carry an old worker's name after that worker left; terminating it
    /// costs the pooler one reconnection.
    private func terminateOtherWorkers(on connection: PostgresConnection) async throws {
        let mine = workerApplicationName
        let prefix = Self.workerApplicationNamePrefix
        let rows = try await connection.execute("""
            SELECT count(*)::int, count(*) FILTER (WHERE NOT pg_terminate_backend(pid, \(Self.terminationWait)))::int
              FROM pg_stat_activity
             WHERE (application_name = \(prefix) OR starts_with(application_name, \(prefix + ":")))
               AND application_name <> \(mine) AND datname = current_database() AND pid <> pg_backend_pid()
            """, logger: logger)
        if let row = rows.first {
            let (terminated, lingering) = try row.decode((Int, Int).self)
            if terminated > 0 {
                logger.notice("terminated the workers of an earlier migration lease holder", metadata: [
                    "sessions": "\(terminated)", "still_exiting": "\(lingering)",
                ])
            }
        }
    }

    /// Ends our own worker's session on the server, whatever its state.
    private func terminateOwnWorkers(on connection: PostgresConnection) async throws {
        try await connection.execute("""
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = \(workerApplicationName) AND datname = current_database() AND pid <> pg_backend_pid()
            """, logger: logger)
    }

    /// Renews every third of the lease, on a connection of its own (the worker's is busy
    /// with long statements). A failed renewal is retried, on a new connection, until the lease
    /// would have expired by our own clock; then it counts as lost: the worker's session is
    /// terminated on the server, which also fails its statement here.
    ///
    /// A renewal that hangs (no answer, no error) is not raced against a timer: closing a
    /// PostgresNIO connection under a query in flight proved able to strand that query, so a
    /// silent network partition is left to TCP to detect. A hung heartbeat cannot keep the
    /// lease: the database lets it expire, and the successor terminates our worker.
    private func heartbeat(_ lease: LeaseLock, stopping worker: PostgresConnection, lost: LeaseLossFlag) async throws {
        let interval = leaseDuration / 3
        // Give up a little before the database would hand the lease to someone else.
        let margin = leaseDuration / 10
        var mustRenewBy = ContinuousClock.now + leaseDuration - margin
        var connection: PostgresConnection?
        do {
            while true {
                try await Task.sleep(for: interval)
                if connection == nil { connection = try? await url.connect(logger: logger, id: 1) }
                var outcome: Bool?
                if let connection {
                    do {
                        outcome = try await lease.renew(on: connection, logger: logger)
                    } catch {
                        // The query is over (it failed), so closing cannot strand it.
                        try? await connection.close()
                    }
                }
                if outcome == nil { connection = nil }
                if outcome == true {
                    mustRenewBy = ContinuousClock.now + leaseDuration - margin
                    continue
                }
                if outcome == nil, ContinuousClock.now < mustRenewBy {
                    logger.warning("could not renew the migration lease, retrying", metadata: ["lease_owner": "\(owner)"])
                    continue
                }
                lost.set()
                var terminated = false
                if let connection {
                    terminated = (try? await terminateOwnWorkers(on: connection)) != nil
                } else if let fresh = try? await url.connect(logger: logger, id: 1) {
                    terminated = (try? await terminateOwnWorkers(on: fresh)) != nil
                    try? await fresh.close()
                }
                if !terminated { try? await worker.close() }
                throw leaseLostError
            }
        } catch {
            try? await connection?.close()
            throw error
        }
    }

    private func record(_ migration: Migration, started: ContinuousClock.Instant, _ connection: PostgresConnection) async throws {
        try await connection.execute("""
            INSERT INTO ferry_schema_migrations (version, name, checksum, applied_by, duration_ms)
            VALUES (\(migration.version), \(migration.name), \(migration.checksum), \(owner), \(Self.milliseconds(since: started)))
            """, logger: logger)
    }

    /// Records the version only while the lease is still ours, in one statement.
    private func recordUnderLease(_ migration: Migration, _ lease: LeaseLock, started: ContinuousClock.Instant, _ connection: PostgresConnection) async throws {
        let rows = try await connection.execute("""
            INSERT INTO ferry_schema_migrations (version, name, checksum, applied_by, duration_ms)
            SELECT \(migration.version), \(migration.name), \(migration.checksum), \(owner), \(Self.milliseconds(since: started))
             WHERE EXISTS (SELECT 1 FROM ferry_migration_lease WHERE name = \(lease.name) AND owner = \(owner) AND expires_at >= now())
            RETURNING version
            """, logger: logger)
        if !rows.isEmpty { return }
        throw MigrationError(code: .leaseLost, message:
            "lost the migration lease before recording \(migration.id); it will be rerun from the top")
    }

    // MARK: Helpers

    private func statements(of migration: Migration) throws -> [String] {
        do {
            return try SQLScript.statements(in: migration.sql)
        } catch {
            throw MigrationError(code: .failed, message: "migration \(migration.id) cannot be parsed: \(error)")
        }
    }

    private func query(_ connection: PostgresConnection, _ context: String, _ sql: String) async throws -> [PostgresRow] {
        do {
            return try await connection.execute(PostgresQuery(unsafeSQL: sql), logger: logger)
        } catch {
            throw DatabaseError(running: context, error: error)
        }
    }

    private static func milliseconds(since start: ContinuousClock.Instant) -> Int {
        Int((ContinuousClock.now - start).wholeMilliseconds)
    }

    private static func innermost(_ error: any Error) -> any Error {
        if let transaction = error as? PostgresTransactionError {
            return transaction.closureError ?? transaction.beginError ?? transaction.commitError ?? error
        }
        return error
    }

    private static func failure(of migration: Migration, error: any Error) -> any Error {
        let inner = innermost(error)
        if inner is MigrationError { return inner }
        return MigrationError(code: .failed, message: DatabaseError(running: "migration \(migration.id)", error: inner).message)
    }
}

/// Shared between the heartbeat and the code that reports the migration's outcome.
final class LeaseLossFlag: Sendable {
    private let state = Mutex(false)
    var isSet: Bool { state.withLock { $0 } }
    func set() { state.withLock { $0 = true } }
}

/// A result delivered at most once, to one waiter, whichever of several sources comes first.
final class OnceContinuation<T: Sendable>: Sendable {
    private let state = Mutex<(result: Result<T, any Error>?, waiter: CheckedContinuation<T, any Error>?)>((nil, nil))

    func resume(with result: Result<T, any Error>) {
        let waiter = state.withLock { state -> CheckedContinuation<T, any Error>? in
            guard state.result == nil else { return nil }
            state.result = result
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(with: result)
    }

    func value() async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let ready = state.withLock { state -> Result<T, any Error>? in
                if let result = state.result { return result }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }
}
