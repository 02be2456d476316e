import Artifacts
import ArgumentParser
import ControlDatabase
import EmbeddedPostgres
import FerryCore
import FerryProtocol
import FerryRPC
import FerryServer
import Foundation
import Logging

/// `ferryd`: the Ferry server.
struct Ferryd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferryd",
        abstract: "The Ferry server: moves PostgreSQL tenants between instances as jobs.",
        version: FerryVersion.current,
        subcommands: [Serve.self, Migrate.self, Sweep.self, TokenCommand.self],
        defaultSubcommand: Serve.self)
}

/// Options shared by `serve` and `migrate`. Each flag falls back to its environment variable.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("database-url"), help: ArgumentHelp(
        "Control database URL (postgres://user:password@host:port/db). Env: FERRY_DATABASE_URL. Without one, serve runs on a throwaway embedded cluster.",
        valueName: "url"))
    var databaseURL: String?

    @Option(name: .customLong("migration-database-url"), help: ArgumentHelp(
        "URL for running migrations, when the main URL goes through a pooler. Env: FERRY_MIGRATION_DATABASE_URL.",
        valueName: "url"))
    var migrationDatabaseURL: String?

    @Option(name: .customLong("migrations-dir"), help: ArgumentHelp(
        "Use the *.sql files of this directory instead of the built-in migrations (development and tests). Env: FERRY_MIGRATIONS_DIR.",
        valueName: "dir"))
    var migrationsDirectory: String?

    @Option(name: .customLong("migration-lease-seconds"), help: ArgumentHelp(
        "Lifetime of the lease that guards non-transactional migrations; a crashed holder delays others this long at most. Env: FERRY_MIGRATION_LEASE_SECONDS. Default 30.",
        valueName: "seconds"))
    var migrationLeaseSeconds: Int?

    @Option(name: .customLong("log-level"), help: ArgumentHelp(
        "trace, debug, info, notice, warning, error or critical. Env: FERRY_LOG_LEVEL. Default info.",
        valueName: "level"))
    var logLevel: String?

    @Option(name: .customLong("log-format"), help: ArgumentHelp(
        "text (one line per event, for people) or json (one JSON object per line, for log shippers). Env: FERRY_LOG_FORMAT. Default text.",
        valueName: "format"))
    var logFormat: LogFormat?

    /// Resolves flags and environment into a configuration; errors name the setting.
    func resolve(into configuration: inout ServerConfiguration) throws(StartupError) {
        let environment = ProcessInfo.processInfo.environment
        func value(_ flag: String?, _ variable: String) -> (String, String)? {
            if let flag { return (flag, "--" + variableToFlag[variable, default: variable]) }
            if let env = environment[variable], !env.isEmpty { return (env, variable) }
            return nil
        }
        if let (text, source) = value(databaseURL, "FERRY_DATABASE_URL") {
            configuration.databaseURL = try parseURL(text, source: source)
        }
        if let (text, source) = value(migrationDatabaseURL, "FERRY_MIGRATION_DATABASE_URL") {
            configuration.migrationDatabaseURL = try parseURL(text, source: source)
        }
        configuration.migrationsDirectory = value(migrationsDirectory, "FERRY_MIGRATIONS_DIR")?.0
        if let (text, source) = value(migrationLeaseSeconds.map(String.init), "FERRY_MIGRATION_LEASE_SECONDS") {
            guard let seconds = Int(text), seconds >= 1 else {
                throw StartupError("invalid \(source): '\(text)' is not a whole number of seconds ≥ 1")
            }
            configuration.migrationLease = .seconds(seconds)
        }
    }

    func makeLogger() throws(StartupError) -> Logger {
        let text = logLevel ?? ProcessInfo.processInfo.environment["FERRY_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw StartupError("invalid log level '\(text)': expected trace, debug, info, notice, warning, error or critical")
        }
        // FerrydMain chose the format before parsing; an unknown flag value was refused by
        // the parser, and an unknown FERRY_LOG_FORMAT is refused here.
        if logFormat == nil, let format = ProcessInfo.processInfo.environment[LogFormat.variable], !format.isEmpty, LogFormat(argument: format) == nil {
            throw StartupError("invalid \(LogFormat.variable) '\(format)': expected text or json")
        }
        var logger = Logger(label: "ferryd")
        logger.logLevel = level
        return logger
    }

    private func parseURL(_ text: String, source: String) throws(StartupError) -> DatabaseURL {
        do {
            return try DatabaseURL(parsing: text)
        } catch {
            throw StartupError("invalid \(source): \(error.message)")
        }
    }

    private var variableToFlag: [String: String] {
        [
            "FERRY_DATABASE_URL": "database-url",
            "FERRY_MIGRATION_DATABASE_URL": "migration-database-url",
            "FERRY_MIGRATIONS_DIR": "migrations-dir",
            "FERRY_MIGRATION_LEASE_SECONDS": "migration-lease-seconds",
        ]
    }
}

