import FerryProtocol
import Foundation
import Logging
import PostgresNIO

/// Test hooks of the deletion path and the retention worker; all nil in `ferryd`.
public struct RetentionHooks: Sendable {
    /// Called right after an artifact's folder was deleted, before its row is: the test
    /// binary exits here to prove that the next sweep finishes the deletion.
    public var afterFolderRemoved: (@Sendable (ArtifactRecord) -> Void)?
    /// Called once a sweep holds the lease, before its first step (a test stretches a sweep
    /// to show that a second one waits for it).
    public var afterLeaseAcquired: (@Sendable () async -> Void)?
    public init() {}
}

/// Deleting one artifact: its folder first, then its row. The one path used by
/// DeleteArtifact and by the retention worker.
///
/// Why this order: a process that dies between the two leaves a row whose folder is gone,
/// which the next retention sweep finds (the row is expired: DeleteArtifact expires it first)
/// and finishes by deleting the row. The other order would leave a folder no row names —
/// found only by the slower orphan scan, and invisible to anyone looking at the rows.
public enum ArtifactRemoval {
    /// Why an artifact may not be deleted now.
    public enum Refusal: Error, Sendable, Equatable {
        /// QUEUED or RUNNING import jobs read it.
        case inUse(importJobs: [UUID])
        /// Its row says another store holds its folder: this replica sees another directory
        /// (`--artifact-dir` is not the shared one), or has none (`nil`).
        case otherStore(recorded: String, ours: String?)
        /// The row names a folder outside the store (never written by Ferry).
        case badPath(String)
    }

    /// What a deletion found.
    public struct Removed: Sendable {
        public var record: ArtifactRecord
        /// The folder was already gone (a deletion that crashed after the files): only the row was deleted.
        public var folderWasGone: Bool
        /// The row was deleted by this call (false: someone else deleted it meanwhile).
        public var rowDeleted: Bool
    }

    /// Checks that `record` may be deleted by this replica now: its folder is in this
    /// replica's store and no QUEUED or RUNNING import names it.
    public static func check(_ record: ArtifactRecord, store: ArtifactStore?, on connection: PostgresConnection, logger: Logger) async throws -> Refusal? {
        guard let store, store.storeID == record.storeID else {
            return .otherStore(recorded: record.storeID, ours: store?.storeID)
        }
        do {
            _ = try store.folder(of: record)
        } catch {
            return .badPath(record.path)
        }
        let imports = try await ArtifactRecords.importsReading(record.id, on: connection, logger: logger)
        return imports.isEmpty ? nil : .inUse(importJobs: imports)
    }

    /// Deletes the folder, then the row. Call ``check(_:store:on:logger:)`` first. The row is
    /// deleted whether the folder existed or not (a crash between the two is finished here).
    public static func deleteFilesThenRow(
        _ record: ArtifactRecord, store: ArtifactStore, hooks: RetentionHooks = RetentionHooks(),
        on connection: PostgresConnection, logger: Logger
    ) async throws -> Removed {
        let folder = try store.folder(of: record)
        let existed = FileManager.default.fileExists(atPath: folder)
        try store.removeFolder(of: record)
        hooks.afterFolderRemoved?(record)
        let deleted = try await ArtifactRecords.deleteRow(record.id, on: connection, logger: logger)
        logger.info(existed ? "artifact deleted" : "artifact row deleted (its folder was already gone)", metadata: [
            "artifact_id": "\(record.id.uuidString.lowercased())", "folder": "\(folder)",
        ])
        return Removed(record: record, folderWasGone: !existed, rowDeleted: deleted)
    }

    /// DeleteArtifact: checks, then sets the row's expiry to now (so that should this process
    /// die before the row is gone, the retention worker finishes the deletion, and listings
    /// stop showing it at once), then deletes the folder and the row. Nil when there is no
    /// such artifact; throws a ``Refusal`` when it may not be deleted now.
    public static func delete(
        _ id: UUID, store: ArtifactStore?, hooks: RetentionHooks = RetentionHooks(), on connection: PostgresConnection, logger: Logger
    ) async throws -> ArtifactRecord? {
        guard let record = try await ArtifactRecords.get(id, on: connection, logger: logger) else { return nil }
        if let refusal = try await check(record, store: store, on: connection, logger: logger) { throw refusal }
        guard let store, try await ArtifactRecords.expireNow(id, on: connection, logger: logger) else { return nil }
        // Looked for again once expired: an import checks the expiry (by the same database
        // clock) after it is RUNNING and before it reads anything, so either it saw the
        // artifact expired and reads nothing, or it is RUNNING and found here. The expiry is
        // then put back and the deletion refused.
        let imports = try await ArtifactRecords.importsReading(record.id, on: connection, logger: logger)
        guard imports.isEmpty else {
            try await connection.execute("UPDATE job_artifacts SET expires_at = \(record.expiresAt) WHERE id = \(id)", logger: logger)
            throw Refusal.inUse(importJobs: imports)
        }
        let removed = try await deleteFilesThenRow(record, store: store, hooks: hooks, on: connection, logger: logger)
        return removed.rowDeleted ? record : nil
    }
}
