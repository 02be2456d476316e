import FerryClient
import FerryProtocol
import FerryRPC
import Foundation
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import Synchronization
import SwiftProtobuf
import Testing

/// Tokens of each role, known to every test server.
enum TestTokens {
    static let viewer = "viewer-token"
    static let `operator` = "operator-token"
    static let admin = "admin-token"
    static let store = TokenStore([
        (TokenStore.hash(viewer), Principal(name: "vera", role: .viewer)),
        (TokenStore.hash(`operator`), Principal(name: "otto", role: .operator)),
        (TokenStore.hash(admin), Principal(name: "ada", role: .admin)),
    ])
}

/// One self-signed certificate for the whole test run (key generation is not free).
let testCertificate: SelfSignedCertificate = try! SelfSignedCertificate.generate()

/// Records what test handlers saw, so tests can check that work really stopped.
final class HandlerProbe: Sendable {
    private let state = Mutex<[String: Int]>([:])
    func bump(_ key: String) { state.withLock { $0[key, default: 0] += 1 } }
    func count(_ key: String) -> Int { state.withLock { $0[key, default: 0] } }
}

/// The methods test servers serve: the real Health/Check plus test-only handlers on job
/// method names (the job engine is not part of this layer):
/// - GetJob: waits `jobId` = "sleep:<ms>" milliseconds, then answers; notes cancellation.
/// - WatchJob: streams `afterSeq` + 1 … `afterSeq` + N events where N comes from jobId
///   "count:<n>:<delay ms>".
func testRouter(probe: HandlerProbe) -> MethodRouter {
    var router = MethodRouter()
    router.register(FerryMethods.healthCheck) { _, _ in HealthCheckResponse.with { $0.status = .serving } }
    router.register(FerryMethods.getJob) { request, _ in
        let id = request.jobID
        if id.hasPrefix("sleep:"), let ms = Int(id.dropFirst(6)) {
            probe.bump("sleep.started")
            do {
                try await Task.sleep(for: .milliseconds(ms))
            } catch {
                probe.bump("sleep.cancelled")
                throw error
            }
            probe.bump("sleep.finished")
        }
        return Job.with { $0.id = id }
    }
    router.register(FerryMethods.watchJob) { request, _, writer in
        let parts = request.jobID.split(separator: ":")
        guard parts.count == 3, parts[0] == "count", let count = Int(parts[1]), let delay = Int(parts[2]) else {
            throw RPCError(.invalidArgument, "jobId must be count:<n>:<delay ms>")
        }
        let start = request.afterSeq
        for seq in 1...max(count, 1) where count > 0 {
            if delay > 0 { try await Task.sleep(for: .milliseconds(delay)) }
            try await writer.write(JobEvent.with {
                $0.seq = start + Int64(seq)
                $0.type = .progress
            })
        }
        probe.bump("watch.finished")
    }
    return router
}

/// A running test server and a way to stop it gracefully.
struct RunningServer: Sendable {
    let port: Int
    let probe: HandlerProbe
    let shutdown: @Sendable () -> Void

    func client(token: String? = TestTokens.admin) async throws -> FerryConnection {
        var configuration = FerryClientConfiguration(host: "127.0.0.1", port: port, token: token)
        configuration.trustRoots = try NIOSSLCertificate.fromPEMBytes(Array(testCertificate.certificatePEM.utf8))
        return try await FerryConnection.connect(configuration)
    }
}

/// Runs a ferry/1 server on a free loopback port for the duration of `body`, inside a
/// ServiceGroup, and shuts it down gracefully afterwards.
func withTestServer<T: Sendable>(
    configure: (inout RPCServerConfiguration) -> Void = { _ in },
    _ body: @Sendable (RunningServer) async throws -> T
) async throws -> T {
    var configuration = RPCServerConfiguration(
        certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(testCertificate.certificatePEM.utf8)),
        privateKey: try NIOSSLPrivateKey(bytes: Array(testCertificate.privateKeyPEM.utf8), format: .pem))
    configuration.port = 0
    configure(&configuration)
    var logger = Logger(label: "ferry.test.rpc")
    logger.logLevel = ProcessInfo.processInfo.environment["FERRY_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
    let probe = HandlerProbe()
    let (bound, boundContinuation) = AsyncStream<Int>.makeStream()
    let server = RPCServer(configuration: configuration, router: testRouter(probe: probe), tokens: TestTokens.store, logger: logger) { address in
        boundContinuation.yield(address.port ?? 0)
        boundContinuation.finish()
    }
    let group = ServiceGroup(configuration: .init(services: [server], logger: logger))
    return try await withThrowingTaskGroup(of: T?.self) { tasks in
        tasks.addTask {
            try await group.run()
            return nil
        }
        var iterator = bound.makeAsyncIterator()
        guard let port = await iterator.next() else { throw RPCError(.internal, "server did not bind") }
        let running = RunningServer(port: port, probe: probe, shutdown: { Task { await group.triggerGracefulShutdown() } })
        do {
            let result = try await body(running)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        } catch {
            await group.triggerGracefulShutdown()
            try? await tasks.waitForAll()
            throw error
        }
    }
}
