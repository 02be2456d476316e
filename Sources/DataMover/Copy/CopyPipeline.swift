import ControlDatabase
import Executors
import FerryProtocol
import Foundation
import JobStore
import LibPQ

/// The data phase of a tenant copy: every table's data through COPY pipes, `copy` of them
/// at once, largest first, a large table split into block ranges copied in parallel; as each
/// table's data is in, its indexes build and both sides' checksums compute, `index` tables at
/// once, alongside the copies still running.
///
/// Every source read sees the job's exported snapshot; an import reads the archive's files
/// instead, and compares each table with the checksums its manifest holds. A whole table loads in one target
/// transaction that truncates it first, so its COPY runs with FREEZE (rows are written
/// already frozen, and with `wal_level = minimal` not logged at all); the ranges of a split
/// table load in their own transactions, in parallel.
final class CopyPipeline: Sendable {
    let run: CopyRun
    let tables: [TableDefinition]
    let statements: SchemaStatements
    let data: DataSource
    let access: (url: DatabaseURL, fenceCheck: String)
    let binaryAllowed: Bool
    /// Whether checksums may hash columns with their types' hash functions (servers of one
    /// major version, 14 or later); else whole rows are hashed as text.
    let typeHashes: Bool
    private let tracker: Tracker

    init(run: CopyRun, statements: SchemaStatements, tables: [TableDefinition], data: DataSource,
         access: (url: DatabaseURL, fenceCheck: String), binaryAllowed: Bool, typeHashes: Bool) {
        self.typeHashes = typeHashes
        self.run = run
        self.tables = tables
        self.statements = statements
        self.data = data
        self.access = access
        self.binaryAllowed = binaryAllowed
        switch data {
        case .snapshot: self.tracker = Tracker(items: Self.items(tables, splitBytes: run.copy.widths.splitTableBytes))
        case .archive(let archive): self.tracker = Tracker(items: Self.items(tables, archive: archive))
        }
    }

    /// Where the rows come from.
    enum DataSource: Sendable {
        /// The source tenant in its snapshot, read by sessions of `url`.
        case snapshot(SourceSnapshot, url: DatabaseURL)
        /// An archive's files.
        case archive(ImportArchive)

        /// Where the source's figures come from, for messages.
        var origin: String {
            switch self {
            case .snapshot: "in the copy's snapshot"
            case .archive: "in the archive's manifest"
            }
        }
    }

    /// One COPY: a whole table (from the source, or from its archive files), or a block range
    /// of a split one.
    struct Item: Sendable {
        var table: TableDefinition
        /// Blocks `[lower, upper)` of the table; nil for the whole table. The last range has
        /// no upper bound, so rows in blocks added since the size was read are not missed.
        var blocks: (lower: Int64, upper: Int64?)?
        var weight: Int64
        /// False when the table's data is in several items (block ranges), which load in
        /// their own transactions side by side; true for a whole table, which loads with FREEZE.
        var whole: Bool { blocks == nil }
    }

    /// The items of an import, largest first: a table each, whose files (the block ranges
    /// of a table the export split) load one after another in the one transaction that
    /// truncates the table, so every COPY runs with FREEZE. Rows written frozen are not
    /// written again when the checksum and the index builds first read them (a table loaded
    /// in parallel transactions gets every page dirtied again by those reads, to set hint
    /// bits), which on the benchmark's two cores outweighs loading one table's ranges side by
    /// side; tables still load side by side.
    static func items(_ tables: [TableDefinition], archive: ImportArchive) -> [Item] {
        tables.map { table in Item(table: table, blocks: nil, weight: archive.files(of: table.name).reduce(0) { $0 + $1.rawBytes }) }
            .sorted { $0.weight > $1.weight }
    }

