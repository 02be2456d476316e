import ControlDatabase
import EmbeddedPostgres
import Foundation
import Logging

/// One throwaway cluster per test process, shared by every test; each test takes a fresh
/// database of its own so tests can run in parallel without seeing each other.
///
/// The cluster is never stopped explicitly: its guardian removes it within a second of the
/// test process exiting.
public actor TestPostgres {
    public static let shared = TestPostgres()
    /// A second cluster, for what crosses instances of different servers (a clone to
    /// another cluster); started only by the tests that use it.
    public static let second = TestPostgres()

    // A task, not a value: callers arriving while the cluster starts must wait for that
    // same start rather than (actor reentrancy) start clusters of their own.
    private var cluster: Task<EmbeddedPostgres, any Error>?
    private var counter = 0

    public func server() async throws -> EmbeddedPostgres {
        if let cluster { return try await cluster.value }
        let starting = Task {
            var logger = Logger(label: "ferry.test-postgres")
            logger.logLevel = .warning
            return try await EmbeddedPostgres.start(maxConnections: 400, logger: logger)
        }
        cluster = starting
        return try await starting.value
    }

    /// Creates an empty database and returns its URL.
    public func freshDatabase(_ purpose: String = "t") async throws -> DatabaseURL {
        let cluster = try await server()
        counter += 1
        let name = "\(purpose.lowercased().filter { $0.isLetter || $0.isNumber })_\(counter)_\(UInt32.random(in: 0...UInt32.max))"
        try await cluster.createDatabase(name)
        return try DatabaseURL(parsing: cluster.url(database: name))
    }
}

/// A quiet logger for tests.
public func testLogger(_ label: String = "ferry.test") -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = ProcessInfo.processInfo.environment["FERRY_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .warning
    return logger
}
