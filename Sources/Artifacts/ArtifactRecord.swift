import FerryCore
import FerryProtocol
import Foundation
import Logging
import PostgresNIO
import SwiftProtobuf

/// One row of `job_artifacts`: an archive an export job published in the store.
public struct ArtifactRecord: Sendable, Hashable {
    public var id: UUID
    /// The export job that wrote it.
    public var jobID: UUID
    /// The id of the store (`.ferry-store-id`) whose directory holds its folder.
    public var storeID: String
    /// Its folder, relative to the store: one path component (the artifact id, lower-case).
    public var path: String
    public var sourceInstance: String
    public var sourceTenant: String
    public var sizeBytes: Int64
    /// SHA-256 (lower-case hex) of the archive's manifest.
    public var sha256: String
    public var tables: Int64
    public var rows: Int64
    public var formatVersion: Int32
    /// Set by the database clock on insert (the values given to insert are ignored).
    public var createdAt: Date
    public var expiresAt: Date

    public init(
        id: UUID, jobID: UUID, storeID: String, path: String, sourceInstance: String, sourceTenant: String,
        sizeBytes: Int64, sha256: String, tables: Int64, rows: Int64, formatVersion: Int32,
        createdAt: Date = Date(timeIntervalSince1970: 0), expiresAt: Date = Date(timeIntervalSince1970: 0)
    ) {
        self.id = id
        self.jobID = jobID
        self.storeID = storeID
        self.path = path
        self.sourceInstance = sourceInstance
        self.sourceTenant = sourceTenant
        self.sizeBytes = sizeBytes
        self.sha256 = sha256
        self.tables = tables
        self.rows = rows
        self.formatVersion = formatVersion
        self.createdAt = createdAt
        self.expiresAt = expiresAt
    }

    /// The artifact as ferry/1 shows it (the store id and path stay inside the server).
    public var proto: Artifact {
        Artifact.with {
            $0.id = id.uuidString.lowercased()
            $0.jobID = jobID.uuidString.lowercased()
            $0.sourceInstance = sourceInstance
            $0.sourceTenant = sourceTenant
            $0.sizeBytes = sizeBytes
            $0.sha256 = sha256
            $0.createdAt = Google_Protobuf_Timestamp(date: createdAt)
            $0.expiresAt = Google_Protobuf_Timestamp(date: expiresAt)
            $0.tables = tables
            $0.rows = rows
            $0.formatVersion = formatVersion
        }
    }

    /// The columns `init(row:)` reads, in order.
    static let columns = """
        id, job_id, store_id, path, source_instance, source_tenant, size_bytes, sha256, tables, rows, format_version, created_at, expires_at
        """

    init(row: PostgresRow) throws {
        let (id, jobID, storeID, path, sourceInstance, sourceTenant, sizeBytes, sha256, tables, rows, formatVersion, createdAt, expiresAt) =
            try row.decode((UUID, UUID, String, String, String, String, Int64, String, Int64, Int64, Int32, Date, Date).self)
        self.init(id: id, jobID: jobID, storeID: storeID, path: path, sourceInstance: sourceInstance, sourceTenant: sourceTenant,
                  sizeBytes: sizeBytes, sha256: sha256, tables: tables, rows: rows, formatVersion: formatVersion,
                  createdAt: createdAt, expiresAt: expiresAt)
    }
}

/// The artifact rows in the control database. Every statement is a single statement (no
/// transaction held across a file operation), so a process frozen or killed between two of
/// them holds no lock.
public enum ArtifactRecords {
    /// Inserts `record` with created_at = now() and expires_at = now() + ttl (database clock), only
    /// while job `job` is RUNNING and owned by `owner` (jobs.owner); false (nothing written) otherwise.
    ///
    /// Like the checkpoint writes, the statement first locks the job row for share while it is
    /// RUNNING and owned, so a rescue or cancel is ordered before it (nothing written) or after
    /// it. A repeat of an insert that already landed for the same job (a retry after a lost
    /// answer) returns true and changes nothing.
    public static func insert(_ record: ArtifactRecord, ttl: Duration, job: UUID, owner: String, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        let ttlMilliseconds = max(Int64(1), ttl.wholeMilliseconds)
        return !(try await connection.execute("""
            WITH owned AS (SELECT id FROM jobs WHERE id = \(job) AND owner = \(owner) AND status = 'RUNNING' FOR SHARE)
            INSERT INTO job_artifacts (id, job_id, store_id, path, source_instance, source_tenant, size_bytes, sha256,
                                       tables, rows, format_version, created_at, expires_at)
            SELECT \(record.id), \(record.jobID), \(record.storeID), \(record.path), \(record.sourceInstance), \(record.sourceTenant),
                   \(record.sizeBytes), \(record.sha256), \(record.tables), \(record.rows), \(record.formatVersion),
                   now(), now() + \(ttlMilliseconds) * interval '1 millisecond'
              FROM owned
            ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id WHERE job_artifacts.job_id = EXCLUDED.job_id
            RETURNING 1
            """, logger: logger)).isEmpty
    }

