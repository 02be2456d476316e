import Artifacts
import ControlDatabase
import Crypto
import Executors
import FerryProtocol
import Foundation
import JobStore
import LibPQ
import Logging
import PostgresNIO
import Synchronization

/// The `export` job kind: writes one tenant, as of one snapshot, to an archive in the
/// server's artifact store, recorded as an artifact with an expiry.
///
/// - Plan (before admission): the server has an artifact store, the tenant exists, and it
///   holds nothing Ferry cannot copy.
/// - Run: ``ExportRun``. The source is only read. A rerun writes a new archive from a new
///   snapshot: an archive's promise is one instant of the tenant, so nothing of a failed
///   attempt is reused (its staging folder is removed, by the attempt or by retention).
public struct ExportKind: JobRunner {
    public struct Params: Sendable {
        public var sourceInstance: String
        public var sourceTenant: String
        /// How long the archive is kept.
        public var ttl: Duration
        public var widths: CopyWidths
    }

    let settings: JobSettings

    public init(settings: JobSettings) {
        self.settings = settings
    }

    /// The longest expiry a job may ask for.
    public static let maxTTLSeconds: Int64 = 10 * 366 * 24 * 3600

    public func params(from wire: JobParams) throws(PlanRefusal) -> Params {
        guard case .export(let export)? = wire.params else {
            throw .invalidArgument(field: "params", message: "must hold export parameters for an EXPORT job")
        }
        guard export.ttlSeconds >= 0 else { throw .invalidArgument(field: "export.ttlSeconds", message: "is negative") }
        guard export.ttlSeconds <= Self.maxTTLSeconds else {
            throw .invalidArgument(field: "export.ttlSeconds", message: "is \(export.ttlSeconds); at most \(Self.maxTTLSeconds) (10 years)")
        }
        return Params(
            sourceInstance: try ParamCheck.instance(export.sourceInstance, "export.sourceInstance"),
            sourceTenant: try ParamCheck.tenant(export.sourceTenant, "export.sourceTenant"),
            ttl: export.ttlSeconds == 0 ? settings.artifactTTL : .seconds(export.ttlSeconds),
            widths: try CloneKind.widths(copy: export.copyWidth, index: 0, split: export.splitTableBytes, field: "export", settings: settings))
    }

    public func plan(_ params: Params, _ context: PlanContext) async throws -> [JobTouch] {
        _ = try await Self.store(settings)
        try await context.requireTenant(instance: params.sourceInstance, tenant: params.sourceTenant)
        try await CloneKind.requireSupported(instance: params.sourceInstance, tenant: params.sourceTenant, context)
        return [JobTouch(instance: params.sourceInstance, tenant: params.sourceTenant, writes: false)]
    }

    /// The server's artifact store, opened off the concurrency threads (a hung network
    /// filesystem must not stall the replica); a ``PlanRefusal`` (FAILED_PRECONDITION) when
    /// the server has none or cannot open it.
    static func store(_ settings: JobSettings) async throws -> ArtifactStore {
        guard let directory = settings.artifactDirectory else {
            throw PlanRefusal.failedPrecondition(["this server has no artifact store: start ferryd with --artifact-dir (a directory every replica shares)"])
        }
        do {
            return try await runBlocking(cancelling: []) { try ArtifactStore(directory: directory) }
        } catch {
            throw PlanRefusal.failedPrecondition(["the artifact store \(directory) cannot be used: \(error)"])
        }
    }

    public func run(_ params: Params, _ context: JobContext) async throws {
        let store: ArtifactStore
        do {
            store = try await Self.store(settings)
        } catch let refusal as PlanRefusal {
            throw JobFailure(.failedPrecondition, refusal.message, retryable: true)
        }
        let run = ExportRun(params: params, store: store, context: context)
        do {
            try await run.run()
        } catch {
            await run.removeStaging()
            throw run.failure(error)
        }
    }
}

/// One attempt of an export.
final class ExportRun: Sendable {
    let params: ExportKind.Params
    let store: ArtifactStore
    let context: JobContext
    private let staging = Mutex<String?>(nil)
    var logger: Logger { context.logger }

