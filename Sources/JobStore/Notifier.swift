import ControlDatabase
import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// Delivers the control database's NOTIFY hints (``EngineNotification``) to this replica.
///
/// LISTEN needs a session of its own, which a transaction-pooling PgBouncer cannot give, so
/// the notifier uses a dedicated connection to `url` (a direct DSN). Without one it does
/// nothing, and every consumer falls back to polling; with one, a lost connection is
/// reopened, and consumers are woken ("resync") so they catch up on what they missed.
public final class Notifier: Service, Sendable {
    private let url: DatabaseURL?
    private let logger: Logger
    private let handlers = Mutex<[UUID: @Sendable (EngineNotification) -> Void]>([:])
    private let listening = Atomic<Bool>(false)

    public init(url: DatabaseURL?, logger: Logger) {
        self.url = url
        var logger = logger
        logger[metadataKey: "component"] = "notifier"
        self.logger = logger
    }

    /// Whether notifications arrive now (else consumers should poll briskly).
    public var isListening: Bool { listening.load(ordering: .relaxed) }

    /// Calls `handler` with each payload, on the notifier's task; keep it short.
    @discardableResult
    public func subscribe(_ handler: @escaping @Sendable (EngineNotification) -> Void) -> UUID {
        let id = UUID()
        handlers.withLock { $0[id] = handler }
        return id
    }

    public func unsubscribe(_ id: UUID) {
        handlers.withLock { $0[id] = nil }
    }

    private func dispatch(_ notification: EngineNotification) {
        for handler in handlers.withLock({ Array($0.values) }) { handler(notification) }
    }

    public func run() async throws {
        guard let url else {
            logger.notice("no direct database URL for LISTEN: jobs, queues and watchers poll the control database")
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown { [self] in
            var delay = Duration.milliseconds(200)
            while !Task.isCancelled {
                do {
                    let connection = try await url.connect(logger: logger, id: 2)
                    do {
                        try await connection.listen(on: EngineNotification.channel) { notifications in
                            listening.store(true, ordering: .relaxed)
                            delay = .milliseconds(200)
                            dispatch(.resync)
                            for try await notification in notifications {
                                // A payload this build does not know is ignored like a lost hint.
                                if let known = EngineNotification(payload: notification.payload) { dispatch(known) }
                            }
                        }
                    } catch {
                        try? await connection.close()
                        throw error
                    }
                    try? await connection.close()
                } catch {
                    if Task.isCancelled { break }
                    logger.warning("LISTEN connection lost; polling until it is back", metadata: ["error": "\(error)"])
                }
                listening.store(false, ordering: .relaxed)
                dispatch(.resync)
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
            listening.store(false, ordering: .relaxed)
        }
    }
}
