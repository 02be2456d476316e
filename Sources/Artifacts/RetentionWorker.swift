import ControlDatabase
import FerryCore
import Foundation
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The `retention` row of `leases`: one sweep at a time across every replica and every
/// `ferryd sweep`.
///
/// A sweep holds the lease (owner, expiry from the database clock, renewed three times per
/// lifetime) and, when it ends, sets `expires_at = renewed_at = now()`: the lease is free at
/// once, and `renewed_at` records when the last sweep ended. A serving replica takes the lease
/// only when it is free *and* the last sweep ended at least one interval ago, so the replicas
/// sweep once per interval between them; `ferryd sweep` takes it whenever it is free. A sweep
/// whose process dies keeps the lease until it expires.
public struct RetentionLease: Sendable {
    public static let name = "retention"
    public let owner: String
    public let duration: Duration

    public init(owner: String, duration: Duration) {
        self.owner = owner
        self.duration = duration
    }

    public enum Attempt: Sendable, Equatable {
        /// Ours, from `at` (database clock).
        case acquired(at: Date)
        /// Held by `owner` for about `expiresIn` more seconds.
        case held(owner: String, expiresIn: Double)
        /// Free, but the last sweep ended less than an interval ago.
        case notDue
    }

    /// Takes the lease if it is free (expired); with `due`, only if the last sweep also
    /// ended at least `due` ago.
    public func tryAcquire(due: Duration?, on connection: PostgresConnection, logger: Logger) async throws -> Attempt {
        let milliseconds = duration.wholeMilliseconds
        let dueMilliseconds = due?.wholeMilliseconds
        let rows = try await connection.execute("""
            INSERT INTO leases AS lease (name, owner, acquired_at, renewed_at, expires_at)
            VALUES (\(Self.name), \(owner), now(), now(), now() + \(milliseconds) * interval '1 millisecond')
            ON CONFLICT (name) DO UPDATE
               SET owner = EXCLUDED.owner, acquired_at = now(), renewed_at = now(), expires_at = EXCLUDED.expires_at
             WHERE lease.expires_at < now()
               AND (\(dueMilliseconds)::int8 IS NULL OR lease.renewed_at <= now() - \(dueMilliseconds) * interval '1 millisecond')
            RETURNING acquired_at
            """, logger: logger)
        if let row = rows.first { return .acquired(at: try row.decode(Date.self)) }
        let holder = try await connection.execute("""
            SELECT owner, extract(epoch FROM expires_at - now())::float8 FROM leases WHERE name = \(Self.name)
            """, logger: logger)
        guard let (holderOwner, expiresIn) = try holder.first?.decode((String, Double).self) else { return .notDue }
        return expiresIn >= 0 ? .held(owner: holderOwner, expiresIn: expiresIn) : .notDue
    }

    /// Extends the lease if it is still ours; false when it was lost.
    public func renew(on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        !(try await connection.execute("""
            UPDATE leases SET renewed_at = now(), expires_at = now() + \(duration.wholeMilliseconds) * interval '1 millisecond'
             WHERE name = \(Self.name) AND owner = \(owner) AND expires_at >= now()
            RETURNING 1
            """, logger: logger)).isEmpty
    }

    /// Ends a sweep: the lease is free at once, and `renewed_at` says when the sweep ended
    /// (`swept: false`, for a sweep cut short by shutdown, keeps the last renewal). Returns the
    /// end time (database clock), nil when the lease was no longer ours.
    @discardableResult
    public func finish(swept: Bool, on connection: PostgresConnection, logger: Logger) async throws -> Date? {
        try await connection.execute("""
            UPDATE leases SET renewed_at = CASE WHEN \(swept) THEN now() ELSE renewed_at END, expires_at = now()
             WHERE name = \(Self.name) AND owner = \(owner)
            RETURNING now()
            """, logger: logger).first?.decode(Date.self)
    }
}

