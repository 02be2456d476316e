import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The artifact store: one directory (`--artifact-dir`) that holds the archives export jobs
/// write and import jobs read. Every replica must see the same directory (a shared
/// filesystem), since an import may run on another replica than the export.
///
/// Layout:
///
///     <dir>/.ferry-store-id          the store's id (a UUID), written once by whoever opens it first
///     <dir>/.staging/<job-uuid>/     an export writing (one folder per running export job)
///     <dir>/<artifact-uuid>/         a published archive; a job_artifacts row names it by `path`
///
/// The store id is recorded in every artifact row, so a replica can tell whether it sees the
/// directory the row's files are in: a replica whose `--artifact-dir` is another directory (a
/// missing mount) must never delete such a row, or it would orphan files it cannot see.
///
/// An artifact becomes visible in two steps, each safe to crash after: the staging folder is
/// renamed into place (one atomic rename on one filesystem), then its row is inserted. The
/// retention worker finishes what a crash leaves (docs/artifacts.md).
public struct ArtifactStore: Sendable {
    /// The store's directory: absolute, standardized (no `.`/`..` components, no trailing `/`).
    public let directory: String
    /// The id in `<dir>/.ferry-store-id`.
    public let storeID: String

    /// Name of the file holding the store id.
    public static let storeIDFile = ".ferry-store-id"
    /// Name of the folder exports write in before they publish.
    public static let stagingFolder = ".staging"

    /// Opens the store at `directory` (absolute or relative path; created if missing). Reads
    /// `<dir>/.ferry-store-id`, or creates it holding a new random UUID. The id lets a replica
    /// tell whether it sees the same (shared) directory as the replica that wrote an artifact.
    ///
    /// Also creates `<dir>/.staging` and checks that the store is writable (a probe file is
    /// created and removed there), so a read-only or foreign-owned directory is refused here
    /// rather than by the first export. Errors are ``ArtifactStoreError``s naming the path.
    public init(directory: String) throws {
        guard !directory.isEmpty else { throw ArtifactStoreError("the artifact directory is an empty path") }
        let absolute = directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
        var standardized = URL(fileURLWithPath: absolute).standardizedFileURL.path
        while standardized.count > 1 && standardized.hasSuffix("/") { standardized.removeLast() }
        self.directory = standardized

        try Self.makeDirectory(standardized, what: "the artifact directory")
        try Self.makeDirectory(standardized + "/" + Self.stagingFolder, what: "the artifact staging directory")
        try Self.probeWritable(standardized + "/" + Self.stagingFolder)
        storeID = try Self.readOrCreateStoreID(in: standardized)
    }

    /// `<dir>/.staging/<job-uuid-lowercased>`: removed if present, then created empty. An export writes its files here.
    public func prepareStaging(job: UUID) throws -> String {
        let path = stagingDirectory + "/" + job.uuidString.lowercased()
        try Self.removeTree(path)
        try Self.makeDirectory(path, what: "the staging folder", intermediate: false)
        return path
    }

    /// Renames a staging folder to `<dir>/<artifact-uuid-lowercased>` (same filesystem, atomic) and returns
    /// the record path relative to the store: "<artifact-uuid-lowercased>".
    public func publish(staging: String, artifact: UUID) throws -> String {
        let name = artifact.uuidString.lowercased()
        let target = directory + "/" + name
        // rename(2) would replace an empty directory silently: an artifact id is never reused.
        if FileManager.default.fileExists(atPath: target) {
            throw ArtifactStoreError("cannot publish \(staging): \(target) already exists")
        }
        guard rename(staging, target) == 0 else {
            throw ArtifactStoreError("cannot publish \(staging) as \(target): \(Self.lastError())")
        }
        // The rename is durable once the store directory is synced.
        Self.syncDirectory(directory)
        return name
    }

    /// The absolute folder of a record. Throws unless record.path is a single path component
    /// (no "/", "..", "." or empty) — a row can never point outside the store.
    public func folder(of record: ArtifactRecord) throws -> String {
        guard Self.isSingleComponent(record.path) else {
            throw ArtifactStoreError("artifact \(record.id.uuidString.lowercased()) has path \"\(record.path.prefix(200))\", which is not a single path component of the store")
        }
        return directory + "/" + record.path
    }

    /// Deletes an artifact's folder; a folder already gone is not an error.
    public func removeFolder(of record: ArtifactRecord) throws {
        let path = try folder(of: record)
        try Self.removeTree(path)
        Self.syncDirectory(directory)
    }

    /// `<dir>/.staging`.
    public var stagingDirectory: String { directory + "/" + Self.stagingFolder }

    /// Whether `name` can name an entry directly inside the store.
    public static func isSingleComponent(_ name: String) -> Bool {
        !name.isEmpty && name != "." && name != ".." && !name.contains("/") && !name.utf8.contains(0)
    }

    // MARK: Listing, for the retention worker

