import ControlDatabase
import Executors
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO

/// The instant of a source tenant that a clone or an export copies: an exported snapshot,
/// held open by one session for as long as the copy reads, and the tenant's schema as of that
/// instant.
///
/// The tables are locked (ACCESS SHARE, as pg_dump does) *before* the snapshot is taken, so
/// no table rewritten or truncated between the two is copied as it was before; the locks
/// keep DDL off them until ``end()``. The exporting transaction stays open that long, with
/// nothing set to end it while it idles.
struct SourceSnapshot: Sendable {
    let instance: String
    let tenant: String
    let session: PostgresConnection
    /// The snapshot's id, for readers' `SET TRANSACTION SNAPSHOT`.
    let id: String
    let schema: TenantSchema
    /// The tenant's tables, qualified, comma-separated: what every reader locks too.
    let lockList: String
    /// `server_version_num` of the source.
    let serverVersion: Int
    let logger: Logger

    /// Takes the snapshot on `instance` through the attempt's sessions. Fails the job when the
    /// tenant is gone (NOT_FOUND) or holds what Ferry cannot copy (FAILED_PRECONDITION), and
    /// retryably when its tables changed in between.
    static func take(instance: String, tenant: String, _ context: JobContext) async throws -> SourceSnapshot {
        let logger = context.logger
        let session = try await context.instances.open(instance)
        do {
            for setting in ["SET idle_in_transaction_session_timeout = 0", "SET statement_timeout = 0",
                            "SELECT set_config('idle_session_timeout', '0', false) WHERE current_setting('server_version_num')::int >= 140000"] {
                try await session.execute(PostgresQuery(unsafeSQL: setting), logger: logger)
            }
            let listed = try await session.execute("""
                SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = \(tenant) AND c.relkind = 'r'
                """, logger: logger).map { try $0.decode(String.self) }
            let lockList = listed.sorted().map { quoteQualified(tenant, $0) }.joined(separator: ", ")
            try await session.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: logger)
            if !listed.isEmpty {
                try await session.execute("SET LOCAL lock_timeout = '10s'", logger: logger)
                try await session.execute(PostgresQuery(unsafeSQL: "LOCK TABLE \(lockList) IN ACCESS SHARE MODE"), logger: logger)
            }
            let id = try await session.execute("SELECT pg_export_snapshot()", logger: logger).first?.decode(String.self) ?? ""
            let exists = try await session.execute("SELECT 1 FROM pg_namespace WHERE nspname = \(tenant)", logger: logger)
            guard !exists.isEmpty else {
                throw JobFailure(.notFound, "tenant \(tenant) no longer exists on instance \(instance)", retryable: false)
            }
            let schema = try await SchemaReader.read(tenant: tenant, on: session, logger: logger)
            guard schema.unsupported.isEmpty else {
                throw JobFailure(.failedPrecondition, "tenant \(tenant) holds objects Ferry cannot copy: " + schema.unsupported.joined(separator: "; "), retryable: false)
            }
            guard Set(schema.tables.map(\.name)) == Set(listed) else {
                throw JobFailure(.unavailable, "the tables of tenant \(tenant) changed while the job started; rerun", retryable: true)
            }
            let version = try await session.execute("SELECT current_setting('server_version_num')::int", logger: logger).first?.decode(Int.self) ?? 0
            return SourceSnapshot(instance: instance, tenant: tenant, session: session, id: id, schema: schema, lockList: lockList,
                                  serverVersion: version, logger: logger)
        } catch {
            await context.instances.close(session)
            throw error
        }
    }

    /// Ends the snapshot once nothing reads it any more.
    func end() async throws {
        try await session.execute("COMMIT", logger: logger)
    }
}
