import ControlDatabase
import Executors
import Foundation
import LibPQ

/// The libpq sessions of the data path: source readers inside the job's exported snapshot,
/// and target writers that proved they hold the target's fence.
///
/// Every session carries the attempt's application_name, so the executor's stop (cancel,
/// lost ownership, shutdown) terminates it on its server and a COPY in flight stops there,
/// not only in this process.
enum DataSessions {
    /// Session settings both sides share, so that text output (COPY text for servers of
    /// different major versions, and the checksums' row text) is the same everywhere: the
    /// same choices pg_dump makes, plus a fixed money format.
    static let settings = """
        SET client_encoding = 'UTF8';
        SET datestyle = 'ISO, YMD';
        SET intervalstyle = 'postgres';
        SET timezone = 'UTC';
        SET extra_float_digits = 3;
        SET bytea_output = 'hex';
        SET lc_monetary = 'C';
        SET statement_timeout = 0;
        SET idle_in_transaction_session_timeout = 0;
        SET search_path = pg_catalog;
        SELECT set_config('idle_session_timeout', '0', false) WHERE current_setting('server_version_num')::int >= 140000;
        """

    /// How long a source session waits for its ACCESS SHARE locks: a DDL statement queued on a
    /// tenant's table (behind the clone's own locks) would otherwise block the clone's next
    /// read for as long as the clone holds them, that is forever.
    static let readerLockTimeout = "30s"

    /// A reader of `url` that sees exactly the exported `snapshot`, and holds ACCESS SHARE
    /// locks on `tables` (qualified, comma-separated) for its life, so they cannot change
    /// under it even if the exporting session is lost. Blocks.
    static func reader(_ url: DatabaseURL, snapshot: String, tables: String) throws -> PQConnection {
        let connection = try PQConnection(parameters: url.libpqParameters)
        do {
            try connection.execute(settings)
            try connection.execute("""
                BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
                SET TRANSACTION SNAPSHOT \(quoteLiteral(snapshot));
                SET LOCAL lock_timeout = \(quoteLiteral(readerLockTimeout));
                """)
            if !tables.isEmpty { try connection.execute("LOCK TABLE \(tables) IN ACCESS SHARE MODE") }
            return connection
        } catch {
            connection.close()
            throw error
        }
    }

    /// A writer of `url` that ran `fenceCheck` on itself and found the fence is this
    /// attempt's; nil when it is not (the caller reports the lost fence). Blocks.
    static func writer(_ url: DatabaseURL, fenceCheck: String) throws -> PQConnection? {
        let connection = try PQConnection(parameters: url.libpqParameters)
        do {
            guard try connection.execute(fenceCheck).first?.first == "t" else {
                connection.close()
                return nil
            }
            try connection.execute(settings)
            return connection
        } catch {
            connection.close()
            throw error
        }
    }
}

extension DatabaseURL {
    /// The URL as libpq's keyword parameters.
    var libpqParameters: [(String, String)] {
        var parameters: [(String, String)] = [
            ("host", host), ("port", String(port)), ("user", user), ("dbname", database),
            ("sslmode", sslMode.rawValue), ("connect_timeout", String(connectTimeout)),
            // A server that vanishes without closing the connection (a dead host, a cut
            // network) is noticed within about a minute, not after the system's hours.
            ("keepalives", "1"), ("keepalives_idle", "30"), ("keepalives_interval", "10"), ("keepalives_count", "3"),
            ("tcp_user_timeout", "60000"),
        ]
        if let password { parameters.append(("password", password)) }
        if let applicationName { parameters.append(("application_name", applicationName)) }
        return parameters
    }
}

/// Runs blocking libpq (or file) work on its own thread; cancelling the task cancels the
/// statements of `connections` on their servers and raises `stop`, which file loops check
/// between blocks, so the work ends promptly.
///
/// A statement whose server went away (shut down, crashed, the network cut) fails with an
/// error libpq makes itself ("server closed the connection unexpectedly"): no SQLSTATE, and
/// `PQError.connectionLost` unset, since libpq reports it as the statement's result. Such an
/// error on a connection that is no longer open (`PQbackendPID` is 0 then) is marked lost
/// here, so the job fails UNAVAILABLE and retryable, not INTERNAL.
func runBlocking<T: Sendable>(cancelling connections: [PQConnection], stop: ArchiveFile.StopFlag? = nil,
                              _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try Task.checkCancellation()
    do {
        return try await withTaskCancellationHandler {
            try await PQThread.run(body)
        } onCancel: {
            stop?.stop()
            for connection in connections { connection.cancel() }
        }
    } catch var error as PQError where error.sqlState == nil && !error.connectionLost && connections.contains(where: { $0.backendPID == 0 }) {
        error.connectionLost = true
        throw error
    }
}
