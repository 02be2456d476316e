import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// The operations endpoint: plain HTTP on its own port, apart from the TLS RPC port.
///
/// - `GET /healthz`: 200 `SERVING` when the control database answers, else 503 `NOT_SERVING`.
/// - `GET /metrics`: the process's metrics in Prometheus text format.
///
/// Each connection serves one request and is closed, so a graceful shutdown never waits on
/// an idle keep-alive connection.
public struct OpsServer: Service {
    public let host: String
    public let port: Int
    let registry: PrometheusCollectorRegistry
    let health: @Sendable () async -> Bool
    let onBound: @Sendable (SocketAddress) async throws -> Void
    let logger: Logger

    public init(
        host: String,
        port: Int,
        registry: PrometheusCollectorRegistry,
        logger: Logger,
        health: @escaping @Sendable () async -> Bool,
        onBound: @escaping @Sendable (SocketAddress) async throws -> Void
    ) {
        self.host = host
        self.port = port
        self.registry = registry
        self.health = health
        self.onBound = onBound
        self.logger = logger
    }

    private typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    public func run() async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try Connection(wrappingChannelSynchronously: channel)
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
