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
        var seen = Set<String>()
        for table in tables {
            guard seen.insert(table.name).inserted else { return "table \(table.name) is listed twice" }
            guard schema.tables.contains(where: { $0.name == table.name }) else { return "table \(table.name) has data but no definition" }
            guard table.copyFormat == "binary" || table.copyFormat == "text" else { return "table \(table.name) has COPY format \"\(table.copyFormat.prefix(20))\"" }
            guard !table.files.isEmpty else { return "table \(table.name) has no data file" }
            for file in table.files {
                guard Self.isSafe(file.path) else { return "file name \"\(file.path.prefix(200))\" of table \(table.name) is not a plain name inside data/" }
            }
        }
        for table in schema.tables where !seen.contains(table.name) { return "table \(table.name) has no data" }
        let paths = tables.flatMap { $0.files.map(\.path) }
        guard Set(paths).count == paths.count else { return "a data file is listed twice" }
        return nil
    }

    /// True for `data/<name>` where name is one plain component: no `/`, no `..`, not hidden,
    /// not absolute, no NUL or backslash.
    static func isSafe(_ path: String) -> Bool {
        guard path.hasPrefix("data/") else { return false }
        let name = path.dropFirst(5)
        guard !name.isEmpty, name.count <= 200, !name.hasPrefix(".") else { return false }
        return !name.contains("/") && !name.contains("\\") && !name.contains("\0")
    }
}
