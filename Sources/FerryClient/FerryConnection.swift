import FerryCore
import FerryProtocol
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import SwiftProtobuf
import Synchronization

/// One TLS connection to one `ferryd`, carrying many concurrent calls: the layer under
/// ``FerryClient``. Use it directly to pin calls to one replica (benchmarks, tests of one
/// server); it never reconnects.
///
/// ```swift
/// let connection = try await FerryConnection.connect(.init(host: "127.0.0.1", port: 7443, trustRootsFile: "cert.pem", token: token))
/// defer { connection.close() }
/// let health = try await connection.check()
/// ```
///
/// Failed calls throw ``RPCError`` with the server's status code, message and details.
/// Cancelling the calling task sends `cancel` for its stream.
public final class FerryConnection: FerryCalling {
    private let channel: any Channel
    private let calls: CallTable
    public let configuration: FerryClientConfiguration
    /// The server this connection reached.
    public let address: FerryAddress

    private init(channel: any Channel, calls: CallTable, configuration: FerryClientConfiguration, address: FerryAddress) {
        self.channel = channel
        self.calls = calls
        self.configuration = configuration
        self.address = address
    }

    /// Connects to `address` (default: the configuration's first address) and completes the
    /// TLS handshake.
    public static func connect(_ configuration: FerryClientConfiguration, to address: FerryAddress? = nil) async throws -> FerryConnection {
        try await connect(configuration, to: address, tls: configuration.makeTLSContext())
    }

