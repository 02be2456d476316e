import FerryProtocol
import Foundation
import JobStore
import Logging
import PostgresNIO
import SwiftProtobuf

/// Where the watch hub reads job events: the control database, or a test's stand-in that
/// counts the reads.
protocol WatchEventReader: Sendable {
    /// The events after each cursor's seq (in order, at most `limit` per job) of every job
    /// whose last seq differs from its cursor, with that last seq — in one read whatever the
    /// number of jobs. Jobs without news are left out.
    func read(_ cursors: [WatchCursor], limit: Int) async throws -> [UUID: WatchRead]

    /// One job's events after `after`, in order, at most `limit`.
    func events(of job: UUID, after: Int64, limit: Int) async throws -> [JobEvent]

    /// The job as it is now (a watch's SNAPSHOT); nil when there is no such job.
    func job(_ id: UUID) async throws -> JobRecord?
}

struct WatchCursor: Sendable {
    var jobID: UUID
    var after: Int64
}

struct WatchRead: Sendable {
    /// The job's `last_seq` when read.
    var lastSeq: Int64
    /// Whether the job had ended when read (its terminal STATUS is event `lastSeq`).
    var finished: Bool
    var events: [JobEvent]
}

struct DatabaseWatchEventReader: WatchEventReader {
    let client: PostgresClient
    let logger: Logger

    func read(_ cursors: [WatchCursor], limit: Int) async throws -> [UUID: WatchRead] {
        let ids = cursors.map(\.jobID)
        let afters = cursors.map(\.after)
        // jobs.last_seq is compared first (one index probe per job), so the jobs without new
        // events cost no scan of job_events; the others read at most `limit` events each. A
        // finished job is always reported, so a feed whose cursor is already at its end learns
        // that it ended.
        let rows = try await client.withConnection { connection in
            try await connection.execute("""
                SELECT w.job_id, j.last_seq, j.finished_at IS NOT NULL, e.seq, e.type, e.payload::text, e.created_at
                  FROM unnest(\(ids)::uuid[], \(afters)::bigint[]) AS w (job_id, after)
                  JOIN jobs j ON j.id = w.job_id AND (j.last_seq <> w.after OR j.finished_at IS NOT NULL)
                  LEFT JOIN LATERAL (
                      SELECT ev.seq, ev.type, ev.payload, ev.created_at FROM job_events ev
                       WHERE ev.job_id = w.job_id AND ev.seq > w.after ORDER BY ev.seq LIMIT \(limit)
                  ) e ON true
                 ORDER BY w.job_id, e.seq
                """, logger: logger)
        }
        var reads: [UUID: WatchRead] = [:]
        for row in rows {
            let (job, lastSeq, finished, seq, type, payload, at) = try row.decode((UUID, Int64, Bool, Int64?, String?, String?, Date?).self)
            var read = reads[job] ?? WatchRead(lastSeq: lastSeq, finished: finished, events: [])
            if let seq, let type, let payload, let at {
                read.events.append(try JobStore.event(jobID: job, seq: seq, type: JobEventType(name: type) ?? .unspecified, payload: JSONValue.parse(payload), at: at))
            }
            reads[job] = read
        }
        return reads
    }

    func events(of job: UUID, after: Int64, limit: Int) async throws -> [JobEvent] {
        try await client.withConnection { connection in
            try await JobStore.events(job, after: after, limit: limit, on: connection, logger: logger)
        }
    }

    func job(_ id: UUID) async throws -> JobRecord? {
        try await client.withConnection { connection in
            try await JobStore.fetch(id, on: connection, logger: logger)
        }
    }
}
