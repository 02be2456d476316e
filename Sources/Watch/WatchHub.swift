import ControlDatabase
import FerryProtocol
import FerryRuntime
import Foundation
import JobStore
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// WatchJob's fan-out on one replica. Events live in the control database (whichever replica
/// runs the job writes them); per watched job this replica keeps one feed, the job's recent
/// events in memory, shared by every local watcher of it. One poller per replica fills all
/// the feeds: woken by NOTIFY (or polling without it), it reads the new events of every
/// watched job in one query, so the database load of watching does not grow with the number
/// of jobs watched. Each watcher sends at its own pace: one that falls behind gets the
/// PROGRESS events it missed coalesced to the latest, every STATUS event in order, and slows
/// neither the job (which only writes to the database) nor the other watchers.
public final class WatchHub: Sendable {
    private let reader: any WatchEventReader
    private let notifier: Notifier
    private let logger: Logger
    private let state = Mutex(HubState())
    private let snapshotReads = Mutex<[UUID: Task<JobRecord?, any Error>]>([:])
    /// Rings the poller: a notification for a watched job, a job newly watched, the last
    /// watcher gone.
    private let wakeup = Wakeup()
    /// Watchers behind a feed's memory read their gap themselves; this bounds how many such
    /// reads run at once, whatever the number of slow watchers.
    private let gapReads: AsyncLimiter
    /// Polling intervals with and without notifications.
    private let notifiedPoll: Duration
    private let pollingPoll: Duration

    private struct HubState {
        var feeds: [UUID: Feed] = [:]
        /// The poller task runs (it ends when no job is watched).
        var polling = false
    }

    public convenience init(client: PostgresClient, notifier: Notifier, logger: Logger,
                            notifiedPoll: Duration = .seconds(2), pollingPoll: Duration = .milliseconds(200)) {
        self.init(reader: DatabaseWatchEventReader(client: client, logger: logger), notifier: notifier, logger: logger,
                  notifiedPoll: notifiedPoll, pollingPoll: pollingPoll)
    }

    init(reader: any WatchEventReader, notifier: Notifier, logger: Logger,
         notifiedPoll: Duration = .seconds(2), pollingPoll: Duration = .milliseconds(200), concurrentGapReads: Int = 2) {
        self.reader = reader
        self.notifier = notifier
        var logger = logger
        logger[metadataKey: "component"] = "watch"
        self.logger = logger
        self.notifiedPoll = notifiedPoll
        self.pollingPoll = pollingPoll
        gapReads = AsyncLimiter(concurrentGapReads)
        notifier.subscribe { [weak self] notification in self?.notified(notification) }
    }

    private func notified(_ notification: EngineNotification) {
        let ring: Bool
        switch notification {
        case .resync:
            ring = state.withLock { state in
                for feed in state.feeds.values { feed.due = true }
                return !state.feeds.isEmpty
            }
        case .event(let id, let seq):
            ring = state.withLock { state in
                guard let feed = state.feeds[id], seq > feed.highestSeq else { return false }
                feed.due = true
                return true
            }
        case .admitted, .freed, .cancel:
            ring = false
        }
        if ring { wakeup.signal() }
    }

    /// Streams the job's events after `after` through `send` (each event with its JSON form,
    /// encoded once per replica however many watch it), ending after the terminal STATUS
    /// event. The caller sends the SNAPSHOT first.
    ///
    /// Graceful shutdown of the server ends the watch (CancellationError) at its next wait for
    /// events, without a task of its own per watch waiting for the shutdown; the client resumes
    /// elsewhere with the last seq it got.
    public func watch(_ jobID: UUID, after: Int64, send: @Sendable (WatchedEvent) async throws -> Void) async throws {
        let feed = attach(jobID, after: after)
        defer { detach(jobID, feed) }
        let stopping = ShutdownFlag()
        try await withGracefulShutdownHandler {
            try await stream(feed, after: after, stopping: stopping, send: send)
        } onGracefulShutdown: {
            stopping.set()
            feed.wakeWatchers()
        }
    }

