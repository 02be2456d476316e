// Callers name the protocol's messages (Job, StartJobRequest, RPCError) with this module alone.
@_exported import FerryProtocol
import Foundation
import NIOSSL
import Synchronization

/// The client of a `ferryd` deployment: one or more replica addresses sharing one control
/// database, reached over one TLS connection at a time that is made when first needed and
/// made again (to the next address) when it breaks.
///
/// ```swift
/// var configuration = FerryClientConfiguration(addresses: [try FerryAddress(parsing: "ferry-a:7443"),
///                                                          try FerryAddress(parsing: "ferry-b:7443")],
///                                              trustRootsFile: "ca.pem", token: token)
/// let client = FerryClient(configuration)
/// defer { client.close() }
/// let job = try await client.startJob(.clone(from: "eu-1", "acme", to: "eu-2", "acme"))
/// for try await event in client.watchJob(job.id) {
///     if event.type == .status { print(event.status) }
/// }
/// ```
///
/// **Reconnecting.** Until a first connection succeeds, a call tries each address once and
/// fails UNAVAILABLE naming them all: a wrong address is reported at once. After that, a broken
/// connection is replaced by trying the addresses in turn, starting with the one after the
/// address that broke, with growing pauses, for up to `reconnectTimeout`.
///
/// **Retries.** A call that fails UNAVAILABLE is made again on a new connection only when
/// repeating it cannot do anything twice: the read methods, CancelJob, PutInstance, and
/// StartJob or RerunJob with a `request_id` (the server returns the job the first call made).
/// Other calls fail with the UNAVAILABLE error, and the caller decides — unless the server
/// provably never processed them (the connection was gone before they were sent, or its
/// goaway named an earlier last stream): any call is sent again then.
///
/// **Deadlines and cancellation.** Each call takes an optional `timeout`, which the server
/// also sees; cancelling the calling task cancels the call on the server.
public final class FerryClient: FerryCalling {
    public let configuration: FerryClientConfiguration
    private let slot: ConnectionSlot

    /// A client for `configuration`; connects when the first call is made.
    public init(_ configuration: FerryClientConfiguration) {
        self.configuration = configuration
        slot = ConnectionSlot(configuration: configuration)
    }

    /// A client that has already reached one of the configuration's addresses (so a wrong
    /// address or certificate is reported here).
    public static func connect(_ configuration: FerryClientConfiguration) async throws -> FerryClient {
        let client = FerryClient(configuration)
        _ = try await client.slot.connection()
        return client
    }

    deinit {
        Task { [slot] in await slot.close() }
    }

    /// Closes the connection: calls and watches still open fail with UNAVAILABLE, later calls
    /// at once, and a dial in progress stops.
    public func close() {
        slot.markClosed()
        Task { [slot] in await slot.close() }
    }

    /// The address of the current connection, if there is one.
    public var connectedAddress: FerryAddress? {
        get async { await slot.currentAddress }
    }

