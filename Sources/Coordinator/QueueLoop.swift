import FerryRuntime
import Foundation
import JobStore
import Logging
import ServiceLifecycle

/// Admits queued jobs as capacity frees: woken when a job ends anywhere (NOTIFY `freed`), and
/// polling every `pollInterval` for what notifications miss. Every replica runs one; the
/// coordinator's instance locks keep them from admitting the same job twice. When it stops
/// (graceful shutdown) it closes the coordinator.
public final class QueueLoop: Service, Sendable {
    private let coordinator: Coordinator
    private let pollInterval: Duration
    private let logger: Logger
    private let wakeup = Wakeup()

    public init(coordinator: Coordinator, pollInterval: Duration = .seconds(1), logger: Logger) {
        self.coordinator = coordinator
        self.pollInterval = pollInterval
        self.logger = logger
    }

    public func wake() { wakeup.signal() }

    public func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                do {
                    try await coordinator.promoteQueued()
                } catch {
                    logger.warning("cannot admit queued jobs", metadata: ["error": "\(error)"])
                }
                await wakeup.wait(upTo: pollInterval)
            }
        }
        // Shut down after the RPC server and the executors: nobody admits any more.
        await coordinator.close()
    }
}