    private func stream(_ feed: Feed, after: Int64, stopping: ShutdownFlag, send: @Sendable (WatchedEvent) async throws -> Void) async throws {
        let jobID = feed.jobID
        var cursor = after
        while true {
            try Task.checkCancellation()
            if stopping.isSet { throw CancellationError() }
            let batch: [WatchedEvent]
            switch feed.next(after: cursor, coalescingBeyond: Self.coalesceBacklog) {
            case .events(let events):
                batch = events
            case .finished:
                return
            case .wait:
                await feed.waitForEvents(after: cursor, unless: stopping)
                continue
            case .behind:
                // Behind the feed's memory: read this watcher's gap from the database (a
                // bounded number of such reads at once per replica).
                let events = try await gapReads.run { [reader] in
                    try await reader.events(of: jobID, after: cursor, limit: Feed.capacity)
                }.map { try WatchedEvent($0) }
                guard !events.isEmpty else {
                    // The gap is not in the database yet (cannot happen for a feed that read past
                    // it); wait for the feed rather than spin.
                    await feed.waitForEvents(after: cursor, unless: stopping)
                    continue
                }
                batch = events.count > Self.coalesceBacklog ? Self.coalesce(events) : events
            }
            for event in batch { try await send(event) }
            guard let last = batch.last else { continue }
            cursor = last.seq
            if last.isTerminal { return }
        }
    }

    /// The job as it is now, for a watch's SNAPSHOT. Callers that arrive while a read of the
    /// same job is in flight share it (many clients watching one job subscribe at once): one
    /// query instead of one per watcher, and no pile of waiters on the connection pool. The
    /// shared read may be a few milliseconds older than the call; the stream continues from the
    /// client's afterSeq whatever the snapshot says, so nothing is lost.
    public func job(_ id: UUID) async throws -> JobRecord? {
        let read = snapshotReads.withLock { reads -> Task<JobRecord?, any Error> in
            if let read = reads[id] { return read }
            // Not the caller's child: a caller that goes away does not fail the others' read.
            let read = Task { [reader] in
                defer { _ = self.snapshotReads.withLock { $0.removeValue(forKey: id) } }
                return try await reader.job(id)
            }
            reads[id] = read
            return read
        }
        return try await read.value
    }

    /// Events a watcher may be behind before its PROGRESS events are coalesced.
    static let coalesceBacklog = 16

    /// Keeps every STATUS event and, of each run of PROGRESS events, only the last.
    static func coalesce(_ events: [WatchedEvent]) -> [WatchedEvent] {
        var result: [WatchedEvent] = []
        for (index, event) in events.enumerated() {
            if event.event.type == .progress, index + 1 < events.count, events[index + 1].event.type == .progress { continue }
            result.append(event)
        }
        return result
    }

    /// The number of jobs this replica has a feed for (watched now).
    var watchedJobs: Int { state.withLock { $0.feeds.count } }

    private func attach(_ jobID: UUID, after: Int64) -> Feed {
        let (feed, created, startPoller) = state.withLock { state -> (Feed, Bool, Bool) in
            if let feed = state.feeds[jobID] {
                feed.watchers += 1
                return (feed, false, false)
            }
            // The feed starts where its first watcher starts: earlier events are history only
            // a watcher further back needs, and it reads them from the database.
            let feed = Feed(jobID: jobID, after: after)
            feed.watchers = 1
            feed.due = true
            state.feeds[jobID] = feed
            let start = !state.polling
            state.polling = true
            return (feed, true, start)
        }
        if startPoller {
            Task { await self.poll() }
        } else if created {
            // Events written between the caller's snapshot and now were notified before this
            // feed existed: read them at once.
            wakeup.signal()
        }
        return feed
    }

    private func detach(_ jobID: UUID, _ feed: Feed) {
        let empty = state.withLock { state -> Bool in
            feed.watchers -= 1
            if feed.watchers == 0 { state.feeds[jobID] = nil }
            return state.feeds.isEmpty
        }
        // The poller ends at its next turn.
        if empty { wakeup.signal() }
    }

