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
/// Every source read sees the job's exported snapshot. A whole table loads in one target
/// transaction that truncates it first, so its COPY runs with FREEZE (rows are written
/// already frozen, and with `wal_level = minimal` not logged at all); the ranges of a split
/// table load in their own transactions, in parallel.
final class CopyPipeline: Sendable {
    let run: CopyRun
    let tables: [TableDefinition]
    let statements: SchemaStatements
    let sourceURL: DatabaseURL
    let snapshot: String
    /// The source tables every reader locks, qualified and comma-separated.
    let lockList: String
    let access: (url: DatabaseURL, fenceCheck: String)
    let binaryAllowed: Bool
    private let tracker: Tracker

    init(run: CopyRun, statements: SchemaStatements, tables: [TableDefinition], sourceURL: DatabaseURL, snapshot: String,
         lockList: String, access: (url: DatabaseURL, fenceCheck: String), binaryAllowed: Bool) {
        self.lockList = lockList
        self.run = run
        self.tables = tables
        self.statements = statements
        self.sourceURL = sourceURL
        self.snapshot = snapshot
        self.access = access
        self.binaryAllowed = binaryAllowed
        self.tracker = Tracker(items: Self.items(tables, splitBytes: run.copy.widths.splitTableBytes))
    }

    /// One COPY: a whole table, or a block range of a split one.
    struct Item: Sendable {
        var table: TableDefinition
        /// Blocks `[lower, upper)` of the table; nil for the whole table. The last range has
        /// no upper bound, so rows in blocks added since the size was read are not missed.
        var blocks: (lower: Int64, upper: Int64?)?
        var weight: Int64
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
            if source == nil { source = try await openReader() }
            if target == nil { target = try await run.openWriter(access) }
            guard let source, let target else { break }
            if await tracker.start(name) {
                context.progress.started(Self.copying(name))
                try await context.checkpoints.save(TableCheckpoint(tenant: targetTenant, table: name, status: .copying))
            }
            let pipe = pipe(for: item)
            let whole = item.blocks == nil
            let table = qualified(targetTenant, name)
            let progress = context.progress
            let rows: Int64
            do {
                rows = try await run.cancellable([source, target]) {
                    if whole { try target.execute("BEGIN; TRUNCATE \(table)") }
                    let (rows, _) = try pipe.run(from: source, to: target) { rows, bytes in progress.add(rows: rows, bytes: bytes) }
                    if whole { try target.execute("COMMIT") }
                    return rows
                }
            } catch let error as PQError {
                throw StepError(step: "copying table \(name)", underlying: error)
            }
            guard let total = await tracker.finish(name, rows: rows) else { continue }
            try await context.checkpoints.save(TableCheckpoint(tenant: targetTenant, table: name, status: .copied, rowCount: total))
            progress.finished(Self.copying(name), done: false)
            progress.started(Self.finishing(name))
            if await tracker.copied(item.table, rows: total) { progress.setPhase("indexes") }
        }
    }

    /// The COPY statements of an item: binary where both servers are of one major version
    /// and the table's binary form names no database-specific type OID, text otherwise.
    func pipe(for item: Item) -> CopyPipe {
        let table = item.table
        let format = binaryAllowed && table.binarySafe ? "binary" : "text"
        let columns = table.copyColumns.isEmpty ? "" : " (" + table.copyColumns.map(quoted).joined(separator: ", ") + ")"
        let source = qualified(run.copy.sourceTenant, table.name)
        let target = qualified(run.copy.targetTenant, table.name)
        let copyOut: String
        if let blocks = item.blocks {
            let selected = table.copyColumns.isEmpty ? "" : table.copyColumns.map(quoted).joined(separator: ", ")
            var condition = "ctid >= '(\(blocks.lower),0)'::tid"
            if let upper = blocks.upper { condition += " AND ctid < '(\(upper),0)'::tid" }
            copyOut = "COPY (SELECT \(selected) FROM ONLY \(source) WHERE \(condition)) TO STDOUT (FORMAT \(format))"
        } else {
            copyOut = "COPY \(source)\(columns) TO STDOUT (FORMAT \(format))"
        }
        let freeze = item.blocks == nil ? ", FREEZE" : ""
        return CopyPipe(copyOut: copyOut, copyIn: "COPY \(target)\(columns) FROM STDIN (FORMAT \(format)\(freeze))")
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
        while let (table, copiedRows) = await tracker.nextCopied() {
            try Task.checkCancellation()
            if reader == nil { reader = try await openReader() }
            if indexer == nil { indexer = try await openTargetSession(indexes: true) }
            if checker == nil { checker = try await openTargetSession(indexes: false) }
            guard let reader, let indexer, let checker else { break }
            let name = table.name
            let indexes = statements.indexes[name] ?? []
            let tamper = copy.hooks.beforeVerify?(copy.targetTenant, name, context.attempt)
            async let built: Void = step("building the indexes of table \(name)", [indexer]) {
                for statement in indexes { try indexer.execute(statement) }
            }
            async let sourceSum = step("computing the checksum of table \(name) on the source", [reader]) {
                try TableChecksum.compute(copy.sourceTenant, name, on: reader)
            }
            async let targetSum = step("computing the checksum of table \(name) on the target", [checker]) {
                if let tamper { try checker.execute(tamper) }
                return try TableChecksum.compute(copy.targetTenant, name, on: checker)
            }
            let (source, target) = try await (sourceSum, targetSum)
            try await built
            guard source == target, source.rows == copiedRows else {
                throw JobFailure(.dataLoss, """
                    table \(name) differs after the copy: the source has \(source) in the copy's snapshot, \
                    the target has \(target)\(source.rows == copiedRows ? "" : " (COPY loaded \(copiedRows) rows)")
                    """, retryable: false)
            }
            try await context.checkpoints.save(TableCheckpoint(tenant: copy.targetTenant, table: name, status: .verified, rowCount: source.rows, checksum: source.sum))
            context.progress.finished(Self.finishing(name))
            results.append(TableResult.with {
                $0.tenant = copy.targetTenant
                $0.table = name
                $0.rows = source.rows
                $0.checksum = source.sum
            })
        }
        return results
    }

    private func step<T: Sendable>(_ what: String, _ connections: [PQConnection], _ body: @escaping @Sendable () throws -> T) async throws -> T {
        do {
            return try await run.cancellable(connections, body)
        } catch let error as PQError {
            throw StepError(step: what, underlying: error)
        }
    }

    // MARK: Sessions

    private func openReader() async throws -> PQConnection {
        do {
            return try await run.cancellable([]) { [sourceURL, snapshot, lockList] in
                try DataSessions.reader(sourceURL, snapshot: snapshot, tables: lockList)
            }
        } catch let error as PQError {
            throw StepError(step: "opening a reader of instance \(run.copy.sourceInstance)", underlying: error)
        }
    }

    /// A target session for a finish worker. An index builder gets the target schema on its
    /// search_path (index expressions and predicates name the tenant's types unqualified)
    /// and more memory; a checksum session keeps the settings the source's readers have.
    private func openTargetSession(indexes: Bool) async throws -> PQConnection {
        let connection = try await run.openWriter(access)
        guard indexes else { return connection }
        let setup = "SET search_path = \(quoted(run.copy.targetTenant)); SET maintenance_work_mem = '256MB'"
        do {
            try await run.cancellable([connection]) { try connection.execute(setup) }
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

/// The queue of copy items, each table's ranges still copying, and the tables whose data is
/// in, waiting for a finish worker.
private actor Tracker {
    private var queue: [CopyPipeline.Item]
    private var partsLeft: [String: Int] = [:]
    private var rows: [String: Int64] = [:]
    private var started: Set<String> = []
    private var tablesLeftToCopy: Int
    private var ready: [(TableDefinition, Int64)] = []
    private var waiting: [CheckedContinuation<(TableDefinition, Int64)?, Never>] = []
    private var aborted = false
    let itemCount: Int

    init(items: [CopyPipeline.Item]) {
        queue = items.reversed()
        itemCount = items.count
        for item in items { partsLeft[item.table.name, default: 0] += 1 }
        tablesLeftToCopy = partsLeft.count
    }

    func next() -> CopyPipeline.Item? { aborted ? nil : queue.popLast() }

    /// Hands a table whose data is in to a finish worker; true when it was the last one.
    func copied(_ table: TableDefinition, rows: Int64) -> Bool {
        // Counted down only here, as the table is handed on: a finish worker that finds
        // nothing ready waits until every table was handed out, not merely copied.
        tablesLeftToCopy -= 1
        if waiting.isEmpty {
            ready.append((table, rows))
        } else {
            waiting.removeFirst().resume(returning: (table, rows))
        }
        if tablesLeftToCopy == 0 { wakeAll() }
        return tablesLeftToCopy == 0
    }

    /// The next table to index and verify; nil once every table was handed out or the
    /// pipeline failed.
    func nextCopied() async -> (TableDefinition, Int64)? {
        if aborted { return nil }
        if !ready.isEmpty { return ready.removeFirst() }
        if tablesLeftToCopy == 0 { return nil }
        return await withCheckedContinuation { waiting.append($0) }
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

    /// True the first time a table's item starts.
    func start(_ table: String) -> Bool { started.insert(table).inserted }

    /// Records a finished item; returns the table's row count once its last item finished
    /// (the caller then hands the table on with ``copied(_:rows:)``).
    func finish(_ table: String, rows count: Int64) -> Int64? {
        rows[table, default: 0] += count
        partsLeft[table, default: 1] -= 1
        guard partsLeft[table] == 0 else { return nil }
        return rows[table]
    }
}
