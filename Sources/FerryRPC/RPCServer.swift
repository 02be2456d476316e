import FerryCore
import FerryProtocol
import Logging
import Metrics
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import ServiceLifecycle
import Synchronization

/// The ferry/1 server: TLS on TCP, length-prefixed JSON frames, many streams per connection.
///
/// Every call passes through the middleware, outermost first: ``MetricsMiddleware``,
/// ``DeadlineMiddleware``, ``AuthenticationMiddleware``, ``LoggingMiddleware``, then any
/// `additionalMiddleware`, then the method's handler.
///
/// Run it in a `ServiceGroup`: graceful shutdown stops accepting, sends `goaway` on every
/// connection and lets open streams finish (up to the drain timeout).
public struct RPCServer: Service {
    public let configuration: RPCServerConfiguration
    let router: MethodRouter
    let chain: @Sendable (RPCContext) async throws -> Void
    let logger: Logger
    let loggers: [String: Logger]
    let onBound: @Sendable (SocketAddress) async throws -> Void

    public init(
        configuration: RPCServerConfiguration,
        router: MethodRouter,
        tokens: TokenStore,
        additionalMiddleware: [any RPCMiddleware] = [],
        logger: Logger,
        onBound: @escaping @Sendable (SocketAddress) async throws -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.router = router
        let middleware: [any RPCMiddleware] = [
            MetricsMiddleware(), DeadlineMiddleware(), AuthenticationMiddleware(tokens: tokens), LoggingMiddleware(),
        ] + additionalMiddleware
        chain = middleware.chain(Connection.endpoint)
        self.logger = logger
        // Each method's logger is made once: a logger with new metadata costs an allocation.
        var loggers: [String: Logger] = [:]
        for method in FerryMethods.all {
            var methodLogger = logger
            methodLogger[metadataKey: "method"] = "\(method.name)"
            loggers[method.name] = methodLogger
        }
        self.loggers = loggers
        self.onBound = onBound
    }

    public func run() async throws {
        let sslContext = try configuration.makeSSLContext()
        let configuration = self.configuration
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handlers = channel.pipeline.syncOperations
                    try handlers.addHandler(NIOSSLServerHandler(context: sslContext))
                    // The idle timer starts once the handshake is done (the handshake has its own
                    // timeout): a slow handshake on a busy machine must not count as idleness.
                    try handlers.addHandler(HandshakeTimeoutHandler(
                        timeout: TimeAmount(configuration.handshakeTimeout),
                        then: { IdleStateHandler(readTimeout: TimeAmount(configuration.idleTimeout)) }))
                    let decoder = FrameDecoder<ClientFrame>(maxFrameBytes: configuration.maxFrameBytes)
                    try handlers.addHandler(ByteToMessageHandler(decoder))
                    try handlers.addHandler(IdleEventForwarder(decoder: decoder))
                    try handlers.addHandler(MessageToByteHandler(FrameEncoder<ServerFrame>()))
                    // The deinit-based teardown (deprecated in NIO, but the only safe one here): a
                    // connection accepted as the listener closes on shutdown is dropped before the
                    // serving loop sees it; with `wrappingChannelSynchronously` its writer then
                    // traps ("Deinited NIOAsyncWriter without calling finish()", swift-nio#2813,
                    // seen in the soak at a SIGTERM); this way it is closed.
                    return try NIOAsyncChannel<FrameEvent<ClientFrame>, [ServerFrame]>(
                        synchronouslyWrapping: channel,
                        configuration: .init(backPressureStrategy: .init(
                            lowWatermark: 1, highWatermark: max(2, configuration.inboundFramesBuffered))))
                }
            }
        guard let address = server.channel.localAddress else { throw ChannelError.inappropriateOperationForState }
        logger.notice("ferry/1 listening", metadata: ["address": "\(address)"])
        try await onBound(address)

        let active = ConnectionCounter()
        let gauges = ConnectionGauges()
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { connections in
                    for try await connection in connections {
                        group.addTask {
                            await serve(connection, counter: active, gauges: gauges)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            // Stop accepting; each connection sees the same shutdown and sends goaway.
            server.channel.close(promise: nil)
        }
    }

    private func serve(_ asyncChannel: NIOAsyncChannel<FrameEvent<ClientFrame>, [ServerFrame]>, counter: ConnectionCounter, gauges: ConnectionGauges) async {
        let admitted = counter.enter(limit: configuration.maxConnections)
        gauges.connections.increment()
        defer {
            counter.leave()
            gauges.connections.decrement()
        }
        do {
            try await asyncChannel.executeThenClose { inbound, _ in
                guard admitted else {
                    let goaway = ServerFrame.goaway(code: .resourceExhausted, message: "too many connections (limit \(configuration.maxConnections))", lastStream: 0)
                    try? await asyncChannel.channel.writeAndFlush([goaway])
                    return
                }
                let connection = Connection(channel: asyncChannel.channel, configuration: configuration, router: router,
                                            chain: chain, logger: logger, loggers: loggers, gauges: gauges)
                await connection.run(inbound)
            }
        } catch {
            logger.debug("connection ended with an error", metadata: ["error": "\(error)"])
        }
    }
}

/// `ferry_rpc_open_connections` and `ferry_rpc_open_streams`, through swift-metrics.
struct ConnectionGauges: Sendable {
    let connections = Meter(label: "ferry_rpc_open_connections")
    let streams = Meter(label: "ferry_rpc_open_streams")
}

/// Counts open connections against the limit.
final class ConnectionCounter: Sendable {
    private let count = Mutex(0)

    /// Counts a connection in; false when it is over the limit (it is still counted until `leave`).
    func enter(limit: Int) -> Bool {
        count.withLock { count in
            count += 1
            return count <= limit
        }
    }

    func leave() { count.withLock { $0 -= 1 } }
}

/// Closes a connection whose TLS handshake has not completed within the timeout, so a
/// client that connects and sends nothing (or plaintext that stalls) cannot hold a slot.
/// Once the handshake is done it replaces itself with the handler `then` makes.
final class HandshakeTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    private let timeout: TimeAmount
    private let then: () -> any ChannelHandler
    private var scheduled: Scheduled<Void>?

    init(timeout: TimeAmount, then: @escaping () -> any ChannelHandler) {
        self.timeout = timeout
        self.then = then
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard scheduled == nil else { return }
        let channel = context.channel
        scheduled = context.eventLoop.scheduleTask(in: timeout) {
            channel.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
        if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls {
            scheduled?.cancel()
            scheduled = nil
            try? context.pipeline.syncOperations.addHandler(then(), position: .after(self))
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        scheduled?.cancel()
        scheduled = nil
    }
}

extension TimeAmount {
    init(_ duration: Duration) {
        self = .nanoseconds(duration.wholeNanoseconds)
    }
}
