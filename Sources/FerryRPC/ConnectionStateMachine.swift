import FerryProtocol

/// The rules of one ferry/1 connection as a value: events in, actions out. It performs no
/// I/O, so every rule is testable without a socket; ``Connection`` performs the actions.
///
/// It owns three things:
/// - the streams: which ids are open for writing (until their status is written) and how
///   many handlers still run (until they return; the stream limit counts these);
/// - the connection's phase: serving, going away (after `goaway`: no new calls; with
///   `discardInput`, nothing more is read), closed;
/// - outbound flow control: the bytes handed to the channel and not yet written to the
///   socket. A write that would start while `outboundLimit` bytes are in flight waits, in
///   arrival order, so a peer that stops reading stops the connection's writers — and,
///   since the read loop waits too, the connection stops reading from that peer.
///
/// `Stream` is the per-stream handle (``StreamControl`` in the server); identity tells an
/// open stream from an earlier one that used the same id.
struct ConnectionStateMachine<Stream: AnyObject> {
    let maxConcurrentStreams: Int
    let outboundLimit: Int

    private var open: [Int32: Stream] = [:]
    private var runningHandlers = 0
    private var highestAccepted: Int32 = 0
    private var goingAway = false
    private(set) var discardingInput = false
    private(set) var isClosed = false

    private(set) var bytesInFlight = 0
    private var waiting: [(ticket: Int, bytes: Int)] = []
    private var nextTicket = 0

    init(maxConcurrentStreams: Int, outboundLimit: Int) {
        self.maxConcurrentStreams = maxConcurrentStreams
        self.outboundLimit = outboundLimit
    }

    var openStreamCount: Int { open.count }
    var isGoingAway: Bool { goingAway }
    var runningHandlerCount: Int { runningHandlers }

    func isOpen(_ id: Int32, _ stream: Stream) -> Bool { open[id] === stream }

    // MARK: Inbound

    enum CallAction {
        /// Run the call's handler.
        case open
        /// End this stream at once with the error (nothing was opened).
        case refuse(RPCError)
        /// The id belongs to an open stream: the client broke the stream rules, and any status
        /// for this id ends the open call too, so end that call with the error.
        case endOpenStream(Stream)
        /// Input is being discarded after a connection error.
        case ignore
    }

    mutating func receivedCall(_ id: Int32, stream: Stream) -> CallAction {
        guard !discardingInput, !isClosed else { return .ignore }
        if let existing = open[id] { return .endOpenStream(existing) }
        if goingAway {
            // Never run: the client may send it again anywhere, whatever the method.
            return .refuse(RPCError(.unavailable, "the connection is going away (goaway sent); open a new connection",
                                    details: .object(["notProcessed": .bool(true)])))
        }
        guard runningHandlers < maxConcurrentStreams else {
            return .refuse(RPCError(.resourceExhausted, "too many open streams on this connection (limit \(maxConcurrentStreams))"))
        }
        open[id] = stream
        runningHandlers += 1
        highestAccepted = max(highestAccepted, id)
        return .open
    }

    /// A `call` whose content was wrong: refuse it, or end the open stream of the same id.
    mutating func receivedInvalidCall(_ id: Int32, _ error: RPCError) -> CallAction {
        guard !discardingInput, !isClosed else { return .ignore }
        if let existing = open[id] { return .endOpenStream(existing) }
        return .refuse(error)
    }

    /// The stream a `cancel` ends; nil for an id that is not open (its status raced the cancel).
    func receivedCancel(_ id: Int32) -> Stream? {
        guard !discardingInput else { return nil }
        return open[id]
    }

    /// Whether a `ping` is answered.
    func receivedPing() -> Bool { !discardingInput && !isClosed }

    enum GoawayAction: Equatable {
        case none
        /// Send `goaway` naming `lastStream`; then close at once when `close`, else let the
        /// open streams drain (with a deadline).
        case goaway(lastStream: Int32, close: Bool)
    }