    /// Connects with TLS settings made earlier (a reconnecting client reads its files once,
    /// so a certificate file removed meanwhile does not stop it).
    static func connect(_ configuration: FerryClientConfiguration, to address: FerryAddress?, tls sslContext: NIOSSLContext) async throws -> FerryConnection {
        let address = address ?? configuration.address
        let calls = CallTable()
        let serverName = configuration.serverName ?? address.host
        // SNI carries host names only, never IP addresses (of either family).
        let sniName: String? = (try? SocketAddress(ipAddress: serverName, port: 0)) == nil ? serverName : nil
        let handshake = Mutex<EventLoopPromise<Void>?>(nil)
        let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.nanoseconds(configuration.connectTimeout.wholeNanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let promise = channel.eventLoop.makePromise(of: Void.self)
                    handshake.withLock { $0 = promise }
                    let verification = try NIOSSLClientHandler(context: sslContext, serverHostname: sniName)
                    try channel.pipeline.syncOperations.addHandler(verification)
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder<ServerFrame>(maxFrameBytes: configuration.maxFrameBytes)))
                    try channel.pipeline.syncOperations.addHandler(MessageToByteHandler(FrameEncoder<ClientFrame>()))
                    try channel.pipeline.syncOperations.addHandler(ClientFrameHandler(calls: calls, handshake: promise))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: address.host, port: address.port).get()
        } catch {
            handshake.withLock { $0 }?.fail(error)
            throw RPCError(.unavailable, "cannot connect to \(address): \(error)")
        }
        // A server that accepts and then says nothing (frozen, or not a TLS server) must not
        // hold the caller: the handshake has the connect timeout too.
        let stalled = channel.eventLoop.scheduleTask(in: .nanoseconds(configuration.connectTimeout.wholeNanoseconds)) {
            handshake.withLock { $0 }?.fail(RPCError(.unavailable, "no TLS handshake within \(configuration.connectTimeout)"))
            channel.close(promise: nil)
        }
        do {
            if let promise = handshake.withLock({ $0 }) { try await promise.futureResult.get() }
            stalled.cancel()
        } catch {
            stalled.cancel()
            channel.close(promise: nil)
            let text = (error as? RPCError)?.message ?? "\(error)"
            if text.contains("CERTIFICATE_VERIFY_FAILED") {
                throw RPCError(.unavailable, "TLS handshake with \(address) failed: the server's certificate is not trusted (trust its CA with trustRootsFile, the CLI's --ca-file)")
            }
            throw RPCError(.unavailable, "TLS handshake with \(address) failed: \(text)")
        }
        startKeepalive(channel: channel, calls: calls, configuration: configuration)
        return FerryConnection(channel: channel, calls: calls, configuration: configuration, address: address)
    }

    /// While calls are open, pings the server every `keepaliveInterval` and closes the
    /// connection when a ping has no pong within `keepaliveTimeout`: a frozen server or a
    /// lost network otherwise leaves a watch waiting forever on a socket nobody writes to.
    private static func startKeepalive(channel: any Channel, calls: CallTable, configuration: FerryClientConfiguration) {
        guard let interval = configuration.keepaliveInterval else { return }
        let timeout = configuration.keepaliveTimeout
        channel.eventLoop.scheduleRepeatedTask(initialDelay: .nanoseconds(interval.wholeNanoseconds), delay: .nanoseconds(interval.wholeNanoseconds)) { task in
            guard channel.isActive else { return task.cancel() }
            switch calls.keepaliveTick(now: .now(), timeout: .nanoseconds(timeout.wholeNanoseconds)) {
            case .idle:
                break
            case .ping(let data):
                channel.writeAndFlush([ClientFrame.ping(data: data)], promise: nil)
            case .dead:
                calls.closeAll("the server did not answer a keepalive ping within \(timeout)")
                channel.close(promise: nil)
                task.cancel()
            }
        }
    }

    /// Closes the connection; calls still open fail with UNAVAILABLE.
    public func close() {
        channel.close(promise: nil)
    }

    /// Whether the server sent `goaway` (new calls are refused) or the connection closed.
    public var isGoingAway: Bool { calls.isGoingAway }

    // MARK: Calls

    /// Calls a unary method.
    public func unary<Request, Response>(
        _ method: UnaryMethod<Request, Response>, _ request: Request,
        timeout: Duration? = nil, metadata: [String: String] = [:]
    ) async throws -> Response {
        var result: Response?
        for try await message in call(method.info.name, message: try encode(request), timeout: timeout, metadata: metadata) {
            guard result == nil else { throw RPCError(.internal, "\(method.info.name) sent more than one response") }
            result = try decode(message, as: Response.self)
        }
        guard let result else {
            // A cancelled task's call ends without a response: that is the cancellation, not a server fault.
            try Task.checkCancellation()
            throw RPCError(.internal, "\(method.info.name) ended OK without a response")
        }
        return result
    }

    /// Calls a server-streaming method; the sequence ends when the server sends status OK.
    public func serverStream<Request, Response>(
        _ method: ServerStreamingMethod<Request, Response>, _ request: Request,
        timeout: Duration? = nil, metadata: [String: String] = [:]
    ) throws -> AsyncThrowingMapSequence<FerryStream<ByteBuffer>, Response> {
        call(method.info.name, message: try encode(request), timeout: timeout, metadata: metadata).map { message in
            try self.decode(message, as: Response.self)
        }
    }

    /// The raw call: any method name, the request as JSON, the responses as JSON text.
    public func call(_ method: String, json: JSONValue, timeout: Duration? = nil, metadata: [String: String] = [:]) -> FerryStream<ByteBuffer> {
        var message = ByteBuffer()
        message.writeJSON(json)
        return call(method, message: message, timeout: timeout, metadata: metadata)
    }

    /// The raw call: the request's JSON text in, the responses' JSON text out.
    ///
    /// The stream finishes after status OK and throws ``RPCError`` for any other status.
    /// Leaving the loop early or cancelling the consumer sends `cancel` to the server.
    public func call(_ method: String, message: ByteBuffer, timeout: Duration? = nil, metadata: [String: String] = [:]) -> FerryStream<ByteBuffer> {
        var metadata = metadata
        if let token = configuration.token, metadata["authorization"] == nil {
            metadata["authorization"] = "Bearer \(token)"
        }
        let (stream, continuation) = AsyncThrowingStream<ByteBuffer, any Error>.makeStream()
        guard let id = calls.open(continuation) else {
            continuation.finish(throwing: RPCError.notSent(calls.closedReason))
            return FerryStream(stream) {}
        }
        let channel = self.channel
        let calls = self.calls
        let abandon: @Sendable () -> Void = {
            if calls.abandon(id) {
                continuation.finish()
                channel.writeAndFlush([ClientFrame.cancel(stream: id)], promise: nil)
            }
        }
        let timeoutMs = timeout.map { max(0, $0.wholeMilliseconds) }
        // If the server never answers (it died), fail locally a little after the deadline.
        let grace = timeoutMs.map { timeoutMs in
            channel.eventLoop.scheduleTask(in: .milliseconds(timeoutMs + 2000)) {
                if calls.fail(id, RPCError(.deadlineExceeded, "no answer from the server within the deadline")) {
                    channel.writeAndFlush([ClientFrame.cancel(stream: id)], promise: nil)
                }
            }
        }
        continuation.onTermination = { termination in
            // The timer goes with the call, so calls with long deadlines hold no memory after.
            grace?.cancel()
            if case .cancelled = termination { abandon() }
        }
        let frame = ClientFrame.call(.init(stream: id, method: method, metadata: metadata, timeoutMs: timeoutMs, message: message))
        channel.writeAndFlush([frame]).whenFailure { error in
            _ = calls.fail(id, RPCError(.unavailable, "cannot send the call: \(error)"))
        }
        return FerryStream(stream, abandon: abandon)
    }

    /// Sends `ping` and waits for the matching `pong`; returns the round-trip time.
    public func ping(_ data: String = UUID().uuidString) async throws -> Duration {
        let started = ContinuousClock.now
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            guard calls.expectPong(data, continuation) else {
                continuation.resume(throwing: RPCError(.unavailable, calls.closedReason))
                return
            }
            channel.writeAndFlush([ClientFrame.ping(data: data)], promise: nil)
        }
        return ContinuousClock.now - started
    }

    private func encode<M: SwiftProtobuf.Message>(_ request: M) throws -> ByteBuffer {
        do {
            return try MessageCoding.encode(request)
        } catch {
            throw RPCError(.invalidArgument, "cannot encode the request: \(error)")
        }
    }

    private func decode<M: SwiftProtobuf.Message>(_ message: ByteBuffer, as type: M.Type) throws -> M {
        do {
            return try MessageCoding.decode(M.self, from: message)
        } catch {
            throw RPCError(.internal, "cannot decode the server's \(M.protoMessageName): \(error)")
        }
    }
}