    init(params: ExportKind.Params, store: ArtifactStore, context: JobContext) {
        self.params = params
        self.store = store
        self.context = context
    }

    /// One unit of an export's work: a data file, or a table's checksum.
    enum Work: Sendable {
        case file(CopyPipeline.Item, path: String)
        case checksum(TableDefinition)
    }

    /// What a finished task produced.
    enum Output: Sendable {
        case file(table: String, lower: Int64, ArchiveManifest.File)
        case checksum(table: String, TableChecksum, rowHash: String)
    }

    func run() async throws {
        let progress = context.progress
        progress.setPhase("schema")
        progress.setTotals(tables: 0, tenants: 1)
        let snapshot = try await SourceSnapshot.take(instance: params.sourceInstance, tenant: params.sourceTenant, context)
        defer { Task { [instances = context.instances] in await instances.close(snapshot.session) } }
        // Every filesystem call runs off the concurrency threads, as the store's opening does.
        let folder = try await runBlocking(cancelling: []) { [store, jobID = context.jobID] in
            let folder = try store.prepareStaging(job: jobID)
            try FileManager.default.createDirectory(atPath: folder + "/data", withIntermediateDirectories: false)
            return folder
        }
        staging.withLock { $0 = folder }

        let schema = snapshot.schema
        let method: ArchiveManifest.ChecksumMethod = snapshot.serverVersion >= 140000 ? .typeHashes : .rowText
        progress.setTotals(tables: Int64(schema.tables.count))
        progress.setPhase("data")

        // Files named by the table's place in the schema and the range's place in the table:
        // never by the table's name, which may hold any character.
        var tasks: [Work] = []
        var left: [String: Int] = [:]
        let items = Dictionary(grouping: CopyPipeline.items(schema.tables, splitBytes: params.widths.splitTableBytes), by: \.table.name)
        for (index, table) in schema.tables.enumerated().sorted(by: { $0.element.bytes > $1.element.bytes }) {
            let mine = (items[table.name] ?? []).sorted { ($0.blocks?.lower ?? 0) < ($1.blocks?.lower ?? 0) }
            for (part, item) in mine.enumerated() {
                tasks.append(.file(item, path: String(format: "data/%05d.%04d.copy.zst", index, part)))
            }
            // The checksum right after the table's files: it reads what they read, while it
            // is still cached.
            tasks.append(.checksum(table))
            left[table.name] = mine.count + 1
        }
        let queue = TaskQueue(tasks: tasks, left: left)
        let outputs = try await withThrowingTaskGroup(of: [Output].self) { group in
            for _ in 0..<max(1, min(params.widths.copy, tasks.count)) {
                group.addTask { try await self.worker(queue, snapshot: snapshot, folder: folder, method: method) }
            }
            var all: [Output] = []
            while let done = try await group.next() { all += done }
            return all
        }
        try await snapshot.end()

        // The manifest: every table with its files in block order, rows and checksum; the
        // files' rows must add up to the checksum's count (both read the one snapshot).
        var tables: [ArchiveManifest.Table] = []
        var results: [TableResult] = []
        var filesOf: [String: [(lower: Int64, file: ArchiveManifest.File)]] = [:]
        var sumOf: [String: (sum: TableChecksum, rowHash: String)] = [:]
        for output in outputs {
            switch output {
            case .file(let table, let lower, let file): filesOf[table, default: []].append((lower, file))
            case .checksum(let table, let sum, let rowHash): sumOf[table] = (sum, rowHash)
            }
        }
        for table in schema.tables {
            let files = (filesOf[table.name] ?? []).sorted { $0.lower < $1.lower }.map(\.file)
            guard let (sum, rowHash) = sumOf[table.name] else { throw JobFailure(.internal, "table \(table.name) has no checksum", retryable: true) }
            let rows = files.reduce(0) { $0 + $1.rows }
            guard rows == sum.rows else {
                throw JobFailure(.dataLoss, "table \(table.name): the archive's files hold \(rows) rows but the snapshot has \(sum.rows)", retryable: false)
            }
            tables.append(ArchiveManifest.Table(
                name: table.name, columns: table.copyColumns, copyFormat: Self.format(table),
                sourceBytes: table.bytes, rows: sum.rows, checksum: sum.sum, rowHash: rowHash, files: files))
            results.append(TableResult.with {
                $0.tenant = params.sourceTenant
                $0.table = table.name
                $0.rows = sum.rows
                $0.checksum = sum.sum
            })
        }
        let manifest = ArchiveManifest(
            format: ArchiveManifest.formatName, formatVersion: ArchiveManifest.currentVersion,
            jobId: context.jobID.uuidString.lowercased(), createdAt: ISO8601DateFormatter().string(from: Date()),
            source: .init(instance: params.sourceInstance, tenant: params.sourceTenant, serverVersion: snapshot.serverVersion),
            checksumMethod: method.rawValue, schema: schema.catalog, tables: tables)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let manifestData = try encoder.encode(manifest)
        guard manifestData.count <= ArchiveManifest.maxBytes else {
            // An import refuses a larger manifest before parsing it: better not to write one.
            throw JobFailure(.failedPrecondition, "the archive's manifest would be \(manifestData.count) bytes, more than the \(ArchiveManifest.maxBytes) an import reads", retryable: false)
        }
        try await runBlocking(cancelling: []) {
            let manifestPath = folder + "/manifest.json"
            guard FileManager.default.createFile(atPath: manifestPath, contents: manifestData) else {
                throw ArchiveFile.Failure(file: manifestPath, message: "cannot be written")
            }
            try Self.sync(manifestPath)
            try Self.sync(folder + "/data")
            try Self.sync(folder)
        }
        let sha256 = ArchiveFile.hex(SHA256.hash(data: manifestData))
        let size = Int64(manifestData.count) + tables.reduce(0) { $0 + $1.files.reduce(0) { $0 + $1.bytes } }

        // Published (renamed into place) before its record exists: a crash in between leaves
        // a folder without a record, which retention removes; never a record without files.
        let artifactID = UUID()
        let path = try await runBlocking(cancelling: []) { [store] in
            let path = try store.publish(staging: folder, artifact: artifactID)
            try Self.sync(store.directory)
            return path
        }
        staging.withLock { $0 = nil }
        let record = ArtifactRecord(
            id: artifactID, jobID: context.jobID, storeID: store.storeID, path: path,
            sourceInstance: params.sourceInstance, sourceTenant: params.sourceTenant, sizeBytes: size, sha256: sha256,
            tables: Int64(tables.count), rows: tables.reduce(0) { $0 + $1.rows }, formatVersion: Int32(ArchiveManifest.currentVersion))
        let ttl = params.ttl
        let logger = self.logger
        try await context.checkpoints.write { connection, job, owner in
            try await ArtifactRecords.insert(record, ttl: ttl, job: job, owner: owner, on: connection, logger: logger)
        }
        progress.setPhase("done")
        progress.setCurrent("")
        context.setResult(JobResult.with {
            $0.artifactID = artifactID.uuidString.lowercased()
            $0.tables = results.sorted { $0.table < $1.table }
        })
        logger.info("export written", metadata: ["artifact": "\(artifactID.uuidString.lowercased())", "bytes": "\(size)"])
    }