/// Runs sweeps under the retention lease: renews it from a connection of its own while the
/// sweep works on another, and tells the sweep when the lease can no longer be counted on.
public struct RetentionRunner: Sendable {
    public let url: DatabaseURL
    public let store: ArtifactStore?
    public let configuration: RetentionConfiguration
    public let lease: RetentionLease
    public let logger: Logger

    public init(url: DatabaseURL, store: ArtifactStore?, configuration: RetentionConfiguration, owner: String, logger: Logger) {
        var url = url
        url.applicationName = "ferryd retention"
        self.url = url
        self.store = store
        self.configuration = configuration
        self.lease = RetentionLease(owner: owner, duration: configuration.leaseDuration)
        var logger = logger
        logger[metadataKey: "component"] = "retention"
        self.logger = logger
    }

    /// Runs one sweep; the lease must have just been acquired on `leaseConnection` at `startedAt`
    /// (database clock). Releases it at the end whatever happens.
    public func sweep(leaseConnection: PostgresConnection, startedAt: Date) async throws -> SweepSummary {
        var summary = SweepSummary()
        summary.startedAt = Self.timestamp(startedAt)
        // The lease counts as held until its lifetime after the last confirmed renewal was
        // *sent*, less a margin: the sweep stops deleting before another process may take it.
        let watch = LeaseWatch(lifetime: configuration.leaseDuration, margin: min(configuration.leaseDuration / 3, .seconds(5)))
        let lifetime = configuration.leaseDuration
        let leaseHeld: @Sendable () -> Bool = { watch.held }
        let sweep = RetentionSweep(store: store, configuration: configuration, logger: logger, leaseHeld: leaseHeld)
        let (lease, logger) = (lease, logger)

        let outcome: Result<SweepSummary, any Error> = await withTaskGroup(of: Result<SweepSummary, any Error>?.self) { group in
            group.addTask {
                // Renewals, three per lifetime, until the sweep ends.
                while !Task.isCancelled {
                    try? await Task.sleep(for: lifetime / 3)
                    if Task.isCancelled { break }
                    let sent = ContinuousClock.now
                    do {
                        if try await lease.renew(on: leaseConnection, logger: logger) {
                            watch.confirm(sent)
                        } else {
                            watch.lose()
                            return nil
                        }
                    } catch {
                        logger.warning("cannot renew the retention lease", metadata: ["error": "\(String(reflecting: error))"])
                    }
                }
                return nil
            }
            group.addTask { [configuration, url, summary] in
                do {
                    await configuration.hooks.afterLeaseAcquired?()
                    var summary = summary
                    try await url.withConnection(logger: logger) { connection in
                        try await sweep.run(on: connection, into: &summary)
                    }
                    return .success(summary)
                } catch {
                    return .failure(error)
                }
            }
            var result: Result<SweepSummary, any Error> = .failure(CancellationError())
            while let next = await group.next() {
                if let next {
                    result = next
                    group.cancelAll()
                }
            }
            return result
        }
        switch outcome {
        case .success(let done):
            summary = done
            let ended = try? await lease.finish(swept: !done.interrupted, on: leaseConnection, logger: logger)
            summary.finishedAt = Self.timestamp(ended ?? Date())
            return summary
        case .failure(let error):
            _ = try? await lease.finish(swept: false, on: leaseConnection, logger: logger)
            throw error
        }
    }

    /// ISO 8601 with microseconds, UTC.
    public static func timestamp(_ date: Date) -> String {
        let micros = Int64((date.timeIntervalSince1970 * 1_000_000).rounded())
        let seconds = micros >= 0 ? micros / 1_000_000 : (micros - 999_999) / 1_000_000
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        formatter.timeZone = TimeZone(identifier: "UTC")
        let base = formatter.string(from: Date(timeIntervalSince1970: Double(seconds)))
        return String(base.dropLast()) + String(format: ".%06lldZ", micros - seconds * 1_000_000)
    }
}