    public static func get(_ id: UUID, on connection: PostgresConnection, logger: Logger) async throws -> ArtifactRecord? {
        try await connection.execute("""
            SELECT \(unescaped: ArtifactRecord.columns) FROM job_artifacts WHERE id = \(id)
            """, logger: logger).first.map(ArtifactRecord.init(row:))
    }

    /// A page of artifacts, newest first (created_at, then id), after `after` (the creation
    /// time in microseconds since the Unix epoch and the id of the previous page's last one).
    /// Each record comes with its creation time in microseconds, for the next page's token.
    public static func list(
        sourceInstance: String?, sourceTenant: String?, includeExpired: Bool, after: (micros: Int64, id: UUID)?, limit: Int,
        on connection: PostgresConnection, logger: Logger
    ) async throws -> [(record: ArtifactRecord, createdMicros: Int64)] {
        try await connection.execute("""
            SELECT \(unescaped: ArtifactRecord.columns), (extract(epoch FROM created_at) * 1000000)::bigint FROM job_artifacts
             WHERE (\(sourceInstance)::text IS NULL OR source_instance = \(sourceInstance))
               AND (\(sourceTenant)::text IS NULL OR source_tenant = \(sourceTenant))
               AND (\(includeExpired) OR expires_at >= now())
               AND (\(after?.micros)::bigint IS NULL
                    OR (created_at, id) < (timestamptz 'epoch' + \(after?.micros) * interval '1 microsecond', \(after?.id)))
             ORDER BY created_at DESC, id DESC
             LIMIT \(limit)
            """, logger: logger).map { row in
            let micros = try row.decode((UUID, UUID, String, String, String, String, Int64, String, Int64, Int64, Int32, Date, Date, Int64).self).13
            return (try ArtifactRecord(row: row), micros)
        }
    }

    /// Artifacts past their expiry (by the database clock), oldest expiry first, after the
    /// given (expires_at µs, id) position: the retention worker pages through them.
    static func expired(after: (micros: Int64, id: UUID)?, limit: Int, on connection: PostgresConnection, logger: Logger) async throws -> [(record: ArtifactRecord, expiresMicros: Int64)] {
        try await connection.execute("""
            SELECT \(unescaped: ArtifactRecord.columns), (extract(epoch FROM expires_at) * 1000000)::bigint FROM job_artifacts
             WHERE expires_at < now()
               AND (\(after?.micros)::bigint IS NULL
                    OR (expires_at, id) > (timestamptz 'epoch' + \(after?.micros) * interval '1 microsecond', \(after?.id)))
             ORDER BY expires_at, id
             LIMIT \(limit)
            """, logger: logger).map { row in
            let micros = try row.decode((UUID, UUID, String, String, String, String, Int64, String, Int64, Int64, Int32, Date, Date, Int64).self).13
            return (try ArtifactRecord(row: row), micros)
        }
    }

    /// The QUEUED or RUNNING import jobs whose parameters name `artifact`
    /// (`params = {"import": {"artifactId": "<id>", …}}`, compared without regard to case).
    public static func importsReading(_ artifact: UUID, on connection: PostgresConnection, logger: Logger) async throws -> [UUID] {
        let id = artifact.uuidString.lowercased()
        return try await connection.execute("""
            SELECT id FROM jobs
             WHERE status IN ('QUEUED', 'RUNNING') AND kind = 'import'
               AND lower(params -> 'import' ->> 'artifactId') = \(id)
             ORDER BY created_at, id
            """, logger: logger).map { try $0.decode(UUID.self) }
    }

    /// Sets the artifact's expiry to now unless it is earlier already (the first step of a
    /// deletion: should the process die before the row is gone, the retention worker
    /// finishes the job); false when there is no such row.
    static func expireNow(_ id: UUID, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        !(try await connection.execute("""
            UPDATE job_artifacts SET expires_at = least(expires_at, now()) WHERE id = \(id) RETURNING 1
            """, logger: logger)).isEmpty
    }

    /// Deletes the row; false when it was already gone.
    static func deleteRow(_ id: UUID, on connection: PostgresConnection, logger: Logger) async throws -> Bool {
        !(try await connection.execute("DELETE FROM job_artifacts WHERE id = \(id) RETURNING 1", logger: logger)).isEmpty
    }

    /// Which of `ids` have a row.
    static func existing(_ ids: [UUID], on connection: PostgresConnection, logger: Logger) async throws -> Set<UUID> {
        guard !ids.isEmpty else { return [] }
        return Set(try await connection.execute("""
            SELECT id FROM job_artifacts WHERE id = ANY(\(ids))
            """, logger: logger).map { try $0.decode(UUID.self) })
    }
}
