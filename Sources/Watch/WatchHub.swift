import ControlDatabase
import FerryProtocol
import FerryRuntime
import Foundation
import JobStore
import Logging
import PostgresNIO
import Synchronization

/// WatchJob's fan-out on one replica. Events live in the control database (whichever replica
/// runs the job writes them); per watched job this replica keeps one feed that reads new
/// events once — woken by NOTIFY, or polling without it — and hands them to every local
/// watcher. Each watcher sends at its own pace: one that falls behind gets the PROGRESS
/// events it missed coalesced to the latest, every STATUS event in order, and slows neither
/// the job (which only writes to the database) nor the other watchers.
public final class WatchHub: Sendable {
    private let client: PostgresClient
    private let notifier: Notifier
    private let logger: Logger
    private let feeds = Mutex<[UUID: Feed]>([:])
    /// Polling intervals with and without notifications.
    private let notifiedPoll: Duration
    private let pollingPoll: Duration

    public init(client: PostgresClient, notifier: Notifier, logger: Logger,
                notifiedPoll: Duration = .seconds(2), pollingPoll: Duration = .milliseconds(200)) {
        self.client = client
        self.notifier = notifier
        var logger = logger
        logger[metadataKey: "component"] = "watch"
        self.logger = logger
        self.notifiedPoll = notifiedPoll
        self.pollingPoll = pollingPoll
        notifier.subscribe { [weak self] notification in self?.notified(notification) }
    }

    private func notified(_ notification: EngineNotification) {
        switch notification {
        case .resync:
            for feed in feeds.withLock({ Array($0.values) }) { feed.wakeup.signal() }
        case .event(let id, _):
            feeds.withLock { $0[id] }?.wakeup.signal()
        case .admitted, .freed, .cancel:
            break
        }
    }

    /// Streams the job's events after `after` through `send` (each event with its JSON form,
    /// encoded once per replica however many watch it), ending after the terminal STATUS
    /// event. The caller sends the SNAPSHOT first.
    public func watch(_ jobID: UUID, after: Int64, send: @Sendable (WatchedEvent) async throws -> Void) async throws {
        let feed = attach(jobID)
        defer { detach(jobID, feed) }
        var cursor = after
        while true {
            try Task.checkCancellation()
            let batch: [WatchedEvent]
            if let buffered = feed.events(after: cursor) {
                batch = buffered
            } else {
                // Behind the feed's memory: read this watcher's gap from the database.
                batch = try await client.withConnection { connection in
                    try await JobStore.events(jobID, after: cursor, limit: Feed.capacity, on: connection, logger: logger)
                }.map { try WatchedEvent($0) }
            }
            if batch.isEmpty {
                if feed.isFinished(after: cursor) { return }
                await feed.waitForEvents(after: cursor)
                continue
            }
            // A watcher that keeps up gets every event; one that fell behind gets the PROGRESS
            // it missed coalesced (every STATUS still goes out).
            for event in batch.count > Self.coalesceBacklog ? Self.coalesce(batch) : batch { try await send(event) }
            cursor = batch.last?.seq ?? cursor
            if batch.contains(where: \.isTerminal) { return }
        }
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

    private func attach(_ jobID: UUID) -> Feed {
        let (feed, created) = feeds.withLock { feeds -> (Feed, Bool) in
            if let feed = feeds[jobID] {
                feed.watchers += 1
                return (feed, false)
            }
            let feed = Feed(jobID: jobID)
            feed.watchers = 1
            feeds[jobID] = feed
            return (feed, true)
        }
        if created {
            feed.poller.withLock { $0 = Task { await self.poll(feed) } }
        }
        return feed
    }

    private func detach(_ jobID: UUID, _ feed: Feed) {
        let last = feeds.withLock { feeds -> Bool in
            feed.watchers -= 1
            guard feed.watchers == 0 else { return false }
            feeds[jobID] = nil
            return true
        }
        // Stopped between reads, never cancelled in the middle of one.
        if last { feed.stop() }
    }

    /// Reads new events into the feed until the job's terminal STATUS event.
    private func poll(_ feed: Feed) async {
        while !Task.isCancelled && !feed.isStopped {
            do {
                let after = feed.highestSeq
                let events = try await client.withConnection { connection in
                    try await JobStore.events(feed.jobID, after: after, limit: Feed.capacity, on: connection, logger: logger)
                }
                feed.append(try events.map { try WatchedEvent($0) })
                if feed.terminalKnown { return }
                if events.count == Feed.capacity { continue }
            } catch {
                logger.debug("watch feed read failed", metadata: ["job_id": "\(feed.jobID.uuidString.lowercased())", "error": "\(error)"])
            }
            await feed.wakeup.wait(upTo: notifier.isListening ? notifiedPoll : pollingPoll)
        }
    }
}

/// The recent events of one job, shared by this replica's watchers of it.
final class Feed: @unchecked Sendable {
    /// Events kept in memory; a watcher further behind reads from the database.
    static let capacity = 1024

    let jobID: UUID
    let wakeup = Wakeup()
    let poller = Mutex<Task<Void, Never>?>(nil)
    /// Guarded by the hub's `feeds` lock.
    var watchers = 0

    private struct State {
        var events: [WatchedEvent] = []
        var highest: Int64 = 0
        var terminalSeq: Int64?
        var waiters: [UUID: CheckedContinuation<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    init(jobID: UUID) { self.jobID = jobID }

    private let stopped = Mutex(false)
    var isStopped: Bool { stopped.withLock { $0 } }

    /// Ends the poller at its next turn (the last watcher left).
    func stop() {
        stopped.withLock { $0 = true }
        wakeup.signal()
    }

    var highestSeq: Int64 { state.withLock { $0.highest } }

    func append(_ new: [WatchedEvent]) {
        guard !new.isEmpty else { return }
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            for event in new where event.seq > state.highest {
                state.events.append(event)
                state.highest = event.seq
                if event.isTerminal { state.terminalSeq = event.seq }
            }
            if state.events.count > Self.capacity { state.events.removeFirst(state.events.count - Self.capacity) }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Events after `cursor` held in memory (possibly none yet), or nil when the watcher is
    /// behind what memory holds.
    func events(after cursor: Int64) -> [WatchedEvent]? {
        state.withLock { state in
            guard cursor < state.highest else { return [] }
            guard let first = state.events.first?.seq, cursor >= first - 1 else { return nil }
            return Array(state.events.drop { $0.seq <= cursor })
        }
    }

    /// Whether the terminal STATUS is known and a watcher at `cursor` has had it.
    func isFinished(after cursor: Int64) -> Bool {
        state.withLock { state in state.terminalSeq.map { cursor >= $0 } ?? false }
    }

    /// Whether the job's terminal STATUS event has been read (no more events will come).
    var terminalKnown: Bool { state.withLock { $0.terminalSeq != nil } }

    func waitForEvents(after cursor: Int64) async {
        let id = UUID()
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state -> Bool in
                    if state.highest > cursor || Task.isCancelled { return true }
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