/// A start-up failure: printed as one line, exit status 1.
struct StartupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply migrations, then serve until SIGTERM or SIGINT (the default command).")

    @OptionGroup var database: DatabaseOptions

    @Option(name: .customLong("ops-address"), help: ArgumentHelp(
        "host:port of the ops endpoint (/healthz, /metrics); port 0 picks a free port. Env: FERRY_OPS_ADDRESS. Default 127.0.0.1:9464.",
        valueName: "host:port"))
    var opsAddress: String?

    @Option(name: .customLong("ready-file"), help: ArgumentHelp(
        "Write a JSON file (pid, opsURL, database, embeddedDirectory) once serving; removed on exit. Env: FERRY_READY_FILE.",
        valueName: "path"))
    var readyFile: String?

    @Option(name: .customLong("embedded-dir"), help: ArgumentHelp(
        "Parent directory for the embedded cluster (default: the system temp dir). Env: FERRY_EMBEDDED_DIR.",
        valueName: "dir"))
    var embeddedDirectory: String?

    @Option(name: .customLong("listen"), help: ArgumentHelp(
        "host:port of the ferry/1 RPC server (TLS); port 0 picks a free port. Env: FERRY_LISTEN_ADDRESS. Default 127.0.0.1:7443.",
        valueName: "host:port"))
    var listen: String?

    @Option(name: .customLong("tls-cert"), help: ArgumentHelp(
        "PEM certificate chain of the RPC server. Env: FERRY_TLS_CERT. Without it, a self-signed certificate is generated into the state directory.",
        valueName: "file"))
    var tlsCertificate: String?

    @Option(name: .customLong("tls-key"), help: ArgumentHelp("PEM private key of --tls-cert. Env: FERRY_TLS_KEY.", valueName: "file"))
    var tlsKey: String?

    @Option(name: .customLong("tls-client-ca"), help: ArgumentHelp(
        "PEM CA certificates: clients must present a certificate signed by one (mTLS). Env: FERRY_TLS_CLIENT_CA.",
        valueName: "file"))
    var tlsClientCA: String?

    @Option(name: .customLong("tokens-file"), help: ArgumentHelp(
        "Hashed bearer tokens, one 'sha256:<hex> <principal> <role>' per line (see 'ferryd token create'). Env: FERRY_TOKENS_FILE; FERRY_TOKENS may hold more lines. Without either, an admin token is generated into the state directory.",
        valueName: "file"))
    var tokensFile: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp(
        "Where generated credentials (cert.pem, key.pem, admin.token) are kept and reused across restarts. Env: FERRY_STATE_DIR. Default: a directory removed on exit.",
        valueName: "dir"))
    var stateDirectory: String?

    @Option(name: .customLong("max-connections"), help: ArgumentHelp("Open RPC connections at most. Env: FERRY_MAX_CONNECTIONS. Default 1024.", valueName: "n"))
    var maxConnections: Int?

    @Option(name: .customLong("max-streams"), help: ArgumentHelp("Open streams per connection at most. Env: FERRY_MAX_STREAMS. Default 128.", valueName: "n"))
    var maxStreams: Int?

    @Option(name: .customLong("max-frame-bytes"), help: ArgumentHelp("Largest frame accepted. Env: FERRY_MAX_FRAME_BYTES. Default 4194304 (4 MiB).", valueName: "bytes"))
    var maxFrameBytes: Int?

    @Option(name: .customLong("idle-timeout"), help: ArgumentHelp(
        "Seconds a connection may stay silent with no open stream (or mid-frame) before goaway. Env: FERRY_IDLE_TIMEOUT_SECONDS. Default 300.",
        valueName: "seconds"))
    var idleTimeout: Int?

    @Option(name: .customLong("drain-timeout"), help: ArgumentHelp(
        "Seconds streams in flight may take to finish after goaway on shutdown. Env: FERRY_DRAIN_TIMEOUT_SECONDS. Default 30.",
        valueName: "seconds"))
    var drainTimeout: Int?

    @Option(name: .customLong("max-running-per-instance"), help: ArgumentHelp(
        "RUNNING jobs allowed per instance; more are refused (RESOURCE_EXHAUSTED) or queued. Env: FERRY_MAX_RUNNING_PER_INSTANCE. Default 3.",
        valueName: "n"))
    var maxRunningPerInstance: Int?

    @Option(name: .customLong("executors"), help: ArgumentHelp("Jobs this replica runs at once. Env: FERRY_EXECUTORS. Default 4.", valueName: "n"))
    var executors: Int?

    @Option(name: .customLong("copy-width"), help: ArgumentHelp(
        "Tables, or block ranges of split tables, a job copies at once unless it says otherwise. Env: FERRY_COPY_WIDTH. Default 4.",
        valueName: "n"))
    var copyWidth: Int?

    @Option(name: .customLong("index-width"), help: ArgumentHelp(
        "Tables whose indexes a job builds (and verifies) at once, alongside its copies, unless it says otherwise. Env: FERRY_INDEX_WIDTH. Default 2.",
        valueName: "n"))
    var indexWidth: Int?

    @Option(name: .customLong("split-table-bytes"), help: ArgumentHelp(
        "Tables larger than this are split into block ranges of about this size that copy in parallel, unless a job says otherwise. Env: FERRY_SPLIT_TABLE_BYTES. Default 268435456 (256 MiB).",
        valueName: "bytes"))
    var splitTableBytes: Int?

    @Option(name: .customLong("heartbeat-interval"), help: ArgumentHelp(
        "Seconds between heartbeats of running jobs. Env: FERRY_HEARTBEAT_INTERVAL. Default 2.", valueName: "seconds"))
    var heartbeatInterval: Double?

    @Option(name: .customLong("heartbeat-timeout"), help: ArgumentHelp(
        "Seconds without a heartbeat after which the leader fails a job (its replica died). Env: FERRY_HEARTBEAT_TIMEOUT. Default 15.",
        valueName: "seconds"))
    var heartbeatTimeout: Double?

    @Option(name: .customLong("handover-timeout"), help: ArgumentHelp(
        "Seconds a running job has, on SIGTERM, to stop at its last checkpoint and be handed over to another replica; past it, it ends FAILED (UNAVAILABLE, retryable). Env: FERRY_HANDOVER_TIMEOUT. Default 10.",
        valueName: "seconds"))
    var handoverTimeout: Double?

    @Option(name: .customLong("leader-lease"), help: ArgumentHelp(
        "Lifetime of the leader lease; a dead leader is replaced within it. Env: FERRY_LEADER_LEASE. Default 10.", valueName: "seconds"))
    var leaderLease: Double?

    @OptionGroup var retention: RetentionOptions

    @Option(name: .customLong("artifact-ttl"), help: ArgumentHelp(
        "Seconds an export's archive is kept unless the job says otherwise (at most 10 years). Env: FERRY_ARTIFACT_TTL. Default 604800 (7 days).",
        valueName: "seconds"))
    var artifactTTL: Int?

    @Option(name: .customLong("retention-interval"), help: ArgumentHelp(
        "Seconds between two retention sweeps, across all replicas (at most 7 days). Env: FERRY_RETENTION_INTERVAL. Default 3600.",
        valueName: "seconds"))
    var retentionInterval: Int?

    @Option(name: .customLong("tenant-width"), help: ArgumentHelp(
        "Tenants an instance_replace copies at once unless it says otherwise (1 to 64). Env: FERRY_TENANT_WIDTH. Default 2.",
        valueName: "n"))
    var tenantWidth: Int?

    @Option(name: .customLong("listen-database-url"), help: ArgumentHelp(
        "Direct URL for LISTEN (notifications), never a transaction pooler; 'none' to poll only. Env: FERRY_LISTEN_DATABASE_URL. Default: the migration URL, else the database URL.",
        valueName: "url|none"))
    var listenDatabaseURL: String?

    mutating func run() async throws {
        var configuration = ServerConfiguration()
        configuration.kinds = FerrydMain.kinds.withLock { $0 }
        try database.resolve(into: &configuration)
        let logger = try database.makeLogger()
        if configuration.databaseURL == nil, configuration.migrationDatabaseURL != nil {
            throw StartupError("a migration database URL is set but no database URL: the embedded default migrates its own cluster, so set FERRY_DATABASE_URL too, or neither")
        }
        let settings = Settings()
        if let (host, port) = try settings.address(opsAddress, flag: "--ops-address", variable: "FERRY_OPS_ADDRESS") {
            (configuration.opsHost, configuration.opsPort) = (host, port)
        }
        if let (host, port) = try settings.address(listen, flag: "--listen", variable: "FERRY_LISTEN_ADDRESS") {
            (configuration.listenHost, configuration.listenPort) = (host, port)
        }
        configuration.readyFile = settings.string(readyFile, "FERRY_READY_FILE")
        configuration.embeddedDirectory = settings.string(embeddedDirectory, "FERRY_EMBEDDED_DIR")
        configuration.tlsCertificateFile = settings.string(tlsCertificate, "FERRY_TLS_CERT")
        configuration.tlsKeyFile = settings.string(tlsKey, "FERRY_TLS_KEY")
        configuration.tlsClientCAFile = settings.string(tlsClientCA, "FERRY_TLS_CLIENT_CA")
        configuration.tokensFile = settings.string(tokensFile, "FERRY_TOKENS_FILE")
        configuration.tokensText = settings.string(nil, "FERRY_TOKENS")
        configuration.stateDirectory = settings.string(stateDirectory, "FERRY_STATE_DIR")
        if let n = try settings.count(maxConnections, flag: "--max-connections", variable: "FERRY_MAX_CONNECTIONS") { configuration.maxConnections = n }
        if let n = try settings.count(maxStreams, flag: "--max-streams", variable: "FERRY_MAX_STREAMS") { configuration.maxConcurrentStreams = n }
        if let n = try settings.count(maxFrameBytes, flag: "--max-frame-bytes", variable: "FERRY_MAX_FRAME_BYTES") { configuration.maxFrameBytes = n }
        if let n = try settings.count(idleTimeout, flag: "--idle-timeout", variable: "FERRY_IDLE_TIMEOUT_SECONDS") { configuration.idleTimeout = .seconds(n) }
        if let n = try settings.count(drainTimeout, flag: "--drain-timeout", variable: "FERRY_DRAIN_TIMEOUT_SECONDS") { configuration.drainTimeout = .seconds(n) }
        if let n = try settings.count(maxRunningPerInstance, flag: "--max-running-per-instance", variable: "FERRY_MAX_RUNNING_PER_INSTANCE") {
            configuration.coordinator.maxRunningPerInstance = n
        }
        if let n = try settings.count(executors, flag: "--executors", variable: "FERRY_EXECUTORS") { configuration.executors.executors = n }
        if let n = try settings.count(copyWidth, flag: "--copy-width", variable: "FERRY_COPY_WIDTH") {
            guard n <= 64 else { throw StartupError("invalid --copy-width: \(n) is more than 64") }
            configuration.jobSettings.copyWidth = n
        }
        if let n = try settings.count(indexWidth, flag: "--index-width", variable: "FERRY_INDEX_WIDTH") {
            guard n <= 64 else { throw StartupError("invalid --index-width: \(n) is more than 64") }
            configuration.jobSettings.indexWidth = n
        }
        if let n = try settings.count(splitTableBytes, flag: "--split-table-bytes", variable: "FERRY_SPLIT_TABLE_BYTES") {
            configuration.jobSettings.splitTableBytes = Int64(n)
        }
        if let n = try settings.count(tenantWidth, flag: "--tenant-width", variable: "FERRY_TENANT_WIDTH") {
            guard n <= 64 else { throw StartupError("invalid --tenant-width: \(n) is more than 64") }
            configuration.jobSettings.tenantWidth = n
        }
        try retention.resolve(into: &configuration)
        if let n = try settings.wholeSeconds(artifactTTL, flag: "--artifact-ttl", variable: "FERRY_ARTIFACT_TTL", max: RetentionOptions.tenYears) {
            configuration.jobSettings.artifactTTL = .seconds(n)
        }
        if let n = try settings.wholeSeconds(retentionInterval, flag: "--retention-interval", variable: "FERRY_RETENTION_INTERVAL", max: 7 * 86_400) {
            configuration.retention.interval = .seconds(n)
        }
        if let d = try settings.seconds(heartbeatInterval, flag: "--heartbeat-interval", variable: "FERRY_HEARTBEAT_INTERVAL") {
            configuration.executors.heartbeatInterval = d
        }
        if let d = try settings.seconds(heartbeatTimeout, flag: "--heartbeat-timeout", variable: "FERRY_HEARTBEAT_TIMEOUT") {
            configuration.leader.heartbeatTimeout = d
        }
        if let d = try settings.seconds(leaderLease, flag: "--leader-lease", variable: "FERRY_LEADER_LEASE") { configuration.leader.leaseDuration = d }
        if let d = try settings.seconds(handoverTimeout, flag: "--handover-timeout", variable: "FERRY_HANDOVER_TIMEOUT") {
            configuration.executors.handoverTimeout = d
        }
        guard configuration.leader.heartbeatTimeout > configuration.executors.heartbeatInterval * 2 else {
            throw StartupError("the heartbeat timeout must be more than twice the heartbeat interval, or live jobs would be failed")
        }
        // An executor stops a job it cannot confirm (counted from when its last confirmed
        // heartbeat was sent) two intervals before the leader may fail it.
        configuration.executors.fenceAfter = configuration.leader.heartbeatTimeout - configuration.executors.heartbeatInterval * 2
        // A live owner hears a cancel at its next heartbeat; after three, it is gone.
        configuration.leader.cancelGrace = configuration.executors.heartbeatInterval * 3
        if let text = settings.string(listenDatabaseURL, "FERRY_LISTEN_DATABASE_URL") {
            if text == "none" {
                configuration.listenDatabase = .none
            } else {
                do {
                    configuration.listenDatabase = .url(try DatabaseURL(parsing: text))
                } catch {
                    throw StartupError("invalid \(listenDatabaseURL != nil ? "--listen-database-url" : "FERRY_LISTEN_DATABASE_URL"): \(error.message)")
                }
            }
        }
        FerrydMain.adjust.withLock { $0 }?(&configuration)
        try await FerryServer.serve(configuration, logger: logger)
    }
}

