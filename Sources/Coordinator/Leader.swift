import ControlDatabase
import FerryCore
import FerryProtocol
import Foundation
import JobStore
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle

/// One replica at a time is the leader, elected with a lease row (`leases`, name `leader`):
/// an owner and an expiry from the database clock, renewed by the holder, taken over when it
/// lapses. Unlike a session advisory lock it works behind a transaction-pooling PgBouncer.
///
/// The leader rescues jobs whose replica died: a RUNNING job whose heartbeat is older than
/// `heartbeatTimeout` becomes FAILED with UNAVAILABLE and `retryable: true`; one whose cancel
/// was requested and whose owner has not heartbeated since, for `cancelGrace`, becomes
/// CANCELLED as its caller asked (a live owner hears a cancel at its next heartbeat). The
/// lease and the rescue run on a connection of the leader's own, so no load on the shared
/// pool delays them. The server then ends the rescued attempts' sessions on the instances
/// (`onRescued`), so a dead or frozen owner's statement does not run on after its job ended. A rescued job is not retried
/// automatically: a job that kills its replica (out of memory, a crash in a driver) would
/// otherwise take one replica after another down, and the caller that started it should
/// decide. RerunJob resumes it from its saved resume state.
///
/// While it holds the lease, the leader also exports the cluster's queued and running jobs
/// per instance (``JobCountsMetrics``), so exactly one replica reports them.
public final class Leader: Service, Sendable {
    public struct Configuration: Sendable {
        /// Lifetime of the leader lease; a dead leader is replaced within it.
        public var leaseDuration: Duration = .seconds(10)
        /// A RUNNING job whose heartbeat is older than this is rescued.
        public var heartbeatTimeout: Duration = .seconds(15)
        /// How long a cancel-requested job's owner may stay silent after the request before
        /// the job is ended CANCELLED without it (about three heartbeat intervals).
        public var cancelGrace: Duration = .seconds(6)
        public init() {}
    }

    private let lease: LeaseLock
    private let url: DatabaseURL
    private let configuration: Configuration
    private let logger: Logger
    private let onRescued: @Sendable ([JobLifecycle.Stale]) async -> Void
    private let jobCounts = JobCountsMetrics()

    /// - Parameter url: the control database, for the leader's own connection.
    public init(replica: String, url: DatabaseURL, configuration: Configuration, logger: Logger, onRescued: @escaping @Sendable ([JobLifecycle.Stale]) async -> Void) {
        self.lease = LeaseLock(table: "leases", name: "leader", owner: replica, duration: configuration.leaseDuration)
        var url = url
        url.applicationName = "ferryd leader"
        self.url = url
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "leader"
        self.logger = logger
        self.onRescued = onRescued
    }

    /// 1 while this replica holds the leader lease.
    static let isLeader = Gauge(label: "ferry_leader")
    /// Jobs of dead replicas this replica failed as the leader.
    static let rescued = Counter(label: "ferry_leader_rescued_jobs_total")

    public func run() async throws {
        Self.isLeader.record(0)
        // Renew three times per lifetime, and look for dead jobs as often.
        let interval = configuration.leaseDuration / 3
        let (leading, connection) = await cancelWhenGracefulShutdown { [self] () async -> (Bool, PostgresConnection?) in
            var leading = false
            var connection: PostgresConnection?
            while !Task.isCancelled {
                do {
                    if connection == nil || connection?.isClosed == true { connection = try await url.connect(logger: logger) }
                    guard let open = connection else { continue }
                    let attempt = try await lease.tryAcquire(on: open, logger: logger)
                    if attempt == .acquired {
                        if !leading { logger.notice("this replica is the leader") }
                        leading = true
                        Self.isLeader.record(1)
                        let rescued = try await rescue(on: open)
                        if !rescued.isEmpty {
                            Self.rescued.increment(by: rescued.count)
                            await onRescued(rescued)
                        }
                        await jobCounts.refresh(on: open, logger: logger)
                    } else {
                        if leading { logger.notice("this replica is no longer the leader") }
                        leading = false
                        Self.isLeader.record(0)
                        jobCounts.clear()
                    }
                } catch {
                    logger.warning("leader election failed", metadata: ["error": "\(String(reflecting: error))"])
                    // The statement is over (it failed), so closing cannot strand it.
                    try? await connection?.close()
                    connection = nil
                }
                try? await Task.sleep(for: interval)
            }
            return (leading, connection)
        }
        Self.isLeader.record(0)
        jobCounts.clear()
        if leading, let connection {
            // Let another replica lead at once rather than after the lease lapses.
            _ = try? await lease.release(on: connection, logger: logger)
        }
        try? await connection?.close()
    }

    /// Ends the RUNNING jobs whose heartbeat stopped; returns them.
    func rescue(on connection: PostgresConnection) async throws -> [JobLifecycle.Stale] {
        let timeout = configuration.heartbeatTimeout
        let grace = configuration.cancelGrace
        var rescued: [JobLifecycle.Stale] = []
        for job in try await JobLifecycle.stale(timeout: timeout, cancelGrace: grace, on: connection, logger: logger) {
            guard try await JobLifecycle.rescue(job, timeout: timeout, cancelGrace: grace, on: connection, logger: logger) else { continue }
            rescued.append(job)
            logger.warning(job.cancelRequested ? "cancelled a job whose replica stopped heartbeating" : "rescued a job whose replica stopped heartbeating",
                           metadata: ["job_id": "\(job.id.uuidString.lowercased())", "attempt": "\(job.attempt)", "owner": "\(job.owner)"])
        }
        return rescued
    }
}