    /// An entry of the store (or of its staging folder).
    public struct Entry: Sendable, Hashable {
        /// The entry's name (a single component).
        public var name: String
        /// Absolute path.
        public var path: String
        /// The folder's last modification (an entry added or removed inside it).
        public var modified: Date
    }

    /// The folders directly in `<dir>/.staging`.
    public func stagingFolders() throws -> [Entry] {
        try Self.folders(in: stagingDirectory)
    }

    /// The folders directly in the store, without the hidden ones (`.staging`).
    public func publishedFolders() throws -> [Entry] {
        try Self.folders(in: directory).filter { !$0.name.hasPrefix(".") }
    }

    /// Removes a folder of the store or its staging area, by absolute path; gone is not an error.
    /// Refuses anything not directly inside the store or `.staging`.
    public func removeEntry(_ entry: Entry) throws {
        let parent = (entry.path as NSString).deletingLastPathComponent
        guard Self.isSingleComponent(entry.name), entry.path == parent + "/" + entry.name,
              parent == directory || parent == stagingDirectory else {
            throw ArtifactStoreError("refusing to remove \(entry.path): not a folder of the store \(directory)")
        }
        try Self.removeTree(entry.path)
        Self.syncDirectory(parent)
    }

    // MARK: Files

    private static func folders(in path: String) throws -> [Entry] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: path)
        } catch {
            throw ArtifactStoreError("cannot list \(path): \(describe(error))")
        }
        var entries: [Entry] = []
        for name in names.sorted() {
            let full = path + "/" + name
            var info = stat()
            // lstat: a symbolic link is not a folder of the store, whatever it points to.
            guard lstat(full, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { continue }
            let modified = Date(timeIntervalSince1970: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9)
            entries.append(Entry(name: name, path: full, modified: modified))
        }
        return entries
    }

    private static func makeDirectory(_ path: String, what: String, intermediate: Bool = true) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw ArtifactStoreError("\(what) \(path) exists and is not a directory") }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: intermediate, attributes: [.posixPermissions: 0o750])
        } catch {
            // Another replica may have created it at the same moment.
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue { return }
            throw ArtifactStoreError("cannot create \(what) \(path): \(describe(error))")
        }
    }

    private static func probeWritable(_ directory: String) throws {
        let probe = directory + "/.probe-\(UUID().uuidString.lowercased())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ArtifactStoreError("the artifact directory is not writable: cannot create a file in \(directory): \(lastError())") }
        close(fd)
        unlink(probe)
    }

    /// Reads the store id, or creates it: written to a temporary file, then linked into place
    /// (link(2) fails if the name exists), so two replicas opening a new store at once agree
    /// on one id.
    private static func readOrCreateStoreID(in directory: String) throws -> String {
        let path = directory + "/" + storeIDFile
        if let existing = try readStoreID(path) { return existing }
        let id = UUID().uuidString.lowercased()
        let temporary = path + ".tmp-" + UUID().uuidString.lowercased()
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ArtifactStoreError("cannot create \(temporary): \(lastError())") }
        let bytes = Array((id + "\n").utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        defer { unlink(temporary) }
        guard written == bytes.count, synced else { throw ArtifactStoreError("cannot write \(temporary): \(lastError())") }
        if link(temporary, path) != 0 {
            guard errno == EEXIST else { throw ArtifactStoreError("cannot create \(path): \(lastError())") }
        } else {
            syncDirectory(directory)
        }
        guard let stored = try readStoreID(path) else { throw ArtifactStoreError("cannot read \(path) right after creating it") }
        return stored
    }

    private static func readStoreID(_ path: String) throws -> String? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ArtifactStoreError("cannot read the store id file \(path)")
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let id = UUID(uuidString: text) else {
            throw ArtifactStoreError("the store id file \(path) does not hold a UUID (\"\(text.prefix(60))\"): it is not Ferry's, or it was damaged")
        }
        return id.uuidString.lowercased()
    }

    /// Removes a file or a folder and everything in it, never following symbolic links; a
    /// path already gone is not an error.
    static func removeTree(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            if errno == ENOENT { return }
            throw ArtifactStoreError("cannot remove \(path): \(lastError())")
        }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: path)
            } catch {
                throw ArtifactStoreError("cannot remove \(path): \(describe(error))")
            }
            for name in names { try removeTree(path + "/" + name) }
            guard rmdir(path) == 0 || errno == ENOENT else { throw ArtifactStoreError("cannot remove \(path): \(lastError())") }
        } else {
            guard unlink(path) == 0 || errno == ENOENT else { throw ArtifactStoreError("cannot remove \(path): \(lastError())") }
        }
    }

    /// fsync of a directory, so that a rename or removal in it survives a power loss (best effort).
    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }

    static func lastError() -> String { String(cString: strerror(errno)) }

    static func describe(_ error: any Error) -> String {
        let nsError = error as NSError
        if let underlying = nsError.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(underlying.code)))
        }
        return nsError.localizedDescription
    }
}

/// A problem with the artifact store's files, naming the path.
public struct ArtifactStoreError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var description: String { message }
    public init(_ message: String) { self.message = message }
}
