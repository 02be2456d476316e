import Logging
import NIOPosix
import PostgresNIO

extension DatabaseURL {
    /// Opens one dedicated connection, mapping any failure to a one-line ``DatabaseError``.
    public func connect(logger: Logger, id: Int = 0) async throws(DatabaseError) -> PostgresConnection {
        do {
            return try await PostgresConnection.connect(
                on: MultiThreadedEventLoopGroup.singleton.any(),
                configuration: try connectionConfiguration(),
                id: id,
                logger: logger)
        } catch {
            throw DatabaseError(connecting: self, error: error)
        }
    }

    /// Runs `body` with a fresh connection and closes it afterwards, whatever happens.
    public func withConnection<Result: Sendable>(
        logger: Logger,
        _ body: (PostgresConnection) async throws -> Result
    ) async throws -> Result {
        let connection = try await connect(logger: logger)
        do {
            let result = try await body(connection)
            try? await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }
}

extension PostgresConnection {
    /// Runs one statement and reads its whole result before returning.
    ///
    /// PostgresNIO's `query` returns as soon as rows can stream; a result left unread keeps
    /// the connection from reading further (back-pressure), so a later statement, or the
    /// server ending the session, would never be noticed. Every control-database statement
    /// goes through here.
    @discardableResult
    public func execute(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        try await self.query(query, logger: logger).collect()
    }
}

extension PostgresConnection {
    /// Runs `body` inside `BEGIN` … `COMMIT`. On any error the transaction is rolled back
    /// (best effort: a broken connection rolls back by itself) and the body's error is thrown.
    ///
    /// The server ends the transaction if its client sits idle in it for `idleTimeout`: a
    /// process frozen (SIGSTOP, a paused VM) between two statements would otherwise hold its
    /// row and advisory locks, and stall every replica that needs them, for as long as its
    /// TCP connection lives.
    public func transaction<Result>(
        logger: Logger,
        idleTimeout: Duration = .seconds(10),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (PostgresConnection) async throws -> sending Result
    ) async throws -> sending Result {
        try await execute("BEGIN", logger: logger)
        do {
            try await execute("SET LOCAL idle_in_transaction_session_timeout = \(unescaped: String(idleTimeout.components.seconds * 1000 + idleTimeout.components.attoseconds / 1_000_000_000_000_000))", logger: logger)
            let result = try await body(self)
            try await execute("COMMIT", logger: logger)
            return result
        } catch {
            _ = try? await execute("ROLLBACK", logger: logger)
            throw error
        }
    }
}

extension PSQLError {
    /// The SQLSTATE the server sent, if this is a server error.
    public var sqlState: String? { serverInfo?[.sqlState] }
}