/// Reads a setting from its flag, else its environment variable; errors name the source.
struct Settings {
    let environment = ProcessInfo.processInfo.environment

    func string(_ flag: String?, _ variable: String) -> String? {
        if let flag { return flag }
        if let value = environment[variable], !value.isEmpty { return value }
        return nil
    }

    /// A whole number ≥ 1.
    func count(_ flag: Int?, flag name: String, variable: String) throws(StartupError) -> Int? {
        if let flag {
            guard flag >= 1 else { throw StartupError("invalid \(name): \(flag) is not a whole number ≥ 1") }
            return flag
        }
        guard let text = environment[variable], !text.isEmpty else { return nil }
        guard let value = Int(text), value >= 1 else { throw StartupError("invalid \(variable): '\(text)' is not a whole number ≥ 1") }
        return value
    }

    /// A whole number of seconds in 1...max.
    func wholeSeconds(_ flag: Int?, flag name: String, variable: String, max: Int) throws(StartupError) -> Int? {
        let value: Int
        let source: String
        if let flag {
            (value, source) = (flag, name)
        } else if let text = environment[variable], !text.isEmpty {
            guard let parsed = Int(text) else { throw StartupError("invalid \(variable): '\(text)' is not a whole number of seconds") }
            (value, source) = (parsed, variable)
        } else {
            return nil
        }
        guard value >= 1, value <= max else { throw StartupError("invalid \(source): \(value) is not a whole number of seconds from 1 to \(max)") }
        return value
    }