    public func unary<Request, Response>(
        _ method: UnaryMethod<Request, Response>, _ request: Request,
        timeout: Duration? = nil, metadata: [String: String] = [:]
    ) async throws -> Response {
        let repeatable = Self.isRepeatable(method.info, request)
        var outage: ContinuousClock.Instant?
        var pause = Duration.milliseconds(100)
        let callDeadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            let connection = try await slot.connection(before: callDeadline)
            do {
                var remaining: Duration?
                if let callDeadline {
                    remaining = callDeadline - ContinuousClock.now
                    // Never send a call whose time is up: the server might still act on it.
                    guard remaining! > .zero else { throw RPCError(.deadlineExceeded, "\(method.info.name): the deadline passed before the call could be sent") }
                }
                return try await connection.unary(method, request, timeout: remaining, metadata: metadata)
            } catch let error as RPCError where error.code == .unavailable && (repeatable || error.wasNotProcessed) && !Task.isCancelled {
                // A connection that is going away is replaced; an UNAVAILABLE the server
                // answered on a healthy one is asked again there after the pause.
                if connection.isGoingAway { await slot.discard(connection) }
                let now = ContinuousClock.now
                let started = outage ?? now
                outage = started
                if now - started >= configuration.reconnectTimeout { throw error }
                if let callDeadline, now + pause >= callDeadline { throw error }
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(2))
            }
        }
    }

    /// Whether a call may be sent again after UNAVAILABLE without doing anything twice: the
    /// methods on this list only (a method added later is not repeated until it is listed).
    static func isRepeatable<Request>(_ method: MethodInfo, _ request: Request) -> Bool {
        switch method.name {
        case FerryMethods.getJob.info.name, FerryMethods.listJobs.info.name, FerryMethods.listInstances.info.name,
             FerryMethods.listTenants.info.name, FerryMethods.listArtifacts.info.name, FerryMethods.getArtifact.info.name,
             FerryMethods.healthCheck.info.name, FerryMethods.watchJob.info.name:
            return true
        case FerryMethods.cancelJob.info.name, FerryMethods.putInstance.info.name:
            // Cancelling twice returns the job as it is; putting twice leaves the last DSN.
            return true
        case FerryMethods.startJob.info.name:
            return (request as? StartJobRequest).map { !$0.requestID.isEmpty } ?? false
        case FerryMethods.rerunJob.info.name:
            return (request as? RerunJobRequest).map { !$0.requestID.isEmpty } ?? false
        default:
            // DeleteArtifact: a second delete answers NOT_FOUND; the caller should see the first answer.
            return false
        }
    }

    /// Follows a job (`Jobs/WatchJob`): a SNAPSHOT, then the job's PROGRESS and STATUS events
    /// after `afterSeq` (for a finished job watched from 0, its whole history), ending after
    /// the terminal STATUS event.
    ///
    /// The sequence survives the server going away: it reconnects (to the next address when
    /// there are several) and resumes after the last event it delivered, so no STATUS event is
    /// lost or repeated. Each reconnection starts with a fresh SNAPSHOT of the whole job.
    /// It fails when no address answers for `reconnectTimeout`, or with the server's error
    /// (NOT_FOUND for an unknown job). Leaving the loop early, or cancelling the task that
    /// iterates, cancels the watch on the server.
    ///
    /// - Parameters:
    ///   - afterSeq: resume after this event (the `seq` of the last event a previous watch
    ///     delivered); 0 for the job's whole history.
    ///   - onReconnect: called with the new address and the `afterSeq` resumed from, each time
    ///     a watch was resumed on a new stream (when its SNAPSHOT arrives).
    public func watchJob(
        _ jobID: String, afterSeq: Int64 = 0,
        onReconnect: (@Sendable (FerryAddress, Int64) -> Void)? = nil
    ) -> FerryStream<JobEvent> {
        let (stream, continuation) = AsyncThrowingStream<JobEvent, any Error>.makeStream()
        let task = Task { [slot, configuration] in
            var after = afterSeq
            var outage: ContinuousClock.Instant?
            var pause = Duration.milliseconds(100)
            var reconnecting = false
            while !Task.isCancelled {
                let current: FerryConnection
                do {
                    // A dial that fails has already been as patient as it should be.
                    current = try await slot.connection(before: nil)
                } catch {
                    continuation.finish(throwing: error)
                    return
                }
                do {
                    let request = WatchJobRequest.with {
                        $0.jobID = jobID
                        $0.afterSeq = after
                    }
                    for try await event in try current.serverStream(FerryMethods.watchJob, request) {
                        if event.type == .snapshot {
                            // A SNAPSHOT's seq is where the stream started, not an event of the history.
                            if reconnecting { onReconnect?(current.address, after) }
                            reconnecting = false
                        } else {
                            after = max(after, event.seq)
                            // Only an event of the history proves the watch works again: a server
                            // that drops every stream after its SNAPSHOT must not reset the outage.
                            outage = nil
                            pause = .milliseconds(100)
                        }
                        continuation.yield(event)
                        // The terminal STATUS is the end, whatever happens to the stream after it.
                        if event.type == .status, event.status.isTerminal {
                            continuation.finish()
                            return
                        }
                    }
                    continuation.finish()
                    return
                } catch let error as RPCError where error.code == .unavailable && !Task.isCancelled {
                    if current.isGoingAway { await slot.discard(current) }
                    let now = ContinuousClock.now
                    let started = outage ?? now
                    outage = started
                    if now - started >= configuration.reconnectTimeout {
                        continuation.finish(throwing: error)
                        return
                    }
                    reconnecting = true
                    do { try await Task.sleep(for: pause) } catch { break }
                    pause = min(pause * 2, .seconds(2))
                } catch {
                    continuation.finish(throwing: error)
                    return
                }
            }
            continuation.finish(throwing: CancellationError())
        }
        continuation.onTermination = { _ in task.cancel() }
        return FerryStream(stream) { task.cancel() }
    }
}

