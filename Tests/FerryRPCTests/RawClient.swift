import FerryProtocol
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// A deliberately dumb TLS client for feeding the server arbitrary bytes and seeing every
/// frame it answers, and whether it closed the connection.
final class RawClient: Sendable {
    let channel: any Channel
    // Read by one consumer at a time; a timed-out read finishes the stream (AsyncStream ends
    // when its reader is cancelled), so tests use ping/pong rather than timeouts to sync.
    private let frames: AsyncStream<ServerFrame?>

    private init(channel: any Channel, frames: AsyncStream<ServerFrame?>) {
        self.channel = channel
        self.frames = frames
    }

    static func connect(port: Int, tls: Bool = true) async throws -> RawClient {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(testCertificate.certificatePEM.utf8)))
        configuration.applicationProtocols = ["ferry/1"]
        let context = try NIOSSLContext(configuration: configuration)
        let (frames, continuation) = AsyncStream<ServerFrame?>.makeStream()
        let handshake = Mutex<EventLoopFuture<Void>?>(nil)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let collector = Collector(continuation: continuation, handshake: channel.eventLoop.makePromise())
                    handshake.withLock { $0 = collector.handshake.futureResult }
                    if tls {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    } else {
                        collector.handshake.succeed()
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder<ServerFrame>(maxFrameBytes: 64 * 1024 * 1024)))
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        if let future = handshake.withLock({ $0 }) { try await future.get() }
        return RawClient(channel: channel, frames: frames)
    }

    func send(_ bytes: [UInt8]) async throws {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        try await channel.writeAndFlush(buffer)
    }

    /// Sends one frame: a length prefix and `json` as given (any text at all).
    func sendFrame(_ json: String) async throws {
        let body = Array(json.utf8)
        try await send(withUnsafeBytes(of: UInt32(body.count).bigEndian, Array.init) + body)
    }

    func sendFrame(_ frame: ClientFrame) async throws {
        try await channel.writeAndFlush(frame.encoded())
    }

    /// The next frame, or nil once the server closed the connection.
    func next(timeout: Duration = .seconds(10)) async throws -> ServerFrame? {
        let frames = self.frames
        return try await withThrowingTaskGroup(of: ServerFrame??.self) { group in
            group.addTask {
                var iterator = frames.makeAsyncIterator()
                return .some(await iterator.next() ?? nil)
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return .none
            }
            let first = try await group.next()!
            group.cancelAll()
            guard let frame = first else { throw RPCError(.deadlineExceeded, "no frame within \(timeout)") }
            return frame
        }
    }

    /// Frames until the connection closes (or `timeout` passes).
    func framesUntilClosed(timeout: Duration = .seconds(10)) async throws -> [ServerFrame] {
        var collected: [ServerFrame] = []
        while let frame = try await next(timeout: timeout) { collected.append(frame) }
        return collected
    }

    func close() { channel.close(promise: nil) }

    private final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = FrameEvent<ServerFrame>
        let continuation: AsyncStream<ServerFrame?>.Continuation
        let handshake: EventLoopPromise<Void>

        init(continuation: AsyncStream<ServerFrame?>.Continuation, handshake: EventLoopPromise<Void>) {
            self.continuation = continuation
            self.handshake = handshake
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            if case .frame(let frame) = unwrapInboundIn(data) {
                continuation.yield(frame)
            }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls { handshake.succeed() }
            context.fireUserInboundEventTriggered(event)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            handshake.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            handshake.fail(ChannelError.ioOnClosedChannel)
            continuation.yield(nil)
            continuation.finish()
        }
    }
}
