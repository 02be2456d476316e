import Logging
import PostgresNIO

/// Whether the control database answers, shared by Health/Check and `/healthz`.
///
/// Health checks can arrive by the thousand (load balancers, benchmarks); each must not cost
/// a database round trip. A probe's answer is reused for `maxAge`, and callers that arrive
/// while a probe runs wait for that probe instead of starting their own.
actor HealthProbe {
    private let client: PostgresClient
    private let logger: Logger
    private let maxAge: Duration
    private let timeout: Duration
    private var last: (healthy: Bool, at: ContinuousClock.Instant)?
    private var running: Task<Bool, Never>?

    init(client: PostgresClient, logger: Logger, maxAge: Duration = .seconds(1), timeout: Duration = .seconds(2)) {
        self.client = client
        self.logger = logger
        self.maxAge = maxAge
        self.timeout = timeout
    }

    func isHealthy() async -> Bool {
        if let last, ContinuousClock.now - last.at < maxAge { return last.healthy }
        if let running { return await running.value }
        let task = Task { [client, logger, timeout] in await Self.probe(client, logger: logger, timeout: timeout) }
        running = task
        let healthy = await task.value
        last = (healthy, .now)
        running = nil
        return healthy
    }

    /// `SELECT 1` within `timeout`.
    private static func probe(_ client: PostgresClient, logger: Logger, timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do {
                    _ = try await client.query("SELECT 1", logger: logger).collect()
                    return true
                } catch {
                    return false
                }
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let healthy = await group.next() ?? false
            group.cancelAll()
            return healthy
        }
    }
}
