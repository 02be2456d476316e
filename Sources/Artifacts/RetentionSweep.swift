import ControlDatabase
import FerryCore
import Foundation
import Logging
import PostgresNIO

/// Settings of the retention worker (`ferryd serve`) and of `ferryd sweep`.
public struct RetentionConfiguration: Sendable {
    /// Events of jobs that finished longer ago than this are deleted (`--event-retention`).
    public var eventRetention: Duration = .seconds(30 * 24 * 3600)
    /// Time between two sweeps, across all replicas (`--retention-interval`).
    public var interval: Duration = .seconds(3600)
    /// Lifetime of the `retention` lease while a sweep runs; renewed three times per lifetime.
    public var leaseDuration: Duration = .seconds(60)
    /// A published folder with no row and no readable manifest is deleted once it has not
    /// changed for this long (an export that crashed before writing its manifest cannot have
    /// published it; this is for folders damaged or copied in by hand).
    public var orphanAge: Duration = .seconds(3600)
    /// Events deleted per statement.
    public var eventBatch: Int = 5000
    /// Expired artifact rows read per statement.
    public var artifactBatch: Int = 200
    public var hooks = RetentionHooks()
    public init() {}
}

/// What one sweep did; `ferryd sweep` prints it as one JSON line.
public struct SweepSummary: Sendable, Codable, Equatable {
    /// Expired artifacts whose folder and row were deleted.
    public var artifactsDeleted = 0
    /// Expired artifacts whose folder was already gone (an earlier deletion crashed between
    /// the files and the row): the row was deleted.
    public var artifactRowsFinished = 0
    /// Expired artifacts kept because a QUEUED or RUNNING import names them.
    public var artifactsSkippedInUse = 0
    /// Expired artifacts kept because their row names another store than this replica's
    /// (it sees another directory), or this replica has no store.
    public var artifactsSkippedOtherStore = 0
    /// Staging folders of export jobs that are not RUNNING (or do not exist).
    public var stagingDeleted = 0
    /// Published folders no row names, of an export that is not RUNNING (or unreadable and old).
    public var orphansDeleted = 0
    /// Events of jobs finished longer ago than the event retention.
    public var eventsDeleted = 0
    /// Problems that stopped one item (a folder that cannot be deleted, …); the sweep went on.
    public var failures = 0
    /// The first few failures, in words.
    public var problems: [String] = []
    /// The store swept (`.ferry-store-id`), nil without `--artifact-dir` (events only).
    public var storeId: String?
    /// When the sweep took the lease and when it finished, by the control database's clock
    /// (ISO 8601, microseconds).
    public var startedAt = ""
    public var finishedAt = ""
    /// True when the sweep stopped early because it lost the lease (or was cancelled).
    public var interrupted = false

    public init() {}

    /// True when it deleted something.
    public var deletedAnything: Bool {
        artifactsDeleted + artifactRowsFinished + stagingDeleted + orphansDeleted + eventsDeleted > 0
    }

    mutating func fail(_ problem: String, logger: Logger) {
        failures += 1
        if problems.count < 10 { problems.append(problem) }
        logger.warning("retention sweep: \(problem)")
    }

    /// One JSON line, keys sorted.
    public var jsonLine: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
    }
}

/// One retention sweep. It runs only while its caller holds the `retention` lease
/// (``RetentionLease``), and checks `leaseHeld` before every deletion.
///
/// **What it deletes — this and nothing else:**
/// 1. expired artifacts (`job_artifacts.expires_at < now()`): the folder first, then the row;
///    a row whose folder is already gone just loses its row. Skipped: artifacts a QUEUED or
///    RUNNING import job names, and rows whose `store_id` is not this replica's store (it
///    sees another directory: deleting the row would orphan files it cannot see);
/// 2. staging folders `<store>/.staging/<job>` of jobs that are not RUNNING (or do not exist);
/// 3. published folders `<store>/<uuid>` that no row names, whose `manifest.json` names
///    (`jobId`) a job that is not RUNNING — an export that died between publishing and
///    inserting its row — or that have no readable manifest and have not changed for
///    `orphanAge`;
/// 4. `job_events` rows of jobs whose `finished_at` is older than the event retention, in
///    batches — every event of such a job but its last one (its terminal STATUS event,
///    `seq = jobs.last_seq`), which WatchJob needs to end a watch of that job.
///
/// **What it must never delete:** rows of `jobs`, `job_instances`, `job_tables`,
/// `instance_replace_results`, `tenant_claims`, `instances`, `leases` (other than updating
/// its own lease), `ferry_schema_migrations`, and no column of a job row (`resume_state`,
/// `result`, `progress`, …): that is the resume state reruns depend on, kept however old —
/// a rerun months later must still skip what its lineage finished. Nor any event of a job
/// that has not finished, any artifact that has not expired, any folder a row names, or any
/// file outside the store's own folders (names that are not UUIDs are left alone).
public struct RetentionSweep: Sendable {
    public let store: ArtifactStore?
    public let configuration: RetentionConfiguration
    public let logger: Logger
    /// Whether the lease is still ours by our own clock; checked before every deletion.
    public let leaseHeld: @Sendable () -> Bool

