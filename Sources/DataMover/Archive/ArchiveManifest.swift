import Foundation

/// An archive's `manifest.json`: what was exported, from where, the schema that recreates it,
/// and for every table its row count, content checksum and data files with their SHA-256.
/// The artifact's record in the control database holds the SHA-256 of this file, so the
/// manifest (and through it every data file) is checked before an import writes anything.
///
/// docs/archives.md describes the format for readers outside Ferry.
struct ArchiveManifest: Codable, Sendable {
    /// Always ``formatName``.
    var format: String
    /// ``currentVersion`` for archives this build writes; an import refuses any other.
    var formatVersion: Int
    /// The export job that wrote the archive (an id, as canonical UUID text).
    var jobId: String
    /// When the export's snapshot was taken (ISO 8601, the exporting replica's clock).
    var createdAt: String
    var source: Source
    /// How the row checksums were computed: ``ChecksumMethod``'s raw value.
    var checksumMethod: String
    /// The schema, as read in the snapshot (every object Ferry supports).
    var schema: SchemaCatalog
    var tables: [Table]

    static let formatName = "ferry-archive"
    static let currentVersion = 1
    /// A manifest larger than this is refused before it is parsed.
    static let maxBytes = 64 << 20

    struct Source: Codable, Sendable {
        var instance: String
        var tenant: String
        /// `server_version_num` of the source, e.g. 150004.
        var serverVersion: Int
    }

    struct Table: Codable, Sendable {
        var name: String
        /// The columns in the files, in order (generated columns are not in the data).
        var columns: [String]
        /// `binary` or `text`: the COPY format of the files.
        var copyFormat: String
        /// The table's size on the source when exported (sizes the import's work order).
        var sourceBytes: Int64
        /// Rows and content checksum in the export's snapshot (see ``ChecksumMethod``).
        var rows: Int64
        var checksum: String
        /// The per-row hash expression the checksum summed (over the row aliased `r`): the
        /// import computes the target's side with exactly this expression, not one rebuilt
        /// from the target's catalog, which may classify a column differently.
        var rowHash: String
        /// The table's data, in block order; one file unless the table was split.
        var files: [File]
    }

    struct File: Codable, Sendable {
        /// Relative to the archive folder: `data/<name>`, a plain file name.
        var path: String
        /// Size and SHA-256 (lower-case hex) of the compressed file as stored.
        var bytes: Int64
        var sha256: String
        /// Bytes of COPY data inside (uncompressed), and the rows they hold.
        var rawBytes: Int64
        var rows: Int64
    }

    /// How a table's content checksum is computed (see ``TableChecksum``).
    enum ChecksumMethod: String, Sendable {
        /// Hashable columns through their types' hash functions, the rest as text (both
        /// sides PostgreSQL 14 or later).
        case typeHashes = "type-hashes-v1"
        /// Every row's text.
        case rowText = "row-text-v1"
    }

    /// Refuses a manifest this build cannot read, or one whose file names could reach outside
    /// the archive folder. Returns nil when it is fine, else what is wrong.
    func problem() -> String? {
        guard format == Self.formatName else { return "format is \"\(format.prefix(60))\", not \(Self.formatName)" }
        guard formatVersion == Self.currentVersion else {
            return "format version \(formatVersion) is not one this server reads (it reads version \(Self.currentVersion))"
        }
        guard ChecksumMethod(rawValue: checksumMethod) != nil else { return "unknown checksum method \"\(checksumMethod.prefix(60))\"" }
        // Names compared as bytes, as PostgreSQL compares them.
        var seen = Set<[UInt8]>()
        let defined = Set(schema.tables.map { Array($0.name.utf8) })
        guard defined.count == schema.tables.count else { return "a table is defined twice" }
        // The import keys its work by name as Swift compares names.
        guard Set(schema.tables.map(\.name)).count == schema.tables.count else {
            return "two tables have names that differ only in Unicode normalization"
        }
        for table in tables {
            guard seen.insert(Array(table.name.utf8)).inserted else { return "table \(table.name) is listed twice" }
            guard defined.contains(Array(table.name.utf8)) else { return "table \(table.name) has data but no definition" }
            guard table.copyFormat == "binary" || table.copyFormat == "text" else { return "table \(table.name) has COPY format \"\(table.copyFormat.prefix(20))\"" }
            guard !table.files.isEmpty else { return "table \(table.name) has no data file" }
            for file in table.files {
                guard Self.isSafe(file.path) else { return "file name \"\(file.path.prefix(200))\" of table \(table.name) is not a plain name inside data/" }
            }
        }
        for table in schema.tables where !seen.contains(Array(table.name.utf8)) { return "table \(table.name) has no data" }
        let paths = tables.flatMap { $0.files.map { Array($0.path.utf8) } }
        guard Set(paths).count == paths.count else { return "a data file is listed twice" }
        return nil
    }

    /// True for `data/<name>` where name is one plain component: no `/`, no `\\`, no NUL, not
    /// starting with `.`, at most 200 bytes. Checked on the bytes, never on Swift characters
    /// (a `/` followed by a combining mark is one character, but still a `/` to the kernel).
    static func isSafe(_ path: String) -> Bool {
        let bytes = Array(path.utf8)
        let prefix = Array("data/".utf8)
        guard bytes.count > prefix.count, bytes.count <= prefix.count + 200, Array(bytes.prefix(prefix.count)) == prefix else { return false }
        let name = bytes.dropFirst(prefix.count)
        return name.first != UInt8(ascii: ".") && !name.contains(UInt8(ascii: "/")) && !name.contains(UInt8(ascii: "\\")) && !name.contains(0)
    }
}