    /// The replica's one poller: per round, one read of every watched job's new events — all
    /// of them once per interval, and in between the jobs a notification (or a new watcher)
    /// made due. Notifications that arrive during a read are served by the next one, so at
    /// most one read is in flight. Ends when no job is watched.
    private func poll() async {
        var lastFullRound: ContinuousClock.Instant?
        while true {
            let interval = notifier.isListening ? notifiedPoll : pollingPoll
            let now = ContinuousClock.now
            let full = lastFullRound.map { now - $0 >= interval } ?? true
            let targets = state.withLock { state -> [Feed]? in
                guard !state.feeds.isEmpty else {
                    state.polling = false
                    return nil
                }
                var targets: [Feed] = []
                for feed in state.feeds.values where (full || feed.due) && !feed.terminalKnown {
                    feed.due = false
                    targets.append(feed)
                }
                return targets
            }
            guard let targets else { return }
            if full { lastFullRound = now }
            if !targets.isEmpty, await read(targets) { continue }
            let wait = (lastFullRound ?? now) + interval - ContinuousClock.now
            if wait > .zero { await wakeup.wait(upTo: wait) }
        }
    }

    /// Reads the targets' new events into their feeds; true when some feed has more to read.
    private func read(_ feeds: [Feed]) async -> Bool {
        // Rows per read stay bounded however many jobs are due; a job with more waits for
        // the next round, which follows at once.
        let limit = max(64, min(Feed.capacity, Self.rowsPerRead / feeds.count))
        do {
            let reads = try await reader.read(feeds.map { WatchCursor(jobID: $0.jobID, after: $0.highestSeq) }, limit: limit)
            var more = false
            for feed in feeds {
                guard let read = reads[feed.jobID] else { continue }
                let movedBack = feed.append(try read.events.map { try WatchedEvent($0) }, lastSeq: read.lastSeq, finished: read.finished)
                if movedBack || read.events.count >= limit {
                    state.withLock { _ in feed.due = true }
                    more = true
                }
            }
            return more
        } catch {
            logger.debug("watch feed read failed", metadata: ["jobs": "\(feeds.count)", "error": "\(error)"])
            state.withLock { _ in for feed in feeds { feed.due = true } }
            return false
        }
    }

    static let rowsPerRead = 16_384
}

/// The recent events of one job, shared by this replica's watchers of it.
final class Feed: @unchecked Sendable {
    /// Events kept in memory; a watcher further behind reads from the database.
    static let capacity = 1024

    let jobID: UUID
    /// Guarded by the hub's lock.
    var watchers = 0
    /// Guarded by the hub's lock: read at the next round (new, notified, or more to read).
    var due = false

    private let terminalRead = Atomic<Bool>(false)

    private struct State {
        var events = CircularBuffer<WatchedEvent>(initialCapacity: 16)
        /// The highest seq this feed has read (or its starting point).
        var highest: Int64
        var terminalSeq: Int64?
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
    }
    private let state: Mutex<State>

    init(jobID: UUID, after: Int64) {
        self.jobID = jobID
        state = Mutex(State(highest: after))
    }

    var highestSeq: Int64 { state.withLock { $0.highest } }

    /// Whether the job's terminal STATUS event has been read (no more events will come).
    var terminalKnown: Bool { terminalRead.load(ordering: .acquiring) }

    /// Adds events read after `highestSeq` (in order) and wakes the waiting watchers.
    /// `lastSeq` is the job's last seq at the read, `finished` whether it had ended. A feed
    /// that started at or beyond a finished job's last event (its first watcher had seen it
    /// all) learns the end from that. Below the feed's starting point (its first watcher
    /// started beyond the job's history) the feed moves back to just before it, so that it
    /// reads the job's last event; returns true then (read again).
    func append(_ new: [WatchedEvent], lastSeq: Int64, finished: Bool = false) -> Bool {
        let (waiters, movedBack) = state.withLock { state -> ([CheckedContinuation<Void, Never>], Bool) in
            if new.isEmpty, finished, lastSeq <= state.highest, state.terminalSeq == nil {
                state.terminalSeq = lastSeq
                terminalRead.store(true, ordering: .releasing)
                defer { state.waiters = [:] }
                return (Array(state.waiters.values), false)
            }
            if new.isEmpty, lastSeq < state.highest, state.events.isEmpty {
                state.highest = max(0, lastSeq - 1)
                return ([], true)
            }
            var added = false
            for event in new where event.seq > state.highest {
                state.events.append(event)
                state.highest = event.seq
                added = true
                if event.isTerminal {
                    state.terminalSeq = event.seq
                    terminalRead.store(true, ordering: .releasing)
                }
            }
            guard added else { return ([], false) }
            if state.events.count > Self.capacity { state.events.removeFirst(state.events.count - Self.capacity) }
            defer { state.waiters = [:] }
            return (Array(state.waiters.values), false)
        }
        for waiter in waiters { waiter.resume() }
        return movedBack
    }