    public init(store: ArtifactStore?, configuration: RetentionConfiguration, logger: Logger, leaseHeld: @escaping @Sendable () -> Bool) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
        self.leaseHeld = leaseHeld
    }

    struct LeaseLost: Error {}

    /// Runs the four steps in order on `connection`; a failure of one item is counted and the
    /// sweep goes on; losing the lease stops it (``SweepSummary/interrupted``).
    public func run(on connection: PostgresConnection, into summary: inout SweepSummary) async throws {
        summary.storeId = store?.storeID
        do {
            if let store {
                try await expiredArtifacts(store, connection, &summary)
                try await stagingFolders(store, connection, &summary)
                try await orphanFolders(store, connection, &summary)
            }
            try await events(connection, &summary)
        } catch is LeaseLost {
            summary.interrupted = true
            logger.warning("retention sweep stopped: this process no longer holds the retention lease")
        } catch is CancellationError {
            summary.interrupted = true
        }
    }

    private func guardLease() throws {
        try Task.checkCancellation()
        guard leaseHeld() else { throw LeaseLost() }
    }

    // MARK: 1. Expired artifacts

    private func expiredArtifacts(_ store: ArtifactStore, _ connection: PostgresConnection, _ summary: inout SweepSummary) async throws {
        var after: (micros: Int64, id: UUID)?
        var warnedStores = Set<String>()
        while true {
            try guardLease()
            let page = try await ArtifactRecords.expired(after: after, limit: configuration.artifactBatch, on: connection, logger: logger)
            for (record, micros) in page {
                after = (micros, record.id)
                let id = record.id.uuidString.lowercased()
                try guardLease()
                switch try await ArtifactRemoval.check(record, store: store, on: connection, logger: logger) {
                case .inUse(let imports)?:
                    summary.artifactsSkippedInUse += 1
                    logger.info("expired artifact kept: import jobs read it", metadata: [
                        "artifact_id": "\(id)", "import_job_ids": "\(imports.map { $0.uuidString.lowercased() }.joined(separator: ","))",
                    ])
                    continue
                case .otherStore(let recorded, _)?:
                    summary.artifactsSkippedOtherStore += 1
                    if warnedStores.insert(recorded).inserted {
                        logger.warning("expired artifacts kept: their rows name another artifact store than this replica's (\(store.directory) is store \(store.storeID)); is --artifact-dir the shared directory on every replica?", metadata: [
                            "artifact_id": "\(id)", "recorded_store_id": "\(recorded)",
                        ])
                    }
                    continue
                case .badPath(let path)?:
                    summary.fail("artifact \(id) names the path \"\(path.prefix(100))\", not a folder of the store; its row is kept", logger: logger)
                    continue
                case nil:
                    break
                }
                do {
                    let removed = try await ArtifactRemoval.deleteFilesThenRow(record, store: store, hooks: configuration.hooks, on: connection, logger: logger)
                    if removed.folderWasGone { summary.artifactRowsFinished += 1 } else { summary.artifactsDeleted += 1 }
                } catch let error as ArtifactStoreError {
                    summary.fail("artifact \(id): \(error.message)", logger: logger)
                }
            }
            if page.count < configuration.artifactBatch { return }
        }
    }

    // MARK: 2. Staging folders

    private func stagingFolders(_ store: ArtifactStore, _ connection: PostgresConnection, _ summary: inout SweepSummary) async throws {
        let folders: [ArtifactStore.Entry]
        do {
            folders = try store.stagingFolders()
        } catch let error as ArtifactStoreError {
            return summary.fail(error.message, logger: logger)
        }
        let named = folders.compactMap { entry in Self.canonicalUUID(entry.name).map { (entry, $0) } }
        guard !named.isEmpty else { return }
        let running = Set(try await connection.execute("""
            SELECT id FROM jobs WHERE id = ANY(\(named.map(\.1))) AND status = 'RUNNING'
            """, logger: logger).map { try $0.decode(UUID.self) })
        for (entry, job) in named where !running.contains(job) {
            try guardLease()
            do {
                try store.removeEntry(entry)
                summary.stagingDeleted += 1
                logger.info("staging folder of a job that is not running deleted", metadata: ["job_id": "\(entry.name)", "folder": "\(entry.path)"])
            } catch let error as ArtifactStoreError {
                summary.fail(error.message, logger: logger)
            }
        }
    }

    // MARK: 3. Published folders without a row

    private func orphanFolders(_ store: ArtifactStore, _ connection: PostgresConnection, _ summary: inout SweepSummary) async throws {
        let folders: [ArtifactStore.Entry]
        do {
            folders = try store.publishedFolders()
        } catch let error as ArtifactStoreError {
            return summary.fail(error.message, logger: logger)
        }
        let named = folders.compactMap { entry in Self.canonicalUUID(entry.name).map { (entry, $0) } }
        let recorded = try await ArtifactRecords.existing(named.map(\.1), on: connection, logger: logger)
        for (entry, artifact) in named where !recorded.contains(artifact) {
            try guardLease()
            let job = Self.manifestJob(entry.path)
            // Whether it has a row and whether its job runs, in one statement (one snapshot):
            // an export inserts its row while RUNNING and only then finishes, so "no row and
            // not RUNNING" seen together means no row will ever come.
            let (hasRow, jobRunning) = try await connection.execute("""
                SELECT EXISTS (SELECT 1 FROM job_artifacts WHERE id = \(artifact)),
                       EXISTS (SELECT 1 FROM jobs WHERE id = \(job) AND status = 'RUNNING')
                """, logger: logger).first!.decode((Bool, Bool).self)
            if hasRow || jobRunning { continue }
            if job == nil {
                let age = Date().timeIntervalSince(entry.modified)
                if age < Double(configuration.orphanAge.wholeMilliseconds) / 1000 { continue }
            }
            do {
                try store.removeEntry(entry)
                summary.orphansDeleted += 1
                logger.info("artifact folder without a row deleted", metadata: [
                    "folder": "\(entry.path)", "job_id": "\(job.map { $0.uuidString.lowercased() } ?? "unknown (no readable manifest)")",
                ])
            } catch let error as ArtifactStoreError {
                summary.fail(error.message, logger: logger)
            }
        }
    }

    /// The `jobId` of `<folder>/manifest.json`, nil when it cannot be read.
    static func manifestJob(_ folder: String) -> UUID? {
        let path = folder + "/manifest.json"
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
              let size = attributes[.size] as? NSNumber, size.int64Value <= 64 << 20,
              let data = FileManager.default.contents(atPath: path),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let text = object["jobId"] as? String else { return nil }
        return UUID(uuidString: text)
    }

    /// The UUID a folder name spells in canonical lower-case form, else nil (not Ferry's).
    static func canonicalUUID(_ name: String) -> UUID? {
        guard let id = UUID(uuidString: name), id.uuidString.lowercased() == name else { return nil }
        return id
    }

    // MARK: 4. Events of finished jobs

    private func events(_ connection: PostgresConnection, _ summary: inout SweepSummary) async throws {
        let retention = configuration.eventRetention.wholeMilliseconds
        let batch = configuration.eventBatch
        while true {
            try guardLease()
            // Only jobs with a finished_at (a terminal status) qualify; a job's last event (its
            // terminal STATUS) is kept. Nothing but job_events is touched.
            let deleted = try await connection.execute("""
                WITH doomed AS (
                    SELECT e.job_id, e.seq FROM job_events e JOIN jobs j ON j.id = e.job_id
                     WHERE j.finished_at < now() - \(retention) * interval '1 millisecond' AND e.seq < j.last_seq
                     LIMIT \(batch)
                ), gone AS (
                    DELETE FROM job_events e USING doomed d WHERE e.job_id = d.job_id AND e.seq = d.seq RETURNING 1
                )
                SELECT count(*)::int8 FROM gone
                """, logger: logger).first?.decode(Int64.self) ?? 0
            summary.eventsDeleted += Int(deleted)
            if deleted < batch { return }
        }
    }
}
