import ControlDatabase
import FerryCore
import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO
import ServiceLifecycle

/// One replica at a time is the leader, elected with a lease row (`leases`, name `leader`):
/// an owner and an expiry from the database clock, renewed by the holder, taken over when it
/// lapses. Unlike a session advisory lock it works behind a transaction-pooling PgBouncer.
///
/// The leader rescues jobs whose replica died: a RUNNING job whose heartbeat is older than
/// `heartbeatTimeout` becomes FAILED with UNAVAILABLE and `retryable: true`. It is not retried
/// automatically: a job that kills its replica (out of memory, a crash in a driver) would
/// otherwise take one replica after another down, and the caller that started it should
/// decide. RerunJob resumes it from its saved resume state.
public final class Leader: Service, Sendable {
    public struct Configuration: Sendable {
        /// Lifetime of the leader lease; a dead leader is replaced within it.
        public var leaseDuration: Duration = .seconds(10)
        /// A RUNNING job whose heartbeat is older than this is rescued.
        public var heartbeatTimeout: Duration = .seconds(15)
        public init() {}
    }

    private let lease: LeaseLock
    private let client: PostgresClient
    private let configuration: Configuration
    private let logger: Logger
    private let onRescued: @Sendable () async -> Void

    public init(replica: String, client: PostgresClient, configuration: Configuration, logger: Logger, onRescued: @escaping @Sendable () async -> Void) {
        self.lease = LeaseLock(table: "leases", name: "leader", owner: replica, duration: configuration.leaseDuration)
        self.client = client
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "leader"
        self.logger = logger
        self.onRescued = onRescued
    }

    public func run() async throws {
        // Renew three times per lifetime, and look for dead jobs as often.
        let interval = configuration.leaseDuration / 3
        let leading = await cancelWhenGracefulShutdown { [self] () async -> Bool in
            var leading = false
            while !Task.isCancelled {
                do {
                    let attempt = try await client.withConnection { try await lease.tryAcquire(on: $0, logger: logger) }
                    if attempt == .acquired {
                        if !leading { logger.notice("this replica is the leader") }
                        leading = true
                        if try await rescue() > 0 { await onRescued() }
                    } else {
                        if leading { logger.notice("this replica is no longer the leader") }
                        leading = false
                    }
                } catch {
                    logger.warning("leader election failed", metadata: ["error": "\(String(reflecting: error))"])
                }
                try? await Task.sleep(for: interval)
            }
            return leading
        }
        if leading {
            // Let another replica lead at once rather than after the lease lapses.
            _ = try? await client.withConnection { try await lease.release(on: $0, logger: logger) }
        }
    }

    /// Fails the RUNNING jobs whose heartbeat stopped; returns how many.
    func rescue() async throws -> Int {
        let timeoutMs = Int(configuration.heartbeatTimeout.wholeMilliseconds)
        return try await client.withConnection { connection in
            let stale = try await connection.execute("""
                SELECT id, owner FROM jobs
                 WHERE status = 'RUNNING' AND owner IS NOT NULL
                   AND heartbeat_at < clock_timestamp() - \(timeoutMs) * interval '1 millisecond'
                """, logger: logger).map { try $0.decode((UUID, String).self) }
            var rescued = 0
            for (id, owner) in stale {
                let error = JobError(
                    code: StatusCode.unavailable.rawValue,
                    message: "replica \(owner) stopped heartbeating while running the job; rerun to resume",
                    retryable: true)
                let ended = try await connection.transaction(logger: logger) { connection -> Bool in
                    // Re-checked in the update: a late heartbeat wins over the rescue.
                    let rows = try await connection.execute("""
                        UPDATE jobs SET status = 'FAILED', finished_at = clock_timestamp(), updated_at = clock_timestamp(),
                               error_code = \(error.code), error_message = \(error.message), error_retryable = true
                         WHERE id = \(id) AND status = 'RUNNING' AND owner = \(owner)
                           AND heartbeat_at < clock_timestamp() - \(timeoutMs) * interval '1 millisecond'
                        RETURNING id
                        """, logger: logger)
                    guard !rows.isEmpty else { return false }
                    _ = try await JobStore.appendStatus(id, status: .failed, error: error, on: connection, logger: logger)
                    try await EngineNotification.freed.send(on: connection, logger: logger)
                    return true
                }
                if ended {
                    rescued += 1
                    logger.warning("rescued a job whose replica stopped heartbeating", metadata: ["job_id": "\(id.uuidString.lowercased())", "owner": "\(owner)"])
                }
            }
            return rescued
        }
    }
}
