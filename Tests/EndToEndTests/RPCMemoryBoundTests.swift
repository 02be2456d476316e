import FerryClient
import FerryProtocol
import FerryTestSupport
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization
import Testing

/// A client that floods a real `ferryd` with work that makes the server write (4 MiB pings,
/// bursts of calls beyond the stream limit) and never reads a byte back: the server's memory
/// stays within the documented per-connection bound, it stops reading from that client, and
/// other clients are served throughout. (A server that writes without backpressure grows by
/// gigabytes within seconds under this client.)
@Suite struct RPCMemoryBoundTests {
    /// Seconds of flooding (the issue that found the defect asked for 30).
    static let seconds = Int(ProcessInfo.processInfo.environment["FERRY_FLOOD_SECONDS"] ?? "") ?? 30

    /// What one connection may hold, from the server's defaults (docs/protocol.md): inbound,
    /// 3 frames of 4 MiB; outbound, 256 KiB plus one frame plus 128 statuses; TLS keeps a
    /// plaintext and a ciphertext copy of what is in flight. Allocator slack on top.
    static let boundMiB = 64.0

    @Test func aClientThatNeverReadsCannotGrowTheServer() async throws {
        try await ServingFerryd.with() { server in
            let caFile = try #require(server.ready["caFile"])
            let pid = server.process.child.pid
            let witness = try await FerryConnection.connect(FerryClientConfiguration(host: server.host, port: server.port, trustRootsFile: caFile))
            defer { witness.close() }
            _ = try await witness.check()
            let baseline = try #require(Self.residentMiB(pid))

            let flooder = try await NonReadingClient.connect(host: server.host, port: server.port, caFile: caFile)
            let peak = Locked(baseline)
            let witnessResults = Locked((ok: 0, failed: [String]()))
            let deadline = ContinuousClock.now + .seconds(Self.seconds)
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await flooder.flood(until: deadline) }
                group.addTask {
                    while ContinuousClock.now < deadline {
                        if let rss = Self.residentMiB(pid) { peak.withLock { $0 = max($0, rss) } }
                        try? await Task.sleep(for: .milliseconds(100))
                    }
                }
                group.addTask {
                    while ContinuousClock.now < deadline {
                        do {
                            _ = try await witness.check(timeout: .seconds(5))
                            witnessResults.withLock { $0.ok += 1 }
                        } catch {
                            witnessResults.withLock { $0.failed.append("\(error)") }
                        }
                        try? await Task.sleep(for: .milliseconds(250))
                    }
                }
            }
            let sent = flooder.bytesSent
            flooder.close()

            let grown = peak.withLock { $0 } - baseline
            print("flood: \(Self.seconds) s, \(sent >> 20) MiB accepted from the flooder, ferryd RSS \(String(format: "%.1f", baseline)) MiB → peak +\(String(format: "%.1f", grown)) MiB, witness \(witnessResults.withLock { $0.ok }) calls OK")
            #expect(grown <= Self.boundMiB, "ferryd grew by \(grown) MiB")
            // Throttled: the server stopped reading once its buffers were full. Unthrottled, a
            // loopback client sends gigabytes in this time.
            #expect(sent < 256 << 20, "the flooder got \(sent >> 20) MiB in")
            #expect(sent > 1 << 20, "the flood did not get going (\(sent) bytes)")
            #expect(witnessResults.withLock { $0.failed }.isEmpty, "\(witnessResults.withLock { $0.failed })")
            #expect(witnessResults.withLock { $0.ok } >= Self.seconds, "the witness was not served throughout")
            #expect(try await witness.check().status == .serving)

            // The metrics middleware counted the witness's calls, and the gauges exist.
            let opsURL = try #require(server.ready["opsURL"])
            let (data, _) = try await URLSession.shared.data(from: try #require(URL(string: opsURL + "/metrics")))
            let metrics = String(decoding: data, as: UTF8.self)
            let okLine = metrics.split(separator: "\n").first {
                $0.hasPrefix("ferry_rpc_calls_total") && $0.contains(#"method="ferry.v1.Health/Check""#) && $0.contains(#"code="OK""#)
            }
            let counted = okLine.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
            #expect(counted >= Double(witnessResults.withLock { $0.ok }), "\(okLine.map(String.init) ?? "no ferry_rpc_calls_total line")")
            for series in ["ferry_rpc_call_duration_seconds", "ferry_rpc_open_connections", "ferry_rpc_open_streams"] {
                #expect(metrics.contains(series), "\(series) missing from /metrics")
            }
        }
    }

    static func residentMiB(_ pid: pid_t) -> Double? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kiB = line.split(separator: " ").compactMap({ Double($0) }).first
        else { return nil }
        return kiB / 1024
    }
}

/// A value shared by the test's tasks.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { mutex.withLock { body(&$0) } }
}

/// A TLS client that stops reading once its handshake is done, and writes as fast as the
/// server takes its bytes.
final class NonReadingClient: Sendable {
    let channel: any Channel
    private let sent = Atomic<Int>(0)

    var bytesSent: Int { sent.load(ordering: .relaxed) }

    private init(channel: any Channel) {
        self.channel = channel
    }

    static func connect(host: String, port: Int, caFile: String) async throws -> NonReadingClient {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .file(caFile)
        configuration.applicationProtocols = ["ferry/1"]
        let context = try NIOSSLContext(configuration: configuration)
        let handshake = Mutex<EventLoopFuture<Void>?>(nil)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let waiter = HandshakeWaiter(promise: channel.eventLoop.makePromise())
                    handshake.withLock { $0 = waiter.promise.futureResult }
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    try channel.pipeline.syncOperations.addHandler(waiter)
                }
            }
            .connect(host: host, port: port).get()
        try await handshake.withLock { $0 }!.get()
        try await channel.setOption(.autoRead, value: false).get()
        return NonReadingClient(channel: channel)
    }

    /// Alternates a 4 MiB ping with a burst of 300 calls (more than the 128 streams a
    /// connection may have open), each write awaited, until `deadline`.
    func flood(until deadline: ContinuousClock.Instant) async {
        let data = String(repeating: "p", count: 4 * 1024 * 1024 - 64)
        let ping = ClientFrame.ping(data: data).encoded()
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                try? await Task.sleep(until: deadline)
                // Writes stuck behind a server that stopped reading fail when the channel closes.
                self.channel.close(promise: nil)
            }
            group.addTask {
                var streamID: Int32 = 0
                while ContinuousClock.now < deadline {
                    var burst = ByteBuffer()
                    for index in 0..<300 {
                        streamID = streamID % 1_000_000 + 1
                        let method = index % 2 == 0 ? "ferry.v1.Health/Check" : "ferry.v1.Jobs/WatchJob"
                        ClientFrame.call(.init(stream: streamID, method: method)).write(to: &burst)
                    }
                    for buffer in [ping, burst] {
                        do {
                            try await self.channel.writeAndFlush(buffer)
                            self.sent.add(buffer.readableBytes, ordering: .relaxed)
                        } catch {
                            return
                        }
                    }
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    func close() { channel.close(promise: nil) }

    private final class HandshakeWaiter: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let promise: EventLoopPromise<Void>

        init(promise: EventLoopPromise<Void>) {
            self.promise = promise
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let tls = event as? TLSUserEvent, case .handshakeCompleted = tls { promise.succeed() }
            context.fireUserInboundEventTriggered(event)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            promise.fail(error)
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(ChannelError.ioOnClosedChannel)
        }
    }
}
