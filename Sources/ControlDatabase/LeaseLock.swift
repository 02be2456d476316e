import FerryCore
import Logging
import PostgresNIO

/// A named lease held in a table row: an owner and an expiry computed by the database clock.
///
/// Unlike a session advisory lock it keeps working behind a transaction-pooling PgBouncer,
/// and a holder that dies simply stops renewing: the lease expires and another owner takes it.
/// The table needs the columns `name` (primary key), `owner`, `acquired_at`, `renewed_at`
/// and `expires_at`.
public struct LeaseLock: Sendable {
    /// What an acquisition attempt found.
    public enum Attempt: Sendable, Equatable {
        case acquired
        /// Someone else holds the lease for about `expiresIn` more seconds.
        case heldBy(owner: String, expiresIn: Double)
    }

    /// The table, a trusted identifier from Ferry's own code.
    public let table: String
    public let name: String
    public let owner: String
    public let duration: Duration

    public init(table: String, name: String, owner: String, duration: Duration) {
        precondition(table.allSatisfy { $0.isLetter || $0 == "_" }, "lease table must be a plain identifier")
        self.table = table
        self.name = name
        self.owner = owner
        self.duration = duration
    }

    private var durationMilliseconds: Int {
        Int(duration.wholeMilliseconds)
    }

    /// `$1` name, `$2` owner, `$3` lifetime in milliseconds.
    private var leaseBinds: PostgresBindings {
        var binds = PostgresBindings()
        binds.append(name)
        binds.append(owner)
        binds.append(durationMilliseconds)
        return binds
    }

    /// Takes the lease if it is free, expired, or already ours (which renews it).
    public func tryAcquire(on connection: PostgresConnection, logger: Logger) async throws -> Attempt {
        let rows = try await connection.execute(PostgresQuery(unsafeSQL: """
            INSERT INTO \(table) AS lease (name, owner, acquired_at, renewed_at, expires_at)
            VALUES ($1, $2, now(), now(), now() + $3 * interval '1 millisecond')
            ON CONFLICT (name) DO UPDATE
               SET owner = EXCLUDED.owner, acquired_at = now(), renewed_at = now(), expires_at = EXCLUDED.expires_at
             WHERE lease.expires_at < now() OR lease.owner = EXCLUDED.owner
            RETURNING owner
            """, binds: leaseBinds), logger: logger)
        if !rows.isEmpty { return .acquired }

        var holderBinds = PostgresBindings()
        holderBinds.append(name)
        let holder = try await connection.execute(PostgresQuery(unsafeSQL: """
            SELECT owner, extract(epoch FROM expires_at - now())::float8 FROM \(table) WHERE name = $1
            """, binds: holderBinds), logger: logger)
        if let row = holder.first {
            let (holderOwner, expiresIn) = try row.decode((String, Double).self)
            return .heldBy(owner: holderOwner, expiresIn: expiresIn)
        }
        // Released between the two statements: report it as free-but-not-ours; callers retry.
        return .heldBy(owner: "", expiresIn: 0)
    }

    /// Extends the lease if we still hold it; `false` means it was lost.
    public func renew(on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        let rows = try await connection.execute(PostgresQuery(unsafeSQL: """
            UPDATE \(table) SET renewed_at = now(), expires_at = now() + $3 * interval '1 millisecond'
             WHERE name = $1 AND owner = $2 AND expires_at >= now()
            RETURNING owner
            """, binds: leaseBinds), logger: logger)
        return !rows.isEmpty
    }

    /// Whether we hold the lease now (by the database clock), without extending it.
    public func isHeld(on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        var binds = PostgresBindings()
        binds.append(name)
        binds.append(owner)
        let rows = try await connection.execute(PostgresQuery(unsafeSQL: """
            SELECT 1 FROM \(table) WHERE name = $1 AND owner = $2 AND expires_at >= now()
            """, binds: binds), logger: logger)
        return !rows.isEmpty
    }

    /// Gives the lease up, only if it is still ours.
    public func release(on connection: PostgresConnection, logger: Logger) async throws {
        var binds = PostgresBindings()
        binds.append(name)
        binds.append(owner)
        try await connection.execute(PostgresQuery(unsafeSQL: """
            DELETE FROM \(table) WHERE name = $1 AND owner = $2
            """, binds: binds), logger: logger)
    }
}