    /// A positive number of seconds (fractions allowed).
    func seconds(_ flag: Double?, flag name: String, variable: String) throws(StartupError) -> Duration? {
        let value: Double
        if let flag {
            value = flag
        } else if let text = environment[variable], !text.isEmpty {
            guard let parsed = Double(text) else { throw StartupError("invalid \(variable): '\(text)' is not a number of seconds") }
            value = parsed
        } else {
            return nil
        }
        guard value > 0, value <= 86_400 else { throw StartupError("invalid \(flag != nil ? name : variable): \(value) is not a number of seconds in (0, 86400]") }
        return .milliseconds(Int64((value * 1000).rounded()))
    }

    /// host:port (an IPv6 host in brackets); port 0 means any free port.
    func address(_ flag: String?, flag name: String, variable: String) throws(StartupError) -> (String, Int)? {
        guard let address = string(flag, variable) else { return nil }
        let source = flag != nil ? name : variable
        guard let (host, port) = parseHostPort(address) else {
            throw StartupError("invalid \(source): '\(address)' is not host:port")
        }
        return (host, port)
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply the control-database migrations and exit. Safe to run from many processes at once.")

    @OptionGroup var database: DatabaseOptions

    mutating func run() async throws {
        var configuration = ServerConfiguration()
        try database.resolve(into: &configuration)
        let logger = try database.makeLogger()
        guard let url = configuration.migrationDatabaseURL ?? configuration.databaseURL else {
            throw StartupError("migrate needs a database: set FERRY_DATABASE_URL or FERRY_MIGRATION_DATABASE_URL (or --database-url)")
        }
        let report = try await FerryServer.migrate(configuration, url: url, logger: logger)
        print("applied \(report.applied.count) migration(s)\(report.applied.isEmpty ? "" : ": " + report.applied.joined(separator: ", ")); \(report.alreadyApplied.count) already applied")
    }
}

/// The artifact store and event retention, shared by `serve` and `sweep`.
struct RetentionOptions: ParsableArguments {
    static let tenYears = 10 * 365 * 86_400

