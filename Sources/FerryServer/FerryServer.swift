import Artifacts
import ControlDatabase
import EmbeddedPostgres
import FerryCore
import Foundation
import Logging
import Metrics
import NIOCore
import PostgresNIO
import Prometheus
import ServiceLifecycle
import Synchronization
import FerryProtocol
import FerryRPC

/// A start-up step that failed for a reason the operator can fix; printed as one line.
public struct StartupFailure: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
    public init(message: String) { self.message = message }
}

/// Composes the server process: control database (given or embedded), migrations, the
/// services, and an orderly stop on SIGTERM/SIGINT.
public enum FerryServer {
    /// Applies the migrations and returns what was done.
    @discardableResult
    public static func migrate(_ configuration: ServerConfiguration, url: DatabaseURL, logger: Logger) async throws -> Migrator.Report {
        let migrator = Migrator(
            url: configuration.migrationDatabaseURL ?? url,
            migrations: try configuration.migrations(),
            leaseDuration: configuration.migrationLease,
            logger: logger)
        let report = try await migrator.run()
        logger.info("control database schema is current", metadata: [
            "applied": "\(report.applied.joined(separator: ","))",
            "already_applied": "\(report.alreadyApplied.count)",
        ])
        return report
    }

    /// Runs `ferryd serve` until a shutdown signal.
    public static func serve(_ configuration: ServerConfiguration, logger: Logger) async throws {
        // Refuse bad migrations input and bad TLS or token configuration before creating anything.
        _ = try configuration.migrations()
        let configured = try ServerCredentials.load(configuration)
        // The artifact store, when configured, must open (created, writable, with its id).
        var configuration = configuration
        try configuration.openArtifactStore()
        guard let url = configuration.databaseURL else {
            let cluster = try await EmbeddedPostgres.start(parentDirectory: configuration.embeddedDirectory, database: "ferry", logger: logger)
            logger.notice("serving on the embedded default: a throwaway PostgreSQL cluster, removed on exit", metadata: [
                "directory": "\(cluster.baseDirectory)", "port": "\(cluster.port)",
            ])
            do {
                // Generated credentials live inside the cluster's directory, so they go with
                // it, even when the guardian cleans up after a SIGKILL.
                try await serve(configuration, url: try DatabaseURL(parsing: cluster.url(database: "ferry")), embedded: cluster, logger: logger) {
                    try ServerCredentials.complete(configured, defaultDirectory: cluster.baseDirectory + "/credentials", logger: logger)
                }
            } catch {
                try? await cluster.stop()
                throw error
            }
            try await cluster.stop()
            return
        }
        try await serve(configuration, url: url, embedded: nil, logger: logger) {
            try ServerCredentials.complete(configured, defaultDirectory: nil, logger: logger)
        }
    }