    /// A table's COPY format in the archive: binary, unless its binary form would embed a
    /// database-specific type OID.
    static func format(_ table: TableDefinition) -> String { table.binarySafe ? "binary" : "text" }

    private func worker(_ queue: TaskQueue, snapshot: SourceSnapshot, folder: String, method: ArchiveManifest.ChecksumMethod) async throws -> [Output] {
        let url = try await context.instances.sessionURL(params.sourceInstance)
        let reader: PQConnection
        do {
            reader = try await runBlocking(cancelling: []) { try DataSessions.reader(url, snapshot: snapshot.id, tables: snapshot.lockList) }
        } catch let error as PQError {
            throw StepError(step: "opening a reader of instance \(params.sourceInstance)", underlying: error)
        }
        defer { reader.close() }
        let progress = context.progress
        var outputs: [Output] = []
        while let task = await queue.next() {
            switch task {
            case .file(let item, let path):
                let name = item.table.name
                progress.started("\(name) (data)")
                let copyOut = CopyPipeline.copyOut(item, from: params.sourceTenant, format: Self.format(item.table))
                let file: ArchiveManifest.File
                do {
                    file = try await runBlocking(cancelling: [reader]) {
                        let writer = try ArchiveFile.Writer(path: folder + "/" + path)
                        try reader.startCopyOut(copyOut)
                        var reported: Int64 = 0
                        while try reader.readCopyData({ try writer.append($0) }) {
                            if writer.rawBytes - reported >= CopyPipe.reportBytes {
                                progress.add(bytes: writer.rawBytes - reported)
                                reported = writer.rawBytes
                            }
                        }
                        let digest = try writer.finish()
                        progress.add(rows: reader.copyOutRows, bytes: writer.rawBytes - reported)
                        return ArchiveManifest.File(path: path, bytes: digest.bytes, sha256: digest.sha256, rawBytes: writer.rawBytes, rows: reader.copyOutRows)
                    }
                } catch let error as PQError {
                    throw StepError(step: "exporting table \(name)", underlying: error)
                }
                progress.finished("\(name) (data)", done: false)
                outputs.append(.file(table: name, lower: item.blocks?.lower ?? 0, file))
                if await queue.done(name) { progress.finished(name, done: true) }
            case .checksum(let table):
                let name = table.name
                progress.started("\(name) (checksum)")
                let typeHashes = method == .typeHashes
                let tenant = params.sourceTenant
                let sum: (TableChecksum, String)
                do {
                    sum = try await runBlocking(cancelling: [reader]) {
                        let rowHash = try TableChecksum.rowHash(tenant, name, on: reader, typeHashes: typeHashes)
                        return (try TableChecksum.compute(tenant, name, rowHash: rowHash, on: reader), rowHash)
                    }
                } catch let error as PQError {
                    throw StepError(step: "computing the checksum of table \(name)", underlying: error)
                }
                progress.finished("\(name) (checksum)", done: false)
                outputs.append(.checksum(table: name, sum.0, rowHash: sum.1))
                if await queue.done(name) { progress.finished(name, done: true) }
            }
        }
        return outputs
    }