    /// The items, largest first: the biggest work starts first, so no table is left to run
    /// alone at the end.
    static func items(_ tables: [TableDefinition], splitBytes: Int64) -> [Item] {
        var items: [Item] = []
        for table in tables {
            let parts = splitBytes > 0 && table.bytes > splitBytes && table.blocks > 1
                ? Int(min(table.blocks, (table.bytes + splitBytes - 1) / splitBytes)) : 1
            if parts == 1 {
                items.append(Item(table: table, blocks: nil, weight: table.bytes))
                continue
            }
            let step = (table.blocks + Int64(parts) - 1) / Int64(parts)
            for part in 0..<parts {
                let lower = Int64(part) * step
                let upper: Int64? = part == parts - 1 ? nil : lower + step
                items.append(Item(table: table, blocks: (lower, upper), weight: table.bytes / Int64(parts)))
            }
        }
        return items.sorted { $0.weight > $1.weight }
    }

    /// Copies, indexes and verifies every table; returns their results.
    func run() async throws -> [TableResult] {
        guard !tables.isEmpty else { return [] }
        return try await withThrowingTaskGroup(of: [TableResult].self) { group in
            // A failing worker wakes the finish workers waiting for tables, so the group ends.
            let tracker = self.tracker
            let copiers = min(max(1, run.copy.widths.copy), await tracker.itemCount)
            for _ in 0..<copiers {
                group.addTask {
                    do {
                        try await self.copyWorker()
                        return []
                    } catch {
                        await tracker.abort()
                        throw error
                    }
                }
            }
            for _ in 0..<max(1, run.copy.widths.index) {
                group.addTask {
                    do {
                        return try await self.finishWorker()
                    } catch {
                        await tracker.abort()
                        throw error
                    }
                }
            }
            var results: [TableResult] = []
            while let done = try await group.next() { results += done }
            return results
        }
    }

    // MARK: Copying

    private func copyWorker() async throws {
        var source: PQConnection?
        var target: PQConnection?
        defer {
            source?.close()
            target?.close()
        }
        let context = run.context
        let targetTenant = run.copy.targetTenant
        while let item = await tracker.next() {
            let name = item.table.name
            if source == nil, case .snapshot = data { source = try await openReader() }
            if target == nil { target = try await run.openWriter(access) }
            guard let target else { break }
            if await tracker.start(name) {
                run.progress.started(Self.copying(name))
                try await context.checkpoints.save(TableCheckpoint(tenant: targetTenant, table: name, status: .copying))
            }
            let pipe = pipe(for: item)
            let whole = item.whole
            let table = quoteQualified(targetTenant, name)
            let progress = run.progress
            let rows: Int64
            do {
                switch data {
                case .snapshot:
                    guard let source else { return }
                    rows = try await runBlocking(cancelling: [source, target]) {
                        if whole { try target.execute("BEGIN; TRUNCATE \(table)") }
                        let (rows, _) = try pipe.run(from: source, to: target) { rows, bytes in progress.add(rows: rows, bytes: bytes) }
                        if whole { try target.execute("COMMIT") }
                        return rows
                    }
                case .archive(let archive):
                    let files = archive.files(of: name)
                    // A cancelled COPY IN keeps accepting data until it ends: the load checks
                    // this between blocks instead.
                    let stop = ArchiveFile.StopFlag()
                    rows = try await runBlocking(cancelling: [target], stop: stop) {
                        if whole { try target.execute("BEGIN; TRUNCATE \(table)") }
                        let rows = try archive.load(files, into: target, copyIn: pipe.copyIn, stop: stop) { bytes in progress.add(bytes: bytes) }
                        if whole { try target.execute("COMMIT") }
                        progress.add(rows: rows)
                        return rows
                    }
                }
            } catch let error as PQError {
                throw StepError(step: "copying table \(name)", underlying: error)
            }
            guard let total = await tracker.finish(name, rows: rows) else { continue }
            try await context.checkpoints.save(TableCheckpoint(tenant: targetTenant, table: name, status: .copied, rowCount: total))
            progress.finished(Self.copying(name), done: false)
            progress.started(Self.finishing(name))
            let work = Self.finishWork(statements.indexes[name] ?? [])
            if await tracker.copied(item.table, rows: total, builds: work.builds, attachments: work.attachments) { progress.setPhase("indexes") }
        }
    }

