import FerryProtocol
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// One client connection: performs what its ``ConnectionStateMachine`` decides. It reads
/// typed frames, runs each call through the middleware to its handler in a child task, and
/// is the one owner of the channel's writes: every frame goes through ``write(_:for:)`` or
/// ``forceWrite(_:)``, under the connection's lock, so a stream's status is never overtaken
/// by one of its messages and the outbound buffer stays bounded.
///
/// Memory one connection can hold: inbound, the decoder's partial frame plus the frames
/// waiting for the read loop (at most `inboundFramesBuffered`), each at most
/// `maxFrameBytes`; outbound, `outboundBufferBytes` plus one frame, plus one status per
/// admitted stream. A client that does not read stops being read.
final class Connection: Sendable {
    let channel: any Channel
    let configuration: RPCServerConfiguration
    let router: MethodRouter
    let chain: @Sendable (RPCContext) async throws -> Void
    let logger: Logger
    let loggers: [String: Logger]
    let gauges: ConnectionGauges
    let deadlines: DeadlineTimer

    private struct State {
        var machine: ConnectionStateMachine<StreamControl>
        var writers: [Int: CheckedContinuation<Void, any Error>] = [:]
        /// Frames handed over under the lock, waiting for the event loop's next write.
        var pending: [ServerFrame] = []
        var pendingBytes = 0
        var flushScheduled = false
    }
    private let state: Mutex<State>

    init(channel: any Channel, configuration: RPCServerConfiguration, router: MethodRouter,
         chain: @escaping @Sendable (RPCContext) async throws -> Void, logger: Logger, loggers: [String: Logger], gauges: ConnectionGauges) {
        self.channel = channel
        self.configuration = configuration
        self.router = router
        self.chain = chain
        self.logger = logger
        self.loggers = loggers
        self.gauges = gauges
        deadlines = DeadlineTimer(eventLoop: channel.eventLoop)
        state = Mutex(State(machine: ConnectionStateMachine(
            maxConcurrentStreams: configuration.maxConcurrentStreams, outboundLimit: configuration.outboundBufferBytes)))
    }

