import Artifacts
import ControlDatabase
import Coordinator
import Executors
import Foundation
import Logging
import PostgresNIO

/// Everything `ferryd serve` and `ferryd migrate` need, resolved from flags and environment.
public struct ServerConfiguration: Sendable {
    /// The control database; `nil` means the embedded default (a throwaway cluster).
    public var databaseURL: DatabaseURL?
    /// Where migrations run, when the app URL goes through a pooler; defaults to `databaseURL`.
    public var migrationDatabaseURL: DatabaseURL?
    /// Host and port of the ops endpoint (`/healthz`, `/metrics`); port 0 picks a free one.
    public var opsHost: String = "127.0.0.1"
    public var opsPort: Int = 9464
    /// A file to write once serving (JSON: pid, ops URL, …), for scripts and tests.
    public var readyFile: String?
    /// Parent directory for the embedded cluster's temporary directory.
    public var embeddedDirectory: String?
    /// Migrations from this directory instead of the built-in ones (development and tests).
    public var migrationsDirectory: String?
    /// Lifetime of the migration lease row; a dead holder blocks others this long at most.
    public var migrationLease: Duration = .seconds(30)

    /// Host and port of the ferry/1 RPC server (TLS); port 0 picks a free one.
    public var listenHost: String = "127.0.0.1"
    public var listenPort: Int = 7443
    /// PEM certificate chain and private key of the RPC server. Without them ferryd serves a
    /// self-signed certificate it generates into the state directory.
    public var tlsCertificateFile: String?
    public var tlsKeyFile: String?
    /// PEM CA certificates; when set, clients must present a certificate they signed (mTLS).
    public var tlsClientCAFile: String?
    /// Hashed bearer tokens, one `sha256:<hex> <principal> <role>` per line, from a file and/or
    /// the `FERRY_TOKENS` environment variable. Without either, ferryd generates an admin token
    /// into the state directory.
    public var tokensFile: String?
    public var tokensText: String?
    /// Where generated credentials (certificate, admin token) are kept. Without it they go to
    /// a fresh directory removed on exit (inside the cluster directory on the embedded default).
    public var stateDirectory: String?
    /// Limits of the RPC server (see `RPCServerConfiguration`).
    public var maxConnections: Int = 1024
    public var maxConcurrentStreams: Int = 128
    public var maxFrameBytes: Int = 4 * 1024 * 1024
    public var idleTimeout: Duration = .seconds(300)
    public var drainTimeout: Duration = .seconds(30)

    /// The job engine: admission cap, executors, heartbeats, leader lease.
    public var coordinator = Coordinator.Configuration()
    public var executors = ExecutorPool.Configuration()
    public var leader = Leader.Configuration()
    /// The job kinds this server runs, as factories built once the server's resources
    /// exist; a kind without one is refused at StartJob and never claimed here.
    public var kinds = JobKinds()
    /// What every job kind may need (fence wait, instance connect timeout).
    public var jobSettings = JobSettings()
    /// Where LISTEN connects (a session of its own; never through a transaction pooler).
    public var listenDatabase: ListenDatabase = .automatic
    /// The retention worker: event retention, sweep interval, test hooks.
    public var retention = RetentionConfiguration()
    /// The artifact store at `jobSettings.artifactDirectory`, once opened at start-up.
    public internal(set) var artifactStore: ArtifactStore?

    /// Which connection receives NOTIFY hints.
    public enum ListenDatabase: Sendable {
        /// The migration URL if set (the direct one in pooled set-ups), else the database URL;
        /// checked at start-up (``ServerConfiguration/checkListenDelivers(on:databaseURL:logger:)``).
        case automatic
        case url(DatabaseURL)
        /// No LISTEN: everything polls (for a pooled DSN with no direct one).
        case none
    }

    public init() {}