    /// The COPY statements of an item: binary where both servers are of one major version
    /// and the table's binary form names no database-specific type OID, text otherwise.
    func pipe(for item: Item) -> CopyPipe {
        let table = item.table
        let format: String
        let sourceTenant: String
        switch data {
        case .snapshot(let snapshot, _):
            format = binaryAllowed && table.binarySafe ? "binary" : "text"
            sourceTenant = snapshot.tenant
        case .archive(let archive):
            format = archive.tables[table.name]?.copyFormat ?? "text"
            sourceTenant = archive.manifest.source.tenant
        }
        let columns = table.copyColumns.isEmpty ? "" : " (" + table.copyColumns.map(quoteIdent).joined(separator: ", ") + ")"
        let freeze = item.whole ? ", FREEZE" : ""
        let copyIn = "COPY \(quoteQualified(run.copy.targetTenant, table.name))\(columns) FROM STDIN (FORMAT \(format)\(freeze))"
        return CopyPipe(copyOut: Self.copyOut(item, from: sourceTenant, format: format), copyIn: copyIn)
    }

    /// The source's `COPY … TO STDOUT` of an item (a whole table, or a block range).
    static func copyOut(_ item: Item, from tenant: String, format: String) -> String {
        let table = item.table
        let source = quoteQualified(tenant, table.name)
        guard let blocks = item.blocks else {
            let columns = table.copyColumns.isEmpty ? "" : " (" + table.copyColumns.map(quoteIdent).joined(separator: ", ") + ")"
            return "COPY \(source)\(columns) TO STDOUT (FORMAT \(format))"
        }
        let selected = table.copyColumns.map(quoteIdent).joined(separator: ", ")
        var condition = "ctid >= '(\(blocks.lower),0)'::tid"
        if let upper = blocks.upper { condition += " AND ctid < '(\(upper),0)'::tid" }
        return "COPY (SELECT \(selected) FROM ONLY \(source) WHERE \(condition)) TO STDOUT (FORMAT \(format))"
    }

    // MARK: Indexes and verification

    private func finishWorker() async throws -> [TableResult] {
        var reader: PQConnection?
        var indexer: PQConnection?
        var checker: PQConnection?
        defer {
            reader?.close()
            indexer?.close()
            checker?.close()
        }
        let context = run.context
        let copy = run.copy
        var results: [TableResult] = []
        while let job = await tracker.nextFinishJob() {
            try Task.checkCancellation()
            if indexer == nil { indexer = try await openTargetSession(indexes: true) }
            guard let indexer else { break }
            let name = job.table.name
            var sums: (source: TableChecksum, target: TableChecksum)?
            switch job.work {
            case .build(let statement):
                try await step("building an index of table \(name)", [indexer]) { try indexer.execute(statement) }
            case .checksums:
                if checker == nil { checker = try await openTargetSession(indexes: false) }
                guard let checker else { break }
                let tamper = copy.hooks.beforeVerify?(copy.targetTenant, name, context.attempt)
                let typeHashes = self.typeHashes
                switch data {
                case .snapshot(let snapshot, _):
                    if reader == nil { reader = try await openReader() }
                    guard let reader else { break }
                    let rowHash = try await step("reading the columns of table \(name) on the source", [reader]) {
                        try TableChecksum.rowHash(snapshot.tenant, name, on: reader, typeHashes: typeHashes)
                    }
                    async let sourceSum = step("computing the checksum of table \(name) on the source", [reader]) {
                        try TableChecksum.compute(snapshot.tenant, name, rowHash: rowHash, on: reader)
                    }
                    async let targetSum = step("computing the checksum of table \(name) on the target", [checker]) {
                        if let tamper { try checker.execute(tamper) }
                        return try TableChecksum.compute(copy.targetTenant, name, rowHash: rowHash, on: checker)
                    }
                    sums = try await (sourceSum, targetSum)
                case .archive(let archive):
                    // The export computed the source's side in its snapshot, with the row hash
                    // expression the manifest names (over the same columns, which the
                    // archive's schema created).
                    let rowHash = archive.rowHash(of: name)
                    let targetSum = try await step("computing the checksum of table \(name) on the target", [checker]) {
                        if let tamper { try checker.execute(tamper) }
                        return try TableChecksum.compute(copy.targetTenant, name, rowHash: rowHash, on: checker)
                    }
                    sums = (archive.checksum(of: name), targetSum)
                }
            }
            // The table's last job attaches its constraints to the built indexes and, with
            // both checksums in, verifies it.
            guard let finished = await tracker.finishJobDone(job, sums: sums) else { continue }
            let attachments = finished.attachments
            try await step("attaching the constraints of table \(name)", [indexer]) {
                for statement in attachments { try indexer.execute(statement) }
            }
            let (source, target) = finished.sums
            guard source == target, source.rows == finished.copiedRows else {
                throw JobFailure(.dataLoss, """
                    table \(name) differs after the copy: the source has \(source) \(data.origin), \
                    the target has \(target)\(source.rows == finished.copiedRows ? "" : " (COPY loaded \(finished.copiedRows) rows)")
                    """, retryable: false)
            }
            try await context.checkpoints.save(TableCheckpoint(tenant: copy.targetTenant, table: name, status: .verified, rowCount: source.rows, checksum: source.sum))
            run.progress.finished(Self.finishing(name))
            results.append(TableResult.with {
                $0.tenant = copy.targetTenant
                $0.table = name
                $0.rows = source.rows
                $0.checksum = source.sum
            })
        }
        return results
    }