    /// fsync of a file or directory, so a published archive survives a crash of the host.
    static func sync(_ path: String) throws {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ArchiveFile.Failure(file: path, message: "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0 else { throw ArchiveFile.Failure(file: path, message: "fsync: \(String(cString: strerror(errno)))") }
    }

    /// Removes the attempt's staging folder after a failure (best effort: retention removes
    /// what is left once the job is no longer RUNNING).
    func removeStaging() async {
        guard let folder = staging.withLock({ $0 }) else { return }
        _ = try? await PQThread.run { try FileManager.default.removeItem(atPath: folder) }
    }

    /// The job failure an error of this attempt stands for.
    func failure(_ error: any Error) -> any Error {
        if context.stopReason != nil || error is CancellationError { return CancellationError() }
        if error is ArchiveFile.Failure || error is CocoaError || error is ArtifactStoreError {
            // The store's disk: full, gone, or not writable; a rerun may succeed once fixed.
            return JobFailure(.unavailable, "writing the archive: \(error)", retryable: true)
        }
        return JobFailure.dataPath(error, reading: "tenant \(params.sourceTenant) on instance \(params.sourceInstance)")
    }
}

/// The export's tasks in order, and how many tasks of each table are left.
private actor TaskQueue {
    private var tasks: [ExportRun.Work]
    private var left: [String: Int]

    init(tasks: [ExportRun.Work], left: [String: Int]) {
        self.tasks = tasks.reversed()
        self.left = left
    }

    func next() -> ExportRun.Work? { tasks.popLast() }

    /// Counts a finished task of `table`; true when it was the table's last.
    func done(_ table: String) -> Bool {
        left[table, default: 1] -= 1
        return left[table] == 0
    }
}
