import FerryCore
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization

/// The operations endpoint: plain HTTP on its own port, apart from the TLS RPC port.
///
/// - `GET /healthz`: 200 `SERVING` when the control database answers, else 503 `NOT_SERVING`.
/// - `GET /metrics`: the process's metrics in Prometheus text format.
///
/// Each connection serves one request and is closed, so a graceful shutdown never waits on
/// an idle keep-alive connection. The port is usually reachable by more than the monitoring
/// system, so what a client can hold is bounded: at most ``maxConnections`` open at once
/// (more are closed as soon as they are accepted), and each gets ``requestTimeout`` from
/// accept to the end of its answer, so a client that connects and sends nothing (or trickles
/// its request, or does not read the answer) cannot keep a slot for long.
public struct OpsServer: Service {
    /// Health checks and scrapes come from a few monitors; far fewer than the RPC port's.
    public static let defaultMaxConnections = 64
    /// A probe answers within two seconds; a scrape is small. Ample for a well-behaved client.
    public static let defaultRequestTimeout = Duration.seconds(10)

    public let host: String
    public let port: Int
    public let maxConnections: Int
    public let requestTimeout: Duration
    let registry: PrometheusCollectorRegistry
    let health: @Sendable () async -> Bool
    let onBound: @Sendable (SocketAddress) async throws -> Void
    let logger: Logger

    public init(
        host: String,
        port: Int,
        registry: PrometheusCollectorRegistry,
        logger: Logger,
        maxConnections: Int = OpsServer.defaultMaxConnections,
        requestTimeout: Duration = OpsServer.defaultRequestTimeout,
        health: @escaping @Sendable () async -> Bool,
        onBound: @escaping @Sendable (SocketAddress) async throws -> Void
    ) {
        precondition(maxConnections > 0)
        self.host = host
        self.port = port
        self.maxConnections = maxConnections
        self.requestTimeout = requestTimeout
        self.registry = registry
        self.health = health
        self.onBound = onBound
        self.logger = logger
    }

    private typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// An accepted connection beyond the cap, closed at once.
    private struct OverCapacity: Error {}

    public func run() async throws {
        let open = OpenConnections(limit: maxConnections)
        let timeout = TimeAmount.nanoseconds(requestTimeout.wholeNanoseconds)
        let logger = logger
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { (channel: any Channel) -> EventLoopFuture<Connection> in
                guard open.admit() else {
                    logger.debug("ops endpoint at its connection limit; closing a new connection", metadata: ["limit": "\(open.limit)"])
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(OverCapacity())
                }
                // Counted until closed, however that happens; the deadline closes it if the
                // exchange is not over in time, and is cancelled when it is.
                let deadline = channel.eventLoop.scheduleTask(in: timeout) {
                    logger.debug("ops connection timed out", metadata: ["timeout": "\(requestTimeout)"])
                    channel.close(promise: nil)
                }
                channel.closeFuture.whenComplete { _ in
                    deadline.cancel()
                    open.release()
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    // Deinit-based teardown, as in the RPC server: a connection accepted as the
                    // listener closes is closed when dropped instead of trapping (swift-nio#2813).
                    return try Connection(synchronouslyWrapping: channel)
                }
            }
        guard let address = server.channel.localAddress else {
            throw ChannelError.inappropriateOperationForState
        }
        try await onBound(address)

        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        group.addTask { await handle(connection) }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
        }
    }

    private func handle(_ connection: Connection) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                for try await part in inbound {
                    switch part {
                    case .head(let requestHead): head = requestHead
                    case .body: continue
                    case .end:
                        guard let head else { return }
                        let (status, contentType, body) = await respond(to: head)
                        var headers = HTTPHeaders()
                        headers.add(name: "Content-Type", value: contentType)
                        headers.add(name: "Content-Length", value: String(body.readableBytes))
                        headers.add(name: "Connection", value: "close")
                        try await outbound.write(.head(HTTPResponseHead(version: head.version, status: status, headers: headers)))
                        try await outbound.write(.body(.byteBuffer(body)))
                        try await outbound.write(.end(nil))
                        return
                    }
                }
            }
        } catch {
            logger.debug("ops connection ended with an error", metadata: ["error": "\(error)"])
        }
    }

    private func respond(to head: HTTPRequestHead) async -> (HTTPResponseStatus, String, ByteBuffer) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        guard head.method == .GET || head.method == .HEAD else {
            return (.methodNotAllowed, "text/plain", ByteBuffer(string: "method not allowed\n"))
        }
        switch path {
        case "/healthz":
            return await health()
                ? (.ok, "text/plain", ByteBuffer(string: "SERVING\n"))
                : (.serviceUnavailable, "text/plain", ByteBuffer(string: "NOT_SERVING\n"))
        case "/metrics":
            return (.ok, "text/plain; version=0.0.4", ByteBuffer(bytes: registry.emitToBuffer()))
        default:
            return (.notFound, "text/plain", ByteBuffer(string: "not found; try /healthz or /metrics\n"))
        }
    }
}

/// The ops endpoint's open connections, counted against its cap from any event loop.
private final class OpenConnections: Sendable {
    let limit: Int
    private let count = Atomic<Int>(0)

    init(limit: Int) { self.limit = limit }

    /// Counts a new connection if there is room.
    func admit() -> Bool {
        var current = count.load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = count.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
        return false
    }

    func release() {
        count.subtract(1, ordering: .relaxed)
    }
}
