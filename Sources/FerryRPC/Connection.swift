import FerryProtocol
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// One client connection: reads frames, runs each call's handler in a child task, and ends
/// every stream with exactly one `status`.
///
/// Writes go straight to the channel (`writeAndFlush`) under the stream's lock, so a stream's
/// status can never be overtaken by one of its messages; awaiting each write's completion
/// gives a streaming handler backpressure from a slow reader.
struct Connection: Sendable {
    let channel: any Channel
    let configuration: RPCServerConfiguration
    let router: MethodRouter
    let tokens: TokenStore
    let logger: Logger
    private let state = ConnectionState()

    init(channel: any Channel, configuration: RPCServerConfiguration, router: MethodRouter, tokens: TokenStore, logger: Logger) {
        self.channel = channel
        self.configuration = configuration
        self.router = router
        self.tokens = tokens
        self.logger = logger
    }

    /// Serves until the peer closes, or until a `goaway` has drained.
    func run(_ inbound: NIOAsyncChannelInboundStream<FrameEvent>) async {
        await withDiscardingTaskGroup { group in
            group.addTask {
                // Graceful shutdown of the server: refuse new calls, let open ones finish.
                do { try await gracefulShutdown() } catch { return }
                if startGoaway(.unavailable, "server is shutting down", discardInput: false) {
                    await drainDeadline()
                }
            }
            do {
                for try await event in inbound {
                    handle(event, group: &group)
                }
            } catch {
                logger.debug("connection read failed", metadata: ["error": "\(error)"])
            }
            // The peer is gone or we closed: nobody will read what open streams would send.
            for control in state.closeAll() { control.interrupt(.cancelled("connection closed")) }
            channel.close(promise: nil)
            group.cancelAll()
        }
    }

    private func handle(_ event: FrameEvent, group: inout DiscardingTaskGroup) {
        guard !state.isDiscardingInput else { return }
        switch event {
        case .violation(let code, let message):
            beginGoaway(code, message, group: &group, discardInput: true)
        case .idle(let partialFrame):
            if partialFrame {
                beginGoaway(.unavailable, "idle timeout: a frame stayed incomplete for \(configuration.idleTimeout)", group: &group, discardInput: true)
            } else if state.openStreams == 0 {
                beginGoaway(.unavailable, "idle timeout: no open stream and no frame for \(configuration.idleTimeout)", group: &group, discardInput: true)
            }
        case .frame(let body):
            switch ClientFrame.parse(body) {
            case .success(.call(let call)):
                accept(call, group: &group)
            case .success(.cancel(let stream)):
                // A cancel for a stream that already ended races with its status: ignored.
                state.control(for: stream)?.interrupt(.cancelled("cancelled by the client"))
            case .success(.ping(let data)):
                write(.pong(data: data))
            case .failure(.connection(let code, let message)):
                beginGoaway(code, message, group: &group, discardInput: true)
            case .failure(.stream(let stream, let code, let message)):
                refuse(stream, RPCError(code, message))
            }
        }
    }

    // MARK: Streams

    private func accept(_ call: ClientFrame.Call, group: inout DiscardingTaskGroup) {
        let control = StreamControl()
        switch state.open(call.stream, control: control, limit: configuration.maxConcurrentStreams) {
        case .opened:
            break
        case .reused(let existing):
            // The stream id is taken by an open call: the client broke the stream rules, and
            // any status for this id ends the open call too, so end it with that error.
            existing.interrupt(.reused(call.stream))
            return
        case .refused(let error):
            refuse(call.stream, error)
            return
        }
        group.addTask {
            await serve(call, control: control)
            if state.finish(call.stream) { channel.close(promise: nil) }
        }
    }

    /// Ends a stream that never opened, without disturbing an open one of the same id.
    private func refuse(_ stream: Int32, _ error: RPCError) {
        if let open = state.control(for: stream) {
            open.interrupt(.reused(stream))
            return
        }
        write(.status(stream: stream, code: error.code, message: error.message, details: error.details))
    }

    private func serve(_ call: ClientFrame.Call, control: StreamControl) async {
        // The deadline is an event-loop timer, cancelled (and freed) when the call ends. A
        // cancelled `Task.sleep` would keep its timer until the deadline, so calls with long
        // deadlines at a high rate would pile up memory.
        let deadline = call.timeoutMs.map { timeoutMs in
            channel.eventLoop.scheduleTask(in: .milliseconds(min(timeoutMs, Self.longestDeadlineMs))) {
                control.interrupt(.deadlineExceeded(timeoutMs))
            }
        }
        defer { deadline?.cancel() }
        let outcome: RPCError? = await withTaskGroup(of: RPCError?.self) { race in
            race.addTask { await runHandler(call, control: control) }
            race.addTask {
                switch await control.interrupted() {
                case .cancelled(let reason): return RPCError(.cancelled, reason)
                case .reused(let stream): return RPCError(.invalidArgument, "stream id \(stream) was reused while the stream was open")
                case .draining: return RPCError(.unavailable, "the server closed the connection before the call finished")
                case .deadlineExceeded(let timeoutMs): return RPCError(.deadlineExceeded, "deadline of \(timeoutMs) ms exceeded")
                }
            }
            // The first to finish decides the status; the others are cancelled. A handler that
            // lags behind cancellation cannot write any more (the stream is closed below).
            let first = await race.next() ?? nil
            let status = first ?? RPCError(.ok, "")
            control.close {
                channel.writeAndFlush(encodeFrame(ServerFrame.status(stream: call.stream, code: status.code, message: status.message, details: status.details).json), promise: nil)
            }
            race.cancelAll()
            return first
        }
        if let outcome, outcome.code != .ok {
            logger.debug("call ended", metadata: ["method": "\(call.method)", "stream": "\(call.stream)", "code": "\(outcome.code.rawValue)"])
        }
    }

