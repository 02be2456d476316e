import FerryClient
import FerryProtocol
import FerryRPC
import Foundation
import SwiftProtobuf
import Testing

/// The server and the client library over real TLS on loopback.
@Suite struct RPCEndToEndTests {
    @Test func unaryHealthCheckWithoutAToken() async throws {
        try await withTestServer { server in
            let client = try await server.client(token: nil)
            defer { client.close() }
            let response = try await client.check()
            #expect(response.status == .serving)
        }
    }

    @Test func serverStreamingDeliversEveryMessageInOrderThenOK() async throws {
        try await withTestServer { server in
            let client = try await server.client(token: TestTokens.viewer)
            defer { client.close() }
            var seqs: [Int64] = []
            for try await event in try client.serverStream(FerryMethods.watchJob, .with { $0.jobID = "count:25:0"; $0.afterSeq = 100 }) {
                seqs.append(event.seq)
            }
            #expect(seqs == Array(101...125))
        }
    }

    @Test func manyConcurrentStreamsShareOneConnection() async throws {
        try await withTestServer { server in
            let client = try await server.client(token: TestTokens.viewer)
            defer { client.close() }
            let ids = try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<100 {
                    group.addTask {
                        let job = try await client.unary(FerryMethods.getJob, .with { $0.jobID = "sleep:\(index % 5 * 20)" })
                        return job.id
                    }
                }
                return try await group.reduce(into: [String]()) { $0.append($1) }
            }
            #expect(ids.count == 100)
            #expect(server.probe.count("sleep.finished") == 100)
        }
    }

    @Test func taskCancellationSendsCancelAndStopsTheHandler() async throws {
        try await withTestServer { server in
            let client = try await server.client(token: TestTokens.viewer)
            defer { client.close() }
            let call = Task {
                _ = try await client.unary(FerryMethods.getJob, .with { $0.jobID = "sleep:30000" })
            }
            while server.probe.count("sleep.started") == 0 { try await Task.sleep(for: .milliseconds(10)) }
            call.cancel()
            await #expect(throws: (any Error).self) { try await call.value }
            for _ in 0..<300 where server.probe.count("sleep.cancelled") == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(server.probe.count("sleep.cancelled") == 1)
            #expect(server.probe.count("sleep.finished") == 0)
            // The connection still serves.
            #expect(try await client.check().status == .serving)
        }
    }

    @Test func aCancelFrameEndsTheStreamWithCancelled() async throws {
        try await withTestServer { server in
            let raw = try await RawClient.connect(port: server.port)
            defer { raw.close() }
            try await raw.sendFrame(.call(.init(stream: 7, method: "ferry.v1.Jobs/GetJob", metadata: ["authorization": "Bearer \(TestTokens.viewer)"], json: .object(["jobId": .string("sleep:30000")]))))
            while server.probe.count("sleep.started") == 0 { try await Task.sleep(for: .milliseconds(10)) }
            try await raw.sendFrame(.cancel(stream: 7))
            let frame = try await raw.next()
            guard case .status(7, .cancelled, _, _)? = frame else {
                Issue.record("expected CANCELLED for stream 7, got \(String(describing: frame))")
                return
            }
        }
    }

    @Test func aDeadlineStopsTheWorkWithDeadlineExceeded() async throws {
        try await withTestServer { server in
            let client = try await server.client(token: TestTokens.viewer)
            defer { client.close() }
            let started = ContinuousClock.now
            let error = await #expect(throws: RPCError.self) {
                _ = try await client.unary(FerryMethods.getJob, .with { $0.jobID = "sleep:30000" }, timeout: .milliseconds(300))
            }
            #expect(error?.code == .deadlineExceeded)
            #expect(ContinuousClock.now - started < .seconds(10))
            for _ in 0..<300 where server.probe.count("sleep.cancelled") == 0 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(server.probe.count("sleep.cancelled") == 1, "the handler was not stopped")
        }
    }

    /// All of a connection's deadlines share one timer set for the earliest: a shorter deadline
    /// arriving after a longer one still fires on time, in order, and a long one not early.
    @Test func deadlinesOfDifferentLengthsOnOneConnectionFireInOrder() async throws {
        try await withTestServer { server in
            let raw = try await RawClient.connect(port: server.port)
            defer { raw.close() }
            let auth = ["authorization": "Bearer \(TestTokens.viewer)"]
            func call(_ stream: Int32, sleep ms: Int, timeoutMs: Int64) -> ClientFrame {
                .call(.init(stream: stream, method: "ferry.v1.Jobs/GetJob", metadata: auth, timeoutMs: timeoutMs, json: .object(["jobId": .string("sleep:\(ms)")])))
            }
            let started = ContinuousClock.now
            try await raw.sendFrame(call(1, sleep: 30_000, timeoutMs: 20_000))
            try await raw.sendFrame(call(2, sleep: 30_000, timeoutMs: 1_500))
            try await raw.sendFrame(call(3, sleep: 30_000, timeoutMs: 500))
            try await raw.sendFrame(call(4, sleep: 0, timeoutMs: 100_000))
            var statuses: [(Int32, StatusCode)] = []
            while statuses.count < 3, let frame = try await raw.next() {
                if case .status(let stream, let code, _, _) = frame { statuses.append((stream, code)) }
            }
            #expect(statuses.map(\.0) == [4, 3, 2], "\(statuses)")
            #expect(statuses.map(\.1) == [.ok, .deadlineExceeded, .deadlineExceeded], "\(statuses)")
            #expect(ContinuousClock.now - started < .seconds(10))
            // The 20 s deadline has not fired: the stream is still open, and a cancel ends it.
            try await raw.sendFrame(.cancel(stream: 1))
            #expect(try await raw.next() == .status(stream: 1, code: .cancelled, message: "cancelled by the client", details: nil))
        }
    }

    @Test func pingIsAnsweredWithTheSameData() async throws {
        try await withTestServer { server in
            let client = try await server.client()
            defer { client.close() }
            for _ in 0..<10 { _ = try await client.ping() }
            let raw = try await RawClient.connect(port: server.port)
            defer { raw.close() }
            try await raw.sendFrame(#"{"type":"ping","data":"hello \u00e9"}"#)
            #expect(try await raw.next() == .pong(data: "hello é"))
            try await raw.sendFrame(#"{"type":"ping"}"#)
            #expect(try await raw.next() == .pong(data: nil))
        }
    }

    @Test func goawayLetsStreamsInFlightFinishAndRefusesLaterCalls() async throws {
        try await withTestServer { server in
            let raw = try await RawClient.connect(port: server.port)
            defer { raw.close() }
            let auth = ["authorization": "Bearer \(TestTokens.viewer)"]
            try await raw.sendFrame(.call(.init(stream: 1, method: "ferry.v1.Jobs/GetJob", metadata: auth, json: .object(["jobId": .string("sleep:4000")]))))
            while server.probe.count("sleep.started") == 0 { try await Task.sleep(for: .milliseconds(10)) }
            server.shutdown()
            guard case .goaway(.unavailable, _, let lastStream)? = try await raw.next() else {
                Issue.record("expected goaway")
                return
            }
            #expect(lastStream == 1)
            // A call after goaway is refused; the one in flight still completes.
            try await raw.sendFrame(.call(.init(stream: 3, method: "ferry.v1.Health/Check", json: .object([:]))))
            let rest = try await raw.framesUntilClosed()
            #expect(rest.contains { if case .status(3, .unavailable, _, _) = $0 { true } else { false } })
            #expect(rest.contains { if case .message(1, _) = $0 { true } else { false } })
            #expect(rest.last.map { if case .status(1, .ok, _, _) = $0 { true } else { false } } == true)
            #expect(server.probe.count("sleep.finished") == 1)
        }
    }

    @Test func theClientSeesGoawayAndFailsNewCalls() async throws {
        try await withTestServer { server in
            let client = try await server.client()
            defer { client.close() }
            #expect(try await client.check().status == .serving)
            server.shutdown()
            for _ in 0..<500 where !client.isGoingAway { try await Task.sleep(for: .milliseconds(10)) }
            #expect(client.isGoingAway)
            let error = await #expect(throws: RPCError.self) { try await client.check() }
            #expect(error?.code == .unavailable)
        }
    }
}