    /// A connection error: `goaway`, then close once open streams end; input is discarded.
    mutating func receivedViolation() -> GoawayAction {
        beginGoaway(discardInput: true)
    }

    /// Nothing arrived for the idle timeout. A half-received frame, or no open stream, ends the
    /// connection; a long-lived stream (a watch) keeps it.
    mutating func idle(partialFrame: Bool) -> (GoawayAction, reason: String?) {
        guard !discardingInput else { return (.none, nil) }
        if partialFrame { return (beginGoaway(discardInput: true), "a frame stayed incomplete") }
        if runningHandlers == 0 { return (beginGoaway(discardInput: true), "no open stream and no frame") }
        return (.none, nil)
    }

    /// The server shuts down: refuse new calls, let open ones finish.
    mutating func shutdown() -> GoawayAction {
        beginGoaway(discardInput: false)
    }

    private mutating func beginGoaway(discardInput: Bool) -> GoawayAction {
        if discardInput { discardingInput = true }
        guard !goingAway, !isClosed else { return .none }
        goingAway = true
        return .goaway(lastStream: highestAccepted, close: runningHandlers == 0)
    }

    // MARK: Streams

    /// The stream's status is being written: no more writes for it, and its id is free.
    /// False when it was already ended.
    mutating func endStream(_ id: Int32, _ stream: Stream) -> Bool {
        guard open[id] === stream else { return false }
        open[id] = nil
        return true
    }

    /// A call's handler returned. True when the connection should now close (it is going away
    /// and this was the last one).
    mutating func handlerReturned() -> Bool {
        runningHandlers -= 1
        return goingAway && runningHandlers == 0 && !isClosed
    }

    /// The drain deadline passed: these streams are ended.
    func drainExpired() -> [Stream] { Array(open.values) }

    /// The channel closed: every open stream is ended, every waiting writer fails.
    mutating func channelClosed() -> (streams: [Stream], failedWriters: [Int]) {
        isClosed = true
        goingAway = true
        let streams = Array(open.values)
        let tickets = waiting.map(\.ticket)
        waiting = []
        return (streams, tickets)
    }

    // MARK: Outbound flow control

    enum WriteDecision: Equatable {
        /// Write now; the bytes are counted in flight.
        case write
        /// Wait until ``writeCompleted(_:)`` grants this ticket.
        case wait(ticket: Int)
        /// The connection is closed.
        case closed
    }

    /// A writer asks to write `bytes`. Writers are served in arrival order; one write may start
    /// whenever fewer than `outboundLimit` bytes are in flight, so the bytes in flight never
    /// exceed the limit plus one frame (plus the statuses of streams ending, see ``forceWrite(_:)``).
    mutating func requestWrite(_ bytes: Int) -> WriteDecision {
        guard !isClosed else { return .closed }
        if waiting.isEmpty, bytesInFlight < outboundLimit {
            bytesInFlight += bytes
            return .write
        }
        nextTicket += 1
        waiting.append((nextTicket, bytes))
        return .wait(ticket: nextTicket)
    }

    /// A write that must not wait: a stream's final status (one per admitted stream, so
    /// bounded by the stream limit) and `goaway` (one per connection).
    mutating func forceWrite(_ bytes: Int) {
        bytesInFlight += bytes
    }

    /// A waiting writer gave up (its task was cancelled); false if it was already granted.
    mutating func cancelWait(_ ticket: Int) -> Bool {
        guard let index = waiting.firstIndex(where: { $0.ticket == ticket }) else { return false }
        waiting.remove(at: index)
        return true
    }

    /// `bytes` reached the socket (or were dropped): returns the tickets now granted, whose
    /// bytes are counted in flight.
    mutating func writeCompleted(_ bytes: Int) -> [Int] {
        bytesInFlight -= bytes
        var granted: [Int] = []
        while bytesInFlight < outboundLimit, !waiting.isEmpty {
            let next = waiting.removeFirst()
            bytesInFlight += next.bytes
            granted.append(next.ticket)
        }
        return granted
    }
}