    /// Splits a table's post-copy statements into the index builds, which may run at once on
    /// several sessions (each takes a SHARE lock, which do not conflict), and what attaches
    /// constraints to them, which runs after every build.
    static func finishWork(_ statements: [String]) -> (builds: [String], attachments: [String]) {
        let builds = statements.filter { $0.hasPrefix("CREATE INDEX ") || $0.hasPrefix("CREATE UNIQUE INDEX ") }
        return (builds, statements.filter { !builds.contains($0) })
    }

    private func step<T: Sendable>(_ what: String, _ connections: [PQConnection], _ body: @escaping @Sendable () throws -> T) async throws -> T {
        do {
            return try await runBlocking(cancelling: connections, body)
        } catch let error as PQError {
            throw StepError(step: what, underlying: error)
        }
    }

    // MARK: Sessions

    private func openReader() async throws -> PQConnection {
        guard case .snapshot(let snapshot, let url) = data else { throw PQError("an import has no source reader") }
        do {
            return try await runBlocking(cancelling: []) { [snapshot, url] in
                try DataSessions.reader(url, snapshot: snapshot.id, tables: snapshot.lockList)
            }
        } catch let error as PQError {
            throw StepError(step: "opening a reader of instance \(snapshot.instance)", underlying: error)
        }
    }

    /// A target session for a finish worker. An index builder gets the target schema on its
    /// search_path (index expressions and predicates name the tenant's types unqualified)
    /// and more memory; a checksum session keeps the settings the source's readers have.
    private func openTargetSession(indexes: Bool) async throws -> PQConnection {
        let connection = try await run.openWriter(access)
        guard indexes else { return connection }
        let setup = "SET search_path = \(quoteIdent(run.copy.targetTenant)); SET maintenance_work_mem = '256MB'"
        do {
            try await runBlocking(cancelling: [connection]) { try connection.execute(setup) }
        } catch {
            connection.close()
            throw error
        }
        return connection
    }

    // The names under which a table shows in progress while it copies, then while its
    // indexes build and its checksums compute.
    static func copying(_ table: String) -> String { "\(table) (data)" }
    static func finishing(_ table: String) -> String { "\(table) (indexes, verify)" }
}

