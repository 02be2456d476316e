import Crypto
import Foundation

/// One numbered SQL file of `migrations/`.
///
/// The file name is `NNNN_name.sql`; `NNNN` is the version. A file whose leading comment
/// lines include `-- ferry:no-transaction` runs statement by statement outside a
/// transaction (for `CREATE INDEX CONCURRENTLY` and the like) under the migration lease,
/// so it must be safe to run again from the top after a crash part-way through.
public struct Migration: Sendable, Hashable {
    /// The marker line that makes a migration non-transactional.
    public static let noTransactionMarker = "-- ferry:no-transaction"

    public let version: Int
    public let name: String
    public let sql: String
    /// Hex SHA-256 of the file's bytes; an applied migration whose file changes is refused.
    public let checksum: String
    public let isTransactional: Bool

    /// `0001_initial`: the file name without `.sql`.
    public var id: String { String(format: "%04d_%@", version, name) }

    /// Why a migration file or set was refused.
    public struct DefinitionError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public init(fileName: String, sql: String) throws(DefinitionError) {
        guard fileName.hasSuffix(".sql") else {
            throw DefinitionError(message: "migration file \(fileName) does not end in .sql")
        }
        let stem = fileName.dropLast(4)
        guard let underscore = stem.firstIndex(of: "_"),
              let version = Int(stem[..<underscore]), version > 0,
              stem[..<underscore].allSatisfy(\.isASCII),
              !stem[stem.index(after: underscore)...].isEmpty
        else {
            throw DefinitionError(message: "migration file \(fileName) is not named NNNN_name.sql with a positive version")
        }
        self.version = version
        self.name = String(stem[stem.index(after: underscore)...])
        self.sql = sql
        self.checksum = SHA256.hash(data: Data(sql.utf8)).map { String(format: "%02x", $0) }.joined()
        let leadingComments = sql.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            .prefix { $0.isEmpty || $0.hasPrefix("--") }
        self.isTransactional = !leadingComments.contains(Self.noTransactionMarker)
    }
}

/// An ordered set of migrations with unique versions.
public struct MigrationSet: Sendable {
    public let migrations: [Migration]

    public init(_ migrations: [Migration]) throws(Migration.DefinitionError) {
        let sorted = migrations.sorted { $0.version < $1.version }
        for (previous, next) in zip(sorted, sorted.dropFirst()) where previous.version == next.version {
            throw Migration.DefinitionError(message: "migrations \(previous.id) and \(next.id) share version \(next.version)")
        }
        self.migrations = sorted
    }

    /// The migrations built into this binary (generated from `migrations/` by
    /// `scripts/embed-migrations`).
    public static func builtIn() throws(Migration.DefinitionError) -> MigrationSet {
        var migrations: [Migration] = []
        for file in EmbeddedMigrations.files {
            migrations.append(try Migration(fileName: file.name, sql: file.sql))
        }
        return try MigrationSet(migrations)
    }

    /// Every `*.sql` file of `directory`.
    public static func load(directory: String) throws(Migration.DefinitionError) -> MigrationSet {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".sql") }
        } catch {
            throw Migration.DefinitionError(message: "cannot read the migrations directory \(directory): \(error.localizedDescription)")
        }
        var migrations: [Migration] = []
        for name in names {
            guard let data = FileManager.default.contents(atPath: directory + "/" + name),
                  let sql = String(data: data, encoding: .utf8)
            else {
                throw Migration.DefinitionError(message: "cannot read migration \(directory)/\(name) as UTF-8")
            }
            migrations.append(try Migration(fileName: name, sql: sql))
        }
        return try MigrationSet(migrations)
    }

    public var latestVersion: Int { migrations.last?.version ?? 0 }
}
