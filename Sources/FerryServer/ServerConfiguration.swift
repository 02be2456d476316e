import ControlDatabase

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

    public init() {}

    /// The migration set in force: the built-in one unless a directory is given.
    public func migrations() throws -> MigrationSet {
        if let migrationsDirectory { return try MigrationSet.load(directory: migrationsDirectory) }
        return try MigrationSet.builtIn()
    }
}