    @Option(name: .customLong("artifact-dir"), help: ArgumentHelp(
        "The artifact store: the directory export jobs write archives to and import jobs read them from, shared by every replica (created if missing; must be writable). Env: FERRY_ARTIFACT_DIR. Without it, export and import are refused and retention deletes old events only.",
        valueName: "dir"))
    var artifactDirectory: String?

    @Option(name: .customLong("event-retention"), help: ArgumentHelp(
        "Seconds the events of a finished job are kept (its last event is kept for good; job rows and resume state are never deleted). Env: FERRY_EVENT_RETENTION. Default 2592000 (30 days).",
        valueName: "seconds"))
    var eventRetention: Int?

    func resolve(into configuration: inout ServerConfiguration) throws(StartupError) {
        let settings = Settings()
        if let directory = settings.string(artifactDirectory, "FERRY_ARTIFACT_DIR") {
            configuration.jobSettings.artifactDirectory = directory
        }
        if let n = try settings.wholeSeconds(eventRetention, flag: "--event-retention", variable: "FERRY_EVENT_RETENTION", max: Self.tenYears) {
            configuration.retention.eventRetention = .seconds(n)
        }
    }
}

/// `ferryd sweep`: one retention sweep, now, under the retention lease.
struct Sweep: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one retention sweep now (expired artifacts, leftover export folders, old events of finished jobs) and print what it deleted as one JSON line.",
        discussion: "The sweep runs under the same lease as the serving replicas' retention workers, so it never runs beside another sweep: it waits for the lease up to --lease-wait seconds. Exit status 0 when the sweep ran without problems; 1 when it could not get the lease, or some item could not be deleted (the summary counts them).")

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var retention: RetentionOptions

    @Option(name: .customLong("lease-wait"), help: ArgumentHelp(
        "Seconds to wait for the retention lease while another sweep holds it; 0 tries once. Env: FERRY_SWEEP_LEASE_WAIT. Default 30.",
        valueName: "seconds"))
    var leaseWait: Int?

    mutating func run() async throws {
        var configuration = ServerConfiguration()
        try database.resolve(into: &configuration)
        try retention.resolve(into: &configuration)
        let logger = try database.makeLogger()
        let settings = Settings()
        var wait = 30
        if let flag = leaseWait {
            guard flag >= 0, flag <= 3600 else { throw StartupError("invalid --lease-wait: \(flag) is not a whole number of seconds from 0 to 3600") }
            wait = flag
        } else if let text = settings.string(nil, "FERRY_SWEEP_LEASE_WAIT") {
            guard let value = Int(text), value >= 0, value <= 3600 else {
                throw StartupError("invalid FERRY_SWEEP_LEASE_WAIT: '\(text)' is not a whole number of seconds from 0 to 3600")
            }
            wait = value
        }
        guard let url = configuration.databaseURL else {
            throw StartupError("sweep needs the control database: set FERRY_DATABASE_URL (or --database-url)")
        }
        FerrydMain.adjust.withLock { $0 }?(&configuration)
        try configuration.openArtifactStore()

        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "ferryd"
        let owner = "ferryd-sweep:\(host):\(getpid()):\(UUID().uuidString.prefix(4).lowercased())"
        let runner = RetentionRunner(url: url, store: configuration.artifactStore, configuration: configuration.retention, owner: owner, logger: logger)
        let summary = try await runner.url.withConnection(logger: logger) { connection in
            // The artifact columns come with migration 0005: say so rather than fail on a column.
            let migrated: Bool
            do {
                migrated = try await connection.execute("""
                    SELECT to_regclass('ferry_schema_migrations') IS NOT NULL
                       AND EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'job_artifacts' AND column_name = 'store_id')
                    """, logger: logger).first?.decode(Bool.self) ?? false
            } catch {
                throw DatabaseError(running: "reading the control database's schema", error: error)
            }
            guard migrated else {
                throw StartupError("the control database at \(url) is not migrated to this ferryd's schema (run ferryd migrate, or start a ferryd serve of this version)")
            }
            let deadline = ContinuousClock.now + .seconds(wait)
            while true {
                let attempt: RetentionLease.Attempt
                do {
                    attempt = try await runner.lease.tryAcquire(due: nil, on: connection, logger: logger)
                } catch {
                    throw DatabaseError(running: "taking the retention lease", error: error)
                }
                switch attempt {
                case .acquired(let at):
                    do {
                        return try await runner.sweep(leaseConnection: connection, startedAt: at)
                    } catch {
                        throw DatabaseError(running: "the retention sweep", error: error)
                    }
                case .held(let holder, let expiresIn):
                    guard ContinuousClock.now < deadline else {
                        throw StartupError("the retention lease is held by \(holder) (a sweep is running; the lease expires in \(Int(expiresIn.rounded(.up))) s unless renewed): gave up after \(wait) s (--lease-wait)")
                    }
                case .notDue:
                    break
                }
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        print(summary.jsonLine)
        if summary.failures > 0 || summary.interrupted { throw ExitCode(1) }
    }
}

/// `ferryd token …`: manage the bearer tokens of a tokens file.
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Manage bearer tokens.",
        subcommands: [TokenCreate.self])
}