/// Open calls and pings by stream id, shared by the caller side and the channel handler.
final class CallTable: Sendable {
    private struct State {
        var nextID: Int32 = 1
        var open: [Int32: AsyncThrowingStream<ByteBuffer, any Error>.Continuation] = [:]
        var pongs: [String: [CheckedContinuation<Void, any Error>]] = [:]
        var goawayLastStream: Int32?
        var closedReason: String?
        /// The keepalive ping in flight, if any.
        var keepalive: (data: String, sentAt: NIODeadline)?
    }

    enum KeepaliveStep { case idle, ping(String), dead }

    /// What the keepalive timer does now: nothing (no calls open, or a ping is answered
    /// soon enough), send a ping, or give the connection up.
    func keepaliveTick(now: NIODeadline, timeout: TimeAmount) -> KeepaliveStep {
        state.withLock { state in
            if let pending = state.keepalive {
                return now - pending.sentAt > timeout ? .dead : .idle
            }
            guard !state.open.isEmpty else { return .idle }
            let data = "keepalive-\(UInt64.random(in: 0...UInt64.max))"
            state.keepalive = (data, now)
            return .ping(data)
        }
    }
    private let state = Mutex(State())

    var isGoingAway: Bool { state.withLock { $0.goawayLastStream != nil || $0.closedReason != nil } }
    var closedReason: String { state.withLock { $0.closedReason ?? "the server sent goaway" } }

    func open(_ continuation: AsyncThrowingStream<ByteBuffer, any Error>.Continuation) -> Int32? {
        state.withLock { state in
            guard state.closedReason == nil, state.goawayLastStream == nil, state.nextID < Int32.max else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.open[id] = continuation
            return id
        }
    }

    /// Forgets a call its consumer dropped; true if it was still open (so send `cancel`).
    func abandon(_ id: Int32) -> Bool {
        state.withLock { $0.open.removeValue(forKey: id) != nil }
    }

    /// Fails an open call; true if it was open.
    func fail(_ id: Int32, _ error: RPCError) -> Bool {
        guard let continuation = state.withLock({ $0.open.removeValue(forKey: id) }) else { return false }
        continuation.finish(throwing: error)
        return true
    }

