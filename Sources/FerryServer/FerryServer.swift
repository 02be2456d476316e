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
        // Refuse bad migrations input before creating anything.
        _ = try configuration.migrations()
        guard let url = configuration.databaseURL else {
            let cluster = try await EmbeddedPostgres.start(parentDirectory: configuration.embeddedDirectory, database: "ferry", logger: logger)
            logger.notice("serving on the embedded default: a throwaway PostgreSQL cluster, removed on exit", metadata: [
                "directory": "\(cluster.baseDirectory)", "port": "\(cluster.port)",
            ])
            do {
                try await serve(configuration, url: try DatabaseURL(parsing: cluster.url(database: "ferry")), embedded: cluster, logger: logger)
            } catch {
                try? await cluster.stop()
                throw error
            }
            try await cluster.stop()
            return
        }
        try await serve(configuration, url: url, embedded: nil, logger: logger)
    }

    private static func serve(_ configuration: ServerConfiguration, url: DatabaseURL, embedded: EmbeddedPostgres?, logger: Logger) async throws {
        // Fail fast, with one clear line, when the database cannot be reached at all.
        try await url.withConnection(logger: logger) { connection in
            try await connection.execute("SELECT 1", logger: logger)
        }
        try await migrate(configuration, url: url, logger: logger)

        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        Gauge(label: "ferry_build_info", dimensions: [("version", FerryVersion.current)]).record(1)

        let client = PostgresClient(configuration: url.clientConfiguration(), backgroundLogger: logger)
        let ops = OpsServer(
            host: configuration.opsHost,
            port: configuration.opsPort,
            registry: registry,
            logger: logger,
            health: { await checkHealth(client, logger: logger) },
            onBound: { address in
                let opsURL = "http://\(address.ipAddress ?? configuration.opsHost):\(address.port ?? 0)"
                logger.notice("ferryd is serving", metadata: ["ops": "\(opsURL)", "database": "\(url)"])
                if let readyFile = configuration.readyFile {
                    try writeReadyFile(readyFile, opsURL: opsURL, database: url, embedded: embedded)
                }
            })

        let group = ServiceGroup(configuration: .init(
            services: [
                .init(service: client),
                // The ops server ending (even by error) ends the process: it is how we are watched.
                .init(service: ops, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup),
            ],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger))
        try await group.run()
        if let readyFile = configuration.readyFile { try? FileManager.default.removeItem(atPath: readyFile) }
        logger.notice("ferryd stopped")
    }

    private static func checkHealth(_ client: PostgresClient, logger: Logger) async -> Bool {
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
                try? await Task.sleep(for: .seconds(2))
                return false
            }
            let healthy = await group.next() ?? false
            group.cancelAll()
            return healthy
        }
    }

    private static func writeReadyFile(_ path: String, opsURL: String, database: DatabaseURL, embedded: EmbeddedPostgres?) throws {
        var ready: [String: String] = [
            "pid": String(getpid()),
            "opsURL": opsURL,
            "database": database.description,
            "version": FerryVersion.current,
        ]
        if let embedded { ready["embeddedDirectory"] = embedded.baseDirectory }
        let data = try JSONSerialization.data(withJSONObject: ready, options: [.sortedKeys])
        // Write then rename, so a reader never sees half a file.
        try data.write(to: URL(fileURLWithPath: path + ".tmp"))
        guard rename(path + ".tmp", path) == 0 else {
            throw StartupFailure(message: "cannot write the ready file \(path): \(String(cString: strerror(errno)))")
        }
    }
}