struct TokenCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a token: append its hash to the tokens file and print the token (the only time it is shown).")

    @Option(name: .customLong("tokens-file"), help: ArgumentHelp("The tokens file to append to (created mode 0600). Env: FERRY_TOKENS_FILE.", valueName: "file"))
    var tokensFile: String?

    @Option(name: .customLong("principal"), help: ArgumentHelp("Who the token is for (no spaces); shows in logs and job records.", valueName: "name"))
    var principal: String

    @Option(name: .customLong("role"), help: ArgumentHelp("viewer, operator or admin.", valueName: "role"))
    var role: String

    func run() throws {
        guard let file = Settings().string(tokensFile, "FERRY_TOKENS_FILE") else {
            throw StartupError("token create needs a tokens file: set --tokens-file or FERRY_TOKENS_FILE")
        }
        guard let role = Role(rawValue: role) else {
            throw StartupError("invalid --role '\(role)': expected viewer, operator or admin")
        }
        guard !principal.isEmpty, !principal.contains(where: { $0.isWhitespace || $0.isNewline }) else {
            throw StartupError("invalid --principal '\(principal)': a non-empty name without spaces")
        }
        // Refuse to append to a file serve would then refuse to read.
        if FileManager.default.fileExists(atPath: file) {
            do {
                _ = try TokenStore.load(file: file)
            } catch {
                throw StartupError(error.message)
            }
        }
        let token = TokenStore.generateToken()
        let line = TokenStore.line(token: token, principal: Principal(name: principal, role: role)) + "\n"
        let fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StartupError("cannot open the tokens file \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        // A file that does not end in a newline gets one first, so the new line stands alone.
        let existing = FileManager.default.contents(atPath: file) ?? Data()
        let bytes = Array(((existing.last.map { $0 != 10 } ?? false) ? "\n" : "").utf8) + Array(line.utf8)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
            throw StartupError("cannot write the tokens file \(file): \(String(cString: strerror(errno)))")
        }
        print(token)
    }
}
