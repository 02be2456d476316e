import ControlDatabase
import Logging
import Metrics
import PostgresNIO
import Synchronization

/// The gauges `ferry_jobs_queued` and `ferry_jobs_running`, by `instance_id`: QUEUED and
/// RUNNING jobs touching each registered instance, across the whole cluster.
///
/// They are facts of the control database, not of a replica, so only the replica holding the
/// leader lease exports them (the leader refreshes them each time it renews its lease); every
/// other replica has no such series. Summing across replicas therefore does not multiply them.
/// For the moment two replicas may both believe they lead (a leader cut off from the database
/// keeps its last figures until it learns it lost the lease), `max by (instance_id)` is the
/// safe aggregation.
///
/// The label is `instance_id` rather than `instance` because Prometheus puts its own
/// `instance` label (the scraped target) on every series.
final class JobCountsMetrics: Sendable {
    /// The gauges exported now, by instance id.
    private let exported = Mutex<[String: (queued: Gauge, running: Gauge)]>([:])

    /// Reads the counts with one grouped statement and exports them: every registered instance
    /// gets a value (0 when it has no such jobs, never its last non-zero figure), and an
    /// instance no longer registered loses its series. A failure is logged and leaves the
    /// figures as they were: the lease renewal on the same connection notices a broken one.
    func refresh(on connection: PostgresConnection, logger: Logger) async {
        do {
            export(try await read(on: connection, logger: logger))
        } catch {
            logger.warning("could not count the queued and running jobs", metadata: ["error": "\(String(reflecting: error))"])
        }
    }

    private func read(on connection: PostgresConnection, logger: Logger) async throws -> [String: (queued: Int32, running: Int32)] {
        // From the QUEUED and RUNNING jobs (partial indexes), not from all of job_instances,
        // which keeps every finished job's rows. A job may touch several tenants of one
        // instance: it counts once there, as admission counts it.
        let rows = try await connection.execute("""
            SELECT i.id, coalesce(c.queued, 0), coalesce(c.running, 0)
              FROM instances i
              LEFT JOIN (SELECT ji.instance_id,
                                count(DISTINCT j.id) FILTER (WHERE j.status = 'QUEUED')::int AS queued,
                                count(DISTINCT j.id) FILTER (WHERE j.status = 'RUNNING')::int AS running
                           FROM jobs j JOIN job_instances ji ON ji.job_id = j.id
                          WHERE j.status IN ('QUEUED', 'RUNNING')
                          GROUP BY ji.instance_id) c ON c.instance_id = i.id
            """, logger: logger)
        var counts: [String: (queued: Int32, running: Int32)] = [:]
        for row in rows {
            let (instance, queued, running) = try row.decode((String, Int32, Int32).self)
            counts[instance] = (queued, running)
        }
        return counts
    }

    private func export(_ counts: [String: (queued: Int32, running: Int32)]) {
        let gone = exported.withLock { exported -> [(queued: Gauge, running: Gauge)] in
            for (instance, count) in counts {
                let gauges = exported[instance] ?? (
                    Gauge(label: "ferry_jobs_queued", dimensions: [("instance_id", instance)]),
                    Gauge(label: "ferry_jobs_running", dimensions: [("instance_id", instance)]))
                exported[instance] = gauges
                gauges.queued.record(count.queued)
                gauges.running.record(count.running)
            }
            let removed = exported.keys.filter { counts[$0] == nil }
            return removed.compactMap { exported.removeValue(forKey: $0) }
        }
        for gauges in gone { gauges.queued.destroy(); gauges.running.destroy() }
    }

    /// Removes every series: this replica no longer leads (or is stopping), and the new
    /// leader exports the figures from now on.
    func clear() {
        let gone = exported.withLock { exported in
            defer { exported = [:] }
            return Array(exported.values)
        }
        for gauges in gone { gauges.queued.destroy(); gauges.running.destroy() }
    }
}
