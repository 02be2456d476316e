import ArgumentParser
import ControlDatabase
import EmbeddedPostgres
import FerryCore
import FerryServer
import Foundation
import Logging

/// `ferryd`: the Ferry server.
struct Ferryd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ferryd",
        abstract: "The Ferry server: moves PostgreSQL tenants between instances as jobs.",
        version: FerryVersion.current,
        subcommands: [Serve.self, Migrate.self],
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

    mutating func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        var configuration = ServerConfiguration()
        try database.resolve(into: &configuration)
        let logger = try database.makeLogger()
        if configuration.databaseURL == nil, configuration.migrationDatabaseURL != nil {
            throw StartupError("a migration database URL is set but no database URL: the embedded default migrates its own cluster, so set FERRY_DATABASE_URL too, or neither")
        }
        if let address = opsAddress ?? environment["FERRY_OPS_ADDRESS"] {
            let source = opsAddress != nil ? "--ops-address" : "FERRY_OPS_ADDRESS"
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
                  (0...65535).contains(port), colon != address.startIndex
            else {
                throw StartupError("invalid \(source): '\(address)' is not host:port")
            }
            configuration.opsHost = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            configuration.opsPort = port
        }
        configuration.readyFile = readyFile ?? environment["FERRY_READY_FILE"]
        configuration.embeddedDirectory = embeddedDirectory ?? environment["FERRY_EMBEDDED_DIR"]
        try await FerryServer.serve(configuration, logger: logger)
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