    /// Opens the store at `jobSettings.artifactDirectory` (if set) and keeps its absolute
    /// path there, so job kinds see the same directory whatever the working directory.
    /// A store that cannot be opened stops start-up with one line.
    public mutating func openArtifactStore() throws {
        guard let directory = jobSettings.artifactDirectory else { return }
        do {
            let store = try ArtifactStore(directory: directory)
            artifactStore = store
            jobSettings.artifactDirectory = store.directory
        } catch let error as ArtifactStoreError {
            throw StartupFailure(message: "cannot open the artifact store (--artifact-dir \(directory)): \(error.message)")
        }
    }

    /// The migration set in force: the built-in one unless a directory is given.
    public func migrations() throws -> MigrationSet {
        if let migrationsDirectory { return try MigrationSet.load(directory: migrationsDirectory) }
        return try MigrationSet.builtIn()
    }
}

// MARK: LISTEN

extension ServerConfiguration {
    /// Where the notifier LISTENs, `nil` for nowhere (everything polls): the URL given with
    /// `--listen-database-url`, else the migration URL (the direct one in a pooled set-up),
    /// else the database URL.
    public func listenURL(databaseURL: DatabaseURL) -> DatabaseURL? {
        switch listenDatabase {
        case .automatic: migrationDatabaseURL ?? databaseURL
        case .url(let given): given
        case .none: nil
        }
    }

    /// How long a notification to ourselves may take before LISTEN counts as not delivering.
    public static let listenProbeTimeout = Duration.seconds(10)

    /// Refuses to start when LISTEN on ``listenURL(databaseURL:)`` would silently never
    /// deliver: behind a transaction pooler (PgBouncer's transaction mode) LISTEN runs on
    /// whichever server session the pooler lends for that one statement, so notifications go
    /// to a session we no longer hold, and the notifier would believe it listens while every
    /// replica waits a full poll interval for each hint.
    ///
    /// The check is the thing itself, not a guess at the kind of server: one connection
    /// LISTENs on a probe channel and a second one NOTIFYs it with a random payload; it must
    /// arrive within ``listenProbeTimeout``. (Notifying from the listening connection would not
    /// do: a pooler that lends the same server session again delivers it to us.)
    public func checkListenDelivers(on url: DatabaseURL? = nil, databaseURL: DatabaseURL, logger: Logger) async throws {
        guard let url = url ?? listenURL(databaseURL: databaseURL) else { return }
        let source = switch listenDatabase {
        case .url: "--listen-database-url"
        case .automatic where migrationDatabaseURL != nil: "--migration-database-url, used for LISTEN"
        default: "the database URL, used for LISTEN without a migration URL"
        }
        let delivered: Bool
        do {
            delivered = try await Self.notificationArrives(on: url, within: Self.listenProbeTimeout, logger: logger)
        } catch let error as DatabaseError {
            throw StartupFailure(message: "cannot check LISTEN on \(url) (\(source)): \(error.message)")
        } catch {
            throw StartupFailure(message: DatabaseError(running: "checking LISTEN on \(url) (\(source))", error: error).message)
        }
        guard delivered else {
            throw StartupFailure(message: "LISTEN on \(url) (\(source)) delivered no notification within \(Self.listenProbeTimeout) (is it a transaction pooler?): give a direct connection with --listen-database-url, or --listen-database-url none to poll")
        }
        logger.debug("LISTEN delivers notifications", metadata: ["listen_database": "\(url)"])
    }

    static func notificationArrives(on url: DatabaseURL, within timeout: Duration, logger: Logger) async throws -> Bool {
        let channel = "ferry_listen_probe"
        let payload = UUID().uuidString
        return try await url.withConnection(logger: logger) { listener in
            try await url.withConnection(logger: logger) { sender in
                try await withThrowingTaskGroup(of: Bool.self) { group in
                    group.addTask {
                        try await listener.listen(on: channel) { notifications in
                            // The consumer runs once LISTEN is in place.
                            try await sender.execute("SELECT pg_notify(\(channel), \(payload))", logger: logger)
                            for try await notification in notifications where notification.payload == payload {
                                return true
                            }
                            return false
                        }
                    }
                    group.addTask {
                        try await Task.sleep(for: timeout)
                        return false
                    }
                    let first = try await group.next() ?? false
                    group.cancelAll()
                    return first
                }
            }
        }
    }
}