    enum Next {
        /// Send these (already coalesced when the watcher was far behind).
        case events([WatchedEvent])
        /// Nothing after the cursor yet.
        case wait
        /// The terminal STATUS is at or before the cursor: the watch is over.
        case finished
        /// The cursor is before what memory holds: read from the database.
        case behind
    }

    /// What a watcher at `cursor` does next. Takes only the events after the cursor (one small
    /// array for a watcher that keeps up), coalescing them when there are more than
    /// `backlog`.
    func next(after cursor: Int64, coalescingBeyond backlog: Int) -> Next {
        state.withLock { state in
            guard cursor < state.highest else {
                if let terminal = state.terminalSeq, cursor >= terminal { return .finished }
                return .wait
            }
            guard let first = state.events.first?.seq, cursor >= first - 1 else { return .behind }
            // Seqs are consecutive per job, but a binary search costs little and assumes nothing.
            var low = state.events.startIndex
            var count = state.events.count
            while count > 0 {
                let half = count / 2
                let middle = state.events.index(low, offsetBy: half)
                if state.events[middle].seq <= cursor {
                    low = state.events.index(after: middle)
                    count -= half + 1
                } else {
                    count = half
                }
            }
            let high = state.events.endIndex
            let pending = state.events[low..<high]
            guard pending.count > backlog else { return .events(Array(pending)) }
            var result: [WatchedEvent] = []
            var index = low
            while index != high {
                let event = state.events[index]
                index = state.events.index(after: index)
                if event.event.type == .progress, index != high, state.events[index].event.type == .progress { continue }
                result.append(event)
            }
            return .events(result)
        }
    }

    /// Wakes every waiting watcher (they check why).
    func wakeWatchers() {
        let waiters = state.withLock { state in
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits until there are events after `cursor` (or the end), or `stopping` is set.
    func waitForEvents(after cursor: Int64, unless stopping: ShutdownFlag) async {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if state.highest > cursor || state.terminalSeq != nil || Task.isCancelled || stopping.isSet { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}

/// A job event and its wire form, encoded once however many watchers it goes to.
public struct WatchedEvent: Sendable {
    public let event: JobEvent
    public let encoded: EncodedMessage<JobEvent>

    init(_ event: JobEvent) throws {
        self.event = event
        self.encoded = try EncodedMessage(event)
    }

    var seq: Int64 { event.seq }
    var isTerminal: Bool { event.type == .status && event.status.isTerminal }
}

/// Set once the server begins its graceful shutdown.
final class ShutdownFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .acquiring) }
    func set() { value.store(true, ordering: .releasing) }
}

/// Runs at most `limit` bodies at once; the others wait their turn, first come first served.
final class AsyncLimiter: Sendable {
    private struct State {
        var available: Int
        var waiters: [(id: Int, continuation: CheckedContinuation<Void, any Error>)] = []
        var nextID = 0
    }
    private let state: Mutex<State>

    init(_ limit: Int) {
        state = Mutex(State(available: max(1, limit)))
    }

    func run<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try await acquire()
        defer { release() }
        return try await body()
    }

    private func acquire() async throws {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let ready = state.withLock { state -> Bool? in
                    if Task.isCancelled { return nil }
                    if state.available > 0 {
                        state.available -= 1
                        return true
                    }
                    state.waiters.append((id, continuation))
                    return false
                }
                switch ready {
                case true?: continuation.resume()
                case nil: continuation.resume(throwing: CancellationError())
                case false?: break
                }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index).continuation
            }
            waiter?.resume(throwing: CancellationError())
        }
    }

    private func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            guard !state.waiters.isEmpty else {
                state.available += 1
                return nil
            }
            return state.waiters.removeFirst().continuation
        }
        next?.resume()
    }
}
