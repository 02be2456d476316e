import Metrics
import PostgresNIO

/// `ferry_control_pool_wait_seconds`: how long callers waited for a connection of the shared
/// control-database pool (`PostgresClient`). A pool too small for the load shows as waits
/// growing while the database itself is idle.
///
/// PostgresNIO's pool has an observability delegate, but `PostgresClient` fixes it to an
/// internal type that only logs (and ignores the queue depth), so the wait is measured around
/// the lease instead, by the callers that go through ``PostgresClient/withMeasuredConnection(_:)``.
enum ControlPoolMetrics {
    static let wait = Metrics.Timer(label: "ferry_control_pool_wait_seconds", preferredDisplayUnit: .seconds)

    static func waited(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        wait.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

extension PostgresClient {
    /// `withConnection`, recording how long the lease took in `ferry_control_pool_wait_seconds`
    /// (a lease that fails is not recorded: the caller sees its error).
    func withMeasuredConnection<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let asked = ContinuousClock.now
        return try await withConnection { connection in
            ControlPoolMetrics.waited(ContinuousClock.now - asked)
            return try await body(connection)
        }
    }
}
