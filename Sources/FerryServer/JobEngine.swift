import ControlDatabase
import Coordinator
import Executors
import Foundation
import JobStore
import Logging
import PostgresNIO
import Watch

/// One replica's job engine: coordinator, queue, executors, leader, notifications, watchers,
/// and the RPC handlers over them.
struct JobEngine: Sendable {
    let replica: String
    let notifier: Notifier
    let coordinator: Coordinator
    let queue: QueueLoop
    let executors: ExecutorPool
    let leader: Leader
    let watchHub: WatchHub
    let jobs: JobsService
    let instances: InstancesService

    init(_ configuration: ServerConfiguration, url: DatabaseURL, client: PostgresClient, logger: Logger) throws {
        // Unique per process, readable in job rows and logs.
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "ferryd"
        replica = "\(host):\(getpid()):\(UUID().uuidString.prefix(4).lowercased())"
        var logger = logger
        logger[metadataKey: "replica"] = "\(replica)"

        // Checked at start-up to deliver (ServerConfiguration.checkListenDelivers).
        notifier = Notifier(url: configuration.listenURL(databaseURL: url), logger: logger)
        let coordinator = Coordinator(url: url, configuration: configuration.coordinator, logger: logger)
        self.coordinator = coordinator
        let queue = QueueLoop(coordinator: coordinator, logger: logger)
        self.queue = queue
        // The kinds are built once the resources they are given exist.
        let resources = JobResources(
            instances: InstanceDirectory(controlDatabase: client, settings: configuration.jobSettings),
            controlDatabase: client, settings: configuration.jobSettings, logger: logger)
        let kinds = try configuration.kinds.instantiate(resources)
        executors = ExecutorPool(
            replica: replica, client: client, heartbeatURL: url, kinds: kinds, configuration: configuration.executors, logger: logger,
            onFinished: { queue.wake() })
        let directory = resources.instances
        let leaderLogger = logger
        leader = Leader(replica: replica, url: url, configuration: configuration.leader, logger: logger, onRescued: { rescued in
            queue.wake()
            for job in rescued {
                await directory.endSessions(of: SessionTag(root: job.rootJobID, attempt: job.attempt), job: job.id, logger: leaderLogger)
            }
        })
        watchHub = WatchHub(client: client, notifier: notifier, logger: logger)
        jobs = JobsService(client: client, coordinator: coordinator, kinds: kinds, executors: executors, watchHub: watchHub, logger: logger)
        instances = InstancesService(client: client, logger: logger)

        let executors = self.executors
        notifier.subscribe { notification in
            switch notification {
            case .admitted: executors.wake()
            case .freed: queue.wake()
            case .resync:
                executors.wake()
                queue.wake()
            case .cancel(let id): executors.cancel(id)
            case .event: break
            }
        }
    }
}