/// One piece of a table's work after its data is in: an index build, or both sides'
/// checksums.
struct FinishJob: Sendable {
    enum Work: Sendable {
        case build(String)
        case checksums
    }
    var table: TableDefinition
    var work: Work
}

/// The queue of copy items, each table's ranges still copying, and the finish jobs (index
/// builds, checksums) of the tables whose data is in, for the finish workers.
private actor Tracker {
    private var queue: [CopyPipeline.Item]
    private var partsLeft: [String: Int] = [:]
    private var rows: [String: Int64] = [:]
    private var started: Set<String> = []
    private var tablesLeftToCopy: Int
    private var jobs: [FinishJob] = []
    private var waiting: [CheckedContinuation<FinishJob?, Never>] = []
    private var aborted = false
    /// Per table whose data is in: its finish jobs not done yet, its constraint attachments,
    /// and its checksums once computed.
    private var finishing: [String: (left: Int, attachments: [String], sums: (TableChecksum, TableChecksum)?)] = [:]
    let itemCount: Int

    init(items: [CopyPipeline.Item]) {
        queue = items.reversed()
        itemCount = items.count
        for item in items { partsLeft[item.table.name, default: 0] += 1 }
        tablesLeftToCopy = partsLeft.count
    }

    func next() -> CopyPipeline.Item? { aborted ? nil : queue.popLast() }

    /// True the first time a table's item starts.
    func start(_ table: String) -> Bool { started.insert(table).inserted }

    /// Records a finished item; returns the table's row count once its last item finished
    /// (the caller then hands the table on with ``copied(_:rows:builds:attachments:)``).
    func finish(_ table: String, rows count: Int64) -> Int64? {
        rows[table, default: 0] += count
        partsLeft[table, default: 1] -= 1
        guard partsLeft[table] == 0 else { return nil }
        return rows[table]
    }

    /// Queues a copied table's finish jobs (its checksums first: they read what the index
    /// builds read, while it is still cached); true when it was the last table to copy.
    func copied(_ table: TableDefinition, rows: Int64, builds: [String], attachments: [String]) -> Bool {
        // Counted down only here, as the table's jobs are queued: a finish worker that finds
        // nothing queued waits until every table's jobs were, not merely its data copied.
        tablesLeftToCopy -= 1
        self.rows[table.name] = rows
        finishing[table.name] = (builds.count + 1, attachments, nil)
        for job in [FinishJob(table: table, work: .checksums)] + builds.map({ FinishJob(table: table, work: .build($0)) }) {
            if waiting.isEmpty {
                jobs.append(job)
            } else {
                waiting.removeFirst().resume(returning: job)
            }
        }
        if tablesLeftToCopy == 0 { wakeAll() }
        return tablesLeftToCopy == 0
    }

    /// The next finish job; nil once every table's jobs were handed out or the pipeline
    /// failed.
    func nextFinishJob() async -> FinishJob? {
        if aborted { return nil }
        if !jobs.isEmpty { return jobs.removeFirst() }
        if tablesLeftToCopy == 0 { return nil }
        return await withCheckedContinuation { waiting.append($0) }
    }

    /// Records a finished job (with the checksums, for a checksum job); returns what
    /// completes the table once it was its last.
    func finishJobDone(_ job: FinishJob, sums: (source: TableChecksum, target: TableChecksum)?) -> (attachments: [String], sums: (TableChecksum, TableChecksum), copiedRows: Int64)? {
        let name = job.table.name
        guard var state = finishing[name] else { return nil }
        state.left -= 1
        if let sums { state.sums = (sums.source, sums.target) }
        finishing[name] = state
        guard state.left == 0, let computed = state.sums else { return nil }
        finishing[name] = nil
        return (state.attachments, computed, rows[name] ?? 0)
    }

    /// Ends the pipeline after a failure: no new item starts, and no finish worker waits.
    func abort() {
        aborted = true
        wakeAll()
    }

    private func wakeAll() {
        let woken = waiting
        waiting = []
        for continuation in woken { continuation.resume(returning: nil) }
    }
}