    /// Deadlines beyond a year are held to a year (TimeAmount counts nanoseconds in an Int64).
    static let longestDeadlineMs: Int64 = 365 * 24 * 3600 * 1000

    /// Runs the handler; `nil` means it finished normally (status OK).
    private func runHandler(_ call: ClientFrame.Call, control: StreamControl) async -> RPCError? {
        let route: MethodRouter.Route
        switch router.route(for: call.method) {
        case .success(let found): route = found
        case .failure(let error): return error
        }
        var principal: Principal?
        if let required = route.role {
            switch tokens.authenticate(call.metadata["authorization"]) {
            case .failure(let error): return error
            case .success(let caller):
                guard caller.role >= required else {
                    return RPCError(.permissionDenied, "\(call.method) needs role \(required.rawValue); \(caller.name) has \(caller.role.rawValue)")
                }
                principal = caller
            }
        }
        var callLogger = logger
        callLogger[metadataKey: "method"] = "\(call.method)"
        let context = RPCContext(method: call.method, principal: principal, metadata: call.metadata, stream: call.stream, logger: callLogger)
        let stream = call.stream
        let channel = self.channel
        do {
            try await route.handler(context, call.message) { message in
                guard let written = control.writeIfOpen({
                    channel.writeAndFlush(encodeFrame(ServerFrame.message(stream: stream, message: message).json))
                }) else {
                    throw CancellationError()
                }
                try await written.get()
            }
            return nil
        } catch let error as RPCError {
            return error
        } catch is CancellationError {
            return RPCError(.cancelled, "the call was cancelled")
        } catch {
            callLogger.error("handler failed", metadata: ["error": "\(error)"])
            return RPCError(.internal, "internal error")
        }
    }

    // MARK: Connection-level

    private func write(_ frame: ServerFrame) {
        channel.writeAndFlush(encodeFrame(frame.json), promise: nil)
    }

    /// Sends `goaway` once: streams up to the last accepted one still finish, later calls are
    /// refused, and the connection closes when the last stream ends. Returns true when streams
    /// are still open, so the caller must start the drain deadline.
    private func startGoaway(_ code: StatusCode, _ message: String, discardInput: Bool) -> Bool {
        guard let lastStream = state.beginGoaway(discardInput: discardInput) else { return false }
        write(.goaway(code: code, message: message, lastStream: lastStream))
        logger.debug("goaway", metadata: ["code": "\(code.rawValue)", "reason": "\(message)"])
        if state.openStreams == 0 {
            channel.close(promise: nil)
            return false
        }
        return true
    }

    private func beginGoaway(_ code: StatusCode, _ message: String, group: inout DiscardingTaskGroup, discardInput: Bool) {
        if startGoaway(code, message, discardInput: discardInput) {
            group.addTask { await drainDeadline() }
        }
    }

    /// After the drain timeout, ends the streams still open.
    private func drainDeadline() async {
        try? await Task.sleep(for: configuration.drainTimeout)
        guard !Task.isCancelled else { return }
        for control in state.openControls() { control.interrupt(.draining) }
    }
}

/// The mutable part of a connection, behind one lock.
final class ConnectionState: Sendable {
    enum OpenResult {
        case opened
        case reused(StreamControl)
        case refused(RPCError)
    }

    private struct State {
        var streams: [Int32: StreamControl] = [:]
        var highestAccepted: Int32 = 0
        var goingAway = false
        var discardInput = false
    }
    private let state = Mutex(State())

    var openStreams: Int { state.withLock { $0.streams.count } }
    var isDiscardingInput: Bool { state.withLock { $0.discardInput } }

    func control(for stream: Int32) -> StreamControl? { state.withLock { $0.streams[stream] } }
    func openControls() -> [StreamControl] { state.withLock { Array($0.streams.values) } }

    func open(_ stream: Int32, control: StreamControl, limit: Int) -> OpenResult {
        state.withLock { state in
            if let existing = state.streams[stream] { return .reused(existing) }
            if state.goingAway {
                return .refused(RPCError(.unavailable, "the connection is going away (goaway sent); open a new connection"))
            }
            guard state.streams.count < limit else {
                return .refused(RPCError(.resourceExhausted, "too many open streams on this connection (limit \(limit))"))
            }
            state.streams[stream] = control
            state.highestAccepted = max(state.highestAccepted, stream)
            return .opened
        }
    }

    /// Removes a finished stream; true when it was the last one after a goaway.
    func finish(_ stream: Int32) -> Bool {
        state.withLock { state in
            state.streams[stream] = nil
            return state.goingAway && state.streams.isEmpty
        }
    }

    /// Marks the connection as going away; the last stream id to finish, or nil if already.
    func beginGoaway(discardInput: Bool) -> Int32? {
        state.withLock { state in
            if discardInput { state.discardInput = true }
            guard !state.goingAway else { return nil }
            state.goingAway = true
            return state.highestAccepted
        }
    }

    func closeAll() -> [StreamControl] {
        state.withLock { state in
            state.goingAway = true
            return Array(state.streams.values)
        }
    }
}