    func deliver(_ frame: ServerFrame) {
        switch frame {
        case .message(let stream, let message):
            _ = state.withLock { $0.open[stream] }?.yield(message)
        case .status(let stream, let code, let message, let details):
            guard let continuation = state.withLock({ $0.open.removeValue(forKey: stream) }) else { return }
            if code == .ok {
                continuation.finish()
            } else {
                continuation.finish(throwing: RPCError(code, message, details: details))
            }
        case .pong(let data):
            let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                if let key = data, state.keepalive?.data == key {
                    state.keepalive = nil
                    return nil
                }
                guard let key = data, var waiting = state.pongs[key], !waiting.isEmpty else { return nil }
                let first = waiting.removeFirst()
                state.pongs[key] = waiting.isEmpty ? nil : waiting
                return first
            }
            waiter?.resume()
        case .goaway(let code, let message, let lastStream):
            // Streams after lastStream will never be answered.
            let refused = state.withLock { state -> [AsyncThrowingStream<ByteBuffer, any Error>.Continuation] in
                state.goawayLastStream = lastStream
                let ids = state.open.keys.filter { $0 > lastStream }
                return ids.compactMap { state.open.removeValue(forKey: $0) }
            }
            for continuation in refused {
                continuation.finish(throwing: RPCError.notSent("the server sent goaway (\(code.rawValue): \(message)) before this call"))
            }
        }
    }

    func expectPong(_ data: String, _ continuation: CheckedContinuation<Void, any Error>) -> Bool {
        state.withLock { state in
            guard state.closedReason == nil else { return false }
            state.pongs[data, default: []].append(continuation)
            return true
        }
    }

    /// The connection is gone: every open call and ping fails.
    func closeAll(_ reason: String) {
        let (calls, pongs) = state.withLock { state in
            if state.closedReason == nil { state.closedReason = reason }
            defer {
                state.open = [:]
                state.pongs = [:]
            }
            return (Array(state.open.values), state.pongs.values.flatMap { $0 })
        }
        for continuation in calls { continuation.finish(throwing: RPCError(.unavailable, reason)) }
        for pong in pongs { pong.resume(throwing: RPCError(.unavailable, reason)) }
    }
}

/// Routes server frames to their calls; a broken frame closes the connection.
final class ClientFrameHandler: ChannelInboundHandler {
    typealias InboundIn = FrameEvent<ServerFrame>
    private let calls: CallTable
    private let handshake: EventLoopPromise<Void>
    private var lastGoaway: String?

    init(calls: CallTable, handshake: EventLoopPromise<Void>) {
        self.calls = calls
        self.handshake = handshake
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .frame(let frame):
            if case .goaway(let code, let message, _) = frame { lastGoaway = "\(code.rawValue): \(message)" }
            calls.deliver(frame)
        case .invalidCall(_, _, let message), .violation(_, let message):
            calls.closeAll("the server broke the framing rules: \(message)")
            context.close(promise: nil)
        case .idle:
            break
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls {
            handshake.succeed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        handshake.fail(error)
        calls.closeAll("connection error: \(error)")
        context.close(promise: nil)
    }

    /// A connection that never became active (refused) ends here: the promise must not leak.
    func handlerRemoved(context: ChannelHandlerContext) {
        handshake.fail(RPCError(.unavailable, "the connection closed before the TLS handshake"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        handshake.fail(RPCError(.unavailable, "connection closed during the TLS handshake"))
        calls.closeAll(lastGoaway.map { "the connection closed after goaway (\($0))" } ?? "the connection closed")
        context.fireChannelInactive()
    }
}

extension RPCError {
    /// UNAVAILABLE for a call the server never processed: the connection was gone before it
    /// was sent, or the server's goaway named a last stream before it. Such a call may be sent
    /// again whatever its method.
    static func notSent(_ message: String) -> RPCError {
        RPCError(.unavailable, message, details: .object(["notProcessed": .bool(true)]))
    }

    /// Whether this is a ``notSent(_:)`` error.
    public var wasNotProcessed: Bool {
        guard code == .unavailable, case .object(let details)? = details else { return false }
        return details["notProcessed"] == .bool(true)
    }
}