/// How long a sweep may count on its lease: until its lifetime after the last confirmed
/// renewal was *sent*, less a margin, unless a renewal found it lost.
final class LeaseWatch: Sendable {
    private let confirmed = Mutex(ContinuousClock.now)
    private let lost = Atomic<Bool>(false)
    private let lifetime: Duration
    private let margin: Duration

    init(lifetime: Duration, margin: Duration) {
        self.lifetime = lifetime
        self.margin = margin
    }

    var held: Bool {
        !lost.load(ordering: .relaxed) && ContinuousClock.now < confirmed.withLock { $0 } + lifetime - margin
    }

    func confirm(_ sent: ContinuousClock.Instant) { confirmed.withLock { $0 = max($0, sent) } }
    func lose() { lost.store(true, ordering: .relaxed) }
}

/// `ferryd serve`'s retention worker: every replica runs one; the replica that takes the
/// `retention` lease when a sweep is due runs it (``RetentionSweep`` lists exactly what a
/// sweep deletes and what it never deletes). It looks every `min(interval, 30 s)` (with a
/// little jitter, so replicas do not all ask at once) on a connection of its own.
public final class RetentionWorker: Service, Sendable {
    private let runner: RetentionRunner

    public init(replica: String, url: DatabaseURL, store: ArtifactStore?, configuration: RetentionConfiguration, logger: Logger) {
        runner = RetentionRunner(url: url, store: store, configuration: configuration, owner: replica, logger: logger)
    }

    public func run() async throws {
        let (runner, logger) = (runner, runner.logger)
        let poll = min(runner.configuration.interval, .seconds(30))
        if runner.store == nil {
            logger.info("no --artifact-dir: the retention worker deletes old events only")
        }
        await cancelWhenGracefulShutdown {
            var connection: PostgresConnection?
            while !Task.isCancelled {
                do {
                    if connection == nil || connection?.isClosed == true { connection = try await runner.url.connect(logger: logger) }
                    if let open = connection,
                       case .acquired(let at) = try await runner.lease.tryAcquire(due: runner.configuration.interval, on: open, logger: logger) {
                        let summary = try await runner.sweep(leaseConnection: open, startedAt: at)
                        summary.count()
                        let metadata: Logger.Metadata = [
                            "artifacts_deleted": "\(summary.artifactsDeleted)", "artifact_rows_finished": "\(summary.artifactRowsFinished)",
                            "artifacts_skipped_in_use": "\(summary.artifactsSkippedInUse)",
                            "artifacts_skipped_other_store": "\(summary.artifactsSkippedOtherStore)",
                            "staging_deleted": "\(summary.stagingDeleted)", "orphans_deleted": "\(summary.orphansDeleted)",
                            "events_deleted": "\(summary.eventsDeleted)", "failures": "\(summary.failures)",
                            "interrupted": "\(summary.interrupted)",
                        ]
                        if summary.deletedAnything || summary.failures > 0 || summary.interrupted {
                            logger.notice("retention sweep done", metadata: metadata)
                        } else {
                            logger.info("retention sweep done", metadata: metadata)
                        }
                    }
                } catch is CancellationError {
                    break
                } catch {
                    logger.warning("retention sweep failed", metadata: ["error": "\(String(reflecting: error))"])
                    try? await connection?.close()
                    connection = nil
                }
                let jitter = Double.random(in: 0.9...1.1)
                try? await Task.sleep(for: poll * jitter)
            }
            try? await connection?.close()
        }
    }
}

extension SweepSummary {
    /// Adds what the sweep deleted to `ferry_retention_deleted_total` (by what) and its
    /// failures to `ferry_retention_failures_total`.
    func count() {
        for (what, n) in [("artifacts", artifactsDeleted + artifactRowsFinished), ("staging_folders", stagingDeleted),
                          ("orphan_folders", orphansDeleted), ("events", eventsDeleted)] where n > 0 {
            Counter(label: "ferry_retention_deleted_total", dimensions: [("what", what)]).increment(by: n)
        }
        if failures > 0 { Counter(label: "ferry_retention_failures_total").increment(by: failures) }
    }
}
