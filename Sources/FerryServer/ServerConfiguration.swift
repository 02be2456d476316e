import ControlDatabase
import Coordinator
import Executors

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
    /// The job kinds this server runs; a kind without a runner is refused at StartJob.
    public var runners = JobRunners()
    /// Where LISTEN connects (a session of its own; never through a transaction pooler).
    public var listenDatabase: ListenDatabase = .automatic

    /// Which connection receives NOTIFY hints.
    public enum ListenDatabase: Sendable {
        /// The migration URL if set (the direct one in pooled set-ups), else the database URL.
        case automatic
        case url(DatabaseURL)
        /// No LISTEN: everything polls (for a pooled DSN with no direct one).
        case none
    }

    public init() {}

    /// The migration set in force: the built-in one unless a directory is given.
    public func migrations() throws -> MigrationSet {
        if let migrationsDirectory { return try MigrationSet.load(directory: migrationsDirectory) }
        return try MigrationSet.builtIn()
    }
}