    /// Serves on a reachable, migrated control database. `credentials` is called once the
    /// database is ready, so a refused start-up generates (and logs) nothing.
    private static func serve(
        _ configuration: ServerConfiguration, url: DatabaseURL,
        embedded: EmbeddedPostgres?, logger: Logger,
        credentials makeCredentials: () throws -> ServerCredentials
    ) async throws {
        // Fail fast, with one clear line, when the database cannot be reached at all.
        _ = try await url.withConnection(logger: logger) { connection in
            try await connection.execute("SELECT 1", logger: logger)
        }
        try await migrate(configuration, url: url, logger: logger)
        // LISTEN through a transaction pooler never delivers: refuse rather than poll unknowingly.
        try await configuration.checkListenDelivers(databaseURL: url, logger: logger)

        let credentials = try makeCredentials()
        defer {
            if let directory = credentials.temporaryDirectory { try? FileManager.default.removeItem(atPath: directory) }
        }
        var rpcConfiguration = RPCServerConfiguration(certificateChain: credentials.certificateChain, privateKey: credentials.privateKey)
        rpcConfiguration.host = configuration.listenHost
        rpcConfiguration.port = configuration.listenPort
        rpcConfiguration.clientCertificateAuthorities = credentials.clientCertificateAuthorities
        rpcConfiguration.maxConnections = configuration.maxConnections
        rpcConfiguration.maxConcurrentStreams = configuration.maxConcurrentStreams
        rpcConfiguration.maxFrameBytes = configuration.maxFrameBytes
        rpcConfiguration.idleTimeout = configuration.idleTimeout
        rpcConfiguration.drainTimeout = configuration.drainTimeout
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Jobs run for seconds to hours and a pool lease takes micro- to milliseconds: the
        // default buckets (5 ms to 10 s) would put every job in +Inf and every lease in the first.
        factory.durationHistogramBuckets["ferry_job_duration_seconds"] = [1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600].map { .seconds($0) }
        factory.durationHistogramBuckets["ferry_control_pool_wait_seconds"] = [
            .microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(50),
            .milliseconds(100), .milliseconds(500), .seconds(1), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
        Gauge(label: "ferry_build_info", dimensions: [("version", FerryVersion.current)]).record(1)

        let client = PostgresClient(configuration: url.clientConfiguration(), backgroundLogger: logger)
        let probe = HealthProbe(client: client, logger: logger)
        let health: @Sendable () async -> Bool = { await probe.isHealthy() }
        let engine = try JobEngine(configuration, url: url, client: client, logger: logger)
        let artifacts = ArtifactsService(client: client, store: configuration.artifactStore, hooks: configuration.retention.hooks, logger: logger)
        let retention = RetentionWorker(replica: engine.replica, url: url, store: configuration.artifactStore, configuration: configuration.retention, logger: logger)

        // The ready file is written once both listeners are bound.
        // The two listeners bind concurrently; whichever completes the pair announces, once.
        let bound = Mutex<(rpc: String?, ops: String?, announced: Bool)>((nil, nil, false))
        let announce: @Sendable () throws -> Void = {
            guard case let (rpc?, ops?) = bound.withLock({ state -> (String?, String?) in
                guard let rpc = state.rpc, let ops = state.ops, !state.announced else { return (nil, nil) }
                state.announced = true
                return (rpc, ops)
            }) else { return }
            logger.notice("ferryd is serving", metadata: [
                "address": "\(rpc)", "ops": "\(ops)", "database": "\(url)",
                "ca_file": "\(credentials.certificateFile)",
                "token_file": "\(credentials.adminTokenFile ?? "-")",
            ])
            if let readyFile = configuration.readyFile {
                var ready = [
                    "pid": String(getpid()),
                    "address": rpc,
                    "opsURL": ops,
                    "database": url.description,
                    "version": FerryVersion.current,
                    "caFile": credentials.certificateFile,
                ]
                ready["tokenFile"] = credentials.adminTokenFile
                ready["embeddedDirectory"] = embedded?.baseDirectory
                try writeReadyFile(readyFile, ready)
            }
        }
        let ops = OpsServer(
            host: configuration.opsHost,
            port: configuration.opsPort,
            registry: registry,
            logger: logger,
            health: health,
            onBound: { address in
                let opsURL = "http://\(address.ipAddress ?? configuration.opsHost):\(address.port ?? 0)"
                bound.withLock { $0.ops = opsURL }
                try announce()
            })
        let rpc = RPCServer(
            configuration: rpcConfiguration,
            router: makeRouter(health: health, engine: engine, artifacts: artifacts),
            tokens: credentials.tokens,
            logger: logger,
            onBound: { address in
                let text = "\(address.ipAddress ?? configuration.listenHost):\(address.port ?? 0)"
                bound.withLock { $0.rpc = text }
                try announce()
            })

        let group = ServiceGroup(configuration: .init(
            // Shut down in reverse order: the RPC server first (goaway, drain), then the ops
            // endpoint, the executors (their jobs, handed over already, have ended), the queue,
            // the leader (which hands its lease back), the notifier, and the pool last.
            services: [
                .init(service: client),
                .init(service: engine.notifier),
                .init(service: engine.leader),
                // Expired artifacts and old events, on whichever replica holds the lease.
                .init(service: retention),
                .init(service: engine.queue),
                .init(service: engine.executors),
                // Either server ending (even by error) ends the process: the ops server is how
                // we are watched, the RPC server is what we are for.
                .init(service: ops, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
                // Near the end, so it is shut down early: goaway and drain while the database is
                // still there for the streams in flight.
                .init(service: rpc, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
                // Last, so it hears the signal first: the executors stop claiming at once,
                // rather than claim jobs during the drain only to stop them moments later,
                // and hand their running jobs over while the RPC layer drains, so another
                // replica continues them as soon as possible.
                .init(service: ShutdownAnnouncer { [executors = engine.executors] in executors.handOver() }),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
        if let readyFile = configuration.readyFile { try? FileManager.default.removeItem(atPath: readyFile) }
        logger.notice("ferryd stopped")
    }

    /// The methods this build serves.
    static func makeRouter(health: @escaping @Sendable () async -> Bool, engine: JobEngine, artifacts: ArtifactsService) -> MethodRouter {
        var router = MethodRouter()
        router.register(FerryMethods.healthCheck) { _, _ in
            let serving = await health()
            return HealthCheckResponse.with { $0.status = serving ? .serving : .notServing }
        }
        engine.jobs.register(into: &router)
        engine.instances.register(into: &router)
        artifacts.register(into: &router)
        return router
    }

    private static func writeReadyFile(_ path: String, _ ready: [String: String]) throws {
        let data = try JSONSerialization.data(withJSONObject: ready, options: [.sortedKeys])
        // Write then rename, so a reader never sees half a file.
        try data.write(to: URL(fileURLWithPath: path + ".tmp"))
        guard rename(path + ".tmp", path) == 0 else {
            throw StartupFailure(message: "cannot write the ready file \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// Runs `onShutdown` as soon as graceful shutdown begins, then ends.
struct ShutdownAnnouncer: Service {
    let onShutdown: @Sendable () -> Void

    func run() async throws {
        try? await gracefulShutdown()
        onShutdown()
    }
}