    /// Serves until the peer closes, or until a `goaway` has drained.
    func run(_ inbound: NIOAsyncChannelInboundStream<FrameEvent<ClientFrame>>) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                // Graceful shutdown of the server: refuse new calls, let open ones finish.
                do { try await gracefulShutdown() } catch { return }
                if self.goaway(.unavailable, { ($0.shutdown(), "server is shutting down") }) {
                    await self.drainDeadline()
                }
            }
            do {
                for try await event in inbound {
                    await handle(event, group: &group)
                }
            } catch {
                logger.debug("connection read failed", metadata: ["error": "\(error)"])
            }
            // The peer is gone or we closed: nobody will read what open streams would send.
            closed()
            deadlines.stop()
            channel.close(promise: nil)
            group.cancelAll()
        }
    }

    private func handle(_ event: FrameEvent<ClientFrame>, group: inout DiscardingTaskGroup) async {
        switch event {
        case .frame(.call(let call)):
            // A call is admitted only while the outbound buffer has room: calls that end at once
            // (a bad token, an unknown method) still write a status each, so a client that sends
            // calls and never reads their answers must stop being read.
            try? await acquire(0, check: { _ in true }, write: { _ in [] })
            let control = StreamControl(id: call.stream)
            switch state.withLock({ $0.machine.receivedCall(call.stream, stream: control) }) {
            case .open:
                gauges.streams.increment()
                group.addTask { await self.serve(call, control: control) }
            case .refuse(let error):
                await writeFromReader(.status(stream: call.stream, code: error.code, message: error.message, details: error.details))
            case .endOpenStream(let existing):
                existing.interrupt(.reused(call.stream))
            case .ignore:
                break
            }
        case .frame(.cancel(let stream)):
            // A cancel for a stream that already ended raced with its status: ignored.
            state.withLock { $0.machine.receivedCancel(stream) }?.interrupt(.cancelled("cancelled by the client"))
        case .frame(.ping(let data)):
            if state.withLock({ $0.machine.receivedPing() }) {
                await writeFromReader(.pong(data: data))
            }
        case .invalidCall(let stream, let code, let message):
            switch state.withLock({ $0.machine.receivedInvalidCall(stream, RPCError(code, message)) }) {
            case .refuse(let error):
                await writeFromReader(.status(stream: stream, code: error.code, message: error.message, details: nil))
            case .endOpenStream(let existing):
                existing.interrupt(.reused(stream))
            case .open, .ignore:
                break
            }
        case .violation(let code, let message):
            if goaway(code, { ($0.receivedViolation(), message) }) { group.addTask { await self.drainDeadline() } }
        case .idle(let partialFrame):
            let timeout = configuration.idleTimeout
            let drains = goaway(.unavailable) { machine in
                let (action, reason) = machine.idle(partialFrame: partialFrame)
                return (action, "idle timeout: \(reason ?? "") for \(timeout)")
            }
            if drains { group.addTask { await self.drainDeadline() } }
        }
    }

    // MARK: Streams

    private func serve(_ call: ClientFrame.Call, control: StreamControl) async {
        let callLogger = loggers[call.method] ?? {
            var callLogger = logger
            callLogger[metadataKey: "method"] = "\(call.method.prefix(200))"
            return callLogger
        }()
        var status: RPCError
        switch router.route(for: call.method) {
        case .failure(let error):
            status = error
        case .success(let route):
            let output = StreamOutput(
                send: { [self] message in try await self.write(.message(stream: call.stream, message: message), for: control) },
                setUnaryResponse: { control.setUnaryResponse($0) },
                end: { [self] status in self.end(control, status) })
            let context = RPCContext(method: route.info, principal: nil, metadata: call.metadata, stream: call.stream,
                                     timeoutMs: call.timeoutMs, logger: callLogger, control: control,
                                     deadlines: deadlines, request: call.message, route: route, output: output)
            do {
                try await chain(context)
                status = RPCError(.ok, "")
            } catch {
                status = RPCError.status(for: error, logger: callLogger)
            }
        }
        if status.code == .ok, let response = control.takeUnaryResponse() {
            // The response may be large: it waits for room like any message, and goes out with
            // the status in one flush. If the stream ended meanwhile, it already has its status.
            let frames: [ServerFrame] = [.message(stream: control.id, message: response), Self.statusFrame(control.id, status)]
            try? await acquire(frames.reduce(0) { $0 + $1.sizeEstimate }, check: { $0.machine.isOpen(control.id, control) }) { state in
                _ = state.machine.endStream(control.id, control)
                return frames
            }
        }
        end(control, status)
        gauges.streams.decrement()
        if state.withLock({ $0.machine.handlerReturned() }) { channel.close(promise: nil) }
    }

    /// The end of every middleware chain: runs the handler in a child task, racing it against
    /// the stream's interruptions. An interruption writes the status at once, then cancels the
    /// handler, so a handler slow to notice cancellation delays nothing.
    @Sendable static func endpoint(_ context: RPCContext) async throws {
        let control = context.control
        let status: RPCError? = await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    try await context.route.invoke(context)
                    control.handlerReturned(nil)
                } catch {
                    control.handlerReturned(RPCError.status(for: error, logger: context.logger))
                }
            }
            switch await control.outcome() {
            case .handlerReturned(let error):
                return error
            case .interrupted(let reason):
                context.output.end(reason.status)
                group.cancelAll()
                return reason.status
            }
        }
        if let status { throw status }
    }

    /// Writes the stream's status unless it was already ended. A status never waits for
    /// outbound room (it must not be held up behind the stream's own messages); the statuses in
    /// flight are bounded by the stream limit.
    private func end(_ control: StreamControl, _ status: RPCError) {
        state.withLock { state in
            guard state.machine.endStream(control.id, control) else { return }
            let frame = Self.statusFrame(control.id, status)
            state.machine.forceWrite(frame.sizeEstimate)
            issue([frame], bytes: frame.sizeEstimate, in: &state)
        }
    }

    private static func statusFrame(_ stream: Int32, _ status: RPCError) -> ServerFrame {
        .status(stream: stream, code: status.code, message: status.message, details: status.details)
    }

    // MARK: Writes

    /// Writes a stream's message once the outbound buffer has room; throws when the stream has
    /// ended (its message is dropped) or the connection closed.
    private func write(_ frame: ServerFrame, for control: StreamControl) async throws {
        try await acquire(frame.sizeEstimate, check: { $0.machine.isOpen(control.id, control) }, write: { _ in [frame] })
    }

    /// Writes a frame the read loop produced (a pong, a refusal). The read loop waits while
    /// the outbound buffer is full, which stops reading from a client that does not read.
    private func writeFromReader(_ frame: ServerFrame) async {
        try? await acquire(frame.sizeEstimate, check: { _ in true }, write: { _ in [frame] })
    }

    /// Waits for `bytes` of outbound room, then, under the lock, writes the frames `write`
    /// returns if `check` still allows it (else gives the room back and throws). With no
    /// frames, it only waits until the buffer is below its limit.
    ///
    /// A wait longer than the idle timeout (the drain timeout once going away) closes the
    /// connection: a peer that reads nothing for that long is gone or hostile, and must not
    /// hold its connection, its streams or a shutdown for ever.
    private func acquire(_ bytes: Int, check: (inout State) -> Bool, write frames: (inout State) -> [ServerFrame]) async throws {
        enum FastPath { case written, dropped, closed, wait }
        let fast = state.withLock { state -> FastPath in
            guard check(&state) else { return .dropped }
            switch state.machine.requestWrite(bytes) {
            case .write:
                issue(frames(&state), bytes: bytes, in: &state)
                return .written
            case .closed: return .closed
            case .wait(let ticket):
                // Give the ticket back: the slow path asks again with a continuation to resume.
                _ = state.machine.cancelWait(ticket)
                return .wait
            }
        }
        switch fast {
        case .written: return
        case .dropped: throw CancellationError()
        case .closed: throw RPCError(.unavailable, "the connection closed")
        case .wait: break
        }
        let ticket = Mutex<Int?>(nil)
        let channel = self.channel
        let stall = channel.eventLoop.scheduleTask(in: TimeAmount(state.withLock { $0.machine.isGoingAway } ? configuration.drainTimeout : configuration.idleTimeout)) {
            channel.close(promise: nil)
        }
        defer { stall.cancel() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let refusal = state.withLock { state -> (any Error)? in
                    // Checked again: the stream may have ended, or this task been cancelled, since
                    // the fast path.
                    guard check(&state), !Task.isCancelled else { return CancellationError() }
                    switch state.machine.requestWrite(bytes) {
                    case .write:
                        continuation.resume()
                    case .closed:
                        return RPCError(.unavailable, "the connection closed")
                    case .wait(let granted):
                        ticket.withLock { $0 = granted }
                        state.writers[granted] = continuation
                    }
                    return nil
                }
                if let refusal { continuation.resume(throwing: refusal) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard let id = ticket.withLock({ $0 }), state.machine.cancelWait(id) else { return nil }
                return state.writers.removeValue(forKey: id)
            }
            waiter?.resume(throwing: CancellationError())
        }
        // The room is ours now: write, or give it back if the frame is no longer wanted.
        let written = state.withLock { state -> Bool in
            guard check(&state) else { return false }
            issue(frames(&state), bytes: bytes, in: &state)
            return true
        }
        if !written {
            completed(bytes)
            throw CancellationError()
        }
    }

    /// Hands frames to the channel (called under the lock, so writes keep the lock's order)
    /// and gives their room back once they reached the socket.
    private func issue(_ frames: [ServerFrame], bytes: Int, in state: inout State) {
        guard !frames.isEmpty else {
            // Room taken for nothing (a wait for room) is given back once the lock is released.
            if bytes > 0 { channel.eventLoop.execute { [self] in completed(bytes) } }
            return
        }
        // Frames queue here and go to the channel in one write and one flush per event-loop
        // turn: under load, many calls' responses share one TLS record and one system call.
        // Always through the event loop's queue, even on the loop: a write can complete (and
        // its callback take the lock) inside the call, and the queue keeps the lock's order.
        state.pending.append(contentsOf: frames)
        state.pendingBytes += bytes
        guard !state.flushScheduled else { return }
        state.flushScheduled = true
        channel.eventLoop.execute { [self] in flushPending() }
    }

    /// On the event loop: writes what queued since the last turn.
    private func flushPending() {
        let (frames, bytes) = state.withLock { state in
            defer {
                state.pending = []
                state.pendingBytes = 0
                state.flushScheduled = false
            }
            return (state.pending, state.pendingBytes)
        }
        guard !frames.isEmpty else { return }
        let promise = channel.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { [self] _ in completed(bytes) }
        channel.writeAndFlush(frames, promise: promise)
    }

    private func completed(_ bytes: Int) {
        let resumed = state.withLock { state in
            state.machine.writeCompleted(bytes).compactMap { state.writers.removeValue(forKey: $0) }
        }
        for writer in resumed { writer.resume() }
    }

    // MARK: Connection-level

    /// Sends `goaway` if `decide` (run under the lock, with the write) says so: closes at once
    /// when no stream runs, else returns true so the caller starts the drain deadline. One lock
    /// for decision and write, so the last stream cannot close the connection in between.
    private func goaway(_ code: StatusCode, _ decide: (inout ConnectionStateMachine<StreamControl>) -> (ConnectionStateMachine<StreamControl>.GoawayAction, message: String)) -> Bool {
        let decided: (close: Bool, message: String)? = state.withLock { state in
            let (action, message) = decide(&state.machine)
            guard case .goaway(let lastStream, let close) = action else { return nil }
            let frame = ServerFrame.goaway(code: code, message: message, lastStream: lastStream)
            state.machine.forceWrite(frame.sizeEstimate)
            issue([frame], bytes: frame.sizeEstimate, in: &state)
            return (close, message)
        }
        guard let (close, message) = decided else { return false }
        logger.debug("goaway", metadata: ["code": "\(code.rawValue)", "reason": "\(message)"])
        if close { channel.close(promise: nil) }
        return !close
    }

    /// After the drain timeout, ends the streams still open; a moment later (for their
    /// statuses to go out) the connection closes whatever its handlers are doing.
    private func drainDeadline() async {
        try? await Task.sleep(for: configuration.drainTimeout)
        guard !Task.isCancelled else { return }
        for control in state.withLock({ $0.machine.drainExpired() }) { control.interrupt(.draining) }
        try? await Task.sleep(for: .seconds(1))
        guard !Task.isCancelled else { return }
        channel.close(promise: nil)
    }

    private func closed() {
        let (streams, writers) = state.withLock { state in
            let (streams, tickets) = state.machine.channelClosed()
            return (streams, tickets.compactMap { state.writers.removeValue(forKey: $0) })
        }
        for control in streams { control.interrupt(.cancelled("connection closed")) }
        for writer in writers { writer.resume(throwing: RPCError(.unavailable, "the connection closed")) }
    }
}

extension ServerFrame {
    /// About the frame's encoded size, for outbound accounting (exact for the message body,
    /// which is what can be large).
    var sizeEstimate: Int {
        switch self {
        case .message(_, let message): message.readableBytes + 48
        case .status(_, _, let message, let details): message.escapedSizeEstimate + (details == nil ? 64 : 512)
        case .pong(let data): (data?.escapedSizeEstimate ?? 0) + 32
        case .goaway(_, let message, _): message.escapedSizeEstimate + 64
        }
    }
}

extension String {
    /// The size of the string in JSON: control characters become 6-byte escapes.
    var escapedSizeEstimate: Int {
        utf8.reduce(0) { $0 + ($1 < 0x20 ? 6 : $1 == 0x22 || $1 == 0x5C ? 2 : 1) }
    }
}