/// The client's one current connection, and the dialling that replaces it.
private actor ConnectionSlot {
    let configuration: FerryClientConfiguration
    private var current: FerryConnection?
    private var dialling: Task<(FerryConnection, Int), any Error>?
    /// Index of the address to try first.
    private var preferred = 0
    private var hasConnected = false
    /// The TLS settings, made from the configuration's files at the first dial.
    private var tls: NIOSSLContext?
    /// Set at once by `close()`, before the actor gets to it, so no call starts after.
    private nonisolated let closedFlag = Mutex(false)

    init(configuration: FerryClientConfiguration) {
        self.configuration = configuration
    }

    var currentAddress: FerryAddress? { current?.address }

    private func tlsContext() throws -> NIOSSLContext {
        if let tls { return tls }
        let made = try configuration.makeTLSContext()
        tls = made
        return made
    }

    nonisolated func markClosed() { closedFlag.withLock { $0 = true } }
    private var closed: Bool { closedFlag.withLock { $0 } }

    /// The current connection, or a new one; waits no later than `deadline` (then
    /// DEADLINE_EXCEEDED) and no longer than the caller is not cancelled.
    func connection(before deadline: ContinuousClock.Instant? = nil) async throws -> FerryConnection {
        guard !closed else { throw RPCError(.unavailable, "the client is closed") }
        if let current, !current.isGoingAway { return current }
        if let current {
            // It went away (goaway): it finishes the calls the server accepted and then closes;
            // new calls go to a new connection, starting with another replica.
            forget(current)
        }
        let task: Task<(FerryConnection, Int), any Error>
        if let dialling {
            task = dialling
        } else {
            let tls = try tlsContext()
            task = Task { [configuration, preferred, hasConnected] in
                try await Self.dial(configuration, tls: tls, startingAt: preferred, patient: hasConnected)
            }
            dialling = task
            Task { await self.adopt(task) }
        }
        // Wait for the dial, the deadline or the caller's cancellation, whichever comes first;
        // the dial goes on for the other callers (and `close()` stops it).
        let (connection, index) = try await withThrowingTaskGroup(of: (FerryConnection, Int).self) { group in
            group.addTask { try await task.value }
            if let deadline {
                group.addTask {
                    try await Task.sleep(until: deadline)
                    throw RPCError(.deadlineExceeded, "no connection to ferryd before the deadline")
                }
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
        guard !closed else { throw RPCError(.unavailable, "the client is closed") }
        install(connection, index)
        return connection
    }

    /// Takes the dial's connection as the current one (or closes it when the client closed),
    /// whether or not anyone still waits for it.
    private func adopt(_ task: Task<(FerryConnection, Int), any Error>) async {
        defer { if dialling == task { dialling = nil } }
        guard let (connection, index) = try? await task.value else { return }
        if closed {
            connection.close()
            return
        }
        install(connection, index)
    }

    /// Makes a dialled connection the current one, once (the dial's waiter and `adopt` both
    /// get here).
    private func install(_ connection: FerryConnection, _ index: Int) {
        guard current == nil, !connection.isGoingAway else { return }
        current = connection
        preferred = index
        hasConnected = true
    }

    /// Forgets `connection` if it is still the current one (a call on it failed because it is
    /// going away); it is not closed, so calls the server accepted on it can still finish.
    func discard(_ connection: FerryConnection) {
        guard current === connection else { return }
        forget(connection)
    }

    private func forget(_ connection: FerryConnection) {
        current = nil
        preferred = (preferred + 1) % max(1, configuration.addresses.count)
    }

    func close() {
        markClosed()
        dialling?.cancel()
        current?.close()
        current = nil
    }

    /// Tries the addresses in turn from `startingAt`; an impatient dial makes one round, a
    /// patient one goes on with growing pauses for up to `reconnectTimeout`.
    private static func dial(_ configuration: FerryClientConfiguration, tls: NIOSSLContext, startingAt first: Int, patient: Bool) async throws -> (FerryConnection, Int) {
        let addresses = configuration.addresses
        let started = ContinuousClock.now
        var pause = Duration.milliseconds(100)
        while true {
            var failures: [String] = []
            for offset in 0..<addresses.count {
                try Task.checkCancellation()
                let index = (first + offset) % addresses.count
                do {
                    return (try await FerryConnection.connect(configuration, to: addresses[index], tls: tls), index)
                } catch let error as RPCError where error.code == .unavailable {
                    failures.append(error.message)
                }
            }
            let waited = ContinuousClock.now - started
            guard patient, waited + pause < configuration.reconnectTimeout else {
                let which = addresses.count == 1 ? "" : " (tried \(addresses.map(\.description).joined(separator: ", ")))"
                let after = patient ? " for \(Int(waited.components.seconds)) s" : ""
                throw RPCError(.unavailable, "cannot reach ferryd\(which)\(after): \(failures.joined(separator: "; "))")
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .seconds(2))
        }
    }
}
