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
    /// Hex SHA-256 of what the migration does: its canonical statements
    /// (``SQLScript/canonicalStatements(in:)``: no comments, whitespace runs as one space) and
    /// whether it runs in a transaction. Recorded when the migration is applied; an applied
    /// migration whose statements change is refused, while editing its comments is not.
    public let checksum: String
    /// Checksums an earlier build may have recorded for this same migration: builds before
    /// ``checksum`` covered only statements recorded the SHA-256 of the file's bytes, so
    /// the current file's, and for a file whose comments changed since, that of each
    /// earlier edition (``Migration/earlierFileChecksums``).
    public let acceptedChecksums: Set<String>
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
        let leadingComments = sql.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            .prefix { $0.isEmpty || $0.hasPrefix("--") }
        self.isTransactional = !leadingComments.contains(Self.noTransactionMarker)
        let statements: [String]
        do {
            statements = try SQLScript.canonicalStatements(in: sql)
        } catch {
            throw DefinitionError(message: "migration file \(fileName) cannot be parsed: \(error)")
        }
        self.checksum = Self.statementChecksum(statements, isTransactional: isTransactional)
        let id = String(format: "%04d_%@", version, String(stem[stem.index(after: underscore)...]))
        self.acceptedChecksums = Set([checksum, Self.sha256(sql)]).union(Self.earlierFileChecksums[id] ?? [])
    }

    /// The checksum of a migration's canonical statements. The transaction marker is a
    /// comment, yet it changes how the statements run, so it is covered too.
    static func statementChecksum(_ statements: [String], isTransactional: Bool) -> String {
        var text = isTransactional ? "" : noTransactionMarker + "\n"
        for statement in statements { text += statement + ";\n" }
        return sha256(text)
    }

    static func sha256(_ text: String) -> String {
        SHA256.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// Whole-file checksums of earlier editions of built-in migrations whose comments were
    /// edited since. Earlier builds recorded such a checksum, and the database they migrated
    /// must still be accepted; the statements of those editions are the current ones.
    static let earlierFileChecksums: [String: Set<String>] = [
        // Its first line's comment pointed at a document outside the repository.
        "0001_initial": ["2740e3b776b943d07c7bc091a0c334a6d053be3efaad8d05f87f667e0ddf40c9"],
    ]
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
